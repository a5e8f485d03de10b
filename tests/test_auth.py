"""
Tests for the pure and small parts of :mod:`nixeryd.auth`: the
``Authorization`` header, challenges, scopes, the htpasswd file and its
verdicts, the rules file, tokens, and files read again when they change.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.auth.challenge import basic_challenge, bearer_challenge
from nixeryd.auth.credentials import BasicCredentials, BearerToken, parse_authorization
from nixeryd.auth.errors import Denied
from nixeryd.auth.htpasswd import Htpasswd, parse_htpasswd
from nixeryd.auth.rules import parse_rules
from nixeryd.auth.scopes import Scope, granted, parse_scope, parse_scopes, pull_scope
from nixeryd.auth.tokens import (InvalidToken, TokenSigner, TokenVerifier, load_private_key,
                                 load_public_keys)
from nixeryd.auth.watchedfile import CHECK_INTERVAL, WatchedFile
from tests.authfixtures import (USERS, CountingRunner, ec_key_pem, htpasswd_text,
                                public_pem, rsa_key_pem, write_file)


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(("%s:%s" % (user, password)).encode())


class AuthorizationHeaderTests(SynchronousTestCase):
    """:func:`parse_authorization`."""

    def test_basic(self) -> None:
        """Basic credentials; the password may hold a colon."""
        self.assertEqual(parse_authorization(basic("alice", "a:b")),
                         BasicCredentials("alice", "a:b"))

    def test_bearer(self) -> None:
        """A bearer token, whatever the scheme's case."""
        self.assertEqual(parse_authorization(b"bearer abc.def.ghi"), BearerToken("abc.def.ghi"))

    def test_malformed(self) -> None:
        """Bad base64, no colon, no user, another scheme, too long: nothing."""
        for value in (b"Basic !!!", b"Basic " + base64.b64encode(b"alice"),
                      b"Basic " + base64.b64encode(b":pw"), b"Digest x", b"Basic",
                      b"Bearer " + b"a" * 20000, None, b""):
            self.assertIsNone(parse_authorization(value), value)

    def test_repr_hides_secrets(self) -> None:
        """Neither the password nor the token shows in a repr (or a log of one)."""
        self.assertNotIn("s3cret", repr(BasicCredentials("alice", "s3cret")))
        self.assertNotIn("t0ken", repr(BearerToken("t0ken")))


class ChallengeTests(SynchronousTestCase):
    """``WWW-Authenticate`` values."""

    def test_basic(self) -> None:
        self.assertEqual(basic_challenge(), b'Basic realm="nixeryd", charset="UTF-8"')

    def test_bearer(self) -> None:
        """realm, service and scope, as the token specification writes them."""
        self.assertEqual(
            bearer_challenge("https://r.test/token", "nixeryd", pull_scope("shell/git")),
            b'Bearer realm="https://r.test/token",service="nixeryd",'
            b'scope="repository:shell/git:pull"')

    def test_bearer_error(self) -> None:
        """The error of RFC 6750, and no scope for /v2/ itself."""
        self.assertEqual(
            bearer_challenge("http://h/token", "s", None, "invalid_token"),
            b'Bearer realm="http://h/token",service="s",error="invalid_token"')

    def test_quoting(self) -> None:
        """Quotes and backslashes are escaped, control characters dropped."""
        self.assertEqual(bearer_challenge('a"b\\c\nd', "s"),
                         b'Bearer realm="a\\"b\\\\cd",service="s"')


class ScopeTests(SynchronousTestCase):
    """Scopes and access claims."""

    def test_parse(self) -> None:
        self.assertEqual(parse_scope("repository:shell/git:pull,push"),
                         Scope("repository", "shell/git", ("pull", "push")))
        self.assertEqual(str(pull_scope("a/b")), "repository:a/b:pull")

    def test_name_with_port(self) -> None:
        """A name holding a host's port keeps it: the actions are the last field."""
        self.assertEqual(parse_scope("repository:host:5000/x:pull"),
                         Scope("repository", "host:5000/x", ("pull",)))

    def test_malformed(self) -> None:
        for text in ("repository", "repository:name", ":name:pull", "repository::pull"):
            self.assertIsNone(parse_scope(text), text)

    def test_several(self) -> None:
        """Space-separated scopes in one parameter, and several parameters."""
        self.assertEqual(
            [s.name for s in parse_scopes(["repository:a:pull repository:b:pull", "bad",
                                           "repository:c:pull"])], ["a", "b", "c"])

    def test_granted(self) -> None:
        access = [{"type": "repository", "name": "a", "actions": ["pull"]},
                  {"type": "repository", "name": "b", "actions": ["push"]},
                  {"type": "registry", "name": "c", "actions": ["pull"]}, "junk"]
        self.assertTrue(granted(access, "a"))
        self.assertFalse(granted(access, "b"))
        self.assertFalse(granted(access, "c"))
        self.assertFalse(granted("not a list", "a"))


class HtpasswdTests(SynchronousTestCase):
    """The htpasswd file and its verdicts."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = write_file(self.directory, "htpasswd", htpasswd_text(USERS))
        self.clock = Clock()
        self.clock.advance(1000)
        self.runner = CountingRunner()
        self.users = Htpasswd(self.path, runner=self.runner, clock=self.clock)

    def check(self, user: str, password: str) -> bool:
        result: bool = self.successResultOf(Deferred.fromCoroutine(
            self.users.check(BasicCredentials(user, password))))
        return result

    def test_format(self) -> None:
        """Comments and blank lines are skipped; every bcrypt prefix is read."""
        users = parse_htpasswd("# users\n\nalice:$2y$05$abc\nbob:$2b$05$def\ncarol:$2a$05$x\n")
        self.assertEqual(sorted(users), ["alice", "bob", "carol"])

    def test_weak_hashes_refused(self) -> None:
        """An MD5 or SHA-1 hash is refused, naming its line and the fix."""
        for line in ("alice:$apr1$xyz$abc", "alice:{SHA}abc", "alice:plain", "nocolon"):
            with self.assertRaises(ValueError) as raised:
                parse_htpasswd("# x\n" + line)
            self.assertIn("line 2", str(raised.exception))

    def test_right_and_wrong(self) -> None:
        """The right password passes; a wrong one, an unknown user, a long one do not."""
        self.assertTrue(self.check("alice", "wonderland"))
        self.assertFalse(self.check("alice", "wonderlanD"))
        self.assertFalse(self.check("mallory", "wonderland"))
        self.assertFalse(self.check("alice", "x" * 100))

    def test_bcrypt_once_per_credentials(self) -> None:
        """Fifty checks of the same credentials run bcrypt once, in the runner."""
        for _ in range(50):
            self.assertTrue(self.check("alice", "wonderland"))
        self.assertEqual(self.runner.ran.count("_matches"), 1)
        for _ in range(5):
            self.assertFalse(self.check("alice", "nope"))
        self.assertEqual(self.runner.ran.count("_matches"), 2)

    def test_verdict_expires(self) -> None:
        """A verdict is kept for a minute, then bcrypt runs again."""
        self.check("alice", "wonderland")
        self.clock.advance(61)
        self.check("alice", "wonderland")
        self.assertEqual(self.runner.ran.count("_matches"), 2)

    def test_known(self) -> None:
        """known() answers from kept verdicts only."""
        credentials = BasicCredentials("alice", "wonderland")
        self.assertIsNone(self.users.known(credentials))
        self.check("alice", "wonderland")
        self.assertTrue(self.users.known(credentials))

    def test_due_file_needs_a_check(self) -> None:
        """Kept verdicts answer at once only while the file needs no look."""
        credentials = BasicCredentials("alice", "wonderland")
        self.check("alice", "wonderland")
        self.assertTrue(self.users.known(credentials))
        self.clock.advance(CHECK_INTERVAL)
        self.assertIsNone(self.users.known(credentials))
        self.check("alice", "wonderland")
        self.assertTrue(self.users.known(credentials))

    def test_file_read_again_when_changed(self) -> None:
        """A password changed in the file holds from the next look at it on."""
        self.assertTrue(self.check("bob", "builder"))
        write_file(self.directory, "htpasswd", htpasswd_text({"alice": "wonderland",
                                                               "bob": "newpass"}))
        os.utime(self.path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        self.clock.advance(CHECK_INTERVAL)
        self.assertFalse(self.check("bob", "builder"))
        self.assertTrue(self.check("bob", "newpass"))

    def test_broken_file_keeps_last_good(self) -> None:
        """A file that becomes unusable keeps the users read before."""
        write_file(self.directory, "htpasswd", "alice:$apr1$weak\n")
        self.clock.advance(CHECK_INTERVAL)
        self.assertTrue(self.check("alice", "wonderland"))
        os.remove(self.path)
        self.clock.advance(CHECK_INTERVAL)
        self.assertTrue(self.check("bob", "builder"))

    def test_unchanged_file_not_parsed_again(self) -> None:
        """The file is looked at once a second, and parsed only when it changed."""
        self.check("alice", "wonderland")
        self.clock.advance(CHECK_INTERVAL)
        self.check("alice", "wonderland")
        self.assertEqual(self.runner.ran.count("read_htpasswd"), 0)
        self.assertEqual(self.runner.ran.count("_stamp"), 1)


RULES = """
[groups]
team = ["alice", "bob"]

[[rule]]
users = ["alice"]
packages = ["*"]

[[rule]]
groups = ["team"]
packages = ["shell", "hello", "python3*"]

[[rule]]
users = ["carol"]
packages = ["hello"]
pinned = true
"""


class RulesTests(SynchronousTestCase):
    """The rules file."""

    rules = parse_rules(RULES)

    def test_allowed(self) -> None:
        self.rules.check("alice", "anything/at/all", "latest")
        self.rules.check("bob", "shell/hello", "latest")
        self.rules.check("bob", "Python3Packages.pyyaml/hello", "latest")
        self.rules.check("carol", "hello", "a" * 40)
        self.rules.check("carol", "hello", None)

    def test_denied_package(self) -> None:
        """The message names the user and the first package kept from them."""
        with self.assertRaises(Denied) as raised:
            self.rules.check("bob", "shell/secret", "latest")
        self.assertEqual(raised.exception.message,
                         "user bob may not pull shell/secret: the rules allow bob no image"
                         " with package secret")
        self.assertEqual(raised.exception.status, 403)
        self.assertEqual(raised.exception.code, "DENIED")

    def test_pinned_only(self) -> None:
        with self.assertRaises(Denied) as raised:
            self.rules.check("carol", "hello", "latest")
        self.assertIn("only at a pinned revision", raised.exception.message)
        self.assertFalse(self.rules.allows_unpinned("carol", "hello"))
        self.assertTrue(self.rules.allows_unpinned("bob", "hello"))
        self.assertFalse(self.rules.allows_unpinned("bob", "secret"))

    def test_unknown_user(self) -> None:
        with self.assertRaises(Denied) as raised:
            self.rules.check("mallory", "hello", "latest")
        self.assertEqual(raised.exception.message,
                         "user mallory may pull no image from this registry")

    def test_everyone(self) -> None:
        """``*`` names every authenticated user."""
        rules = parse_rules('[[rule]]\nusers = ["*"]\npackages = ["hello"]\n')
        rules.check("anyone", "hello", "latest")
        self.assertFalse(rules.allows_name("anyone", "git"))
        self.assertTrue(rules.allows_name("anyone", "hello"))

    def test_errors(self) -> None:
        """Mistakes in the file are refused with what is wrong."""
        cases = {
            "[[rule]]\nusers = [\"a\"]\n": "packages",
            "[[rule]]\nusers = [\"a\"]\npackages = [\"x\"]\nextra = 1\n": "unknown key extra",
            "[[rule]]\ngroups = [\"nope\"]\npackages = [\"x\"]\n": "no group nope",
            "[[rule]]\npackages = [\"x\"]\n": "names no users",
            "[rules]\n": "unknown section rules",
            "[[rule]\n": "not TOML",
            "[[rule]]\nusers = [\"a\"]\npackages = [\"x\"]\npinned = \"yes\"\n": "pinned",
        }
        for text, expected in cases.items():
            with self.assertRaises(ValueError) as raised:
                parse_rules(text)
            self.assertIn(expected, str(raised.exception), text)


class TokenTests(SynchronousTestCase):
    """Signing and checking tokens."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.key = load_private_key(ec_key_pem())
        self.signer = TokenSigner(self.key, issuer="iss", service="svc", ttl=300,
                                  clock=self.clock)
        self.verifier = TokenVerifier([self.signer.public_key()], issuer="iss",
                                      service="svc", clock=self.clock)

    def test_round_trip(self) -> None:
        """A token's subject and access claim come back; ES256 for an EC key."""
        token, lifetime, issued = self.signer.issue("alice", [pull_scope("shell/git")])
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "ES256")
        claims = self.verifier.verify(token)
        self.assertEqual(claims.subject, "alice")
        self.assertTrue(granted(claims.access, "shell/git"))
        self.assertEqual((lifetime, issued), (300, 1_800_000_000))

    def test_rsa(self) -> None:
        """RS256 for an RSA key, checked through its public key's PEM."""
        pem = rsa_key_pem()
        signer = TokenSigner(load_private_key(pem), issuer="iss", service="svc", ttl=60,
                             clock=self.clock)
        token, _, _ = signer.issue("bob", [])
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "RS256")
        verifier = TokenVerifier(load_public_keys(public_pem(pem)), issuer="iss",
                                 service="svc", clock=self.clock)
        self.assertEqual(verifier.verify(token).subject, "bob")

    def test_expired(self) -> None:
        token, _, _ = self.signer.issue("alice", [])
        self.clock.advance(300 + 31)
        with self.assertRaises(InvalidToken) as raised:
            self.verifier.verify(token)
        self.assertEqual(str(raised.exception), "the token has expired")

    def test_other_service_issuer_key(self) -> None:
        token, _, _ = self.signer.issue("alice", [])
        for verifier, message in (
                (TokenVerifier([self.signer.public_key()], issuer="iss", service="other",
                               clock=self.clock), "another service"),
                (TokenVerifier([self.signer.public_key()], issuer="other", service="svc",
                               clock=self.clock), "another token service"),
                (TokenVerifier([load_private_key(ec_key_pem()).public_key()], issuer="iss",
                               service="svc", clock=self.clock), "signature")):
            with self.assertRaises(InvalidToken) as raised:
                verifier.verify(token)
            self.assertIn(message, str(raised.exception))

    def test_keys_of_both_kinds(self) -> None:
        """
        A verifier with an RSA and an EC key (its own and an external
        service's, or a rotation) checks the tokens of either, whichever
        key comes first.
        """
        rsa_signer = TokenSigner(load_private_key(rsa_key_pem()), issuer="iss",
                                 service="svc", ttl=60, clock=self.clock)
        keys = [rsa_signer.public_key(), self.signer.public_key()]
        for ordered in (keys, keys[::-1]):
            verifier = TokenVerifier(ordered, issuer="iss", service="svc", clock=self.clock)
            for signer in (rsa_signer, self.signer):
                token, _, _ = signer.issue("alice", [])
                self.assertEqual(verifier.verify(token).subject, "alice")

    def test_hs256_with_the_public_key(self) -> None:
        """A token signed HS256 with the public key's PEM as secret proves nothing."""
        public = self.signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
        payload = base64.urlsafe_b64encode(json.dumps(
            {"iss": "iss", "aud": "svc", "sub": "x", "exp": 2e9}).encode()).rstrip(b"=")
        signature = base64.urlsafe_b64encode(hmac.new(
            public, header + b"." + payload, hashlib.sha256).digest()).rstrip(b"=")
        with self.assertRaises(InvalidToken):
            self.verifier.verify((header + b"." + payload + b"." + signature).decode())

    def test_garbage_and_none_algorithm(self) -> None:
        """Garbage, and an unsigned token claiming alg none, prove nothing."""
        unsigned = jwt.encode({"iss": "iss", "aud": "svc", "sub": "x", "exp": 2e9},
                              "", algorithm="none")
        for token in ("garbage", unsigned):
            with self.assertRaises(InvalidToken):
                self.verifier.verify(token)

    def test_keys(self) -> None:
        """Weak or unknown keys are refused when loaded."""
        small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        pem = small.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
        with self.assertRaises(ValueError):
            load_private_key(pem)
        with self.assertRaises(ValueError):
            load_public_keys(b"no pem here")


class WatchedFileTests(SynchronousTestCase):
    """A file read again when it changes."""

    def test_shared_look(self) -> None:
        """Callers at the same moment share one look at the file."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_file(directory, "f", "one")
        clock = Clock()
        runner = CountingRunner()
        watched: WatchedFile[str] = WatchedFile(
            path, lambda p: open(p).read(), runner=runner, clock=clock, what="file")
        self.assertEqual(watched.load_now(), "one")
        write_file(directory, "f", "two!")
        clock.advance(CHECK_INTERVAL)
        first = Deferred.fromCoroutine(watched.current())
        second = Deferred.fromCoroutine(watched.current())
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)),
                         ("two!", "two!"))
        self.assertEqual(runner.ran.count("_stamp"), 1)


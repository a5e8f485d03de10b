"""
Tests of ``/v2`` and ``/token`` with authentication on, over the fake
image service: challenges, 401s and 403s as registry JSON errors, tokens
of the own endpoint and of an external service, and content by digest
only under a name whose image refers to it.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Optional

import treq
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from nixeryd.app.privateconfig import PrivateConfig
from nixeryd.auth.assemble import Auth, AuthSetupFailed, make_auth
from nixeryd.auth.scopes import pull_scope
from nixeryd.auth.tokens import TokenSigner, load_private_key
from nixeryd.build.manifest import build_index
from nixeryd.build.platforms import AMD64, ARM64
from nixeryd.core.documents import Image
from nixeryd.core.threads import InlineRunner
from nixeryd.registry.site import RootResource
from nixeryd.service.builds import BuildHistory
from nixeryd.testing.images import FakeImageService, write_sample_image
from tests.authfixtures import USERS, ec_key_pem, htpasswd_text, public_pem, write_file
from tests.registrycases import BASE, header, make_directory

RULES = """
[[rule]]
users = ["alice"]
packages = ["*"]

[[rule]]
users = ["bob"]
packages = ["hello"]
"""


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(("%s:%s" % (user, password)).encode())


@implementer(IBodyProducer)
class FormBody:
    """A request body written at once (no cooperator: the test has no reactor)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class AuthRegistryTestCase(SynchronousTestCase):
    """An in-memory registry with authentication, over two images."""

    def setUp(self) -> None:
        self.directory = make_directory(self)
        self.images = FakeImageService()
        self.hello = write_sample_image(make_directory(self), {"bin/hello": b"hello\n"})
        self.secret = write_sample_image(make_directory(self), {"bin/secret": b"s3cret\n"})
        self.images.add_sample_image("hello", "latest", self.hello)
        self.images.add_sample_image("secret", "latest", self.secret)
        self.images.tag_lists = {"hello": ["latest"], "secret": ["latest"]}
        self.htpasswd = write_file(self.directory, "htpasswd", htpasswd_text(USERS))
        self.rules = write_file(self.directory, "rules.toml", RULES)
        self.key_pem = ec_key_pem()
        self.token_key = write_file(self.directory, "token.key", self.key_pem)
        self.clock = Clock()
        self.clock.advance(1_800_000_000)

    def serve(self, config: PrivateConfig) -> Auth:
        auth = make_auth(config, self.images, runner=InlineRunner(), clock=self.clock)
        assert auth is not None
        self.agent = RequestTraversalAgent(RootResource(self.images, auth=auth))
        return auth

    def fetch(self, method: bytes, path: str, authorization: Optional[bytes] = None,
              body: Optional[bytes] = None) -> tuple[IResponse, bytes]:
        headers = Headers({})
        if authorization is not None:
            headers.addRawHeader(b"authorization", authorization)
        if body is not None:
            headers.addRawHeader(b"content-type", b"application/x-www-form-urlencoded")
        producer = FormBody(body) if body is not None else None
        d = self.agent.request(method, (BASE + path).encode(), headers, producer)
        self.agent.flush()
        response = self.successResultOf(d)
        content = treq.content(response)
        self.agent.flush()
        return response, self.successResultOf(content)

    def error(self, response: IResponse, body: bytes, status: int, code: str) -> dict[str, Any]:
        self.assertEqual(response.code, status, body)
        self.assertEqual(header(response, b"content-type"), b"application/json")
        [error] = json.loads(body)["errors"]
        self.assertEqual(error["code"], code)
        assert isinstance(error, dict)
        return error

    def no_secret_in(self, *texts: bytes) -> None:
        for text in texts:
            for secret in USERS.values():
                self.assertNotIn(secret.encode(), text)


class BasicTests(AuthRegistryTestCase):
    """``--htpasswd``: HTTP Basic."""

    def setUp(self) -> None:
        super().setUp()
        self.serve(PrivateConfig(htpasswd=self.htpasswd, rules=self.rules))

    def test_ping_challenge(self) -> None:
        """/v2/ without credentials: 401 UNAUTHORIZED with the Basic challenge."""
        response, body = self.fetch(b"GET", "/v2/")
        error = self.error(response, body, 401, "UNAUTHORIZED")
        self.assertEqual(header(response, b"www-authenticate"),
                         b'Basic realm="nixeryd", charset="UTF-8"')
        self.assertIn("authentication required", error["message"])
        self.assertEqual(header(response, b"docker-distribution-api-version"),
                         b"registry/2.0")

    def test_head_ping_challenge(self) -> None:
        """HEAD /v2/ gets the same status and challenge."""
        response, body = self.fetch(b"HEAD", "/v2/")
        self.assertEqual((response.code, body), (401, b""))
        self.assertIsNotNone(header(response, b"www-authenticate"))

    def test_wrong_password(self) -> None:
        response, body = self.fetch(b"GET", "/v2/hello/manifests/latest",
                                    basic("alice", "nope"))
        error = self.error(response, body, 401, "UNAUTHORIZED")
        self.assertEqual(error["message"], "wrong user name or password")
        self.assertEqual(self.images.calls, [])
        self.no_secret_in(body)

    def test_pull(self) -> None:
        """The right password: ping, manifest and blobs, the same as anonymous."""
        credentials = basic("bob", "builder")
        self.assertEqual(self.fetch(b"GET", "/v2/", credentials)[0].code, 200)
        response, body = self.fetch(b"GET", "/v2/hello/manifests/latest", credentials)
        self.assertEqual(response.code, 200)
        for blob in self.hello.blobs:
            response, body = self.fetch(b"GET", "/v2/hello/blobs/" + blob.digest, credentials)
            self.assertEqual(response.code, 200)

    def test_cold_work_counts_against_the_user(self) -> None:
        self.fetch(b"GET", "/v2/hello/manifests/latest", basic("bob", "builder"))
        self.assertEqual(self.images.clients, ["user:bob"])

    def test_denied(self) -> None:
        """A name the rules keep from the user: 403 DENIED naming the package."""
        response, body = self.fetch(b"GET", "/v2/secret/manifests/latest",
                                    basic("bob", "builder"))
        error = self.error(response, body, 403, "DENIED")
        self.assertEqual(error["message"], "user bob may not pull secret: the rules allow"
                         " bob no image with package secret")
        self.assertNotIn(("image", "secret", "latest"), self.images.calls)

    def test_warm_answer_still_checks_rules(self) -> None:
        """Kept verdicts answer at once, and the rules still apply."""
        self.images.warm = {("hello", "latest"), ("secret", "latest")}
        credentials = basic("bob", "builder")
        self.assertEqual(self.fetch(b"GET", "/v2/hello/manifests/latest", credentials)[0].code,
                         200)
        response, body = self.fetch(b"GET", "/v2/secret/manifests/latest", credentials)
        self.error(response, body, 403, "DENIED")

    def test_blob_of_another_name(self) -> None:
        """A denied image's layer is not served under an allowed name."""
        layer = self.secret.blobs[1].digest
        response, body = self.fetch(b"GET", "/v2/hello/blobs/" + layer,
                                    basic("bob", "builder"))
        error = self.error(response, body, 404, "BLOB_UNKNOWN")
        self.assertEqual(error["message"], "blob unknown to repository hello")
        self.assertNotIn(("blob", layer), self.images.calls)

    def test_manifest_by_digest_of_another_name(self) -> None:
        digest = self.secret.image.docker.digest
        response, body = self.fetch(b"GET", "/v2/hello/manifests/" + digest,
                                    basic("alice", "wonderland"))
        self.error(response, body, 404, "MANIFEST_UNKNOWN")
        response, body = self.fetch(b"GET", "/v2/secret/manifests/" + digest,
                                    basic("alice", "wonderland"))
        self.assertEqual(response.code, 200)

    def test_index_of_platforms(self) -> None:
        """Under a name whose image is an index: the index, each platform's manifests and layers."""
        arm = write_sample_image(make_directory(self), {"bin/hello": b"arm hello\n"})
        index = build_index([(AMD64, self.hello.image), (ARM64, arm.image)])
        self.images.add_image("hello", "latest",
                              Image(self.hello.image.docker, self.hello.image.oci, index))
        for document in (index.docker, index.oci, arm.image.docker, arm.image.oci):
            self.images.manifests[document.digest] = document
        for blob in arm.blobs:
            self.images.blobs[blob.digest] = blob
        bob = basic("bob", "builder")
        for kind, digest in (("manifests", index.oci.digest), ("manifests", index.docker.digest),
                             ("manifests", arm.image.oci.digest), ("blobs", arm.blobs[1].digest)):
            response, body = self.fetch(b"GET", "/v2/hello/%s/%s" % (kind, digest), bob)
            self.assertEqual(response.code, 200, (kind, digest, body))
        response, body = self.fetch(b"GET", "/v2/secret/blobs/" + arm.blobs[1].digest,
                                    basic("alice", "wonderland"))
        self.error(response, body, 404, "BLOB_UNKNOWN")

    def test_cold_membership_resolves_the_name(self) -> None:
        """With nothing in memory, the name is resolved at its tags to find the digest."""
        digest = self.hello.image.oci.digest
        response, _ = self.fetch(b"GET", "/v2/hello/manifests/" + digest,
                                 basic("bob", "builder"))
        self.assertEqual(response.code, 200)
        self.assertIn(("image", "hello", "latest"), self.images.calls)

    def test_no_token_endpoint(self) -> None:
        """Basic mode serves no /token."""
        self.assertEqual(self.fetch(b"GET", "/token")[0].code, 404)


#: RULES, with bob's rule for pinned revisions only.
PINNED_RULES = RULES + "pinned = true\n"

#: A pinned revision of the package source, as a tag.
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class PinnedTests(AuthRegistryTestCase):
    """A user the rules allow a name only at pinned revisions, by tag and by digest."""

    def setUp(self) -> None:
        super().setUp()
        self.pinned = write_sample_image(make_directory(self), {"bin/hello": b"pinned\n"})
        self.images.add_sample_image("hello", COMMIT, self.pinned)
        self.images.tag_lists = {"hello": ["latest", COMMIT]}
        write_file(self.directory, "rules.toml", PINNED_RULES)
        self.serve(PrivateConfig(htpasswd=self.htpasswd, rules=self.rules))
        self.bob = basic("bob", "builder")

    def unpinned_only(self) -> list[tuple[str, str]]:
        """What only ``hello:latest`` refers to: its manifests, config and layers."""
        pinned = {blob.digest for blob in self.pinned.blobs}
        return ([("manifests", self.hello.image.docker.digest),
                 ("manifests", self.hello.image.oci.digest)]
                + [("blobs", blob.digest) for blob in self.hello.blobs
                   if blob.digest not in pinned])

    def test_by_tag(self) -> None:
        response, body = self.fetch(b"GET", "/v2/hello/manifests/latest", self.bob)
        self.error(response, body, 403, "DENIED")
        response, body = self.fetch(b"GET", "/v2/hello/manifests/" + COMMIT, self.bob)
        self.assertEqual(response.code, 200, body)

    def test_by_digest_only_what_pinned_tags_refer_to(self) -> None:
        """
        The content of ``latest`` is not served by digest to who may not
        pull ``latest``, even once another user's pull made it known; the
        pinned image's is.
        """
        alice = basic("alice", "wonderland")
        for kind, digest in self.unpinned_only():
            response, body = self.fetch(b"GET", "/v2/hello/%s/%s" % (kind, digest), alice)
            self.assertEqual(response.code, 200, body)
        for kind, digest in self.unpinned_only():
            response, body = self.fetch(b"GET", "/v2/hello/%s/%s" % (kind, digest), self.bob)
            self.error(response, body, 404,
                       "BLOB_UNKNOWN" if kind == "blobs" else "MANIFEST_UNKNOWN")
        for kind, digest in ([("manifests", self.pinned.image.oci.digest)]
                             + [("blobs", blob.digest) for blob in self.pinned.blobs]):
            response, body = self.fetch(b"GET", "/v2/hello/%s/%s" % (kind, digest), self.bob)
            self.assertEqual(response.code, 200, body)


class TokenTests(AuthRegistryTestCase):
    """``--token-key``: nixeryd's own token endpoint and bearer tokens."""

    def setUp(self) -> None:
        super().setUp()
        self.serve(PrivateConfig(htpasswd=self.htpasswd, rules=self.rules,
                                 token_key=self.token_key, token_ttl=300))

    ttl = 300

    def token(self, user: str, password: str, *scopes: str) -> str:
        query = "&".join("scope=" + s for s in scopes)
        response, body = self.fetch(b"GET", "/token?service=nixeryd&" + query,
                                    basic(user, password))
        self.assertEqual(response.code, 200, body)
        self.assertEqual(header(response, b"cache-control"), b"no-store")
        document = json.loads(body)
        self.assertEqual(document["token"], document["access_token"])
        self.assertEqual(document["expires_in"], self.ttl)
        token: str = document["token"]
        return token

    def test_challenge(self) -> None:
        """/v2/ and a manifest: Bearer challenges, the latter with its scope."""
        response, body = self.fetch(b"GET", "/v2/")
        self.error(response, body, 401, "UNAUTHORIZED")
        self.assertEqual(header(response, b"www-authenticate"),
                         b'Bearer realm="http://registry.test/token",service="nixeryd"')
        response, body = self.fetch(b"GET", "/v2/hello/manifests/latest")
        self.assertEqual(header(response, b"www-authenticate"),
                         b'Bearer realm="http://registry.test/token",service="nixeryd",'
                         b'scope="repository:hello:pull"')

    def test_pull_with_token(self) -> None:
        token = self.token("bob", "builder", "repository:hello:pull").encode()
        response, _ = self.fetch(b"GET", "/v2/hello/manifests/latest", b"Bearer " + token)
        self.assertEqual(response.code, 200)
        blob = self.hello.blobs[0].digest
        self.assertEqual(self.fetch(b"GET", "/v2/hello/blobs/" + blob,
                                    b"Bearer " + token)[0].code, 200)

    def test_wrong_password(self) -> None:
        response, body = self.fetch(b"GET", "/token?scope=repository:hello:pull",
                                    basic("bob", "nope"))
        self.error(response, body, 401, "UNAUTHORIZED")
        self.assertEqual(header(response, b"www-authenticate"),
                         b'Basic realm="nixeryd", charset="UTF-8"')

    def test_post_password_grant(self) -> None:
        """containerd's form: grant_type=password."""
        response, body = self.fetch(
            b"POST", "/token", body=b"grant_type=password&username=bob&password=builder"
            b"&service=nixeryd&scope=repository%3Ahello%3Apull&client_id=containerd")
        self.assertEqual(response.code, 200, body)
        token = json.loads(body)["access_token"].encode()
        self.assertEqual(self.fetch(b"GET", "/v2/hello/manifests/latest",
                                    b"Bearer " + token)[0].code, 200)
        response, body = self.fetch(
            b"POST", "/token", body=b"grant_type=password&username=bob&password=x")
        self.error(response, body, 401, "UNAUTHORIZED")
        response, body = self.fetch(b"POST", "/token", body=b"grant_type=refresh_token")
        self.error(response, body, 400, "UNSUPPORTED")

    def test_other_service(self) -> None:
        response, body = self.fetch(b"GET", "/token?service=elsewhere", basic("bob", "builder"))
        error = self.error(response, body, 400, "UNSUPPORTED")
        self.assertIn("issues tokens for nixeryd", error["message"])

    def test_token_for_another_scope(self) -> None:
        """A token for one name does not pull another: 401 insufficient_scope."""
        token = self.token("alice", "wonderland", "repository:hello:pull").encode()
        response, body = self.fetch(b"GET", "/v2/secret/manifests/latest", b"Bearer " + token)
        error = self.error(response, body, 401, "UNAUTHORIZED")
        self.assertEqual(error["message"], "the token does not grant pull of secret: ask for"
                         " scope repository:secret:pull")
        self.assertEqual(header(response, b"www-authenticate"),
                         b'Bearer realm="http://registry.test/token",service="nixeryd",'
                         b'scope="repository:secret:pull",error="insufficient_scope"')

    def test_denied_user_gets_no_scope_and_a_403(self) -> None:
        """The token leaves out what the rules deny; using it says why (403)."""
        token = self.token("bob", "builder", "repository:secret:pull")
        from jwt import decode
        self.assertEqual(decode(token, options={"verify_signature": False})["access"], [])
        response, body = self.fetch(b"GET", "/v2/secret/manifests/latest",
                                    b"Bearer " + token.encode())
        error = self.error(response, body, 403, "DENIED")
        self.assertIn("user bob may not pull secret", error["message"])

    def test_expired(self) -> None:
        token = self.token("bob", "builder", "repository:hello:pull").encode()
        self.clock.advance(300 + 31)
        response, body = self.fetch(b"GET", "/v2/hello/manifests/latest", b"Bearer " + token)
        error = self.error(response, body, 401, "UNAUTHORIZED")
        self.assertEqual(error["message"], "the token has expired")
        self.assertEqual(header(response, b"www-authenticate"),
                         b'Bearer realm="http://registry.test/token",service="nixeryd",'
                         b'scope="repository:hello:pull",error="invalid_token"')

    def test_kept_verdict_expires_with_the_token(self) -> None:
        """A token verdict kept in memory ends when the token does."""
        self.serve(PrivateConfig(htpasswd=self.htpasswd, token_key=self.token_key,
                                 token_ttl=5))
        self.ttl = 5
        token = self.token("bob", "builder", "repository:hello:pull").encode()
        self.images.warm = {("hello", "latest")}
        self.assertEqual(self.fetch(b"GET", "/v2/hello/manifests/latest",
                                    b"Bearer " + token)[0].code, 200)
        self.clock.advance(5 + 31)
        self.assertEqual(self.fetch(b"GET", "/v2/hello/manifests/latest",
                                    b"Bearer " + token)[0].code, 401)

    def test_basic_is_no_token(self) -> None:
        response, body = self.fetch(b"GET", "/v2/hello/manifests/latest",
                                    basic("bob", "builder"))
        self.error(response, body, 401, "UNAUTHORIZED")


class ExternalTokenTests(AuthRegistryTestCase):
    """``--token-public-key``: tokens of an external token service."""

    def setUp(self) -> None:
        super().setUp()
        public = write_file(self.directory, "service.pub", public_pem(self.key_pem))
        self.serve(PrivateConfig(token_public_key=public, token_realm="https://auth.test/t",
                                 token_service="registry", token_issuer="auth.test"))
        self.signer = TokenSigner(load_private_key(self.key_pem), issuer="auth.test",
                                  service="registry", ttl=60, clock=self.clock)

    def test_challenge_names_the_service(self) -> None:
        response, _ = self.fetch(b"GET", "/v2/hello/manifests/latest")
        self.assertEqual(header(response, b"www-authenticate"),
                         b'Bearer realm="https://auth.test/t",service="registry",'
                         b'scope="repository:hello:pull"')
        self.assertEqual(self.fetch(b"GET", "/token")[0].code, 404)

    def test_token_accepted(self) -> None:
        token, _, _ = self.signer.issue("carol", [pull_scope("hello")])
        response, _ = self.fetch(b"GET", "/v2/hello/manifests/latest",
                                 b"Bearer " + token.encode())
        self.assertEqual(response.code, 200)

    def test_foreign_issuer(self) -> None:
        other = TokenSigner(load_private_key(self.key_pem), issuer="elsewhere",
                            service="registry", ttl=60, clock=self.clock)
        token, _, _ = other.issue("carol", [pull_scope("hello")])
        response, body = self.fetch(b"GET", "/v2/hello/manifests/latest",
                                    b"Bearer " + token.encode())
        error = self.error(response, body, 401, "UNAUTHORIZED")
        self.assertIn("another token service", error["message"])


class SetupTests(AuthRegistryTestCase):
    """Files that cannot be used stop the start with what is wrong."""

    def test_missing_files(self) -> None:
        for config, expected in (
                (PrivateConfig(htpasswd=self.directory + "/none"), "No such file"),
                (PrivateConfig(htpasswd=self.htpasswd, rules=self.htpasswd), "not TOML"),
                (PrivateConfig(htpasswd=self.htpasswd, token_key=self.htpasswd),
                 "token key"),
                (PrivateConfig(token_public_key=self.htpasswd, token_realm="x"),
                 "no PEM public key")):
            with self.assertRaises(AuthSetupFailed) as raised:
                make_auth(config, self.images, runner=InlineRunner(), clock=self.clock)
            self.assertIn(expected, str(raised.exception))

    def test_off(self) -> None:
        self.assertIsNone(make_auth(PrivateConfig(), self.images, runner=InlineRunner(),
                                    clock=self.clock))


class PagesTests(AuthRegistryTestCase):
    """The pages of a private instance, for its users only."""

    def setUp(self) -> None:
        super().setUp()
        self.history = BuildHistory(self.clock)
        self.hello_build = self.history.start(
            image="hello", tag="latest", packages=("hello",), system="x86_64-linux",
            source="path /srv/pkgs", revision=None)
        self.secret_build = self.history.start(
            image="secret", tag="latest", packages=("secret",), system="x86_64-linux",
            source="path /srv/pkgs", revision=None)

    def serve_pages(self, config: PrivateConfig) -> None:
        auth = make_auth(config, self.images, runner=InlineRunner(), clock=self.clock)
        self.agent = RequestTraversalAgent(RootResource(
            self.images, auth=auth, builds=self.history, source="path /srv/pkgs",
            clock=self.clock))

    def test_log_in_asked(self) -> None:
        """Without credentials, or with wrong ones, a 401 with the Basic challenge."""
        self.serve_pages(PrivateConfig(htpasswd=self.htpasswd, rules=self.rules))
        for path in ("/", "/builds/" + self.hello_build.id):
            for authorization in (None, basic("bob", "nope")):
                response, body = self.fetch(b"GET", path, authorization)
                self.assertEqual(response.code, 401, path)
                self.assertEqual(header(response, b"www-authenticate"),
                                 b'Basic realm="nixeryd", charset="UTF-8"')
                self.assertNotIn(b"secret", body)

    def test_index_lists_builds_to_who_sees_every_one(self) -> None:
        self.serve_pages(PrivateConfig(htpasswd=self.htpasswd, rules=self.rules))
        response, body = self.fetch(b"GET", "/", basic("alice", "wonderland"))
        self.assertEqual(response.code, 200)
        self.assertIn(self.secret_build.id.encode(), body)
        response, body = self.fetch(b"GET", "/", basic("bob", "builder"))
        self.assertEqual(response.code, 200)
        self.assertNotIn(self.secret_build.id.encode(), body)
        self.assertNotIn(self.hello_build.id.encode(), body)

    def test_build_page_for_who_may_pull_its_image(self) -> None:
        self.serve_pages(PrivateConfig(htpasswd=self.htpasswd, rules=self.rules))
        bob = basic("bob", "builder")
        self.assertEqual(self.fetch(b"GET", "/builds/" + self.hello_build.id, bob)[0].code,
                         200)
        for path in ("", "/log", "/events"):
            response, body = self.fetch(b"GET", "/builds/" + self.secret_build.id + path, bob)
            self.assertEqual(response.code, 403, path)
            self.assertIn(b"user bob may not pull secret", body)
        self.assertEqual(self.fetch(b"GET", "/builds/" + self.secret_build.id + "/log",
                                    basic("alice", "wonderland"))[0].code, 200)

    def test_without_rules_every_user_sees_everything(self) -> None:
        self.serve_pages(PrivateConfig(htpasswd=self.htpasswd))
        response, body = self.fetch(b"GET", "/", basic("bob", "builder"))
        self.assertIn(self.secret_build.id.encode(), body)

    def test_no_users_of_its_own(self) -> None:
        """Tokens of an external service only: the pages are closed."""
        public = write_file(self.directory, "service.pub", public_pem(self.key_pem))
        self.serve_pages(PrivateConfig(token_public_key=public, token_realm="https://a/t"))
        response, body = self.fetch(b"GET", "/")
        self.assertEqual(response.code, 403)
        self.assertNotIn(self.secret_build.id.encode(), body)

    def test_anonymous_instance_pages_open(self) -> None:
        self.agent = RequestTraversalAgent(RootResource(
            self.images, builds=self.history, source="path /srv/pkgs", clock=self.clock))
        response, body = self.fetch(b"GET", "/")
        self.assertEqual(response.code, 200)
        self.assertIn(self.secret_build.id.encode(), body)

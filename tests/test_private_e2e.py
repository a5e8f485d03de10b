"""
End-to-end tests of private instances: a real daemon serving TLS from a
certificate of a self-made CA (made with the README's ``openssl``
commands), users of a real ``htpasswd -B`` file and a rules file, pulled
from with skopeo (``--creds``, ``--registry-token``), ``podman login``
then ``podman pull``, and containerd's ``ctr images pull --user``,
through HTTP Basic and through the token flow (nixeryd's own ``/token``,
and a second nixeryd as an external token service).  Wrong passwords,
expired tokens, tokens for another scope and denied images each give the
status and the message the client prints.  Afterwards, the daemons' logs
and pages hold none of the secrets used.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import ssl
import time
from typing import Iterable

import jwt
from cryptography.hazmat.primitives import serialization

from tests.daemon import Daemon
from tests.daemoncases import DaemonTestCase, podman_command
from tests.e2e import PACKAGE_SET, require_tools, run

#: Users and passwords of the htpasswd file.
USERS = {"alice": "Wonderland-7f3a", "bob": "Builder-91c2"}

RULES = """\
[[rule]]
users = ["alice"]
packages = ["*"]

[[rule]]
users = ["bob"]
packages = ["hello", "shell"]
"""


def make_ca(directory: str, name: str = "ca") -> tuple[str, str]:
    """A self-made CA, as the README makes it: its certificate and key."""
    cert, key = (os.path.join(directory, name + ".crt"), os.path.join(directory, name + ".key"))
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "3650", "-subj", "/CN=nixeryd test CA " + name,
         "-keyout", key, "-out", cert])
    return cert, key


def make_server_cert(directory: str, ca: tuple[str, str], name: str = "server"
                     ) -> tuple[str, str]:
    """A certificate for localhost and 127.0.0.1 signed by ``ca``: its file and key."""
    cert, key = (os.path.join(directory, name + ".crt"), os.path.join(directory, name + ".key"))
    csr, ext = os.path.join(directory, name + ".csr"), os.path.join(directory, name + ".ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-subj", "/CN=localhost", "-keyout", key, "-out", csr])
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1],
         "-CAcreateserial", "-days", "825", "-extfile", ext, "-out", cert])
    return cert, key


class PrivateTestCase(DaemonTestCase):
    """Certificates, users, rules and a token key for a private daemon."""

    def setUp(self) -> None:
        self.tools = require_tools("openssl", "htpasswd", "skopeo")
        self.files = os.path.abspath(self.mktemp())
        os.makedirs(self.files)
        self.ca = make_ca(self.files)
        self.cert, self.key = make_server_cert(self.files, self.ca)
        # skopeo's and podman's --cert-dir: the CA as <dir>/ca.crt.
        self.cert_dir = os.path.join(self.files, "certs.d")
        os.makedirs(self.cert_dir)
        shutil.copy(self.ca[0], os.path.join(self.cert_dir, "ca.crt"))
        self.htpasswd = os.path.join(self.files, "htpasswd")
        for index, (user, password) in enumerate(USERS.items()):
            run(["htpasswd", "-B", "-b"] + (["-c"] if index == 0 else [])
                + [self.htpasswd, user, password])
        self.rules = os.path.join(self.files, "rules.toml")
        with open(self.rules, "w") as f:
            f.write(RULES)
        self.token_key = os.path.join(self.files, "token.key")
        run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", self.token_key])
        #: Every token seen in these tests, to look for in the logs.
        self.tokens: list[str] = []
        #: What the clients printed, kept with the test's files.
        self.transcript = open(os.path.join(self.files, "clients.txt"), "w")
        self.addCleanup(self.transcript.close)

    def serve(self, *args: str) -> Daemon:
        return self.daemon("--pkgs-path", PACKAGE_SET, "--tls-cert", self.cert,
                           "--tls-key", self.key, *args, tls_ca=self.ca[0])

    def client(self, argv: list[str], ok: bool = True) -> str:
        """Run a client; its output (stdout and stderr), which must say it failed unless ``ok``."""
        result = run(argv, check=ok)
        output = result.stdout + result.stderr
        self.transcript.write("$ %s\n%s\n" % (" ".join(argv), output))
        if not ok:
            self.assertNotEqual(result.returncode, 0, output)
        return output

    def skopeo(self, registry: Daemon, name: str, *options: str, ok: bool = True) -> str:
        return self.client([self.tools["skopeo"], "inspect", "--cert-dir", self.cert_dir,
                            *options, "docker://%s/%s" % (registry.address, name)], ok)

    def podman_login_pull(self, registry: Daemon) -> None:
        """podman login with a wrong, then the right password; pull allowed and denied."""
        tools = require_tools("podman")
        state = self.short_directory()
        podman = podman_command(tools["podman"], state)
        auth = ["--authfile", os.path.join(state, "auth.json"), "--cert-dir", self.cert_dir]
        wrong = self.client(podman + ["login", *auth, "-u", "bob", "-p", "wrong",
                                      registry.address], ok=False)
        self.assertIn("invalid username/password", wrong)
        self.client(podman + ["login", *auth, "-u", "bob", "-p", USERS["bob"],
                              registry.address])
        self.client(podman + ["pull", *auth, registry.address + "/hello"])
        denied = self.client(podman + ["pull", *auth,
                                       registry.address + "/multi"], ok=False)
        self.assertIn("denied: user bob may not pull multi: the rules allow bob no image"
                      " with package multi", denied)
        run(podman + ["rmi", "--all", "--force"], check=False)

    def ctr_pull(self, registry: Daemon) -> None:
        """containerd pulls with --user; a wrong password and a denied image fail."""
        tools = require_tools("containerd", "ctr")
        socket_path = self.containerd()
        # containerd's own trust, as the README sets it: a hosts.toml for
        # the registry's host:port naming the CA (and HTTPS, which it
        # does not assume for localhost).
        hosts = os.path.join(self.short_directory(), "certs.d")
        os.makedirs(os.path.join(hosts, registry.address))
        with open(os.path.join(hosts, registry.address, "hosts.toml"), "w") as f:
            f.write('server = "https://%s"\n\n[host."https://%s"]\n  ca = "%s"\n'
                    % (registry.address, registry.address, self.ca[0]))
        ctr = [tools["ctr"], "--address", socket_path, "images", "pull",
               "--hosts-dir", hosts]
        pulled = self.client(ctr + ["--user", "bob:" + USERS["bob"],
                                    registry.address + "/hello:latest"])
        self.assertIn("done", pulled)
        wrong = self.client(ctr + ["--user", "bob:wrong", registry.address + "/shell/hello:latest"],
                            ok=False)
        self.assertIn("401 Unauthorized", wrong)
        denied = self.client(ctr + ["--user", "bob:" + USERS["bob"],
                                    registry.address + "/multi:latest"], ok=False)
        self.assertIn("403 Forbidden", denied)

    def assert_no_secrets(self, *registries: Daemon, more: Iterable[str] = ()) -> None:
        """No password, token or Authorization value in the logs or on the pages."""
        secrets = list(USERS.values()) + self.tokens + list(more)
        for user, password in USERS.items():
            secrets.append(base64.b64encode(("%s:%s" % (user, password)).encode()).decode())
        # The pages as alice, whom the rules allow everything, sees them.
        alice = {"Authorization": "Basic " + base64.b64encode(
            ("alice:" + USERS["alice"]).encode()).decode()}
        for registry in registries:
            texts = {"log": registry.log_text()}
            status, _, page = registry.request("/", headers=alice)
            texts["/"] = page.decode()
            for build in set(e["build"] for e in registry.events() if e.get("build")):
                for path in ("/builds/" + build, "/builds/%s/log" % (build,)):
                    status, _, page = registry.request(path, headers=alice)
                    self.assertIn(status, (200, 403), path)
                    texts[path] = page.decode()
            for where, text in texts.items():
                for secret in secrets:
                    self.assertNotIn(secret, text, "a secret in %s" % (where,))
                self.assertNotIn("Authorization", text, where)
                self.assertNotIn("Bearer ey", text, where)


class BasicEndToEnd(PrivateTestCase):
    """HTTP Basic over TLS."""

    def test_clients(self) -> None:
        registry = self.serve("--htpasswd", self.htpasswd, "--auth-rules", self.rules)
        # The ping is a 401 with the Basic challenge.
        status, headers, body = registry.request("/v2/")
        self.assertEqual(status, 401)
        self.assertEqual(headers["www-authenticate"], 'Basic realm="nixeryd", charset="UTF-8"')
        self.assertEqual(json.loads(body)["errors"][0]["code"], "UNAUTHORIZED")
        # skopeo: right and wrong passwords, a denied image, and no trust without the CA.
        self.assertIn('"Name": "%s/hello"' % (registry.address,),
                      self.skopeo(registry, "hello", "--creds", "bob:" + USERS["bob"]))
        self.assertIn("unauthorized: wrong user name or password",
                      self.skopeo(registry, "hello", "--creds", "bob:wrong", ok=False))
        self.assertIn("unauthorized: authentication required",
                      self.skopeo(registry, "hello", ok=False))
        self.assertIn("denied: user bob may not pull multi",
                      self.skopeo(registry, "multi", "--creds", "bob:" + USERS["bob"],
                                  ok=False))
        untrusted = self.client([self.tools["skopeo"], "inspect", "--creds",
                                 "bob:" + USERS["bob"],
                                 "docker://%s/hello" % (registry.address,)], ok=False)
        self.assertIn("certificate signed by unknown authority", untrusted)
        # skopeo copies the whole image: every blob under its own name.
        oci = os.path.join(self.files, "oci")
        self.client([self.tools["skopeo"], "copy", "--src-cert-dir", self.cert_dir,
                     "--src-creds", "alice:" + USERS["alice"],
                     "docker://%s/multi" % (registry.address,), "oci:%s:multi" % (oci,)])
        self.podman_login_pull(registry)
        self.ctr_pull(registry)
        self.assert_no_secrets(registry)

    def test_blob_of_a_denied_image_under_an_allowed_name(self) -> None:
        """A layer of multi is not served to bob under hello, whose images do not name it."""
        registry = self.serve("--htpasswd", self.htpasswd, "--auth-rules", self.rules)
        alice = {"Authorization": "Basic " + base64.b64encode(
            ("alice:" + USERS["alice"]).encode()).decode()}
        bob = {"Authorization": "Basic " + base64.b64encode(
            ("bob:" + USERS["bob"]).encode()).decode()}
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        status, _, body = registry.request("/v2/multi/manifests/latest",
                                           headers={**alice, **accept})
        self.assertEqual(status, 200)
        layers = [layer["digest"] for layer in json.loads(body)["layers"]]
        status, _, hello = registry.request("/v2/hello/manifests/latest",
                                            headers={**bob, **accept})
        self.assertEqual(status, 200)
        own = {layer["digest"] for layer in json.loads(hello)["layers"]}
        foreign = [digest for digest in layers if digest not in own]
        self.assertTrue(foreign)
        status, _, body = registry.request("/v2/hello/blobs/" + foreign[0], headers=bob)
        self.assertEqual(status, 404)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "BLOB_UNKNOWN")
        status, _, _ = registry.request("/v2/multi/blobs/" + foreign[0], headers=bob)
        self.assertEqual(status, 403)
        status, _, _ = registry.request("/v2/hello/blobs/" + sorted(own)[0], headers=bob)
        self.assertEqual(status, 200)

    def test_certificate_reloaded_on_sighup(self) -> None:
        """SIGHUP serves a new certificate to new connections; an open one goes on."""
        registry = self.serve("--htpasswd", self.htpasswd)
        context = ssl.create_default_context(cafile=self.ca[0])
        kept = http.client.HTTPSConnection("localhost", registry.port, context=context,
                                           timeout=30)
        kept.request("GET", "/healthz")
        self.assertEqual(kept.getresponse().read(), b"ok\n")
        second_ca = make_ca(self.files, "second")
        new_cert, new_key = make_server_cert(self.files, second_ca, "renewed")
        shutil.copy(new_cert, self.cert)
        shutil.copy(new_key, self.key)
        assert registry.process is not None
        registry.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while not registry.events_with(event="tls-reloaded"):
            self.assertLess(time.monotonic(), deadline, registry.log_text())
            time.sleep(0.1)
        kept.request("GET", "/healthz")
        self.assertEqual(kept.getresponse().read(), b"ok\n")
        kept.close()
        renewed = http.client.HTTPSConnection(
            "localhost", registry.port, context=ssl.create_default_context(
                cafile=second_ca[0]), timeout=30)
        renewed.request("GET", "/healthz")
        self.assertEqual(renewed.getresponse().status, 200)
        renewed.close()
        with self.assertRaises(ssl.SSLCertVerificationError):
            old = http.client.HTTPSConnection("localhost", registry.port, context=context,
                                              timeout=30)
            old.request("GET", "/healthz")


class TokenEndToEnd(PrivateTestCase):
    """The token flow over TLS: nixeryd's own /token, and an external token service."""

    def token(self, registry: Daemon, user: str, scope: str) -> str:
        credentials = base64.b64encode(("%s:%s" % (user, USERS[user])).encode()).decode()
        status, _, body = registry.request(
            "/token?service=nixeryd&scope=" + scope,
            headers={"Authorization": "Basic " + credentials})
        self.assertEqual(status, 200, body)
        token: str = json.loads(body)["token"]
        self.tokens.append(token)
        return token

    def expired_token(self, user: str, scope_name: str) -> str:
        with open(self.token_key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        now = int(time.time())
        token = jwt.encode({"iss": "nixeryd", "aud": "nixeryd", "sub": user,
                            "iat": now - 3600, "nbf": now - 3600, "exp": now - 600,
                            "access": [{"type": "repository", "name": scope_name,
                                        "actions": ["pull"]}]},
                           key, algorithm="ES256")  # type: ignore[arg-type]
        self.tokens.append(token)
        return token

    def test_own_token_endpoint(self) -> None:
        registry = self.serve("--htpasswd", self.htpasswd, "--auth-rules", self.rules,
                              "--token-key", self.token_key)
        status, headers, _ = registry.request("/v2/hello/manifests/latest")
        self.assertEqual(status, 401)
        self.assertEqual(headers["www-authenticate"],
                         'Bearer realm="https://%s/token",service="nixeryd",'
                         'scope="repository:hello:pull"' % (registry.address,))
        self.assertIn('"Name": "%s/hello"' % (registry.address,),
                      self.skopeo(registry, "hello", "--creds", "bob:" + USERS["bob"]))
        self.assertIn("unable to retrieve auth token: invalid username/password: unauthorized:"
                      " wrong user name or password",
                      self.skopeo(registry, "hello", "--creds", "bob:wrong", ok=False))
        self.assertIn("denied: user bob may not pull multi",
                      self.skopeo(registry, "multi", "--creds", "bob:" + USERS["bob"],
                                  ok=False))
        # Tokens given to skopeo as they are.
        self.assertIn("unauthorized: the token has expired", self.skopeo(
            registry, "hello", "--registry-token", self.expired_token("bob", "hello"),
            ok=False))
        other_scope = self.token(registry, "alice", "repository:hello:pull")
        self.assertIn("unauthorized: the token does not grant pull of multi: ask for scope"
                      " repository:multi:pull", self.skopeo(
                          registry, "multi", "--registry-token", other_scope, ok=False))
        self.assertIn('"Name": "%s/hello"' % (registry.address,),
                      self.skopeo(registry, "hello", "--registry-token", other_scope))
        self.podman_login_pull(registry)
        self.ctr_pull(registry)
        self.assert_no_secrets(registry)

    def test_external_token_service(self) -> None:
        """A second nixeryd issues the tokens; the registry checks them with its public key."""
        issuer = self.serve("--htpasswd", self.htpasswd, "--auth-rules", self.rules,
                            "--token-key", self.token_key)
        public = os.path.join(self.files, "token.pub")
        run(["openssl", "pkey", "-in", self.token_key, "-pubout", "-out", public])
        registry = self.serve("--token-public-key", public, "--auth-rules", self.rules,
                              "--token-realm", issuer.url("/token"))
        status, headers, _ = registry.request("/v2/")
        self.assertEqual(headers["www-authenticate"],
                         'Bearer realm="%s",service="nixeryd"' % (issuer.url("/token"),))
        self.assertIn('"Name": "%s/hello"' % (registry.address,),
                      self.skopeo(registry, "hello", "--creds", "bob:" + USERS["bob"]))
        self.assertIn("denied: user bob may not pull multi",
                      self.skopeo(registry, "multi", "--creds", "bob:" + USERS["bob"],
                                  ok=False))
        self.podman_login_pull(registry)
        self.ctr_pull(registry)
        self.assert_no_secrets(issuer, registry)


class ReloadWithoutTLS(DaemonTestCase):
    """``systemctl reload`` (SIGHUP) of a daemon without TLS."""

    def test_sighup_keeps_serving(self) -> None:
        """SIGHUP's default action would end the daemon: it is logged, and serving goes on."""
        registry = self.daemon("--pkgs-path", PACKAGE_SET)
        assert registry.process is not None
        registry.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while not registry.events_with(event="reload-nothing"):
            self.assertIsNone(registry.process.poll(), registry.log_text())
            self.assertLess(time.monotonic(), deadline, registry.log_text())
            time.sleep(0.1)
        status, _, body = registry.request("/healthz")
        self.assertEqual((status, body), (200, b"ok\n"))

"""
Tests for :mod:`nixeryd.registry.api` and :mod:`nixeryd.registry.responses`:
the ``/v2`` ping and manifests over the fake image service, requests refused
before it is called, and its errors as registry JSON errors.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IResponse

from nixeryd.build.manifest import sha256_digest
from nixeryd.core.errors import (BuildFailed, BuildTimedOut, ManifestUnknown, NameInvalid,
                                  RegistryError, TooManyRequests, Unavailable,
                                  UnknownPackages)
from nixeryd.core.mediatypes import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from nixeryd.registry.imagesource import ImageSource
from nixeryd.registry.responses import AddressedRequest, build_page_url
from nixeryd.testing.images import FakeImageService
from tests.registrycases import (
    CONTAINERD_ACCEPT,
    SKOPEO_ACCEPT,
    UNKNOWN_DIGEST,
    StubRegistryTestCase,
    content_length,
    header,
)


class ImageSourceTests(SynchronousTestCase):
    """The fake the registry is tested over is an image source."""

    def test_fake_is_an_image_source(self) -> None:
        """mypy checks that FakeImageService provides ImageSource."""
        source: ImageSource = FakeImageService()
        self.assertIsNone(source.cached_image("shell/git", "latest"))


class PingTests(StubRegistryTestCase):
    """``/v2/``."""

    def test_get(self) -> None:
        """GET /v2/ is 200 with {} as JSON and the API version header."""
        response, body = self.fetch(b"GET", "/v2/")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"{}")
        self.assertEqual(header(response, b"content-type"), b"application/json")
        self.assertEqual(header(response, b"docker-distribution-api-version"),
                         b"registry/2.0")

    def test_without_slash(self) -> None:
        """GET /v2 answers like /v2/."""
        response, body = self.fetch(b"GET", "/v2")
        self.assertEqual((response.code, body), (200, b"{}"))

    def test_head(self) -> None:
        """HEAD /v2/ has GET's headers and no body."""
        response, body = self.fetch(b"HEAD", "/v2/")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(header(response, b"content-length"), b"2")
        self.assertEqual(header(response, b"content-type"), b"application/json")


class ManifestTests(StubRegistryTestCase):
    """Manifests by tag and by digest."""

    def assert_manifest(self, response: IResponse, body: bytes, media_type: str) -> None:
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, b"content-type"), media_type.encode())
        self.assertEqual(header(response, b"docker-content-digest"),
                         sha256_digest(body).encode())
        self.assertEqual(content_length(response), len(body))
        self.assertEqual(json.loads(body)["mediaType"], media_type)

    def test_skopeo_accept_lines(self) -> None:
        """Six separate Accept lines including Docker's give Docker schema 2."""
        response, body = self.fetch(b"GET", "/v2/shell/git/manifests/latest",
                                    {b"Accept": SKOPEO_ACCEPT})
        self.assert_manifest(response, body, DOCKER_MANIFEST)
        self.assertEqual(body, self.sample.image.docker.body)
        self.assertEqual(self.images.calls, [("image", "shell/git", "latest")])

    def test_warm_image_answered_at_once(self) -> None:
        """
        An image the service holds in memory is served without calling
        ``image()``, with the same negotiation and headers, GET and HEAD.
        """
        self.images.warm.add(("shell/git", "latest"))
        response, body = self.fetch(b"GET", "/v2/shell/git/manifests/latest",
                                    {b"Accept": SKOPEO_ACCEPT})
        self.assert_manifest(response, body, DOCKER_MANIFEST)
        response, body = self.fetch(b"GET", "/v2/shell/git/manifests/latest",
                                    {b"Accept": [OCI_MANIFEST.encode()]})
        self.assert_manifest(response, body, OCI_MANIFEST)
        head, head_body = self.fetch(b"HEAD", "/v2/shell/git/manifests/latest",
                                     {b"Accept": [OCI_MANIFEST.encode()]})
        self.assertEqual(head_body, b"")
        for name in (b"content-type", b"docker-content-digest"):
            self.assertEqual(header(head, name), header(response, name))
        self.assertEqual(content_length(head), len(body))
        self.assertEqual(self.images.calls, [])

    def test_containerd_accept_line(self) -> None:
        """containerd's single Accept line gives Docker schema 2."""
        response, body = self.fetch(b"GET", "/v2/shell/git/manifests/latest",
                                    {b"Accept": CONTAINERD_ACCEPT})
        self.assert_manifest(response, body, DOCKER_MANIFEST)

    def test_no_accept(self) -> None:
        """Without Accept the Docker manifest is served."""
        response, body = self.fetch(b"GET", "/v2/shell/git/manifests/latest")
        self.assert_manifest(response, body, DOCKER_MANIFEST)

    def test_only_oci(self) -> None:
        """Accepting only OCI types gives the OCI manifest."""
        response, body = self.fetch(
            b"GET", "/v2/shell/git/manifests/latest",
            {b"Accept": [OCI_MANIFEST.encode(), OCI_INDEX.encode()]})
        self.assert_manifest(response, body, OCI_MANIFEST)
        self.assertEqual(body, self.sample.image.oci.body)
        self.assertEqual(header(response, b"vary"), b"Accept")

    def test_head_equals_get(self) -> None:
        """HEAD by tag has GET's length, digest and type, and an empty body."""
        for accept in ([], [OCI_MANIFEST.encode()]):
            with self.subTest(accept=accept):
                got, got_body = self.fetch(b"GET", "/v2/shell/git/manifests/latest",
                                           {b"Accept": accept})
                head, head_body = self.fetch(b"HEAD", "/v2/shell/git/manifests/latest",
                                             {b"Accept": accept})
                self.assertEqual(head_body, b"")
                self.assertEqual(head.code, 200)
                for name in (b"docker-content-digest", b"content-type"):
                    self.assertEqual(header(head, name), header(got, name))
                self.assertEqual(content_length(head), content_length(got))
                self.assertEqual(content_length(head), len(got_body))

    def test_by_digest(self) -> None:
        """Both manifests are served by digest with their own media type."""
        for document in (self.sample.image.docker, self.sample.image.oci):
            with self.subTest(media_type=document.media_type):
                response, body = self.fetch(
                    b"GET", "/v2/shell/git/manifests/" + document.digest,
                    {b"Accept": [document.media_type.encode() + b", */*"]})
                self.assert_manifest(response, body, document.media_type)
                self.assertEqual(body, document.body)
                head, head_body = self.fetch(
                    b"HEAD", "/v2/shell/git/manifests/" + document.digest)
                self.assertEqual(head_body, b"")
                for name in (b"docker-content-digest", b"content-type"):
                    self.assertEqual(header(head, name), header(response, name))
                self.assertEqual(content_length(head), len(body))
        self.assertEqual([call[0] for call in self.images.calls], ["manifest"] * 4)

    def test_unknown_digest(self) -> None:
        """An unknown manifest digest is 404 MANIFEST_UNKNOWN."""
        response, body = self.fetch(b"GET", "/v2/shell/manifests/" + UNKNOWN_DIGEST)
        self.assert_error(response, body, 404, "MANIFEST_UNKNOWN")

    def test_unknown_digest_head(self) -> None:
        """HEAD of an unknown manifest is 404 with an empty body."""
        response, body = self.fetch(b"HEAD", "/v2/shell/manifests/" + UNKNOWN_DIGEST)
        self.assertEqual((response.code, body), (404, b""))
        self.assertEqual(header(response, b"content-type"), b"application/json")

    def test_query_string(self) -> None:
        """Query strings such as ?ns= are ignored by routing."""
        response, body = self.fetch(
            b"GET", "/v2/shell/git/manifests/latest?ns=docker.io&x=1")
        self.assert_manifest(response, body, DOCKER_MANIFEST)
        self.assertEqual(self.images.calls, [("image", "shell/git", "latest")])

    def test_held_build(self) -> None:
        """A response waits for the image service and is sent once it answers."""
        self.images.hold = True
        d = self.start_request(b"GET", "/v2/shell/git/manifests/latest")
        self.agent.flush()
        self.assertNoResult(d)
        [held] = self.images.held
        held.release()
        self.agent.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)


class RefusalTests(StubRegistryTestCase):
    """Malformed requests are refused before the image service is called."""

    def test_bad_names(self) -> None:
        """Names breaking the grammar are 400 NAME_INVALID."""
        for path in ("/v2/Shell/manifests/latest", "/v2/a..b/manifests/latest",
                     "/v2/shell%2Fgit/manifests/latest", "/v2/%2e%2e/blobs/"
                     + UNKNOWN_DIGEST, "/v2/a//b/tags/list",
                     "/v2/" + "a" * 256 + "/manifests/latest"):
            with self.subTest(path=path):
                response, body = self.fetch(b"GET", path)
                self.assert_error(response, body, 400, "NAME_INVALID")
        self.assertEqual(self.images.calls, [])

    def test_bad_digests(self) -> None:
        """Malformed digests are 400 DIGEST_INVALID."""
        for path in ("/v2/a/blobs/sha256:abc", "/v2/a/blobs/latest",
                     "/v2/a/blobs/sha256:" + "A" * 64,
                     "/v2/a/manifests/sha512:" + "a" * 128,
                     "/v2/a/manifests/sha256:" + "a" * 63):
            with self.subTest(path=path):
                response, body = self.fetch(b"GET", path)
                self.assert_error(response, body, 400, "DIGEST_INVALID")
        self.assertEqual(self.images.calls, [])

    def test_invalid_tag(self) -> None:
        """A reference that is no tag or digest is 404 MANIFEST_UNKNOWN."""
        response, body = self.fetch(b"GET", "/v2/a/manifests/-x")
        error = self.assert_error(response, body, 404, "MANIFEST_UNKNOWN")
        self.assertIn("invalid tag", error["message"])
        self.assertEqual(self.images.calls, [])

    def test_unknown_route(self) -> None:
        """Paths under /v2 naming no operation are 404 UNSUPPORTED."""
        for path in ("/v2/_catalog", "/v2/a/b", "/v2/a/tags/list/"):
            with self.subTest(path=path):
                response, body = self.fetch(b"GET", path)
                self.assert_error(response, body, 404, "UNSUPPORTED")

    def test_methods(self) -> None:
        """Other methods are 405 UNSUPPORTED with Allow: GET, HEAD."""
        for method in (b"POST", b"PUT", b"DELETE", b"PATCH"):
            for path in ("/v2/", "/v2/shell/git/manifests/latest",
                         "/v2/a/blobs/uploads/"):
                with self.subTest(method=method, path=path):
                    response, body = self.fetch(method, path)
                    self.assert_error(response, body, 405, "UNSUPPORTED")
                    self.assertEqual(header(response, b"allow"), b"GET, HEAD")
        self.assertEqual(self.images.calls, [])


class ServiceErrorTests(StubRegistryTestCase):
    """Errors raised by the image service become registry JSON errors."""

    def get_manifest_error(self, error: BaseException, status: int,
                           code: str) -> tuple[IResponse, dict[str, Any]]:
        self.images.failures["image"] = error
        response, body = self.fetch(b"GET", "/v2/shell/git/manifests/latest")
        return response, self.assert_error(response, body, status, code)

    def test_unknown_packages(self) -> None:
        """Unknown packages are 404 MANIFEST_UNKNOWN listing the packages."""
        _, error = self.get_manifest_error(
            UnknownPackages(["nope", "gone"]), 404, "MANIFEST_UNKNOWN")
        self.assertEqual(error["detail"], {"packages": ["nope", "gone"]})
        self.assertIn("nope", error["message"])

    def get_and_head(self, error: RegistryError, status: int, code: str
                     ) -> dict[str, Any]:
        """
        The error of a GET by tag failing with ``error``; a HEAD gets the
        same status and headers, without a body.
        """
        response, error_json = self.get_manifest_error(error, status, code)
        head, head_body = self.fetch(b"HEAD", "/v2/shell/git/manifests/latest")
        self.assertEqual((head.code, head_body), (status, b""))
        for name in (b"content-type", b"retry-after", b"docker-distribution-api-version"):
            self.assertEqual(header(head, name), header(response, name), name)
        self.assertEqual(content_length(head), content_length(response))
        return error_json

    def test_build_failed(self) -> None:
        """
        A failed build is 404 MANIFEST_UNKNOWN, which every client shows: one
        line naming the package and ending with the build page's address;
        the detail names the build and the package, never the Nix log.
        """
        failed = BuildFailed("the build of package git failed (builder exited"
                             " with status 1)", "git", ["/nix/store/x-git.drv", "error: x"])
        failed.build_id = "3f9a0c12be41"
        error = self.get_and_head(failed, 404, "MANIFEST_UNKNOWN")
        self.assertEqual(error["message"],
                         "the build of package git failed (builder exited with status 1);"
                         " build log: http://registry.test/builds/3f9a0c12be41")
        self.assertEqual(error["detail"], {"build": "3f9a0c12be41", "package": "git"})
        self.assertNotIn("/nix/store", json.dumps(error))

    def test_build_failed_without_build(self) -> None:
        """An error with no build has no page address and no build in the detail."""
        error = self.get_and_head(BuildFailed("no such thing", "git"), 404,
                                  "MANIFEST_UNKNOWN")
        self.assertEqual(error["message"], "no such thing")
        self.assertEqual(error["detail"], {"package": "git"})

    def test_build_timed_out(self) -> None:
        """A timeout is a 404 too, saying which step and which setting."""
        timed_out = BuildTimedOut("build", 600, "package slow", "slow", ["slow"])
        timed_out.build_id = "0123456789ab"
        error = self.get_and_head(timed_out, 404, "MANIFEST_UNKNOWN")
        self.assertEqual(error["message"],
                         "the build of package slow timed out after 600 seconds"
                         " (NIX_TIMEOUT sets the limit);"
                         " build log: http://registry.test/builds/0123456789ab")
        self.assertEqual(error["detail"], {"build": "0123456789ab", "package": "slow"})

    def test_unavailable(self) -> None:
        """A transient condition is 503 UNAVAILABLE with Retry-After, GET and HEAD."""
        unavailable = Unavailable("the Nix daemon is unavailable; try again later")
        unavailable.build_id = "0123456789ab"
        self.get_and_head(unavailable, 503, "UNAVAILABLE")
        response, _ = self.fetch(b"GET", "/v2/shell/git/manifests/latest")
        self.assertEqual(header(response, b"retry-after"), b"10")

    def test_too_many_requests(self) -> None:
        """
        A full queue is 429 TOOMANYREQUESTS, the message (which clients print)
        saying what is full, and Retry-After saying when to try again; a HEAD
        gets the same status and headers.
        """
        refused = TooManyRequests(
            "the registry is already making 32 images, the most it takes at once;"
            " try again in 30 seconds", {"limit": 32, "for": "registry"}, retry_after=30)
        error = self.get_and_head(refused, 429, "TOOMANYREQUESTS")
        self.assertEqual(error["message"], refused.message)
        self.assertEqual(error["detail"], {"limit": 32, "for": "registry"})
        response, _ = self.fetch(b"GET", "/v2/shell/git/manifests/latest")
        self.assertEqual(header(response, b"retry-after"), b"30")
        self.assertEqual(response.phrase, b"Too Many Requests")

    def test_client_address_for_cold_work(self) -> None:
        """A cold request tells the image service the client's address."""
        self.images.failures["image"] = ManifestUnknown("cold")
        self.fetch(b"GET", "/v2/shell/git/manifests/latest")
        self.assertEqual(len(self.images.clients), 1)
        self.assertEqual(self.images.clients[0], "127.0.0.1")

    def test_page_after_a_sentence(self) -> None:
        """A message ending with Nix's full stop is followed by the page's address."""
        failed = BuildFailed("package x cannot be evaluated: Package 'x-1.0' is marked"
                             " as broken, refusing to evaluate.", "x")
        failed.build_id = "0123456789ab"
        error = self.get_and_head(failed, 404, "MANIFEST_UNKNOWN")
        self.assertEqual(error["message"],
                         "package x cannot be evaluated: Package 'x-1.0' is marked as"
                         " broken, refusing to evaluate; build log:"
                         " http://registry.test/builds/0123456789ab")

    def test_one_line(self) -> None:
        """Line breaks in a message never reach the client."""
        error = self.get_and_head(BuildFailed("first\nsecond\r\nthird"), 404,
                                  "MANIFEST_UNKNOWN")
        self.assertEqual(error["message"], "first second third")

    def test_name_invalid_from_service(self) -> None:
        """The service's own name refusal is 400 NAME_INVALID."""
        self.get_manifest_error(NameInvalid("too many packages"), 400, "NAME_INVALID")

    def test_unexpected_exception(self) -> None:
        """Other exceptions are logged and answered with 500 UNKNOWN."""
        _, error = self.get_manifest_error(ValueError("boom"), 500, "UNKNOWN")
        self.assertNotIn("boom", json.dumps(error))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_unexpected_routing_exception(self) -> None:
        """An exception before the image service is called is a logged 500 too."""
        import nixeryd.registry.api

        def broken(segments: object) -> None:
            raise KeyError("broken")

        self.patch(nixeryd.registry.api, "parse_v2_path", broken)
        response, body = self.fetch(b"GET", "/v2/shell/git/manifests/latest")
        self.assert_error(response, body, 500, "UNKNOWN")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_unexpected_exception_head(self) -> None:
        """HEAD of an unexpected exception is the same logged 500, without a body."""
        self.images.failures["image"] = ValueError("boom")
        get, get_body = self.fetch(b"GET", "/v2/shell/git/manifests/latest")
        head, head_body = self.fetch(b"HEAD", "/v2/shell/git/manifests/latest")
        self.assertEqual((get.code, head.code, head_body), (500, 500, b""))
        self.assertEqual(content_length(head), len(get_body))
        self.assertIsNone(header(head, b"retry-after"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)

    def test_tags_name_invalid(self) -> None:
        """A name refused by tags() is 400."""
        self.images.failures["tags"] = NameInvalid("no")
        response, body = self.fetch(b"GET", "/v2/shell/tags/list")
        self.assert_error(response, body, 400, "NAME_INVALID")



class BuildPageTests(SynchronousTestCase):
    """The address of a build's page in error messages."""

    def request(self, host: bytes | None, secure: bool = False) -> AddressedRequest:
        class Request:
            def getHeader(self, key: bytes) -> bytes | None:
                return host if key.lower() == b"host" else None

            def isSecure(self) -> bool:
                return secure

        return Request()

    def test_plain_host(self) -> None:
        """With a plain Host header the address is absolute, by the request's scheme."""
        self.assertEqual(build_page_url(self.request(b"127.0.0.1:5000"), "3f9a0c12be41"),
                         "http://127.0.0.1:5000/builds/3f9a0c12be41")
        self.assertEqual(build_page_url(self.request(b"registry.example", True), "ab"),
                         "https://registry.example/builds/ab")
        self.assertEqual(build_page_url(self.request(b"[::1]:8080"), "ab"),
                         "http://[::1]:8080/builds/ab")

    def test_other_host(self) -> None:
        """Without a plain Host header the address is the path alone."""
        for host in (None, b"", b"evil.example/x?", b"a b", b"<script>", b"user@host"):
            with self.subTest(host=host):
                self.assertEqual(build_page_url(self.request(host), "ab"), "/builds/ab")

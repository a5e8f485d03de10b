"""
Tests for :mod:`nixeryd.registry.web`: the ``/v2`` API over the fake image service.

Most tests go through :class:`treq.testing.StubTreq` (a real ``Site`` and
HTTP parsing, in memory); streaming, disconnects and the access log use a
real server on a loopback port.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Optional

import treq
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.internet.testing import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from nixeryd.core.documents import LocalBlob, RedirectBlob
from nixeryd.core.errors import (
    BuildFailed,
    BuildTimedOut,
    NameInvalid,
    UnknownPackages,
)
from nixeryd.core.mediatypes import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from nixeryd.core.threads import ThreadPoolService
from nixeryd.build.manifest import sha256_digest
from nixeryd.testing.images import FakeImageService, SampleImage, write_sample_image
from nixeryd.testing.network import RawClient, serve_locally
from nixeryd.registry.web import (
    BlobSender,
    ByteRange,
    RangeNotSatisfiable,
    RootResource,
    make_site,
    paginate,
    parse_range,
)

BASE = "http://registry.test"
SKOPEO_ACCEPT = [
    OCI_MANIFEST.encode(),
    DOCKER_MANIFEST.encode(),
    b"application/vnd.docker.distribution.manifest.v1+prettyjws",
    b"application/vnd.docker.distribution.manifest.v1+json",
    b"application/vnd.docker.distribution.manifest.list.v2+json",
    OCI_INDEX.encode(),
]
CONTAINERD_ACCEPT = [
    b"application/vnd.docker.distribution.manifest.v2+json, "
    b"application/vnd.docker.distribution.manifest.list.v2+json, "
    b"application/vnd.oci.image.manifest.v1+json, "
    b"application/vnd.oci.image.index.v1+json, */*"
]
UNKNOWN_DIGEST = "sha256:" + "f" * 64


def content_length(response: Any) -> int:
    """
    The response's Content-Length.

    Twisted's client keeps it as a header only for HEAD responses; for
    others it becomes ``response.length``, which is not an ``int`` when the
    body was chunked.
    """
    value = header(response, b"content-length")
    if value is not None:
        return int(value)
    assert isinstance(response.length, int), "no Content-Length"
    return response.length


def header(response: Any, name: bytes) -> Optional[bytes]:
    """The single value of a response header, or ``None``."""
    values = response.headers.getRawHeaders(name)
    if values is None:
        return None
    assert len(values) == 1, (name, values)
    return values[0]


class StubRegistryMixin:
    """An in-memory registry over a fake image service holding one image."""

    def set_up_registry(self: Any) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(_remove_tree, self.directory)
        self.images = FakeImageService()
        self.sample: SampleImage = write_sample_image(
            self.directory, {"bin/hello": b"#!/bin/sh\necho hello\n"})
        self.images.add_sample_image("shell/git", "latest", self.sample)
        self.stub = StubTreq(RootResource(self.images))

    def fetch(self: Any, method: bytes, path: str,
              headers: Optional[dict[bytes, list[bytes]]] = None) -> tuple[Any, bytes]:
        """Make a request and return the response and its whole body."""
        d = self.stub.request(method.decode(), BASE + path,
                              headers=Headers(headers or {}),
                              allow_redirects=False)
        self.stub.flush()
        response = self.successResultOf(d)
        body_d = response.content()
        self.stub.flush()
        return response, self.successResultOf(body_d)

    def assert_error(self: Any, response: Any, body: bytes, status: int,
                     code: str) -> dict[str, Any]:
        """Check a registry JSON error response and return its one error."""
        self.assertEqual(response.code, status)
        self.assertEqual(header(response, b"content-type"), b"application/json")
        self.assertEqual(header(response, b"docker-distribution-api-version"),
                         b"registry/2.0")
        self.assertEqual(content_length(response), len(body))
        document = json.loads(body)
        self.assertEqual(list(document), ["errors"])
        [error] = document["errors"]
        self.assertEqual(sorted(error), ["code", "detail", "message"])
        self.assertEqual(error["code"], code)
        return error


def _remove_tree(path: str) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)


class PingTests(StubRegistryMixin, SynchronousTestCase):
    """``/v2/``."""

    def setUp(self) -> None:
        self.set_up_registry()

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


class ManifestTests(StubRegistryMixin, SynchronousTestCase):
    """Manifests by tag and by digest."""

    def setUp(self) -> None:
        self.set_up_registry()

    def assert_manifest(self, response: Any, body: bytes, media_type: str) -> None:
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
        d = self.stub.get(BASE + "/v2/shell/git/manifests/latest")
        self.stub.flush()
        self.assertNoResult(d)
        [held] = self.images.held
        held.release()
        self.stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)


class RefusalTests(StubRegistryMixin, SynchronousTestCase):
    """Malformed requests are refused before the image service is called."""

    def setUp(self) -> None:
        self.set_up_registry()

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


class ServiceErrorTests(StubRegistryMixin, SynchronousTestCase):
    """Errors raised by the image service become registry JSON errors."""

    def setUp(self) -> None:
        self.set_up_registry()

    def get_manifest_error(self, error: BaseException, status: int,
                           code: str) -> tuple[Any, dict[str, Any]]:
        self.images.failures["image"] = error
        response, body = self.fetch(b"GET", "/v2/shell/git/manifests/latest")
        return response, self.assert_error(response, body, status, code)

    def test_unknown_packages(self) -> None:
        """Unknown packages are 404 MANIFEST_UNKNOWN listing the packages."""
        _, error = self.get_manifest_error(
            UnknownPackages(["nope", "gone"]), 404, "MANIFEST_UNKNOWN")
        self.assertEqual(error["detail"], {"packages": ["nope", "gone"]})
        self.assertIn("nope", error["message"])

    def test_build_failed(self) -> None:
        """A failed build is 500 UNKNOWN naming the package, with the log tail."""
        _, error = self.get_manifest_error(
            BuildFailed("building git failed", "git-2.40", ["line 1", "error: x"]),
            500, "UNKNOWN")
        self.assertEqual(error["message"], "building git failed")
        self.assertEqual(error["detail"],
                         {"package": "git-2.40", "log": ["line 1", "error: x"]})

    def test_build_timed_out(self) -> None:
        """A timed-out build is 504."""
        self.get_manifest_error(BuildTimedOut(600, ["slow"]), 504, "UNKNOWN")

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
        import nixeryd.registry.web

        def broken(segments: Any) -> Any:
            raise KeyError("broken")

        self.patch(nixeryd.registry.web, "parse_v2_path", broken)
        response, body = self.fetch(b"GET", "/v2/shell/git/manifests/latest")
        self.assert_error(response, body, 500, "UNKNOWN")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_tags_name_invalid(self) -> None:
        """A name refused by tags() is 400."""
        self.images.failures["tags"] = NameInvalid("no")
        response, body = self.fetch(b"GET", "/v2/shell/tags/list")
        self.assert_error(response, body, 400, "NAME_INVALID")


class TagsTests(StubRegistryMixin, SynchronousTestCase):
    """``tags/list`` and its pagination."""

    def setUp(self) -> None:
        self.set_up_registry()
        self.images.tag_lists["shell/git"] = ["latest", "b", "a", "c"]

    def get(self, query: str = "") -> tuple[Any, dict[str, Any]]:
        response, body = self.fetch(b"GET", "/v2/shell/git/tags/list" + query)
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, b"content-type"), b"application/json")
        self.assertEqual(content_length(response), len(body))
        return response, json.loads(body)

    def test_all(self) -> None:
        """Without n, every tag is listed, sorted, and no Link is sent."""
        response, document = self.get()
        self.assertEqual(document, {"name": "shell/git",
                                    "tags": ["a", "b", "c", "latest"]})
        self.assertIsNone(header(response, b"link"))

    def test_pages(self) -> None:
        """n limits the page and Link names the next one until the end."""
        response, document = self.get("?n=2")
        self.assertEqual(document["tags"], ["a", "b"])
        self.assertEqual(header(response, b"link"),
                         b'</v2/shell/git/tags/list?n=2&last=b>; rel="next"')
        response, document = self.get("?n=2&last=b")
        self.assertEqual(document["tags"], ["c", "latest"])
        self.assertIsNone(header(response, b"link"))

    def test_zero(self) -> None:
        """n=0 gives an empty list."""
        response, document = self.get("?n=0")
        self.assertEqual(document["tags"], [])
        self.assertIsNone(header(response, b"link"))

    def test_last_only(self) -> None:
        """last alone lists the tags after it."""
        _, document = self.get("?last=bb")
        self.assertEqual(document["tags"], ["c", "latest"])

    def test_bad_n(self) -> None:
        """An n that is not a non-negative integer is a 400 error."""
        for query in ("?n=-1", "?n=x", "?n=1.5"):
            with self.subTest(query=query):
                response, body = self.fetch(b"GET", "/v2/shell/git/tags/list" + query)
                self.assert_error(response, body, 400, "UNSUPPORTED")


class PaginateTests(SynchronousTestCase):
    """:func:`paginate` on its own."""

    def test_exact_fit(self) -> None:
        """A page that ends exactly at the last tag has no next page."""
        self.assertEqual(paginate(["a", "b"], "2", None), (["a", "b"], None))

    def test_next_query(self) -> None:
        """The next query carries n and the last tag of the page."""
        self.assertEqual(paginate(["a", "b", "c"], "1", "a"), (["b"], "n=1&last=b"))

    def test_next_query_quoted(self) -> None:
        """The last tag is percent-encoded in the next query."""
        self.assertEqual(paginate(["a+b", "c"], "1", None), (["a+b"], "n=1&last=a%2Bb"))

    def test_huge_n(self) -> None:
        """An ``n`` of thousands of digits means every tag, not an error."""
        self.assertEqual(paginate(["a", "b"], "9" * 5000, None), (["a", "b"], None))


class RangeParsingTests(SynchronousTestCase):
    """:func:`parse_range`."""

    def test_forms(self) -> None:
        """a-b, a- and -n select the expected bytes, clipped to the size."""
        self.assertEqual(parse_range(b"bytes=0-9", 100), ByteRange(0, 9))
        self.assertEqual(parse_range(b"bytes=10-", 100), ByteRange(10, 99))
        self.assertEqual(parse_range(b"bytes=-7", 100), ByteRange(93, 99))
        self.assertEqual(parse_range(b"bytes=-700", 100), ByteRange(0, 99))
        self.assertEqual(parse_range(b"bytes=90-1000", 100), ByteRange(90, 99))
        self.assertEqual(parse_range(b"Bytes = 1 - 1", 100), ByteRange(1, 1))

    def test_ignored(self) -> None:
        """Malformed, multiple and other-unit ranges mean the whole blob."""
        for value in (b"bytes=5-1", b"bytes=0-1,5-6", b"items=0-1", b"bytes=-",
                      b"bytes=a-b", b"bytes=0-1x", b""):
            with self.subTest(value=value):
                self.assertIsNone(parse_range(value, 100))

    def test_unsatisfiable(self) -> None:
        """Ranges starting at or past the end, or empty suffixes, are refused."""
        for value, size in ((b"bytes=100-", 100), (b"bytes=100-200", 100),
                            (b"bytes=-0", 100), (b"bytes=-5", 0), (b"bytes=0-", 0)):
            with self.subTest(value=value, size=size):
                self.assertRaises(RangeNotSatisfiable, parse_range, value, size)


class BlobTests(StubRegistryMixin, SynchronousTestCase):
    """Blobs from local files and redirects."""

    def setUp(self) -> None:
        self.set_up_registry()
        self.data = bytes(range(256)) * 40 + b"tail"
        self.path = os.path.join(self.directory, "blob")
        with open(self.path, "wb") as out:
            out.write(self.data)
        self.digest = sha256_digest(self.data)
        self.images.blobs[self.digest] = LocalBlob(self.path, len(self.data), self.digest)
        self.url = "/v2/shell/git/blobs/" + self.digest

    def assert_blob_headers(self, response: Any, length: int) -> None:
        self.assertEqual(header(response, b"content-type"), b"application/octet-stream")
        self.assertEqual(content_length(response), length)
        self.assertEqual(header(response, b"docker-content-digest"), self.digest.encode())
        self.assertEqual(header(response, b"accept-ranges"), b"bytes")
        self.assertEqual(header(response, b"etag"), b'"%s"' % (self.digest.encode(),))
        self.assertIn(b"immutable", header(response, b"cache-control"))

    def test_get(self) -> None:
        """GET streams the whole file with the blob headers."""
        response, body = self.fetch(b"GET", self.url)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, self.data)
        self.assert_blob_headers(response, len(self.data))

    def test_head_does_not_open(self) -> None:
        """HEAD answers from the recorded size without opening the file."""
        os.unlink(self.path)
        response, body = self.fetch(b"HEAD", self.url)
        self.assertEqual((response.code, body), (200, b""))
        self.assert_blob_headers(response, len(self.data))

    def test_missing_file(self) -> None:
        """A blob whose file has vanished is 404 BLOB_UNKNOWN."""
        os.unlink(self.path)
        response, body = self.fetch(b"GET", self.url)
        self.assert_error(response, body, 404, "BLOB_UNKNOWN")
        self.assertIsNone(header(response, b"docker-content-digest"))

    def test_unknown(self) -> None:
        """An unknown blob is 404 BLOB_UNKNOWN."""
        response, body = self.fetch(b"GET", "/v2/a/blobs/" + UNKNOWN_DIGEST)
        self.assert_error(response, body, 404, "BLOB_UNKNOWN")

    def test_range(self) -> None:
        """A closed range is 206 with Content-Range and those bytes."""
        response, body = self.fetch(b"GET", self.url, {b"Range": [b"bytes=10-19"]})
        self.assertEqual(response.code, 206)
        self.assertEqual(body, self.data[10:20])
        self.assertEqual(header(response, b"content-range"),
                         b"bytes 10-19/%d" % (len(self.data),))
        self.assert_blob_headers(response, 10)

    def test_open_range(self) -> None:
        """An open-ended range runs to the end of the blob."""
        response, body = self.fetch(b"GET", self.url, {b"Range": [b"bytes=10000-"]})
        self.assertEqual(response.code, 206)
        self.assertEqual(body, self.data[10000:])

    def test_suffix_range(self) -> None:
        """A suffix range gives the last bytes."""
        response, body = self.fetch(b"GET", self.url, {b"Range": [b"bytes=-4"]})
        self.assertEqual((response.code, body), (206, b"tail"))
        size = len(self.data)
        self.assertEqual(header(response, b"content-range"),
                         b"bytes %d-%d/%d" % (size - 4, size - 1, size))

    def test_unsatisfiable(self) -> None:
        """A range past the end is 416 with Content-Range: bytes */size."""
        response, body = self.fetch(
            b"GET", self.url, {b"Range": [b"bytes=%d-" % (len(self.data),)]})
        self.assertEqual((response.code, body), (416, b""))
        self.assertEqual(header(response, b"content-range"),
                         b"bytes */%d" % (len(self.data),))

    def test_head_range(self) -> None:
        """HEAD with a range has the 206 headers and no body."""
        response, body = self.fetch(b"HEAD", self.url, {b"Range": [b"bytes=0-0"]})
        self.assertEqual((response.code, body), (206, b""))
        self.assertEqual(header(response, b"content-length"), b"1")

    def test_multiple_ranges_ignored(self) -> None:
        """Several ranges are answered with the whole blob."""
        response, body = self.fetch(b"GET", self.url, {b"Range": [b"bytes=0-1,4-5"]})
        self.assertEqual((response.code, body), (200, self.data))

    def test_if_range_mismatch(self) -> None:
        """A Range with a non-matching If-Range gives the whole blob."""
        response, body = self.fetch(b"GET", self.url, {
            b"Range": [b"bytes=0-1"], b"If-Range": [b'"other"']})
        self.assertEqual((response.code, body), (200, self.data))
        response, body = self.fetch(b"GET", self.url, {
            b"Range": [b"bytes=0-1"],
            b"If-Range": [b'"%s"' % (self.digest.encode(),)]})
        self.assertEqual((response.code, body), (206, self.data[:2]))

    def test_not_modified(self) -> None:
        """A matching If-None-Match is 304 without a body."""
        response, body = self.fetch(b"GET", self.url, {
            b"If-None-Match": [b'"x", "%s"' % (self.digest.encode(),)]})
        self.assertEqual((response.code, body), (304, b""))

    def test_empty_blob(self) -> None:
        """An empty blob is a 200 with Content-Length 0."""
        path = os.path.join(self.directory, "empty")
        open(path, "wb").close()
        digest = sha256_digest(b"")
        self.images.blobs[digest] = LocalBlob(path, 0, digest)
        response, body = self.fetch(b"GET", "/v2/a/blobs/" + digest)
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(content_length(response), 0)

    def test_redirect(self) -> None:
        """A remote blob is a 303 to its URL."""
        self.images.blobs[UNKNOWN_DIGEST] = RedirectBlob(
            "https://storage.example/layers/x?sig=1", UNKNOWN_DIGEST)
        for method in (b"GET", b"HEAD"):
            with self.subTest(method=method):
                response, body = self.fetch(method, "/v2/a/blobs/" + UNKNOWN_DIGEST)
                self.assertEqual(response.code, 303)
                self.assertEqual(header(response, b"location"),
                                 b"https://storage.example/layers/x?sig=1")
                self.assertEqual(header(response, b"docker-content-digest"),
                                 UNKNOWN_DIGEST.encode())


class IndexTests(StubRegistryMixin, SynchronousTestCase):
    """Pages outside ``/v2``."""

    def setUp(self) -> None:
        self.set_up_registry()

    def test_root(self) -> None:
        """/ is a plain-text page showing how to pull, with the request's host."""
        response, body = self.fetch(b"GET", "/", {b"Host": [b"registry.test:5000"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, b"content-type"), b"text/plain; charset=utf-8")
        self.assertEqual(header(response, b"x-content-type-options"), b"nosniff")
        self.assertIn(b"docker pull registry.test:5000/shell/git", body)

    def test_host_not_reflected(self) -> None:
        """A Host header that is no plain host name is not repeated."""
        response, body = self.fetch(b"GET", "/", {b"Host": [b"<script>x</script>"]})
        self.assertEqual(response.code, 200)
        self.assertNotIn(b"<script>", body)
        self.assertIn(b"docker pull <registry host>/shell/git", body)

    def test_other_path(self) -> None:
        """Other paths are a plain-text 404 that does not repeat the path."""
        response, body = self.fetch(b"GET", "/<b>x</b>")
        self.assertEqual(response.code, 404)
        self.assertEqual(header(response, b"content-type"), b"text/plain; charset=utf-8")
        self.assertNotIn(b"<b>", body)

    def test_head(self) -> None:
        """HEAD / has the page's length and no body."""
        got, got_body = self.fetch(b"GET", "/")
        response, body = self.fetch(b"HEAD", "/")
        self.assertEqual(body, b"")
        self.assertEqual(header(response, b"content-length"), b"%d" % (len(got_body),))

    def test_post(self) -> None:
        """Other methods on pages are 405."""
        response, _ = self.fetch(b"POST", "/")
        self.assertEqual(response.code, 405)
        self.assertEqual(header(response, b"allow"), b"GET, HEAD")


class FakeRequest:
    """Just enough of a request for :class:`BlobSender`."""

    def __init__(self) -> None:
        self.channel: object = object()
        self.written: list[bytes] = []
        self.producer: Any = None
        self.finished = False
        self.lost = False
        self.method = b"GET"
        self.uri = b"/blob"

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def finish(self) -> None:
        self.finished = True

    def loseConnection(self) -> None:
        self.lost = True


class BlobSenderTests(SynchronousTestCase):
    """:class:`BlobSender` on its own."""

    def open_file(self, data: bytes) -> Any:
        fd, path = tempfile.mkstemp()
        os.write(fd, data)
        os.close(fd)
        self.addCleanup(os.unlink, path)
        return open(path, "rb")

    def test_pause_and_resume(self) -> None:
        """The sender stops while paused and finishes after resuming."""
        request = FakeRequest()
        file = self.open_file(b"abcdefghij")
        sender = BlobSender(request, file, 10, chunk_size=4)  # type: ignore[arg-type]
        original_write = request.write

        def write_then_pause(data: bytes) -> None:
            original_write(data)
            sender.pauseProducing()

        request.write = write_then_pause  # type: ignore[method-assign]
        sender.start()
        self.assertEqual(request.written, [b"abcd"])
        sender.resumeProducing()
        self.assertEqual(request.written, [b"abcd", b"efgh"])
        request.write = original_write  # type: ignore[method-assign]
        sender.resumeProducing()
        self.assertEqual(request.written, [b"abcd", b"efgh", b"ij"])
        self.assertTrue(request.finished)
        self.assertIsNone(request.producer)
        self.assertTrue(file.closed)

    def test_stop(self) -> None:
        """stopProducing closes the file and nothing more is written."""
        request = FakeRequest()
        file = self.open_file(b"abcdefgh")
        sender = BlobSender(request, file, 8, chunk_size=4)  # type: ignore[arg-type]
        request.write = lambda data: (request.written.append(data),  # type: ignore
                                      sender.pauseProducing())
        sender.start()
        sender.stopProducing()
        sender.resumeProducing()
        self.assertEqual(request.written, [b"abcd"])
        self.assertTrue(file.closed)
        self.assertFalse(request.finished)

    def test_short_file(self) -> None:
        """A file shorter than its size is logged and the connection dropped."""
        request = FakeRequest()
        file = self.open_file(b"abc")
        BlobSender(request, file, 8, chunk_size=4).start()  # type: ignore[arg-type]
        self.assertTrue(request.lost)
        self.assertFalse(request.finished)
        self.assertTrue(file.closed)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


async def wait_until(condition: Any, timeout: float = 5.0) -> None:
    """Poll ``condition`` on the reactor until it is true."""
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


class SampleImagesMixin:
    """A fake image service holding one sample image and any random blobs."""

    def set_up_images(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(_remove_tree, self.directory)
        self.images = FakeImageService()
        self.sample = write_sample_image(self.directory, {"x": b"y"})
        self.images.add_sample_image("shell/git", "latest", self.sample)

    def add_random_blob(self, size: int) -> tuple[bytes, str]:
        """Serve ``size`` random bytes as a blob; returns them and their digest."""
        data = os.urandom(size)
        digest = sha256_digest(data)
        path = os.path.join(self.directory, digest.split(":")[1])
        with open(path, "wb") as out:
            out.write(data)
        self.images.blobs[digest] = LocalBlob(path, len(data), digest)
        return data, digest

    def start_blob_pool(self, size: int) -> ThreadPoolService:
        """A started thread pool for sendfile, stopped at the end of the test."""
        pool = ThreadPoolService(reactor, size, name="test-blobs")
        pool.startService()
        self.addCleanup(pool.stopService)
        return pool


class LoopbackTests(SampleImagesMixin, TestCase):
    """The real site on a loopback port."""

    def setUp(self) -> None:
        self.set_up_images()
        self.base = serve_locally(self, make_site(self.images))
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.port = int(self.base.rsplit(":", 1)[1])

    async def test_large_blob_streams(self) -> None:
        """A multi-MiB blob arrives whole and intact, also in a range."""
        data, digest = self.add_random_blob(6 * 1024 * 1024 + 123)
        response = await treq.get(self.base + "/v2/a/blobs/" + digest, pool=self.pool)
        body = await response.content()
        self.assertEqual(response.code, 200)
        self.assertEqual(hashlib.sha256(body).hexdigest(), digest.split(":")[1])
        response = await treq.get(self.base + "/v2/a/blobs/" + digest, pool=self.pool,
                                  headers={b"Range": [b"bytes=1000000-4999999"]})
        body = await response.content()
        self.assertEqual(response.code, 206)
        self.assertEqual(body, data[1000000:5000000])

    async def test_keep_alive(self) -> None:
        """Many requests on persistent connections are all answered."""
        for _ in range(20):
            response = await treq.get(self.base + "/v2/shell/git/manifests/latest",
                                      pool=self.pool)
            self.assertEqual(await response.content(),
                             self.sample.image.docker.body)

    async def test_disconnect_cancels_own_wait(self) -> None:
        """A client leaving cancels its own wait and not another client's."""
        self.images.hold = True
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        leaving = RawClient(b"GET /v2/shell/git/manifests/latest HTTP/1.1\r\n"
                            b"Host: x\r\n\r\n")
        await connectProtocol(endpoint, leaving)
        await wait_until(lambda: len(self.images.held) == 1)
        staying = treq.get(self.base + "/v2/shell/git/manifests/latest", pool=self.pool)
        await wait_until(lambda: len(self.images.held) == 2)
        first, second = self.images.held
        leaving.transport.loseConnection()
        await leaving.closed
        await wait_until(lambda: first.cancelled)
        self.assertFalse(second.cancelled)
        self.assertEqual(leaving.received, b"")
        second.release()
        response = await staying
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), self.sample.image.docker.body)

    async def test_access_log(self) -> None:
        """Each request produces one access event with its fields."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        response = await treq.get(self.base + "/v2/shell/git/manifests/latest?ns=x",
                                   pool=self.pool)
        body = await response.content()
        response = await treq.head(self.base + "/v2/nope/blobs/sha256:x", pool=self.pool)
        await response.content()
        access = [event for event in events
                  if event.get("log_namespace") == "nixeryd.access"]
        self.assertEqual(len(access), 2)
        first, second = access
        self.assertEqual(
            (first["method"], first["path"], first["status"], first["bytes"],
             first["client"]),
            ("GET", "/v2/shell/git/manifests/latest?ns=x", 200, len(body), "127.0.0.1"))
        self.assertGreaterEqual(first["duration"], 0)
        self.assertEqual((second["method"], second["status"]), ("HEAD", 400))

    async def test_socket_pipelining(self) -> None:
        """Two pipelined requests on one socket get two answers in order."""
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        client = RawClient(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
                           b"GET /v2/a/blobs/x HTTP/1.1\r\nHost: x\r\n"
                           b"Connection: close\r\n\r\n")
        await connectProtocol(endpoint, client)
        await client.closed
        self.assertEqual(client.received.count(b"HTTP/1.1 "), 2)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200 "))
        self.assertIn(b"HTTP/1.1 400 ", client.received)



class SendfileLoopbackTests(LoopbackTests):
    """
    The same loopback tests with blob bodies sent by ``sendfile`` from a
    thread pool, as the daemon serves them.
    """

    def setUp(self) -> None:
        super().setUp()
        self.blob_pool = self.start_blob_pool(4)
        self.base = serve_locally(self, make_site(self.images, self.blob_pool))
        self.port = int(self.base.rsplit(":", 1)[1])

    async def test_blob_sent_by_sendfile(self) -> None:
        """On a plain TCP connection the body goes out through the blob pool."""
        calls = []
        original = self.blob_pool.run

        def run(function: Any, *args: Any) -> Any:
            calls.append(function)
            return original(function, *args)

        self.blob_pool.run = run  # type: ignore[method-assign]
        [blob] = [b for b in self.sample.blobs if b.size > 0][:1]
        response = await treq.get(self.base + "/v2/a/blobs/" + blob.digest, pool=self.pool)
        body = await response.content()
        self.assertEqual(sha256_digest(body), blob.digest)
        self.assertEqual([f.__name__ for f in calls], ["send_file_range"])

    async def test_client_leaving_mid_blob(self) -> None:
        """
        A client that disconnects during a large body ends that response;
        the server goes on answering others.
        """
        data, digest = self.add_random_blob(64 * 1024 * 1024)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        leaving = RawClient(b"GET /v2/a/blobs/" + digest.encode() + b" HTTP/1.1\r\n"
                            b"Host: x\r\n\r\n")
        await connectProtocol(endpoint, leaving)
        await wait_until(lambda: len(leaving.received) > 1024 * 1024)
        leaving.transport.loseConnection()
        await leaving.closed
        self.assertLess(len(leaving.received), len(data))
        response = await treq.get(self.base + "/v2/shell/git/manifests/latest",
                                  pool=self.pool)
        self.assertEqual(await response.content(), self.sample.image.docker.body)
        await wait_until(lambda: not self.blob_pool.pool.working)


class SendfileSlotTests(SampleImagesMixin, TestCase):
    """Blob bodies when every sendfile thread is taken."""

    def setUp(self) -> None:
        self.set_up_images()
        self.blob_pool = self.start_blob_pool(1)
        self.site = make_site(self.images, self.blob_pool)
        self.base = serve_locally(self, self.site)
        self.port = int(self.base.rsplit(":", 1)[1])
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    async def test_busy_pool_falls_back(self) -> None:
        """
        While a client that reads nothing holds the only thread, other blob
        downloads are still served whole (through the reactor), and the
        thread is given back when that client leaves.
        """
        _, digest = self.add_random_blob(64 * 1024 * 1024)
        resource = self.site.resource.children[b"v2"]
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        stalled = RawClient(b"GET /v2/a/blobs/" + digest.encode() + b" HTTP/1.1\r\n"
                            b"Host: x\r\n\r\n")
        await connectProtocol(endpoint, stalled)
        stalled.transport.pauseProducing()
        await wait_until(lambda: resource._free_blob_threads == 0)
        [blob] = [b for b in self.sample.blobs if b.size > 0][:1]
        response = await treq.get(self.base + "/v2/a/blobs/" + blob.digest, pool=self.pool)
        self.assertEqual(sha256_digest(await response.content()), blob.digest)
        stalled.transport.loseConnection()
        await stalled.closed
        await wait_until(lambda: resource._free_blob_threads == 1, timeout=10)


class SendfileDrainTests(SynchronousTestCase):
    """Waiting for the response headers to leave Twisted's buffer."""

    def test_backs_off_then_gives_up(self) -> None:
        """
        A connection whose buffer never drains is checked ever more rarely
        (never in a busy loop), then dropped after the stall timeout, and
        the thread slot is released.
        """
        from nixeryd.registry import sendfile

        class Transport:
            dataBuffer = b"headers"
            offset = 0
            _tempDataLen = 0

        class Request:
            channel = object()
            lost = False

            def loseConnection(self) -> None:
                self.lost = True

        released = []
        clock = Clock()
        request = Request()
        opened = open(os.devnull, "rb")
        sender = sendfile.SendfileSender(
            request, Transport(), opened, 0, 10, runner=None, clock=clock,  # type: ignore[arg-type]
            release=lambda: released.append(True))
        sender._when_drained()
        delays = []
        while clock.getDelayedCalls():
            [call] = clock.getDelayedCalls()
            delays.append(call.getTime() - clock.seconds())
            clock.advance(delays[-1])
        self.assertTrue(request.lost)
        self.assertEqual(released, [True])
        self.assertTrue(opened.closed)
        self.assertEqual(delays[:3], [0.0, 0.001, 0.002])
        self.assertEqual(max(delays), 0.25)
        self.assertLess(len(delays), sendfile.STALL_TIMEOUT / 0.25 + 20)

"""
Tests for :mod:`nixeryd.registry.blobs` and :mod:`nixeryd.registry.streaming`:
blob responses (redirects, ranges, conditions) and the push producer that
streams local blobs.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IResponse

from nixeryd.build.manifest import sha256_digest
from nixeryd.core.documents import LocalBlob, RedirectBlob
from nixeryd.registry.streaming import BlobSender
from tests.registrycases import (
    UNKNOWN_DIGEST,
    FakeStreamedRequest,
    StubRegistryTestCase,
    content_length,
    header,
)


class BlobTests(StubRegistryTestCase):
    """Blobs from local files and redirects."""

    def setUp(self) -> None:
        super().setUp()
        self.data = bytes(range(256)) * 40 + b"tail"
        self.path = os.path.join(self.directory, "blob")
        with open(self.path, "wb") as out:
            out.write(self.data)
        self.digest = sha256_digest(self.data)
        self.images.blobs[self.digest] = LocalBlob(self.path, len(self.data), self.digest)
        self.url = "/v2/shell/git/blobs/" + self.digest

    def assert_blob_headers(self, response: IResponse, length: int) -> None:
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

    def test_huge_positions(self) -> None:
        """
        Positions of 5,000 digits are a 416 (a start past the end) or the
        rest of the blob (an end past it), never a 500.
        """
        huge = b"9" * 5000
        response, body = self.fetch(b"GET", self.url, {b"Range": [b"bytes=" + huge + b"-"]})
        self.assertEqual((response.code, body), (416, b""))
        response, body = self.fetch(b"GET", self.url, {b"Range": [b"bytes=1-" + huge]})
        self.assertEqual((response.code, body), (206, self.data[1:]))

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
        """A remote blob's GET is a 303 to its URL."""
        self.images.blobs[UNKNOWN_DIGEST] = RedirectBlob(
            "https://storage.example/layers/x?sig=1", UNKNOWN_DIGEST, 1234)
        response, body = self.fetch(b"GET", "/v2/a/blobs/" + UNKNOWN_DIGEST)
        self.assertEqual(response.code, 303)
        self.assertEqual(header(response, b"location"),
                         b"https://storage.example/layers/x?sig=1")
        self.assertEqual(header(response, b"docker-content-digest"),
                         UNKNOWN_DIGEST.encode())

    def test_redirect_head(self) -> None:
        """
        A remote blob's HEAD is answered at once with its size and digest:
        its URL is signed for GET, so a HEAD that followed it would fail.
        """
        self.images.blobs[UNKNOWN_DIGEST] = RedirectBlob(
            "https://storage.example/layers/x?sig=1", UNKNOWN_DIGEST, 1234)
        response, body = self.fetch(b"HEAD", "/v2/a/blobs/" + UNKNOWN_DIGEST)
        self.assertEqual((response.code, body), (200, b""))
        self.assertIsNone(header(response, b"location"))
        self.assertEqual(content_length(response), 1234)
        self.assertEqual(header(response, b"docker-content-digest"),
                         UNKNOWN_DIGEST.encode())


class BlobSenderTests(SynchronousTestCase):
    """:class:`BlobSender` on its own."""

    def open_file(self, data: bytes) -> BinaryIO:
        path = self.mktemp()
        with open(path, "wb") as out:
            out.write(data)
        file = open(path, "rb")
        self.addCleanup(file.close)
        return file

    def test_pause_and_resume(self) -> None:
        """The sender stops while paused and finishes after resuming."""
        request = FakeStreamedRequest()
        file = self.open_file(b"abcdefghij")
        sender = BlobSender(request, file, 10, chunk_size=4)
        request.after_write = sender.pauseProducing
        sender.start()
        self.assertEqual(request.written, [b"abcd"])
        sender.resumeProducing()
        self.assertEqual(request.written, [b"abcd", b"efgh"])
        request.after_write = None
        sender.resumeProducing()
        self.assertEqual(request.written, [b"abcd", b"efgh", b"ij"])
        self.assertTrue(request.finished)
        self.assertIsNone(request.producer)
        self.assertTrue(file.closed)

    def test_stop(self) -> None:
        """stopProducing closes the file and nothing more is written."""
        request = FakeStreamedRequest()
        file = self.open_file(b"abcdefgh")
        sender = BlobSender(request, file, 8, chunk_size=4)
        request.after_write = sender.pauseProducing
        sender.start()
        sender.stopProducing()
        sender.resumeProducing()
        self.assertEqual(request.written, [b"abcd"])
        self.assertTrue(file.closed)
        self.assertFalse(request.finished)

    def test_short_file(self) -> None:
        """A file shorter than its size is logged and the connection dropped."""
        request = FakeStreamedRequest()
        file = self.open_file(b"abc")
        BlobSender(request, file, 8, chunk_size=4).start()
        self.assertTrue(request.lost)
        self.assertFalse(request.finished)
        self.assertTrue(file.closed)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


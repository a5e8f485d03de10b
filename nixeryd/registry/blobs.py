"""
Blob responses: a redirect for a blob stored elsewhere, or a local file
with the conditional and range handling clients rely on to resume
downloads (:class:`BlobResponder`).

Local bodies go out with ``sendfile`` from the blob pool's threads on
plain TCP connections (:mod:`nixeryd.registry.sendfile`), else through
the reactor (:mod:`nixeryd.registry.streaming`).  HEAD requests get the
same headers as GET without the file being opened.
"""

from __future__ import annotations

from typing import BinaryIO, Optional, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from nixeryd.core import defaults
from nixeryd.core.documents import LocalBlob, RedirectBlob
from nixeryd.core.errors import BlobUnknown
from nixeryd.core.threads import Runner
from nixeryd.registry.httpnames import (
    CONTENT_LENGTH,
    CONTENT_TYPE,
    DIGEST_HEADER,
    GET,
    IMMUTABLE,
    OCTET_STREAM,
)
from nixeryd.registry.ranges import (
    ByteRange,
    RangeNotSatisfiable,
    etag_matches,
    parse_range,
)
from nixeryd.registry.sendfile import SendfileSender, sendfile_transport
from nixeryd.registry.streaming import BlobSender


class BlobPool(Runner, Protocol):
    """
    The thread pool that sends blob bodies with ``sendfile``:
    :class:`nixeryd.core.threads.ThreadPoolService` in the daemon.
    """

    @property
    def size(self) -> int:
        """The most threads the pool runs at once."""


class BlobResponder:
    """
    Answers a request for a blob the image service has found.

    :param blob_pool: threads for ``sendfile``; without one, or while all
        its threads are sending, bodies are copied through the reactor
        thread.
    :param clock: schedules a ``sendfile`` sender's checks.

    :ivar free_sendfile_threads: blob-pool threads not taken by a body
        being sent; when none is free, bodies are streamed through the
        reactor instead.
    :ivar stall_timeout: seconds a ``sendfile`` body may wait for its
        client to read before the connection is aborted (bodies streamed
        through the reactor are aborted by their channel's stall rule,
        :mod:`nixeryd.registry.deadlines`).
    """

    def __init__(self, blob_pool: Optional[BlobPool], clock: IReactorTime) -> None:
        self._blob_pool = blob_pool
        self._clock = clock
        self.free_sendfile_threads = blob_pool.size if blob_pool is not None else 0
        self.stall_timeout = defaults.STALL_TIMEOUT

    def respond(self, request: Request, blob: LocalBlob | RedirectBlob) -> Optional[bytes]:
        """
        Set the status and headers for ``blob`` and return the body, or
        ``None`` when a sender has taken over the response.
        """
        digest = blob.digest.encode("ascii")
        if isinstance(blob, RedirectBlob):
            return self._redirect(request, blob, digest)
        return self._local_blob(request, blob, digest)

    def _redirect(self, request: Request, blob: RedirectBlob, digest: bytes) -> bytes:
        """
        A GET is sent to the blob's URL; a HEAD is answered here, with the
        size the storage found, since the URL is signed for GET alone (a
        client following a redirect with HEAD would be refused there).
        """
        headers = request.responseHeaders
        headers.setRawHeaders(DIGEST_HEADER, [digest])
        if request.method != GET:
            headers.setRawHeaders(CONTENT_TYPE, [OCTET_STREAM])
            headers.setRawHeaders(b"ETag", [b'"%s"' % (digest,)])
            headers.setRawHeaders(b"Cache-Control", [IMMUTABLE])
            headers.setRawHeaders(CONTENT_LENGTH, [b"%d" % (blob.size,)])
            return b""
        request.setResponseCode(303)
        headers.setRawHeaders(b"Location", [blob.url.encode("ascii")])
        headers.setRawHeaders(CONTENT_LENGTH, [b"0"])
        return b""

    def _local_blob(self, request: Request, blob: LocalBlob,
                    digest: bytes) -> Optional[bytes]:
        size = blob.size
        etag = b'"%s"' % (digest,)
        selected: Optional[ByteRange] = None
        unsatisfiable = False
        if_none_match = request.getHeader(b"if-none-match")
        not_modified = if_none_match is not None and etag_matches(if_none_match, etag)
        range_header = request.getHeader(b"range")
        if range_header is not None and not not_modified:
            if_range = request.getHeader(b"if-range")
            if if_range is None or if_range.strip() == etag:
                try:
                    selected = parse_range(range_header, size)
                except RangeNotSatisfiable:
                    unsatisfiable = True

        length = selected.length if selected is not None else size
        file: Optional[BinaryIO] = None
        if request.method == GET and not not_modified and not unsatisfiable and length:
            try:
                file = open(blob.path, "rb")
            except FileNotFoundError:
                raise BlobUnknown("blob unknown to registry",
                                  {"digest": blob.digest}) from None
            if selected is not None:
                file.seek(selected.start)

        headers = request.responseHeaders
        headers.setRawHeaders(DIGEST_HEADER, [digest])
        headers.setRawHeaders(b"ETag", [etag])
        headers.setRawHeaders(b"Cache-Control", [IMMUTABLE])
        headers.setRawHeaders(b"Accept-Ranges", [b"bytes"])
        if not_modified:
            request.setResponseCode(304)
            return b""
        if unsatisfiable:
            request.setResponseCode(416)
            headers.setRawHeaders(b"Content-Range", [b"bytes */%d" % (size,)])
            headers.setRawHeaders(CONTENT_LENGTH, [b"0"])
            return b""
        headers.setRawHeaders(CONTENT_TYPE, [OCTET_STREAM])
        if selected is not None:
            request.setResponseCode(206)
            headers.setRawHeaders(b"Content-Range", [
                b"bytes %d-%d/%d" % (selected.start, selected.end, size)])
        headers.setRawHeaders(CONTENT_LENGTH, [b"%d" % (length,)])
        if file is None:
            return b""
        self._send(request, file, length)
        return None

    def _send(self, request: Request, file: BinaryIO, length: int) -> None:
        """Start sending ``length`` bytes of ``file`` from where it is positioned."""
        transport = (sendfile_transport(request)
                     if self.free_sendfile_threads > 0 else None)
        if transport is not None and self._blob_pool is not None:
            self.free_sendfile_threads -= 1
            SendfileSender(request, transport, file, file.tell(), length,
                           self._blob_pool, self._clock,
                           release=self._release_sendfile_thread,
                           stall_timeout=self.stall_timeout).start()
        else:
            BlobSender(request, file, length).start()

    def _release_sendfile_thread(self) -> None:
        self.free_sendfile_threads += 1

"""
The registry's HTTP layer: the ``/v2`` API, blob streaming and the site.

This is the only module that touches Twisted ``Request`` objects.  It turns
paths into routes (:mod:`nixeryd.registry.routes`), picks a manifest format
(:mod:`nixeryd.registry.negotiate`), asks the image service for images, manifests,
blobs and tags, and writes responses and registry JSON errors.

Request handlers are coroutines run by :func:`render_async`, which ties
each request's wait to its connection: a client that goes away cancels its
own wait and nothing else.  Warm manifests (:meth:`ImageSource.cached_image`)
are answered synchronously.  Local blobs honour single byte ranges and are
sent with ``sendfile`` from a thread pool on plain TCP connections
(:mod:`nixeryd.registry.sendfile`), else streamed by a push producer
(:class:`BlobSender`); HEAD requests get the same headers as GET without
the file being opened.

:class:`RegistrySite` adds the plain-port TLS guard and writes one access
log event per request.
"""

from __future__ import annotations

import json
import re
import time
from bisect import bisect_right
from typing import Any, BinaryIO, Callable, Coroutine, Optional, Protocol
from urllib.parse import quote

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from nixeryd.core.documents import Image, LocalBlob, ManifestDocument, RedirectBlob
from nixeryd.core.errors import BlobUnknown, RegistryError, Unsupported
from nixeryd.registry.negotiate import choose_manifest
from nixeryd.registry.sendfile import SendfileSender, sendfile_transport
from nixeryd.registry.routes import (
    Blob,
    ManifestByDigest,
    ManifestByTag,
    Ping,
    TagsList,
    parse_v2_path,
)
from nixeryd.registry.tlsguard import TLSGuardChannel

log = Logger()
access_log = Logger(namespace="nixeryd.access")

BLOB_CHUNK_SIZE = 256 * 1024
"""Bytes read from a blob file per write to the connection."""

_GET = b"GET"
_HEAD = b"HEAD"
_ALLOWED_METHODS = b"GET, HEAD"

_API_VERSION_HEADER = b"Docker-Distribution-API-Version"
_API_VERSION = b"registry/2.0"
_CONTENT_TYPE = b"Content-Type"
_CONTENT_LENGTH = b"Content-Length"
_DIGEST_HEADER = b"Docker-Content-Digest"
_JSON = b"application/json"
_OCTET_STREAM = b"application/octet-stream"
_IMMUTABLE = b"public, max-age=31536000, immutable"
_PING_BODY = b"{}"


class ImageSource(Protocol):
    """
    What the web layer needs from the image service.

    :class:`nixeryd.service.images.ImageService` provides it; so does the fake in
    :mod:`nixeryd.testing.images`.  Every call returns a fresh awaitable for its
    caller, so cancelling one caller's wait affects no one else.
    """

    def cached_image(self, name: str, tag: str) -> Image | None:
        """
        The image named ``name`` at ``tag`` if it can be answered at once
        from memory, else ``None``; never raises for a valid route.
        """

    async def image(self, name: str, tag: str) -> Image:
        """The image named ``name`` at ``tag``, built if needed."""

    async def manifest(self, digest: str) -> ManifestDocument:
        """A manifest served before, by digest."""

    async def blob(self, digest: str) -> LocalBlob | RedirectBlob:
        """Where to find the blob with this digest."""

    async def tags(self, name: str) -> list[str]:
        """The tags an image name can be pulled with."""


class MethodNotAllowed(Unsupported):
    """A method other than GET or HEAD; this registry is read-only."""


def _error_body(error: RegistryError) -> bytes:
    """The spec's JSON error document for one error."""
    return json.dumps({"errors": [error.to_json()]}, default=str).encode("utf-8")


def write_error(request: Request, error: RegistryError) -> None:
    """
    Answer ``request`` with ``error`` as a registry JSON error and finish it.

    Headers a handler may have set for a successful response are replaced
    or removed first.
    """
    body = _error_body(error)
    request.setResponseCode(error.status)
    headers = request.responseHeaders
    for name in (_DIGEST_HEADER, b"ETag", b"Cache-Control", b"Content-Range",
                 b"Accept-Ranges", b"Vary", b"Location"):
        headers.removeHeader(name)
    headers.setRawHeaders(_CONTENT_TYPE, [_JSON])
    headers.setRawHeaders(_CONTENT_LENGTH, [b"%d" % (len(body),)])
    if isinstance(error, MethodNotAllowed):
        headers.setRawHeaders(b"Allow", [_ALLOWED_METHODS])
    request.write(body)
    request.finish()


def _describe(request: Request) -> dict[str, str]:
    """Log fields naming a request."""
    return {
        "method": request.method.decode("ascii", "backslashreplace"),
        "path": request.uri.decode("ascii", "backslashreplace"),
    }


def _write_failure(request: Request, failure: Failure) -> None:
    """
    Answer ``request`` with the error that ``failure`` carries.

    Registry errors go to the client as they are; anything else is logged
    with its traceback and reported as a 500 ``UNKNOWN``.  If the response
    has already started there is no way to report an error, so the
    connection is dropped to make the truncation visible.
    """
    error = failure.value
    if not isinstance(error, RegistryError):
        log.failure("Unexpected error while answering {method} {path}",
                    failure, **_describe(request))
        error = RegistryError("internal server error", None)
    if request.startedWriting:
        request.loseConnection()
        return
    write_error(request, error)


def render_async(request: Request,
                 handler: Callable[..., Coroutine[Any, Any, Optional[bytes]]],
                 *args: Any) -> object:
    """
    Run a coroutine handler for ``request`` and return ``NOT_DONE_YET``.

    The handler sets the status and headers and returns the body, or
    ``None`` if it has arranged to finish the response itself (streaming).
    It may raise :class:`~nixeryd.core.errors.RegistryError` for a JSON error.

    If the client disconnects first, the handler's wait is cancelled:
    cancelling the Deferred of this request cancels only what this
    coroutine awaits, never work shared with other requests.  Nothing is
    written after a disconnect, and any error in the response code itself
    is logged rather than lost.
    """
    finished = request.notifyFinish()
    result = Deferred.fromCoroutine(handler(request, *args))

    def cancel_wait(reason: Failure) -> None:
        result.cancel()

    finished.addErrback(cancel_wait)

    def respond(body: Optional[bytes]) -> None:
        if body is not None and not finished.called:
            request.write(body)
            request.finish()

    def fail(failure: Failure) -> None:
        if finished.called:
            if not failure.check(CancelledError, RegistryError):
                log.failure("Error after the client of {method} {path} went away",
                            failure, **_describe(request))
            return
        _write_failure(request, failure)

    result.addCallbacks(respond, fail)
    result.addErrback(
        lambda failure: log.failure("Could not answer {method} {path}",
                                    failure, **_describe(request)))
    return NOT_DONE_YET


@frozen
class ByteRange:
    """
    One satisfiable byte range of a blob.

    :ivar start: the first byte served.
    :ivar end: the last byte served (inclusive, as in ``Content-Range``).
    """

    start: int
    end: int

    @property
    def length(self) -> int:
        """How many bytes the range holds."""
        return self.end - self.start + 1


class RangeNotSatisfiable(Exception):
    """A well-formed ``Range`` that selects no byte of the blob."""


_RANGE = re.compile(rb"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*\Z", re.IGNORECASE)


def parse_range(header: bytes, size: int) -> Optional[ByteRange]:
    """
    The byte range that a ``Range`` header selects in a blob of ``size``.

    Single ranges are supported: ``bytes=a-b``, ``bytes=a-`` and
    ``bytes=-n``.  Headers that are malformed, use another unit or ask for
    several ranges return ``None``, meaning "serve everything", which
    RFC 9110 allows.

    :raises RangeNotSatisfiable: when the range starts past the end of the
        blob, or is an empty suffix.
    """
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        if last:
            end = int(last)
            if end < start:
                return None
        else:
            end = size - 1
        if start >= size:
            raise RangeNotSatisfiable()
        return ByteRange(start, min(end, size - 1))
    if not last:
        return None
    suffix = int(last)
    if suffix == 0 or size == 0:
        raise RangeNotSatisfiable()
    return ByteRange(max(0, size - suffix), size - 1)


def _etag_matches(header: bytes, etag: bytes) -> bool:
    """Whether an ``If-None-Match`` value names ``etag`` (or is ``*``)."""
    for candidate in header.split(b","):
        candidate = candidate.strip()
        if candidate.startswith(b"W/"):
            candidate = candidate[2:]
        if candidate == etag or candidate == b"*":
            return True
    return False


@implementer(IPushProducer)
class BlobSender:
    """
    Streams part of an open file to a request, as a push producer.

    Chunks are read and written while the connection accepts them; when
    its buffer fills, Twisted pauses the sender and resumes it once the
    buffer has drained, so no more than a chunk or two is ever in memory.
    The file is closed when the body is complete or the client goes away.
    """

    def __init__(self, request: Request, file: BinaryIO, length: int,
                 chunk_size: int = BLOB_CHUNK_SIZE) -> None:
        self._request = request
        self._file: Optional[BinaryIO] = file
        self._remaining = length
        self._chunk_size = chunk_size
        self._paused = False
        self._sending = False

    def start(self) -> None:
        """Register with the request and send the first chunks."""
        self._request.registerProducer(self, True)
        self._send()

    def _send(self) -> None:
        if self._sending:
            return
        self._sending = True
        try:
            while not self._paused and self._file is not None:
                if self._remaining == 0:
                    self._complete()
                    break
                wanted = min(self._chunk_size, self._remaining)
                data = self._file.read(wanted)
                if len(data) != wanted:
                    raise OSError("blob file is shorter than its recorded size")
                self._remaining -= wanted
                self._request.write(data)
        except Exception:
            log.failure("Could not send blob for {method} {path}",
                        **_describe(self._request))
            self._close()
            if self._request.channel is not None:
                self._request.unregisterProducer()
                self._request.loseConnection()
        finally:
            self._sending = False

    def _complete(self) -> None:
        self._close()
        self._request.unregisterProducer()
        self._request.finish()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def pauseProducing(self) -> None:
        """Stop sending until resumed (the connection's buffer is full)."""
        self._paused = True

    def resumeProducing(self) -> None:
        """Send more (the connection's buffer has drained)."""
        self._paused = False
        self._send()

    def stopProducing(self) -> None:
        """The connection is gone: close the file and send nothing more."""
        self._close()


def _set_manifest_headers(request: Request, document: ManifestDocument) -> bytes:
    """Set the headers of a manifest response and return its body."""
    headers = request.responseHeaders
    body = document.body
    headers.setRawHeaders(_CONTENT_TYPE, [document.media_type.encode("ascii")])
    headers.setRawHeaders(_CONTENT_LENGTH, [b"%d" % (len(body),)])
    headers.setRawHeaders(_DIGEST_HEADER, [document.digest.encode("ascii")])
    return body


class RegistryResource(Resource):
    """
    The ``/v2`` API, mounted at ``/v2`` and dispatching on the rest of the
    path itself (names contain ``/``).

    :param images: the image service.
    :param blob_runner: a thread pool (with ``run`` and ``size``) for
        :mod:`nixeryd.registry.sendfile`; without one, or while all its threads are
        sending, blob bodies are copied through the reactor thread.
    :param clock: the reactor, for scheduling.
    """

    isLeaf = True

    def __init__(self, images: ImageSource, blob_runner: Any = None,
                 clock: Any = None) -> None:
        super().__init__()
        self._images = images
        self._blob_runner = blob_runner
        #: Blob-pool threads not taken by a body being sent; when none is
        #: free, bodies are streamed through the reactor instead.
        self._free_blob_threads = blob_runner.size if blob_runner is not None else 0
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock

    def render(self, request: Request) -> object:
        """Route one request; see the module docstring for the API."""
        request.responseHeaders.setRawHeaders(_API_VERSION_HEADER, [_API_VERSION])
        method = request.method
        try:
            if method != _GET and method != _HEAD:
                raise MethodNotAllowed(
                    "this registry is read-only: only GET and HEAD are supported",
                    {"method": method.decode("ascii", "backslashreplace")})
            route = parse_v2_path(request.postpath)
        except Exception:
            _write_failure(request, Failure())
            return NOT_DONE_YET
        route_type = type(route)
        if route_type is ManifestByTag:
            image = self._images.cached_image(route.name, route.tag)
            if image is not None:
                # Warm images are answered at once, without a coroutine.
                body = self._manifest_body(request, image)
                return b"" if method == _HEAD else body
            return render_async(request, self._manifest_by_tag, route)
        if route_type is Blob:
            return render_async(request, self._blob, route)
        if route_type is ManifestByDigest:
            return render_async(request, self._manifest_by_digest, route)
        if route_type is TagsList:
            return render_async(request, self._tags, route)
        assert route_type is Ping
        headers = request.responseHeaders
        headers.setRawHeaders(_CONTENT_TYPE, [_JSON])
        headers.setRawHeaders(_CONTENT_LENGTH, [b"2"])
        return b"" if method == _HEAD else _PING_BODY

    async def _manifest_by_tag(self, request: Request,
                               route: ManifestByTag) -> bytes:
        image = await self._images.image(route.name, route.tag)
        return self._manifest_body(request, image)

    def _manifest_body(self, request: Request, image: Image) -> bytes:
        """Headers and body of the manifest the client accepts best."""
        document = choose_manifest(
            image, request.requestHeaders.getRawHeaders(b"accept"))
        request.responseHeaders.setRawHeaders(b"Vary", [b"Accept"])
        return _set_manifest_headers(request, document)

    async def _manifest_by_digest(self, request: Request,
                                  route: ManifestByDigest) -> bytes:
        document = await self._images.manifest(route.digest)
        body = _set_manifest_headers(request, document)
        request.responseHeaders.setRawHeaders(b"Cache-Control", [_IMMUTABLE])
        return body

    async def _tags(self, request: Request, route: TagsList) -> bytes:
        tags = sorted(await self._images.tags(route.name))
        page, next_query = paginate(
            tags, _query_value(request, b"n"), _query_value(request, b"last"))
        body = json.dumps({"name": route.name, "tags": page}).encode("utf-8")
        headers = request.responseHeaders
        if next_query is not None:
            headers.setRawHeaders(b"Link", [
                b'</v2/%s/tags/list?%s>; rel="next"'
                % (route.name.encode("ascii"), next_query.encode("ascii"))])
        headers.setRawHeaders(_CONTENT_TYPE, [_JSON])
        headers.setRawHeaders(_CONTENT_LENGTH, [b"%d" % (len(body),)])
        return body

    async def _blob(self, request: Request, route: Blob) -> Optional[bytes]:
        blob = await self._images.blob(route.digest)
        digest = blob.digest.encode("ascii")
        headers = request.responseHeaders
        if isinstance(blob, RedirectBlob):
            request.setResponseCode(303)
            headers.setRawHeaders(b"Location", [blob.url.encode("ascii")])
            headers.setRawHeaders(_DIGEST_HEADER, [digest])
            headers.setRawHeaders(_CONTENT_LENGTH, [b"0"])
            return b""
        return self._local_blob(request, blob, digest)

    def _local_blob(self, request: Request, blob: LocalBlob,
                    digest: bytes) -> Optional[bytes]:
        size = blob.size
        etag = b'"%s"' % (digest,)
        selected: Optional[ByteRange] = None
        unsatisfiable = False
        if_none_match = request.getHeader(b"if-none-match")
        not_modified = if_none_match is not None and _etag_matches(if_none_match, etag)
        range_header = request.getHeader(b"range")
        if range_header is not None and not not_modified:
            if_range = request.getHeader(b"if-range")
            if if_range is None or if_range.strip() == etag:
                try:
                    selected = parse_range(range_header, size)
                except RangeNotSatisfiable:
                    unsatisfiable = True

        file: Optional[BinaryIO] = None
        if request.method == _GET and not not_modified and not unsatisfiable:
            length = selected.length if selected is not None else size
            if length:
                try:
                    file = open(blob.path, "rb")
                except FileNotFoundError:
                    raise BlobUnknown("blob unknown to registry",
                                      {"digest": blob.digest}) from None
                if selected is not None:
                    file.seek(selected.start)

        headers = request.responseHeaders
        headers.setRawHeaders(_DIGEST_HEADER, [digest])
        headers.setRawHeaders(b"ETag", [etag])
        headers.setRawHeaders(b"Cache-Control", [_IMMUTABLE])
        headers.setRawHeaders(b"Accept-Ranges", [b"bytes"])
        if not_modified:
            request.setResponseCode(304)
            return b""
        if unsatisfiable:
            request.setResponseCode(416)
            headers.setRawHeaders(b"Content-Range", [b"bytes */%d" % (size,)])
            headers.setRawHeaders(_CONTENT_LENGTH, [b"0"])
            return b""
        headers.setRawHeaders(_CONTENT_TYPE, [_OCTET_STREAM])
        if selected is not None:
            request.setResponseCode(206)
            headers.setRawHeaders(b"Content-Range", [
                b"bytes %d-%d/%d" % (selected.start, selected.end, size)])
            length = selected.length
        else:
            length = size
        headers.setRawHeaders(_CONTENT_LENGTH, [b"%d" % (length,)])
        if file is None:
            return b""
        transport = (sendfile_transport(request)
                     if self._free_blob_threads > 0 else None)
        if transport is not None:
            self._free_blob_threads -= 1
            SendfileSender(request, transport, file, file.tell(), length,
                           self._blob_runner, self._clock,
                           release=self._release_blob_thread).start()
        else:
            BlobSender(request, file, length).start()
        return None

    def _release_blob_thread(self) -> None:
        self._free_blob_threads += 1


def _query_value(request: Request, name: bytes) -> Optional[str]:
    """The first value of a query parameter, or ``None``."""
    values = request.args.get(name)
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


class PaginationInvalid(Unsupported):
    """A ``tags/list`` ``n`` parameter that is not a non-negative integer."""

    status = 400


def paginate(tags: list[str], n: Optional[str],
             last: Optional[str]) -> tuple[list[str], Optional[str]]:
    """
    One page of a sorted tag list, as the distribution spec describes.

    :param tags: every tag, sorted.
    :param n: the ``n`` query parameter (page size), if given; ``0`` gives
        an empty page.
    :param last: the ``last`` query parameter: the page starts after it.
    :return: the page, and the query string of the next page if there are
        more tags after it.
    :raises PaginationInvalid: if ``n`` is not a non-negative integer.
    """
    start = bisect_right(tags, last) if last is not None else 0
    remaining = tags[start:]
    if n is None:
        return remaining, None
    if not n.isdigit() or not n.isascii():
        raise PaginationInvalid("n must be a non-negative integer", {"n": n[:50]})
    # Any n past the number of tags means "all of them"; capping the digits
    # keeps int() cheap and within Python's conversion limit.
    size = int(n) if len(n) <= 9 else 10 ** 9
    page = remaining[:size]
    if size and len(remaining) > size:
        return page, "n=%d&last=%s" % (size, quote(page[-1], safe=""))
    return page, None


_HOST = re.compile(
    rb"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
    rb"|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?\Z")

_INDEX_TEXT = """\
nixeryd: a container registry that builds images from Nix packages on demand.

Each /-separated part of an image name is a Nix package; "shell" adds bash
and core utilities. For example:

    docker pull {host}/shell/git
    podman run -it {host}/shell/htop htop

The registry API is served under /v2/.
"""


class IndexPage(Resource):
    """
    A plain-text page saying what this registry is and how to pull from it.

    :param status: 200 for ``/``, 404 for every other path outside ``/v2``.

    The ``Host`` header appears in the examples only when it is a plain
    host name or address (with an optional port), so the page never
    repeats arbitrary client input.
    """

    isLeaf = True

    def __init__(self, status: int) -> None:
        super().__init__()
        self._status = status

    def render(self, request: Request) -> bytes:
        """Answer GET and HEAD with the page; other methods with a 405."""
        headers = request.responseHeaders
        if request.method != _GET and request.method != _HEAD:
            request.setResponseCode(405)
            headers.setRawHeaders(b"Allow", [_ALLOWED_METHODS])
            body = b"Method not allowed.\n"
        else:
            request.setResponseCode(self._status)
            host = request.getHeader(b"host")
            if host is None or _HOST.match(host) is None:
                shown = "<registry host>"
            else:
                shown = host.decode("ascii")
            body = _INDEX_TEXT.format(host=shown).encode("utf-8")
            if self._status == 404:
                body = b"Not found.\n\n" + body
        headers.setRawHeaders(_CONTENT_TYPE, [b"text/plain; charset=utf-8"])
        headers.setRawHeaders(b"X-Content-Type-Options", [b"nosniff"])
        headers.setRawHeaders(_CONTENT_LENGTH, [b"%d" % (len(body),)])
        return b"" if request.method == _HEAD else body


class RootResource(Resource):
    """
    The site's root: ``/v2`` is the registry, ``/`` the index page, and
    everything else a 404 page.
    """

    def __init__(self, images: ImageSource, blob_runner: Any = None) -> None:
        super().__init__()
        self.putChild(b"v2", RegistryResource(images, blob_runner))
        self._index = IndexPage(200)
        self._not_found = IndexPage(404)

    def getChild(self, path: bytes, request: Request) -> Resource:
        """The index page for ``/``, the 404 page for anything else."""
        if path == b"" and not request.postpath:
            return self._index
        return self._not_found

    def render(self, request: Request) -> bytes:
        """Serve the index for a request for the root itself."""
        return self._index.render(request)


class RegistryRequest(Request):
    """A request that remembers when it started, for the access log."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = time.monotonic()


class RegistrySite(Site):
    """
    The registry's ``Site``: TLS-guarded channels and a structured access log.

    Each finished request produces one ``twisted.logger`` event with the
    fields ``method``, ``path``, ``status``, ``bytes``, ``duration``
    (seconds) and ``client``.
    """

    protocol = TLSGuardChannel  # type: ignore[assignment]
    requestFactory = RegistryRequest

    def log(self, request: Request) -> None:
        """Emit the access log event for a finished request."""
        started = getattr(request, "started", None)
        duration = 0.0 if started is None else round(time.monotonic() - started, 6)
        address = request.getClientAddress()
        access_log.info(
            "{client} {method} {path} {status} {bytes} {duration}",
            method=request.method.decode("ascii", "backslashreplace"),
            path=request.uri.decode("ascii", "backslashreplace"),
            status=request.code,
            bytes=request.sentLength,
            duration=duration,
            client=getattr(address, "host", None),
        )


def make_site(images: ImageSource, blob_runner: Any = None) -> RegistrySite:
    """
    The registry site serving ``images``; blob bodies go out with
    ``sendfile`` from ``blob_runner``'s threads when one is given.
    """
    return RegistrySite(RootResource(images, blob_runner))

"""
Ending a response: with its whole body, with a registry JSON error, or,
when an error comes too late to report, by dropping the connection.

Every error a client sees from ``/v2`` is written by :func:`write_error`,
as the distribution spec's ``{"errors": [...]}`` document with the
error's status (and ``Retry-After`` when the error says when to try again:
a transient failure, 503, or a full queue, 429); the message of
an error that belongs to a build ends with the address of the build's
page (:func:`build_page_url`), since that message is all a registry client
shows.  :func:`write_failure` decides what to do with any exception a
handler raised.
"""

from __future__ import annotations

import json
from typing import Protocol, TypedDict

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from nixeryd.core.errors import RegistryError, Unsupported
from nixeryd.registry.hosts import request_host
from nixeryd.registry.httpnames import (
    ALLOWED_METHODS,
    CONTENT_LENGTH,
    CONTENT_TYPE,
    DIGEST_HEADER,
    JSON,
)

log = Logger()

#: How long a client should wait before trying again (RFC 9110).
RETRY_AFTER = b"Retry-After"

#: Reason phrases Twisted does not know (RFC 6585).
_REASONS = {429: b"Too Many Requests"}

_SUCCESS_ONLY_HEADERS = (DIGEST_HEADER, b"ETag", b"Cache-Control", b"Content-Range",
                         b"Accept-Ranges", b"Vary", b"Location")
"""Headers a handler may have set for a successful response."""


class MethodNotAllowed(Unsupported):
    """A method other than GET or HEAD; this registry is read-only."""


class NamedRequest(Protocol):
    """The part of a request that names it in the log."""

    @property
    def method(self) -> bytes:
        """The request method, e.g. ``b"GET"``."""

    @property
    def uri(self) -> bytes:
        """The path and query as sent."""


class AddressedRequest(Protocol):
    """The part of a request that says how the registry was reached."""

    def getHeader(self, key: bytes) -> bytes | None:
        """A request header's value."""

    def isSecure(self) -> bool:
        """Whether the request came over TLS."""


class RequestFields(TypedDict):
    """Log fields naming a request."""

    method: str
    path: str


def request_fields(request: NamedRequest) -> RequestFields:
    """The log fields ``method`` and ``path`` of ``request``."""
    return {
        "method": request.method.decode("ascii", "backslashreplace"),
        "path": request.uri.decode("ascii", "backslashreplace"),
    }


def send_body(request: Request, body: bytes) -> None:
    """Write ``body`` after the headers already set, and finish ``request``."""
    request.write(body)  # type: ignore[no-untyped-call]
    request.finish()  # type: ignore[no-untyped-call]


def build_page_url(request: AddressedRequest, build_id: str) -> str:
    """
    The address of a build's page, ``/builds/<id>``: absolute, with the
    scheme the request came by and its ``Host``, when that header is a
    plain ``host[:port]``; else the path alone.
    """
    path = "/builds/" + build_id
    host = request_host(request)
    if host is None:
        return path
    return "%s://%s%s" % ("https" if request.isSecure() else "http", host, path)


def error_body(error: RegistryError, page: str | None = None) -> bytes:
    """
    The spec's JSON error document for one error; ``page``, the address of
    the error's build page, ends its message.
    """
    return json.dumps({"errors": [error.to_json(page)]}, default=str).encode("utf-8")


def write_error(request: Request, error: RegistryError) -> None:
    """
    Answer ``request`` with ``error`` as a registry JSON error and finish it.

    Headers a handler may have set for a successful response are removed
    first; ``Retry-After`` is set from the error's ``retry_after``
    (:class:`~nixeryd.core.errors.Unavailable`,
    :class:`~nixeryd.core.errors.TooManyRequests`).  A HEAD request gets
    the same status and headers, without the body.
    """
    page = None
    if error.build_id is not None:
        page = build_page_url(request, error.build_id)
    body = error_body(error, page)
    request.setResponseCode(error.status, _REASONS.get(error.status))
    headers = request.responseHeaders
    for name in _SUCCESS_ONLY_HEADERS:
        headers.removeHeader(name)
    headers.setRawHeaders(CONTENT_TYPE, [JSON])
    headers.setRawHeaders(CONTENT_LENGTH, [b"%d" % (len(body),)])
    if isinstance(error, MethodNotAllowed):
        headers.setRawHeaders(b"Allow", [ALLOWED_METHODS])
    if error.retry_after is not None:
        headers.setRawHeaders(RETRY_AFTER, [b"%d" % (error.retry_after,)])
    for name, value in error.headers:
        headers.setRawHeaders(name, [value])
    send_body(request, body)


def write_failure(request: Request, failure: Failure) -> None:
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
                    failure, **request_fields(request))
        error = RegistryError("internal server error", None)
    if request.startedWriting:
        request.loseConnection()  # type: ignore[no-untyped-call]
        return
    write_error(request, error)

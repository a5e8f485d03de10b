"""
What every request to Cloud Storage (or to its token endpoint) shares:
the error raised for an unexpected answer, the body limit for answers that
are only looked at for their status, and the request timeout.

Only a 404 means "missing" to the callers; any other unexpected status
(403 for missing permissions, 5xx, ...) becomes a :class:`GCSError`, so
that a misconfigured bucket never looks empty.
"""

from __future__ import annotations

from typing import TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from nixeryd.core.httpbody import BodyTooLarge, read_limited

#: How much of an error body (or of a small JSON answer) is read.
ERROR_BODY_LIMIT = 64 * 1024

T = TypeVar("T")


class GCSError(Exception):
    """
    Cloud Storage (or its token endpoint) answered something unexpected.

    :ivar status: the HTTP status, or ``None`` for a failure without one.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RequestTimedOut(GCSError):
    """A request got no answer within its timeout (and was dropped)."""


class PreconditionFailed(Exception):
    """A generation precondition did not hold (HTTP 412)."""


async def drain(response: IResponse) -> bytes:
    """The small body of an answer read for its status or its JSON."""
    return await read_limited(response, ERROR_BODY_LIMIT)


async def read_complete(response: IResponse, limit: int) -> bytes:
    """
    The whole body of ``response``, up to ``limit`` bytes.

    :raises ConnectionLost: when it ended before its ``Content-Length``
        (a connection cut short; sent again by the retries).
    :raises BodyTooLarge: past ``limit``.
    """
    body = await read_limited(response, limit)
    if response.length != UNKNOWN_LENGTH and len(body) != response.length:
        raise ConnectionLost("the body ended after %d of its %d bytes"
                             % (len(body), response.length))
    return body


async def error_for(response: IResponse, what: str) -> GCSError:
    """A :class:`GCSError` describing an unexpected answer (body drained)."""
    try:
        detail = (await drain(response)).decode("utf-8", "replace").strip()
    except BodyTooLarge:
        detail = "(long body)"
    message = "%s: Cloud Storage answered HTTP %d" % (what, response.code)
    if detail:
        message += ": " + detail[:500]
    return GCSError(message, response.code)


def cancel_after(request: Deferred[T], seconds: float, clock: IReactorTime) -> Deferred[T]:
    """
    ``request``, cancelled if it has not fired within ``seconds`` (an HTTP
    request: cancelling it drops the connection), then failing with
    :class:`RequestTimedOut`.
    """
    timer = clock.callLater(seconds, request.cancel)

    def stop_timer(result: T | Failure) -> T | Failure:
        if timer.active():
            timer.cancel()
        elif isinstance(result, Failure) and isinstance(result.value, CancelledError):
            return Failure(  # type: ignore[no-untyped-call]
                RequestTimedOut("no answer within %g s" % (seconds,)))
        return result

    request.addBoth(stop_timer)
    return request

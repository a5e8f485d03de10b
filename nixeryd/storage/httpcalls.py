"""
What every request to a cloud storage service (Cloud Storage, S3, or
their token and credential endpoints) shares: the body limit for answers
that are only looked at for their status, bodies read whole, and the
request timeout.

Each backend turns unexpected answers into its own error
(:mod:`nixeryd.storage.gcs.http`, :mod:`nixeryd.storage.s3.http`).
"""

from __future__ import annotations

from typing import TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from nixeryd.core.httpbody import read_limited
from nixeryd.storage.errors import StorageServiceError

#: How much of an error body (or of a small JSON answer) is read.
ERROR_BODY_LIMIT = 64 * 1024

T = TypeVar("T")


class RequestTimedOut(StorageServiceError):
    """A request got no answer within its timeout (and was dropped)."""


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

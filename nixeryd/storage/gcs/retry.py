"""
Retries of Cloud Storage requests after transient failures.

Google's guidance: retry 408, 429, every 5xx and lost connections, with
exponential backoff and full jitter, and only requests that are safe to
repeat (reads, listings, token requests, deletions and uploads guarded by
a generation precondition).  A request that is not safe is tried once.
The retries stop at a total deadline; the last failure then stands (an
answer is returned to the caller, which turns it into a
:class:`~nixeryd.storage.gcs.http.GCSError`; an exception is raised).
"""

from __future__ import annotations

import random
from typing import Awaitable, Callable

import attrs
from twisted.internet.error import ConnectError, ConnectionLost
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.iweb import IResponse

from nixeryd.core import defaults
from nixeryd.storage.gcs.http import RequestTimedOut, drain

#: Statuses worth another attempt (with every status from 500 on).
TRANSIENT_STATUSES = frozenset({408, 429})

#: Exceptions of a request that may succeed when sent again.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectError, ConnectionLost, ConnectTimeout, ResponseFailed,
    ResponseNeverReceived, RequestTimedOut)

_log = Logger()


def transient_status(code: int) -> bool:
    """Whether an answer with this status may be followed by a success."""
    return code in TRANSIENT_STATUSES or code >= 500


@attrs.frozen
class RetryPolicy:
    """
    How long and how often to retry.

    :ivar initial: the bound of the first wait, in seconds.
    :ivar multiplier: the factor between the bounds of successive waits.
    :ivar cap: the largest bound.
    :ivar deadline: seconds after the first attempt beyond which no
        attempt starts; 0 tries once.
    """

    initial: float = defaults.GCS_RETRY_INITIAL
    multiplier: float = defaults.GCS_RETRY_MULTIPLIER
    cap: float = defaults.GCS_RETRY_CAP
    deadline: float = defaults.GCS_RETRY_DEADLINE

    def bound(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (from 1)."""
        return min(self.cap, self.initial * self.multiplier ** (retry - 1))


#: Every request tried once.
NO_RETRY = RetryPolicy(deadline=0)


class Retrier:
    """
    Sends requests again after transient failures, on ``clock``.

    :param clock: the time of waits and of the deadline.
    :param policy: the backoff and the deadline.
    :param jitter: a number in [0, 1) per wait (full jitter: the wait is
        this times the bound).
    """

    def __init__(self, clock: IReactorTime, policy: RetryPolicy = RetryPolicy(),
                 jitter: Callable[[], float] = random.random) -> None:
        self._clock = clock
        self.policy = policy
        self._jitter = jitter

    async def request(self, send: Callable[[], Awaitable[IResponse]], *,
                      method: str, target: str, safe: bool, log: Logger = _log) -> IResponse:
        """
        The answer of ``send()``, sent again while it fails transiently,
        ``safe`` allows it, and the deadline has not passed.

        :param target: what is asked for (``gs://bucket/object``), for the log.
        :returns: the last answer, which may be a transient failure.
        :raises: the last transient error, or any other at once.
        """
        started = self._clock.seconds()
        retry = 0
        while True:
            status: int | None = None
            error: BaseException | None = None
            try:
                response = await send()
            except TRANSIENT_ERRORS as e:
                if not safe:
                    raise
                error = e
            else:
                if not (safe and transient_status(response.code)):
                    return response
                status = response.code
            retry += 1
            delay = self.policy.bound(retry) * self._jitter()
            if self._clock.seconds() + delay - started > self.policy.deadline:
                if error is not None:
                    raise error
                return response
            if status is not None:
                try:
                    await drain(response)
                except Exception:
                    pass  # the connection is dropped; the next attempt opens another
            log.warn("Retrying {method} {target} (attempt {attempt}) after {outcome}"
                     " in {delay:.2f} s", method=method, target=target, attempt=retry + 1,
                     outcome=("HTTP %d" % status) if status is not None else repr(error),
                     status=status, error=None if error is None else str(error),
                     delay=delay)
            await deferLater(self._clock, delay)

"""
Retries of Cloud Storage requests after transient failures.

Google's guidance: retry 408, 429, every 5xx and lost connections, with
exponential backoff and full jitter, and only requests that are safe to
repeat (reads, listings, token requests, deletions and uploads guarded by
a generation precondition, resumable-upload chunks sent again from the
offset the session reports).  A request that is not safe is tried once.
The retries stop at a total deadline; the last failure then stands (an
answer is returned to the caller, which turns it into a
:class:`~nixeryd.storage.gcs.http.GCSError`; an exception is raised).

A ``Retry-After`` in a 429 or 503 is honoured, up to the longest wait of
the policy.  Each retry is one log line and one count for the daemon's metrics
(:class:`RetryObserver`, by reason and method).  Every attempt also goes
through the outage circuit (:mod:`nixeryd.storage.gcs.circuit`), when
there is one: while it is open no attempt is made and
:class:`~nixeryd.storage.gcs.circuit.CircuitOpen` is raised at once.
"""

from __future__ import annotations

import random
from typing import Awaitable, Callable, Protocol, TypeVar

import attrs
from twisted.internet.error import ConnectError, ConnectionLost
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import (
    RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived)
from twisted.web.iweb import IResponse

from nixeryd.core import defaults
from nixeryd.storage.gcs.circuit import Circuit
from nixeryd.storage.gcs.http import RequestTimedOut, drain

T = TypeVar("T")

#: Statuses worth another attempt (with every status from 500 on).
TRANSIENT_STATUSES = frozenset({408, 429})

#: Exceptions of a request that may succeed when sent again.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectError, ConnectionLost, ConnectTimeout, ResponseFailed,
    ResponseNeverReceived, RequestTransmissionFailed, RequestTimedOut)

#: The reasons a retry is counted under.
REASON_TIMEOUT = "timeout"
REASON_THROTTLED = "throttled"
REASON_SERVER_ERROR = "server_error"
REASON_CONNECTION = "connection"
RETRY_REASONS = (REASON_TIMEOUT, REASON_THROTTLED, REASON_SERVER_ERROR, REASON_CONNECTION)

_log = Logger()


def transient_status(code: int) -> bool:
    """Whether an answer with this status may be followed by a success."""
    return code in TRANSIENT_STATUSES or code >= 500


def status_reason(code: int) -> str:
    """The retry reason of a transient status."""
    if code == 408:
        return REASON_TIMEOUT
    if code == 429:
        return REASON_THROTTLED
    return REASON_SERVER_ERROR


def error_reason(error: BaseException) -> str:
    """The retry reason of a transient error."""
    if isinstance(error, (RequestTimedOut, ConnectTimeout)):
        return REASON_TIMEOUT
    return REASON_CONNECTION


def retry_after(response: IResponse) -> float:
    """The seconds an answer's ``Retry-After`` asks to wait (0 without one, or a date)."""
    values = response.headers.getRawHeaders(b"retry-after") or []
    try:
        return max(0.0, float(values[0])) if values else 0.0
    except ValueError:
        return 0.0


def outage_status(code: int) -> bool:
    """Whether an answer says Cloud Storage is failing (not merely busy: 429 is not)."""
    return code == 408 or code >= 500


class RetryObserver(Protocol):
    """Told of each retry, for the daemon's metrics."""

    def gcs_retry(self, reason: str, method: str) -> None:
        """A ``method`` request is sent again after a failure of ``reason``."""


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


class Attempts:
    """
    The attempts of one operation: the waits between them and the
    deadline from the first; made by :meth:`Retrier.attempts`.
    """

    def __init__(self, retrier: Retrier, method: str, target: str, log: Logger) -> None:
        self._retrier = retrier
        self.method = method
        self._target = target
        self._log = log
        self._started = retrier.clock.seconds()
        self._retry = 0

    def restart(self) -> None:
        """Progress was made: the next failure waits and counts from anew."""
        self._started = self._retrier.clock.seconds()
        self._retry = 0

    def next_delay(self, at_least: float = 0) -> float | None:
        """
        The wait before the next attempt (``at_least`` when the server
        asked for that, up to the policy's cap), or ``None`` when that
        attempt would start after the deadline.

        :raises CircuitOpen: at once while the circuit is open.
        """
        retrier = self._retrier
        if retrier.circuit is not None:
            retrier.circuit.check()
        self._retry += 1
        delay = max(retrier.policy.bound(self._retry) * retrier.jitter(),
                    min(at_least, retrier.policy.cap))
        if retrier.clock.seconds() + delay - self._started > retrier.policy.deadline:
            return None
        return delay

    async def wait(self, delay: float, reason: str, outcome: str, *,
                   status: int | None = None, error: BaseException | None = None) -> None:
        """Wait ``delay`` before the next attempt, after a failure: logged and counted."""
        self._retrier.observer.gcs_retry(reason, self.method)
        self._log.warn("Retrying {method} {target} (attempt {attempt}) after {outcome}"
                       " in {delay:.2f} s", method=self.method, target=self._target,
                       attempt=self._retry + 1, outcome=outcome, reason=reason,
                       status=status, error=None if error is None else str(error),
                       delay=delay, event="gcs-retry")
        await deferLater(self._retrier.clock, delay)

    async def retry(self, reason: str, outcome: str, *,
                    error: BaseException | None = None) -> bool:
        """
        Wait before the next attempt after a failure of ``reason``
        (described by ``outcome``); ``False`` at once when that attempt
        would start after the deadline.
        """
        delay = self.next_delay()
        if delay is None:
            return False
        await self.wait(delay, reason, outcome, error=error)
        return True


class _NoObserver:
    def gcs_retry(self, reason: str, method: str) -> None:
        pass


#: An observer that counts nothing.
NO_OBSERVER: RetryObserver = _NoObserver()


class Retrier:
    """
    Sends requests again after transient failures, on ``clock``.

    :param clock: the time of waits and of the deadline.
    :param policy: the backoff and the deadline.
    :param jitter: a number in [0, 1) per wait (full jitter: the wait is
        this times the bound).
    :param observer: told of each retry.
    :param circuit: the outage circuit every attempt goes through; none by
        default.
    """

    def __init__(self, clock: IReactorTime, policy: RetryPolicy = RetryPolicy(),
                 jitter: Callable[[], float] = random.random, *,
                 observer: RetryObserver = NO_OBSERVER,
                 circuit: Circuit | None = None) -> None:
        self.clock = clock
        self.policy = policy
        self.jitter = jitter
        self.observer = observer
        self.circuit = circuit

    def attempts(self, method: str, target: str, log: Logger = _log) -> Attempts:
        """The waits and deadline of a new operation, starting now."""
        return Attempts(self, method, target, log)

    async def attempt(self, send: Callable[[], Awaitable[IResponse]]) -> IResponse:
        """
        One attempt through the circuit: its outcome is recorded there.

        :raises CircuitOpen: without sending, while the circuit is open.
        """
        circuit = self.circuit
        if circuit is None:
            return await send()
        probe = circuit.admit()
        try:
            response = await send()
        except TRANSIENT_ERRORS:
            circuit.failed(probe)
            raise
        except BaseException:
            circuit.abandoned(probe)
            raise
        if outage_status(response.code):
            circuit.failed(probe)
        else:
            circuit.succeeded(probe)
        return response

    async def request(self, send: Callable[[], Awaitable[IResponse]], *,
                      method: str, target: str, safe: bool, log: Logger = _log) -> IResponse:
        """
        The answer of ``send()``, sent again while it fails transiently,
        ``safe`` allows it, and the deadline has not passed.

        :param target: what is asked for (``gs://bucket/object``), for the log.
        :returns: the last answer, which may be a transient failure.
        :raises: the last transient error, or any other at once.
        """
        async def keep(response: IResponse) -> IResponse:
            return response

        return await self.call(send, keep, method=method, target=target, safe=safe,
                               log=log)

    async def call(self, send: Callable[[], Awaitable[IResponse]],
                   read: Callable[[IResponse], Awaitable[T]], *,
                   method: str, target: str, safe: bool, log: Logger = _log) -> T:
        """
        ``read(response)`` of the answer of ``send()``, both tried again
        while they fail transiently (a connection lost while the body is
        read, too), ``safe`` allows it, and the deadline has not passed;
        ``read`` gets the last answer, whatever its status.
        """
        attempts = self.attempts(method, target, log)
        while True:
            try:
                response = await self.attempt(send)
                if not (safe and transient_status(response.code)):
                    return await read(response)
            except TRANSIENT_ERRORS as e:
                if not safe or not await attempts.retry(error_reason(e), repr(e), error=e):
                    raise
                continue
            delay = attempts.next_delay(retry_after(response))
            if delay is None:
                return await read(response)
            try:
                await drain(response)
            except Exception:
                pass  # the connection is dropped; the next attempt opens another
            await attempts.wait(delay, status_reason(response.code),
                                "HTTP %d" % (response.code,), status=response.code)

"""
Deadlines of a connection: :class:`DeadlineChannel`.

Twisted's ``HTTPChannel`` has one idle timeout, renewed by every byte it
receives and switched off while a response is produced: a client sending
a byte a second holds its connection for ever, and so does a client that
stops reading a response, with the response's blob file.  This channel
replaces that timeout with three rules (the numbers are the site's
:class:`~nixeryd.registry.connections.ConnectionLimits`):

- **The request deadline.**  The whole request, its head and any body,
  must arrive within ``head_timeout`` of the connection, or of the first
  byte of the next request on a kept-alive connection.  Bytes received do
  not renew it.  Then the connection is aborted.
- **The idle timeout.**  Between requests a kept-alive connection waits at
  most ``idle_timeout`` for the next request's first byte, then is closed.
  The wait starts once the previous response has left Twisted's buffer:
  until then the stall rule applies.
- **The stall rule.**  While Twisted holds bytes the kernel will not take
  (the send buffer is full and the response is paused) or a close waits
  for them, the kernel must take some within ``stall_timeout``; else the
  connection is aborted: a graceful close would wait for a buffer that
  never drains.  Aborting stops the response's producer, which closes its
  file.  A response that has nothing to send (a build being awaited, an
  event stream between heartbeats) is never a stall.  Progress is looked
  for four times per stall timeout, so a connection is aborted between
  one and one and a quarter stall timeouts after the kernel last took a
  byte of it.

A request body is bounded before it is read: this registry takes none,
so a ``Content-Length`` over :data:`MAX_REQUEST_BODY` is answered ``413``
(one of more than 18 digits, which Twisted would fail to convert, ``400``)
and a body of unstated length (``Transfer-Encoding: chunked``), which
Twisted would write to a temporary file of any size, ``411``.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from nixeryd.registry.connections import ConnectionGuard
from nixeryd.registry.tlsguard import TLSGuardChannel

#: The largest request body accepted (bytes); the API takes none.
MAX_REQUEST_BODY = 64 * 1024

#: Digits of the longest ``Content-Length`` read as a number.
_MAX_LENGTH_DIGITS = 18

#: Parts of the stall timeout between two checks for progress.
_CHECKS_PER_STALL = 4

_TOO_LARGE = (b"HTTP/1.1 413 Content Too Large\r\n"
              b"Content-Length: 0\r\nConnection: close\r\n\r\n")
_LENGTH_REQUIRED = (b"HTTP/1.1 411 Length Required\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n")

_HEAD = "head"
_IDLE = "idle"


def abort_connection(transport: object) -> None:
    """
    Drop a connection at once (``abortConnection``: TCP transports have
    it); a graceful close waits for buffers a stalled client never drains.
    """
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    elif transport is not None:
        getattr(transport, "loseConnection")()


def _pending(transport: object) -> Optional[int]:
    """
    Bytes a TCP transport holds that the kernel has not taken, or
    ``None`` for a transport that does not say.
    """
    try:
        buffered = len(getattr(transport, "dataBuffer"))
        return buffered - int(getattr(transport, "offset")) + int(
            getattr(transport, "_tempDataLen"))
    except (AttributeError, TypeError):
        return None


class DeadlineChannel(TLSGuardChannel):
    """
    An HTTP channel with the request deadline, the idle timeout and the
    stall rule of this module, counted in a
    :class:`~nixeryd.registry.connections.ConnectionGuard`.

    The site calls :meth:`attach` before the connection is made; a channel
    never attached behaves as a plain :class:`TLSGuardChannel`.
    """

    _guard: Optional[ConnectionGuard] = None
    _client = ""
    _clock: Optional[IReactorTime] = None
    _waiting: Optional[str] = None
    _wait_until = 0.0
    _idle_after_drain = False
    _wait_call: Optional[IDelayedCall] = None
    _watch_call: Optional[IDelayedCall] = None
    _paused = False
    _closing = False
    _lost = False
    _resumed = 0
    _written = 0
    _seen: tuple[int, Optional[int]] = (0, None)
    _progress_at = 0.0

    def attach(self, guard: ConnectionGuard, client: str, clock: IReactorTime) -> None:
        """
        Count this connection as ``client``'s in ``guard`` (released when
        it is lost) and keep its deadlines on ``clock``.  Twisted's own
        idle timeout is switched off.
        """
        self._guard = guard
        self._client = client
        self._clock = clock
        self.timeOut = None

    # The request deadline and the idle timeout.

    def connectionMade(self) -> None:
        """The first request's deadline starts with the connection."""
        super().connectionMade()  # type: ignore[no-untyped-call]
        self._wait(_HEAD)

    def dataReceived(self, data: bytes) -> None:
        """The first byte after an idle wait starts a request deadline."""
        if self._waiting == _IDLE or self._idle_after_drain:
            self._wait(_HEAD)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        """The request is whole: no deadline while it is answered."""
        self._stop_waiting()
        super().allContentReceived()  # type: ignore[no-untyped-call]

    def requestDone(self, request: Any) -> None:
        """
        The response is done: wait for the next request, unless Twisted
        closes the connection or starts a pipelined request at once.
        """
        self._wait(_IDLE)
        super().requestDone(request)  # type: ignore[no-untyped-call]

    def headerReceived(self, line: bytes) -> bool:
        """Bound the request's body before Twisted reads it."""
        name, separator, value = line.partition(b":")
        if separator:
            name = name.lower()
            if name == b"content-length":
                digits = value.strip(b" \t")
                if digits.isdigit():
                    if len(digits) > _MAX_LENGTH_DIGITS:
                        self._respondToBadRequestAndDisconnect()  # type: ignore[no-untyped-call]
                        return False
                    if int(digits) > MAX_REQUEST_BODY:
                        return self._refuse_body(_TOO_LARGE)
            elif name == b"transfer-encoding" and value.strip(b" \t").lower() != b"identity":
                return self._refuse_body(_LENGTH_REQUIRED)
        return bool(super().headerReceived(line))  # type: ignore[no-untyped-call]

    def _refuse_body(self, answer: bytes) -> bool:
        """Answer before reading the body, then close; false, as a bad header."""
        transport = self.transport
        assert transport is not None
        transport.write(answer)
        self.loseConnection()
        return False

    def _wait(self, kind: str) -> None:
        """
        Start the wait ``kind`` (the request deadline or the idle timeout;
        the idle timeout once the send buffer has drained).
        """
        self._stop_waiting()
        if self._guard is None or self._clock is None or self._closing:
            return
        if kind == _IDLE and self._paused:
            self._idle_after_drain = True
            return
        limits = self._guard.limits
        seconds = limits.head_timeout if kind == _HEAD else limits.idle_timeout
        self._waiting = kind
        self._wait_until = self._clock.seconds() + seconds
        if self._wait_call is None:
            self._arm(seconds)

    def _arm(self, seconds: float) -> None:
        """
        Check the wait in ``seconds``, or sooner: never later than a
        request deadline started now would end.  One timer serves every
        wait of the connection, so a request costs no timer of its own.
        """
        assert self._clock is not None and self._guard is not None
        self._wait_call = self._clock.callLater(
            min(seconds, self._guard.limits.head_timeout), self._check_wait)

    def _stop_waiting(self) -> None:
        """No wait: the timer, if armed, finds nothing to do when it fires."""
        self._waiting = None
        self._idle_after_drain = False

    def _check_wait(self) -> None:
        self._wait_call = None
        if self._waiting is None or self._clock is None or self._lost:
            return
        remaining = self._wait_until - self._clock.seconds()
        if remaining > 0:
            self._arm(remaining)
            return
        kind, self._waiting = self._waiting, None
        if kind == _IDLE:
            self.loseConnection()
            return
        assert self._guard is not None
        self._guard.note(self._client, "aborted with no whole request within %g s"
                         % (self._guard.limits.head_timeout,))
        self._abort()

    # The stall rule.

    def write(self, data: bytes) -> None:
        """Send part of a response, counting its bytes."""
        self._written += len(data)
        super().write(data)  # type: ignore[no-untyped-call]

    def writeSequence(self, iovec: list[bytes]) -> None:
        """Send parts of a response, counting their bytes."""
        self._written += sum(len(data) for data in iovec)
        super().writeSequence(iovec)  # type: ignore[no-untyped-call]

    def pauseProducing(self) -> None:
        """The send buffer is full: the kernel must take some of it in time."""
        self._paused = True
        super().pauseProducing()  # type: ignore[no-untyped-call]
        self._watch()

    def resumeProducing(self) -> None:
        """The send buffer has drained."""
        self._paused = False
        self._resumed += 1
        super().resumeProducing()  # type: ignore[no-untyped-call]
        if self._idle_after_drain:
            self._wait(_IDLE)

    def loseConnection(self) -> None:
        """Close once the buffer drains, which must make progress in time."""
        self._stop_waiting()
        self._closing = True
        super().loseConnection()  # type: ignore[no-untyped-call]
        self._watch()

    def _progress(self) -> tuple[int, Optional[int]]:
        """How often the buffer drained, and how many bytes the kernel took."""
        pending = _pending(self.transport)
        return (self._resumed, None if pending is None else self._written - pending)

    def _watch(self) -> None:
        """Start checking for progress, unless already checking."""
        if self._watch_call is not None or self._guard is None or self._clock is None:
            return
        if self.transport is None or self._lost:
            return
        self._seen = self._progress()
        self._progress_at = self._clock.seconds()
        self._watch_call = self._clock.callLater(
            self._guard.limits.stall_timeout / _CHECKS_PER_STALL, self._check_progress)

    def _check_progress(self) -> None:
        self._watch_call = None
        if not (self._paused or self._closing) or self._lost:
            return
        assert self._guard is not None and self._clock is not None
        now = self._clock.seconds()
        seen = self._progress()
        resumed, sent = seen
        if resumed != self._seen[0] or (
                sent is not None and self._seen[1] is not None and sent > self._seen[1]):
            self._progress_at = now
        self._seen = seen
        stall_timeout = self._guard.limits.stall_timeout
        stalled = now - self._progress_at
        if stalled >= stall_timeout:
            self._guard.note(self._client, "aborted after no progress for %g s"
                             % (stall_timeout,))
            self._abort()
            return
        self._watch_call = self._clock.callLater(
            min(stall_timeout / _CHECKS_PER_STALL, stall_timeout - stalled),
            self._check_progress)

    def _abort(self) -> None:
        """Drop the connection at once, whatever its buffers hold."""
        if not self._lost:
            abort_connection(self.transport)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        """Stop every timer and give the connection's place back."""
        self._lost = True
        self._stop_waiting()
        for call in (self._wait_call, self._watch_call):
            if call is not None and call.active():
                call.cancel()
        self._wait_call = self._watch_call = None
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.release(self._client)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

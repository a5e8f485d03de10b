"""
Zero-copy blob bodies: ``sendfile(2)`` from the blob file to the client's
socket, for plain TCP connections.

Twisted writes a body by reading it into Python and copying it into the
socket, a chunk at a time, on the reactor thread.  For layer blobs (tens
or hundreds of megabytes) :class:`SendfileSender` instead lets the kernel
move the bytes: once the response headers have left Twisted's buffer, a
thread of the blob pool calls ``sendfile`` on a duplicate of the socket's
descriptor (so a disconnect seen by the reactor never closes it under the
thread), waiting with ``poll`` whenever the socket is full.  The reactor
stays free, the GIL is released during each call, and nothing of the blob
passes through Python.

Connections that are not plain TCP (TLS, tests' in-memory transports) keep
using the ordinary producer in :mod:`nixeryd.registry.streaming`, and so do responses
that find every thread of the pool busy (with slow clients, say): a pool
thread is a slot, taken for one body and given back when it ends.

A client that reads nothing for the stall timeout (first of the headers,
then of the body) is given up: the file is closed, the thread slot given
back and the connection aborted, since a graceful close would wait for a
socket buffer that never drains.
"""

from __future__ import annotations

import os
import select
import threading
from typing import BinaryIO, Callable, Optional, Protocol

from twisted.internet import tcp
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nixeryd.core import defaults
from nixeryd.core.threads import Runner
from nixeryd.registry.deadlines import abort_connection
from nixeryd.registry.streaming import StreamedRequest

log = Logger()

#: Most bytes one ``sendfile`` call is asked to move.
SENDFILE_CHUNK = 8 * 1024 * 1024
#: Longest pause between two checks that the headers have left Twisted's
#: buffer (the first checks come at once; a client that does not read
#: is then polled ever more slowly, never in a busy loop).
_MAX_DRAIN_DELAY = 0.25
#: How often a waiting sender checks whether the client went away.
_POLL_MILLISECONDS = 500


class ClientStalled(Exception):
    """The client stopped reading for longer than the stall timeout."""


class BufferedSocket(Protocol):
    """
    What a sender reads of a :class:`twisted.internet.tcp.Connection`:
    its socket, and the Twisted write buffer that the response headers
    must leave before the body may go out underneath it.
    """

    @property
    def dataBuffer(self) -> bytes:
        """Bytes Twisted has buffered for the socket."""

    @property
    def offset(self) -> int:
        """How much of :attr:`dataBuffer` the kernel has already taken."""

    @property
    def _tempDataLen(self) -> int:
        """The length of writes not yet joined into :attr:`dataBuffer`."""

    def fileno(self) -> int:
        """The socket's descriptor."""

    def abortConnection(self) -> None:
        """Close the connection at once, dropping what is buffered."""


def sendfile_transport(request: StreamedRequest) -> Optional[tcp.Connection]:
    """
    The request's TCP transport if its body can be sent with ``sendfile``,
    else ``None`` (TLS, a non-TCP transport, or a Twisted whose buffer
    attributes are not the ones this module reads).
    """
    channel = request.channel
    transport = getattr(channel, "transport", None)
    if not isinstance(transport, tcp.Connection):
        return None
    if not all(hasattr(transport, name) for name in ("dataBuffer", "offset", "_tempDataLen")):
        return None
    return transport


def _drained(transport: BufferedSocket) -> bool:
    """Whether Twisted has handed every buffered byte to the kernel."""
    return (not transport._tempDataLen
            and len(transport.dataBuffer) <= transport.offset)


def send_file_range(socket_fd: int, file_fd: int, offset: int, length: int,
                    stop: threading.Event,
                    stall_timeout: float = defaults.STALL_TIMEOUT) -> None:
    """
    Send ``length`` bytes of a file from ``offset`` to a non-blocking
    socket, blocking the calling thread (never the reactor's) until done.

    :raises OSError: the client went away, or the file is shorter than
        expected.
    :raises ClientStalled: the socket stayed full too long.
    :raises InterruptedError: ``stop`` was set.
    """
    poller = select.poll()
    poller.register(socket_fd, select.POLLOUT)
    end = offset + length
    waited = 0.0
    while offset < end:
        if stop.is_set():
            raise InterruptedError("the response was abandoned")
        try:
            sent = os.sendfile(socket_fd, file_fd, offset, min(SENDFILE_CHUNK, end - offset))
        except BlockingIOError:
            events = poller.poll(_POLL_MILLISECONDS)
            if events and events[0][1] & (select.POLLERR | select.POLLHUP):
                raise ConnectionResetError("the client closed the connection")
            waited = 0.0 if events else waited + _POLL_MILLISECONDS / 1000
            if waited >= stall_timeout:
                raise ClientStalled("the client read nothing for %g s" % (stall_timeout,))
            continue
        if sent == 0:
            raise OSError("the blob file ended %d bytes early" % (end - offset,))
        offset += sent
        waited = 0.0


def _log_complete(request: StreamedRequest) -> None:
    """
    Log a response whose body went out whole although its connection is
    gone, as ``finish`` would have (it refuses once the connection is lost).
    """
    site = getattr(request, "site", None)
    log_request = getattr(site, "log", None)
    if log_request is not None:
        log_request(request)


class SendfileSender:
    """
    Sends one blob body with :func:`send_file_range` and finishes the
    request.

    :param request: the request; its status and headers are set.
    :param transport: from :func:`sendfile_transport`.
    :param file: the open blob, positioned at ``offset``; closed when done.
    :param offset: first byte to send.
    :param length: how many bytes.
    :param runner: the blob thread pool.
    :param clock: schedules the checks for the headers to leave.
    :param release: called once when the sender is done with its thread
        slot, whatever the outcome.
    :param stall_timeout: seconds the client may read nothing, first of
        the headers, then of the body, before the connection is aborted.
    """

    def __init__(self, request: StreamedRequest, transport: BufferedSocket,
                 file: BinaryIO, offset: int, length: int, runner: Runner,
                 clock: IReactorTime,
                 release: Callable[[], None] = lambda: None,
                 stall_timeout: float = defaults.STALL_TIMEOUT) -> None:
        self._request = request
        self._transport = transport
        self._file = file
        self._offset = offset
        self._length = length
        self._runner = runner
        self._clock = clock
        self._stop = threading.Event()
        self._socket_fd: Optional[int] = None
        self._release: Optional[Callable[[], None]] = release
        self._stall_timeout = stall_timeout
        self._drain_delay = 0.0
        self._drain_started: Optional[float] = None

    def start(self) -> None:
        """Send the headers, then the body once they have left the buffer."""
        self._request.notifyFinish().addErrback(self._abandoned)
        self._request.write(b"")
        self._when_drained()

    def _when_drained(self) -> None:
        if self._stop.is_set() or self._request.channel is None:
            self._close()
            return
        if not _drained(self._transport):
            now = self._clock.seconds()
            if self._drain_started is None:
                self._drain_started = now
            if now - self._drain_started >= self._stall_timeout:
                log.info("Gave up a blob response: the client read nothing for "
                         "{seconds} s", seconds=self._stall_timeout)
                self._close()
                abort_connection(self._transport)
                return
            self._clock.callLater(
                min(self._drain_delay, self._stall_timeout - (now - self._drain_started)),
                self._when_drained)
            self._drain_delay = min(max(self._drain_delay * 2, 0.001), _MAX_DRAIN_DELAY)
            return
        try:
            self._socket_fd = os.dup(self._transport.fileno())
        except OSError:
            self._close()
            abort_connection(self._transport)
            return
        d = self._runner.run(send_file_range, self._socket_fd, self._file.fileno(),
                             self._offset, self._length, self._stop, self._stall_timeout)
        d.addCallbacks(self._sent, self._failed).addErrback(self._log_error)

    def _abandoned(self, reason: Failure) -> None:
        """The connection went away before the response was done."""
        self._stop.set()

    def _sent(self, _: None) -> None:
        self._close()
        request = self._request
        request.sentLength += self._length
        if not self._stop.is_set() and request.channel is not None and not request.finished:
            request.finish()
        elif not request.finished:
            # The client had the whole body and closed the connection
            # before this thread reported back: the response is complete
            # all the same, so it goes to the access log (and the metrics).
            _log_complete(request)

    def _failed(self, failure: Failure) -> None:
        self._close()
        if not isinstance(failure.value, (OSError, ClientStalled, InterruptedError)):
            log.failure("Sending a blob failed", failure)
        else:
            log.info("Blob response ended early: {error}", error=str(failure.value))
        if self._request.channel is not None:
            # Part of the body is sent, or the client reads nothing: the
            # connection cannot be used again and must not wait to drain.
            abort_connection(self._transport)

    def _log_error(self, failure: Failure) -> None:
        log.failure("Finishing a blob response failed", failure)

    def _close(self) -> None:
        self._file.close()
        if self._socket_fd is not None:
            os.close(self._socket_fd)
            self._socket_fd = None
        release, self._release = self._release, None
        if release is not None:
            release()

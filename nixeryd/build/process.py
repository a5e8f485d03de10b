"""
Child processes run from the reactor, with a deadline and streamed logs.

Nix and git are run as child processes of the server.  This module starts
them through ``reactor.spawnProcess`` with a
:class:`~twisted.internet.protocol.ProcessProtocol` that:

- reads stdout and stderr concurrently, so a child that writes a lot to
  one stream while we wait on the other can never stall;
- splits stderr into lines (:mod:`nixeryd.build.lines`) and logs each
  line, as it arrives, as a :mod:`twisted.logger` event;
- keeps only a bounded tail of the log and a bounded stdout;
- starts the child in its own session, hence its own process group, so a
  timeout or a cancellation reaches every process it forked (``SIGTERM``
  to the group, then ``SIGKILL`` after a grace period);
- fires only once the child has exited *and* its pipes are closed, with
  every timer cancelled, with the outcomes of
  :mod:`nixeryd.build.processresult`.

The environment is never inherited: the caller passes it, usually built by
:func:`~nixeryd.build.childenv.child_environment` from an allow-list.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import deque
from typing import Any, Callable, Mapping, Protocol, Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import (IDelayedCall, IProcessProtocol,
                                         IProcessTransport)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from nixeryd.build.lines import LineSplitter
from nixeryd.build.processresult import (OutputTooLarge, ProcessFailed,
                                         ProcessResult, ProcessTimedOut)

#: Lines kept for error reports, by default.
DEFAULT_TAIL_LINES = 100

#: Largest stdout collected, by default.
DEFAULT_MAX_STDOUT = 64 * 1024 * 1024

# Run by the child's interpreter before the real program: a new session
# makes the child the leader of its own process group, whose id is its pid,
# which exec keeps.  The interpreter sets LC_CTYPE itself when the locale
# is "C" (PEP 538); the first argument says whether the caller set it, so
# the program gets exactly the environment it was given.
_SESSION_WRAPPER = (
    "import os, sys\n"
    "if sys.argv[1] == '0':\n"
    "    os.environ.pop('LC_CTYPE', None)\n"
    "os.setsid()\n"
    "try:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as e:\n"
    "    sys.stderr.write('cannot run %s: %s\\n' % (sys.argv[2], e))\n"
    "    sys.stderr.flush()\n"
    "    os._exit(127)\n"
)

_log = Logger()


class ProcessReactor(Protocol):
    """
    What running a child needs of the reactor: ``spawnProcess`` of
    :class:`~twisted.internet.interfaces.IReactorProcess` and ``callLater``
    of :class:`~twisted.internet.interfaces.IReactorTime` (for the
    deadline and the grace period), from one object.
    """

    def spawnProcess(self, processProtocol: IProcessProtocol, executable: str,
                     args: Sequence[str], env: Mapping[str, str], *,
                     usePTY: bool = False) -> IProcessTransport:
        """Start ``executable`` with ``args`` and ``env``, connected to ``processProtocol``."""

    def callLater(self, delay: float, callable: Callable[..., Any],
                  *args: object, **kwargs: object) -> IDelayedCall:
        """Call ``callable(*args, **kwargs)`` in ``delay`` seconds."""


class _ChildProtocol(ProcessProtocol):
    """
    Collects one child's output and ends it on timeout or cancellation.

    Policy (what to run, what failures mean) belongs to the callers; this
    only moves bytes, keeps the deadline and reports how the child ended.
    """

    def __init__(self, child: ChildProcess) -> None:
        self._child = child

    def connectionMade(self) -> None:
        # makeConnection sets the transport before calling this.
        assert self.transport is not None
        self._child._connected(self.transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._child._data(childFD, data)

    def processEnded(self, reason: Failure) -> None:
        self._child._ended(reason)


class ChildProcess:
    """
    One running child process.

    Create it with :func:`spawn_process`.  :attr:`result` fires with a
    :class:`~nixeryd.build.processresult.ProcessResult` on exit status 0,
    or fails with :class:`~nixeryd.build.processresult.ProcessFailed` (or
    its kinds ``ProcessTimedOut`` and ``OutputTooLarge``).  Cancelling
    :attr:`result` kills the child's process group.

    :ivar argv: the command.
    :ivar pid: the child's process id, which is also its process group id.
    :ivar result: fires once, as described above.
    """

    def __init__(self, reactor: ProcessReactor, argv: Sequence[str], *,
                 timeout: float | None, kill_grace: float, tail_lines: int,
                 max_stdout: int, logger: Logger | None,
                 log_fields: Mapping[str, object],
                 signal_group: Callable[[int, int], None]) -> None:
        self.argv = tuple(argv)
        self.pid: int | None = None
        self.result: Deferred[ProcessResult] = Deferred(self._cancel)
        self._reactor = reactor
        self._timeout = timeout
        self._kill_grace = kill_grace
        self._max_stdout = max_stdout
        self._log = logger if logger is not None else _log
        self._log_fields = dict(log_fields)
        self._signal_group = signal_group
        self._argv0 = os.path.basename(self.argv[0])
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._stderr_lines = LineSplitter()
        self._stdout: list[bytes] = []
        self._stdout_size = 0
        self._transport: IProcessTransport | None = None
        self._deadline: IDelayedCall | None = None
        self._killer: IDelayedCall | None = None
        self._stopping = False
        self._timed_out = False
        self._too_large = False
        self._done = False
        self._end_waiters: list[Deferred[None]] = []

    def when_ended(self) -> Deferred[None]:
        """
        A new Deferred that fires once the child has exited and its pipes
        are closed, however :attr:`result` fired.
        """
        d: Deferred[None] = Deferred()
        if self._done:
            d.callback(None)
        else:
            self._end_waiters.append(d)
        return d

    def terminate(self) -> None:
        """
        Stop the child: ``SIGTERM`` to its process group now, ``SIGKILL``
        after the grace period.  Calling it again does nothing more.
        """
        if self._stopping or self._done:
            return
        self._stopping = True
        self._send(signal.SIGTERM)
        self._killer = self._reactor.callLater(
            self._kill_grace, self._on_grace_expired)

    def tail(self) -> tuple[str, ...]:
        """The last lines logged so far."""
        return tuple(self._tail)

    # Called by the protocol.

    def _connected(self, transport: IProcessTransport) -> None:
        self._transport = transport
        self.pid = transport.pid
        transport.closeStdin()
        self._log.info("Started {argv0}[{pid}]", argv0=self._argv0, pid=self.pid,
                       process_event="started", **self._log_fields)
        if self._timeout is not None:
            self._deadline = self._reactor.callLater(
                self._timeout, self._on_timeout)

    def _data(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self._collect_stdout(data)
        elif fd == 2:
            for line in self._stderr_lines.feed(data):
                self._emit(line)

    def _ended(self, reason: Failure) -> None:
        self._done = True
        for line in self._stderr_lines.flush():
            self._emit(line)
        if self._stopping:
            # Members of the group that left our pipes may still run.
            self._send(signal.SIGKILL)
        for call in (self._deadline, self._killer):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._killer = None
        if not self.result.called:
            self._fire(reason)
        waiters, self._end_waiters = self._end_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # Internals.

    def _fire(self, reason: Failure) -> None:
        tail = self.tail()
        if self._timed_out:
            assert self._timeout is not None
            self.result.errback(ProcessTimedOut(self.argv, self._timeout, tail))
        elif self._too_large:
            self.result.errback(OutputTooLarge(self.argv, self._max_stdout, tail))
        elif isinstance(reason.value, ProcessDone):
            assert self.pid is not None
            self.result.callback(ProcessResult(
                self.argv, self.pid, b"".join(self._stdout), tail))
        else:
            value = reason.value
            self.result.errback(ProcessFailed(
                self.argv, getattr(value, "exitCode", None),
                getattr(value, "signal", None), tail))

    def _collect_stdout(self, data: bytes) -> None:
        if self._too_large:
            return
        self._stdout_size += len(data)
        if self._stdout_size > self._max_stdout:
            self._too_large = True
            self._stdout = []
            self.terminate()
            return
        self._stdout.append(data)

    def _emit(self, line: str) -> None:
        self._tail.append(line)
        self._log.info("{argv0}[{pid}] {line}", line=line, argv0=self._argv0,
                       pid=self.pid, stream="stderr", **self._log_fields)

    def _on_timeout(self) -> None:
        self._deadline = None
        self._timed_out = True
        self._log.warn("{argv0}[{pid}] timed out after {timeout} seconds",
                       argv0=self._argv0, pid=self.pid, timeout=self._timeout,
                       **self._log_fields)
        self.terminate()

    def _cancel(self, result: Deferred[ProcessResult]) -> None:
        self._log.info("{argv0}[{pid}] cancelled", argv0=self._argv0,
                       pid=self.pid, **self._log_fields)
        self.terminate()

    def _on_grace_expired(self) -> None:
        self._killer = None
        self._send(signal.SIGKILL)

    def _send(self, signum: int) -> None:
        if self.pid is not None:
            try:
                self._signal_group(self.pid, signum)
                return
            except ProcessLookupError:
                # No such group: it is gone, or the child has not yet
                # made it.  Fall through to the child itself.
                pass
        if self._transport is not None and not self._done:
            try:
                self._transport.signalProcess(signum)
            except ProcessExitedAlready:
                pass


def spawn_process(reactor: ProcessReactor, argv: Sequence[str], *,
                  env: Mapping[str, str], timeout: float | None,
                  kill_grace: float = 5.0,
                  tail_lines: int = DEFAULT_TAIL_LINES,
                  max_stdout: int = DEFAULT_MAX_STDOUT,
                  logger: Logger | None = None,
                  log_fields: Mapping[str, object] | None = None,
                  signal_group: Callable[[int, int], None] = os.killpg,
                  ) -> ChildProcess:
    """
    Start ``argv`` in a new session and return its :class:`ChildProcess`.

    :param reactor: spawns the child and keeps its timers.
    :param argv: the command; ``argv[0]`` is looked up in ``env["PATH"]``.
    :param env: the child's whole environment.
    :param timeout: seconds before the child's process group is killed,
        or ``None`` for no deadline.
    :param kill_grace: seconds between ``SIGTERM`` and ``SIGKILL``.
    :param tail_lines: how many of the last lines to keep for reports.
    :param max_stdout: largest stdout accepted; more kills the child.
    :param logger: where an event for each stderr line goes, as it
        arrives (fields ``line``, ``argv0``, ``pid``, ``stream`` and
        ``log_fields``).
    :param log_fields: extra fields for every event.
    :param signal_group: sends a signal to a process group; replaced in
        tests that use a fake reactor.
    """
    if not argv:
        raise ValueError("cannot run an empty command")
    child = ChildProcess(
        reactor, argv, timeout=timeout, kill_grace=kill_grace,
        tail_lines=tail_lines, max_stdout=max_stdout, logger=logger,
        log_fields=log_fields or {}, signal_group=signal_group)
    keeps_lc_ctype = "1" if "LC_CTYPE" in env else "0"
    wrapped = [sys.executable, "-I", "-S", "-c", _SESSION_WRAPPER,
               keeps_lc_ctype, *argv]
    reactor.spawnProcess(_ChildProtocol(child), sys.executable, wrapped,
                         env=dict(env), usePTY=False)
    return child


def run_process(reactor: ProcessReactor, argv: Sequence[str], *,
                env: Mapping[str, str], timeout: float | None,
                kill_grace: float = 5.0,
                tail_lines: int = DEFAULT_TAIL_LINES,
                max_stdout: int = DEFAULT_MAX_STDOUT,
                logger: Logger | None = None,
                log_fields: Mapping[str, object] | None = None,
                signal_group: Callable[[int, int], None] = os.killpg,
                ) -> Deferred[ProcessResult]:
    """
    Run ``argv`` to completion: :func:`spawn_process` (whose arguments it
    takes) and its result.

    The returned Deferred fires with a
    :class:`~nixeryd.build.processresult.ProcessResult` or fails with
    :class:`~nixeryd.build.processresult.ProcessFailed`; cancelling it kills the child's process group
    and fails with ``CancelledError`` once the child has ended, so that no
    caller goes on (removing the child's files, stopping the reactor) while
    it still runs.
    """
    child = spawn_process(reactor, argv, env=env, timeout=timeout,
                          kill_grace=kill_grace, tail_lines=tail_lines,
                          max_stdout=max_stdout, logger=logger,
                          log_fields=log_fields, signal_group=signal_group)

    async def outcome() -> ProcessResult:
        try:
            return await child.result
        except CancelledError:
            await child.when_ended()
            raise

    return Deferred.fromCoroutine(outcome())

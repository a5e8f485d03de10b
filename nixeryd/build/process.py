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
- runs the program under :mod:`nixeryd.build.reaper`, a child subreaper
  in a session (hence a process group) of its own, which ends the
  program's whole tree: members of the group, and descendants that made a
  session of their own or double-forked away from it, all of which are
  re-parented to the reaper rather than to init.  A timeout or a
  cancellation sends ``SIGTERM`` to the group; the reaper passes it on to
  every descendant and sends ``SIGKILL`` to all of them after the grace
  period; ``SIGKILL`` to the group follows a little later, should the
  reaper itself not have ended.  When the program exits, the reaper kills
  whatever it left running.  When the daemon dies, even of ``SIGKILL``,
  the reaper is told (``PR_SET_PDEATHSIG``) and ends the tree;
- never waits for a descendant that keeps our pipes open: a child's
  result fails at once when the deadline passes (or stdout grows too
  large), and :func:`run_process` fails as soon as the reaper has ended
  the tree, within the grace period plus :data:`REAPER_MARGIN`.  Otherwise
  the result fires when the reaper has exited and the pipes are closed; a
  pipe still open :data:`PIPE_DRAIN` seconds after the reaper has exited
  (held by a process that escaped even the reaper) is closed on our side.
  Outcomes are those of :mod:`nixeryd.build.processresult`, with every
  timer cancelled by the time the child has ended
  (:meth:`ChildProcess.when_ended`).

The environment is never inherited: the caller passes it, usually built by
:func:`~nixeryd.build.childenv.child_environment` from an allow-list.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import deque
from typing import Any, Callable, Mapping, Protocol, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import (IDelayedCall, IProcessProtocol,
                                         IProcessTransport)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from nixeryd.build import reaper
from nixeryd.build.lines import LineSplitter
from nixeryd.build.processresult import (OutputTooLarge, ProcessFailed,
                                         ProcessResult, ProcessTimedOut)

#: Lines kept for error reports, by default.
DEFAULT_TAIL_LINES = 100

#: Largest stdout collected, by default.
DEFAULT_MAX_STDOUT = 64 * 1024 * 1024

#: Seconds between the reaper's own ``SIGKILL`` (at the end of the grace
#: period) and ours to its whole group, for a reaper that did not end.
REAPER_MARGIN = 2.0

#: Seconds the pipes may stay open once the reaper has exited, for their
#: last bytes; then our ends are closed.
PIPE_DRAIN = 1.0

#: The program every child runs under (run by path: ``-I -S`` leave this
#: package off its path, and it needs only the standard library).
REAPER = os.path.abspath(reaper.__file__)

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

    def processExited(self, reason: Failure) -> None:
        self._child._exited()

    def processEnded(self, reason: Failure) -> None:
        self._child._ended(reason)


class ChildProcess:
    """
    One running child process.

    Create it with :func:`spawn_process`.  :attr:`result` fires with a
    :class:`~nixeryd.build.processresult.ProcessResult` on exit status 0,
    or fails with :class:`~nixeryd.build.processresult.ProcessFailed` (or
    its kinds ``ProcessTimedOut`` and ``OutputTooLarge``, at once when the
    deadline passes or stdout grows too large).  Cancelling :attr:`result`
    stops the child's whole tree.

    :ivar argv: the command.
    :ivar pid: the process id of the child's reaper, the parent of the
        program; also the id of its process group and session.
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
        self._drain: IDelayedCall | None = None
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
        Stop the child: ``SIGTERM`` to its process group now, which its
        reaper passes on to every descendant and follows with ``SIGKILL``
        after the grace period; ``SIGKILL`` to the group
        :data:`REAPER_MARGIN` seconds after that.  Calling it again does
        nothing more.
        """
        if self._stopping or self._done:
            return
        self._stopping = True
        self._send(signal.SIGTERM)
        self._killer = self._reactor.callLater(
            self._kill_grace + REAPER_MARGIN, self._on_grace_expired)

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

    def _exited(self) -> None:
        """
        The reaper has exited, so has everything below it; the pipes close
        as soon as their last bytes are read, unless a process that escaped
        even the reaper holds them: after :data:`PIPE_DRAIN` seconds they
        are closed on our side.
        """
        if not self._done and self._transport is not None:
            self._drain = self._reactor.callLater(PIPE_DRAIN, self._close_pipes)

    def _ended(self, reason: Failure) -> None:
        self._done = True
        for line in self._stderr_lines.flush():
            self._emit(line)
        if self._stopping:
            # Members of the group that left our pipes may still run.
            self._send(signal.SIGKILL)
        for call in (self._deadline, self._killer, self._drain):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._killer = self._drain = None
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
            self._fail_now()
            return
        self._stdout.append(data)

    def _fail_now(self) -> None:
        """
        Fail :attr:`result` now, as the child is being stopped: the caller
        does not wait for its tree to end, nor for the pipes to close.
        """
        if not self.result.called:
            self._fire(Failure(ProcessDone(0)))  # type: ignore[no-untyped-call]

    def _close_pipes(self) -> None:
        self._drain = None
        if self._transport is not None and not self._done:
            self._log.warn("{argv0}[{pid}] exited but its output stays open; "
                           "closing it", argv0=self._argv0, pid=self.pid,
                           **self._log_fields)
            self._transport.loseConnection()

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
        self._fail_now()

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
    Start ``argv`` under its reaper, in a new session, and return its
    :class:`ChildProcess`.

    :param reactor: spawns the child and keeps its timers.
    :param argv: the command; ``argv[0]`` is looked up in ``env["PATH"]``.
    :param env: the child's whole environment.
    :param timeout: seconds before the child's tree is stopped and its
        result fails, or ``None`` for no deadline.
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
    wrapped = [sys.executable, "-I", "-S", REAPER, repr(float(kill_grace)),
               keeps_lc_ctype, str(os.getpid()), "--", *argv]
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
    :class:`~nixeryd.build.processresult.ProcessFailed`; cancelling it
    stops the child's tree and fails with ``CancelledError``.  When the
    deadline passes, stdout grows too large or the caller cancels, it fails
    once the reaper has ended the tree: at once when the program obeys
    ``SIGTERM`` (whatever its descendants do), and never later than the
    grace period plus :data:`REAPER_MARGIN` and :data:`PIPE_DRAIN`, however
    long a descendant keeps the pipes open.  So no caller goes on (starting
    the next build in a freed slot, stopping the reactor) while the tree
    still runs.
    """
    child = spawn_process(reactor, argv, env=env, timeout=timeout,
                          kill_grace=kill_grace, tail_lines=tail_lines,
                          max_stdout=max_stdout, logger=logger,
                          log_fields=log_fields, signal_group=signal_group)

    async def outcome() -> ProcessResult:
        try:
            return await child.result
        except BaseException:
            # Fired already unless the child is being stopped (a deadline,
            # too much output, a cancellation): then bounded, see above.
            await child.when_ended()
            raise

    return Deferred.fromCoroutine(outcome())

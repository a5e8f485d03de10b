"""
Child processes run from the reactor, with a deadline and streamed logs.

Nix and git are run as child processes of the server.  This module starts
them through ``reactor.spawnProcess`` with a
:class:`~twisted.internet.protocol.ProcessProtocol` that:

- reads stdout and stderr concurrently, so a child that writes a lot to
  one stream while we wait on the other can never stall;
- splits the log stream into lines and hands each line, as it arrives,
  to a callback and to a :mod:`twisted.logger` event;
- keeps only a bounded tail of the log and a bounded stdout;
- starts the child in its own session, hence its own process group, so a
  timeout or a cancellation reaches every process it forked (``SIGTERM``
  to the group, then ``SIGKILL`` after a grace period);
- fires only once the child has exited *and* its pipes are closed, with
  every timer cancelled.

The environment is never inherited: the caller passes it, usually built by
:func:`child_environment` from an allow-list.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import deque
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from attrs import field, frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import (IDelayedCall, IProcessProtocol,
                                         IProcessTransport)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Environment variables a child may inherit from the server by default:
#: what Nix and git need to find their tools, store, daemon, caches and
#: credentials, and nothing else.
DEFAULT_ENVIRONMENT_NAMES = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "TMPDIR",
    "LANG",
    "LC_ALL",
    "TZ",
    "NIX_PATH",
    "NIX_REMOTE",
    "NIX_CONF_DIR",
    "NIX_USER_CONF_FILES",
    "NIX_SSL_CERT_FILE",
    "SSL_CERT_FILE",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "SSH_AUTH_SOCK",
    "GIT_SSH_COMMAND",
    "GIT_SSL_CAINFO",
)

#: Lines kept for error reports, by default.
DEFAULT_TAIL_LINES = 100

#: Longest line passed on; longer lines are cut into pieces this long.
MAX_LINE_BYTES = 16 * 1024

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
                     path: str | None = None,
                     usePTY: bool = False) -> IProcessTransport:
        """Start ``executable`` with ``args`` and ``env``, connected to ``processProtocol``."""

    def callLater(self, delay: float, callable: Callable[..., Any],
                  *args: object, **kwargs: object) -> IDelayedCall:
        """Call ``callable(*args, **kwargs)`` in ``delay`` seconds."""


def child_environment(environ: Mapping[str, str],
                      names: Iterable[str] = DEFAULT_ENVIRONMENT_NAMES,
                      **extra: str) -> dict[str, str]:
    """
    The environment for a child process: the allow-listed variables that
    are set and non-empty in ``environ``, plus ``extra``.

    :param environ: the server's environment, read once at startup.
    :param names: the variables to keep.
    :param extra: variables to set regardless of ``environ``.
    """
    env = {name: environ[name] for name in names if environ.get(name)}
    env.update(extra)
    return env


@frozen
class ProcessResult:
    """
    A child process that exited with status 0.

    :ivar argv: the command that was run.
    :ivar pid: its process id.
    :ivar stdout: everything it wrote to stdout.
    :ivar tail: the last lines it logged.
    """

    argv: tuple[str, ...] = field(converter=tuple[str, ...])
    pid: int
    stdout: bytes
    tail: tuple[str, ...] = field(converter=tuple[str, ...])


class ProcessFailed(Exception):
    """
    A child process exited with a non-zero status or was killed.

    :ivar argv: the command.
    :ivar exit_code: its exit status, or ``None`` when a signal killed it.
    :ivar signal: the signal that killed it, or ``None``.
    :ivar tail: the last lines it logged.
    """

    def __init__(self, argv: Sequence[str], exit_code: int | None,
                 signal: int | None, tail: Sequence[str]) -> None:
        self.argv = tuple(argv)
        self.exit_code = exit_code
        self.signal = signal
        self.tail = tuple(tail)
        super().__init__(self.describe())

    @property
    def program(self) -> str:
        """The program's name, for messages."""
        return os.path.basename(self.argv[0]) if self.argv else "process"

    def describe(self) -> str:
        """One sentence saying how the process ended."""
        name = self.program
        if self.signal is not None:
            return "%s was killed by signal %d" % (name, self.signal)
        return "%s exited with status %s" % (name, self.exit_code)


class ProcessTimedOut(ProcessFailed):
    """
    A child process ran past its deadline and was killed.

    :ivar timeout: the deadline, in seconds.
    """

    def __init__(self, argv: Sequence[str], timeout: float,
                 tail: Sequence[str]) -> None:
        self.timeout = timeout
        super().__init__(argv, None, None, tail)

    def describe(self) -> str:
        """One sentence saying how the process ended."""
        return "%s timed out after %g seconds" % (self.program, self.timeout)


class OutputTooLarge(ProcessFailed):
    """
    A child process wrote more to stdout than allowed and was killed.

    :ivar limit: the limit, in bytes.
    """

    def __init__(self, argv: Sequence[str], limit: int,
                 tail: Sequence[str]) -> None:
        self.limit = limit
        super().__init__(argv, None, None, tail)

    def describe(self) -> str:
        """One sentence saying how the process ended."""
        return "%s wrote more than %d bytes to stdout" % (self.program, self.limit)


class LineSplitter:
    """
    Cuts a byte stream into text lines.

    Lines end with ``\\n`` (a ``\\r`` before it is dropped); invalid UTF-8
    is replaced; a line longer than ``max_bytes`` is passed on in pieces.
    """

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max_bytes
        self._partial = b""

    def feed(self, data: bytes) -> list[str]:
        """The complete lines that ``data`` finishes."""
        *complete, self._partial = (self._partial + data).split(b"\n")
        lines = []
        for raw in complete:
            lines.extend(self._pieces(raw))
        while len(self._partial) > self._max:
            lines.append(self._decode(self._partial[:self._max]))
            self._partial = self._partial[self._max:]
        return lines

    def flush(self) -> list[str]:
        """The unterminated last line, if any."""
        rest, self._partial = self._partial, b""
        return self._pieces(rest) if rest else []

    def _pieces(self, raw: bytes) -> list[str]:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) <= self._max:
            return [self._decode(raw)]
        return [self._decode(raw[i:i + self._max])
                for i in range(0, len(raw), self._max)]

    @staticmethod
    def _decode(raw: bytes) -> str:
        return raw.decode("utf-8", "replace")


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
    :class:`ProcessResult` on exit status 0, or fails with
    :class:`ProcessFailed` (or :class:`ProcessTimedOut`,
    :class:`OutputTooLarge`).  Cancelling :attr:`result` kills the
    child's process group.

    :ivar argv: the command.
    :ivar pid: the child's process id, which is also its process group id.
    :ivar result: fires once, as described above.
    """

    def __init__(self, reactor: ProcessReactor, argv: Sequence[str], *,
                 timeout: float | None, on_line: Callable[[str, str], None] | None,
                 kill_grace: float, tail_lines: int, max_stdout: int,
                 stream_stdout: bool, logger: Logger | None,
                 log_fields: Mapping[str, Any],
                 signal_group: Callable[[int, int], None]) -> None:
        self.argv = tuple(argv)
        self.pid: int | None = None
        self.result: Deferred[ProcessResult] = Deferred(self._cancel)
        self._reactor = reactor
        self._timeout = timeout
        self._on_line = on_line
        self._kill_grace = kill_grace
        self._max_stdout = max_stdout
        self._stream_stdout = stream_stdout
        self._log = logger if logger is not None else _log
        self._log_fields = dict(log_fields)
        self._signal_group = signal_group
        self._argv0 = os.path.basename(self.argv[0])
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._splitters = {1: LineSplitter(), 2: LineSplitter()}
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
            if not self._stream_stdout:
                return
        splitter = self._splitters.get(fd)
        if splitter is not None:
            for line in splitter.feed(data):
                self._emit(fd, line)

    def _ended(self, reason: Failure) -> None:
        self._done = True
        for fd, splitter in sorted(self._splitters.items()):
            if fd == 1 and not self._stream_stdout:
                continue
            for line in splitter.flush():
                self._emit(fd, line)
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

    def _emit(self, fd: int, line: str) -> None:
        stream = "stdout" if fd == 1 else "stderr"
        self._tail.append(line)
        self._log.info("{argv0}[{pid}] {line}", line=line, argv0=self._argv0,
                       pid=self.pid, stream=stream, **self._log_fields)
        if self._on_line is not None:
            try:
                self._on_line(stream, line)
            except Exception:
                self._log.failure("Line callback failed for {argv0}[{pid}]",
                                  argv0=self._argv0, pid=self.pid)

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
                  on_line: Callable[[str, str], None] | None = None,
                  cwd: str | None = None, kill_grace: float = 5.0,
                  tail_lines: int = DEFAULT_TAIL_LINES,
                  max_stdout: int = DEFAULT_MAX_STDOUT,
                  stream_stdout: bool = False,
                  logger: Logger | None = None,
                  log_fields: Mapping[str, Any] | None = None,
                  signal_group: Callable[[int, int], None] = os.killpg,
                  ) -> ChildProcess:
    """
    Start ``argv`` in a new session and return its :class:`ChildProcess`.

    :param reactor: provides ``spawnProcess`` and ``callLater``.
    :param argv: the command; ``argv[0]`` is looked up in ``env["PATH"]``.
    :param env: the child's whole environment.
    :param timeout: seconds before the child's process group is killed,
        or ``None`` for no deadline.
    :param on_line: called as ``on_line(stream, line)`` for each stderr
        line (and stdout line, with ``stream_stdout``) as it arrives.
    :param cwd: working directory, or ``None`` for the server's.
    :param kill_grace: seconds between ``SIGTERM`` and ``SIGKILL``.
    :param tail_lines: how many of the last lines to keep for reports.
    :param max_stdout: largest stdout accepted; more kills the child.
    :param stream_stdout: also split stdout into lines and stream them
        (stdout is collected either way).
    :param logger: where line events go (fields ``line``, ``argv0``,
        ``pid``, ``stream`` and ``log_fields``).
    :param log_fields: extra fields for every event.
    :param signal_group: sends a signal to a process group; replaced in
        tests that use a fake reactor.
    """
    if not argv:
        raise ValueError("cannot run an empty command")
    child = ChildProcess(
        reactor, argv, timeout=timeout, on_line=on_line, kill_grace=kill_grace,
        tail_lines=tail_lines, max_stdout=max_stdout,
        stream_stdout=stream_stdout, logger=logger,
        log_fields=log_fields or {}, signal_group=signal_group)
    keeps_lc_ctype = "1" if "LC_CTYPE" in env else "0"
    wrapped = [sys.executable, "-I", "-S", "-c", _SESSION_WRAPPER,
               keeps_lc_ctype, *argv]
    reactor.spawnProcess(_ChildProtocol(child), sys.executable, wrapped,
                         env=dict(env), path=cwd, usePTY=False)
    return child


def run_process(reactor: ProcessReactor, argv: Sequence[str], *,
                env: Mapping[str, str], timeout: float | None,
                on_line: Callable[[str, str], None] | None = None,
                cwd: str | None = None, kill_grace: float = 5.0,
                **options: Any) -> Deferred[ProcessResult]:
    """
    Run ``argv`` to completion: :func:`spawn_process` and its result.

    The returned Deferred fires with a :class:`ProcessResult` or fails with
    :class:`ProcessFailed`; cancelling it kills the child's process group
    and fails with ``CancelledError`` once the child has ended, so that no
    caller goes on (removing the child's files, stopping the reactor) while
    it still runs.  Other keyword arguments are those of
    :func:`spawn_process`.
    """
    child = spawn_process(reactor, argv, env=env, timeout=timeout,
                          on_line=on_line, cwd=cwd, kill_grace=kill_grace,
                          **options)

    async def outcome() -> ProcessResult:
        try:
            return await child.result
        except CancelledError:
            await child.when_ended()
            raise

    return Deferred.fromCoroutine(outcome())


__all__ = [
    "ChildProcess",
    "DEFAULT_ENVIRONMENT_NAMES",
    "LineSplitter",
    "OutputTooLarge",
    "ProcessFailed",
    "ProcessResult",
    "ProcessTimedOut",
    "child_environment",
    "run_process",
    "spawn_process",
]

"""
Tests for :mod:`nixeryd.build.process` and the modules it relies on: real
child processes for streaming, volume, exit status, deadlines and
cancellation; a fake reactor for the timer and signal logic; plain data
for line splitting (:mod:`nixeryd.build.lines`) and the child environment
(:mod:`nixeryd.build.childenv`).
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import (
    ProcessDone, ProcessExitedAlready, ProcessTerminated)
from twisted.internet.interfaces import IAddress, IProcessProtocol, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogEvent, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer, provider

from nixeryd.build.childenv import child_environment
from nixeryd.build.lines import LineSplitter
from nixeryd.build import reaper
from nixeryd.build.process import (
    PIPE_DRAIN, REAPER_MARGIN, ChildProcess, run_process, spawn_process)
from nixeryd.build.processresult import (OutputTooLarge, ProcessFailed,
                                         ProcessResult, ProcessTimedOut)
from tests import escaping
from tests.escaping import escaped_pid, sleeping_pid
from tests.processes import is_alive, wait_until_gone

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def python(code: str) -> list[str]:
    """A command running ``code`` in this interpreter."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def line_logger(on_line: Callable[[str], object]) -> Logger:
    """A logger handing the line of every child line event to ``on_line``."""
    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if "line" in event:
            on_line(event["line"])

    return Logger(observer=observe)


def spawn_sleeper() -> tuple[ChildProcess, Deferred[None]]:
    """
    A child that says on stderr that it started, then sleeps for a minute
    (20 s timeout); and a Deferred that fires at its first line.
    """
    started: Deferred[None] = Deferred()
    code = """
        import sys, time
        print("started", file=sys.stderr, flush=True)
        time.sleep(60)
    """
    child = spawn_process(reactor, python(code), env=ENV, timeout=20,
                          logger=line_logger(lambda line: started.callback(None)))
    return child, started


class LineSplitterTests(SynchronousTestCase):
    """Cutting byte streams into lines."""

    def test_lines_across_chunks(self) -> None:
        """A line split over several chunks comes out once, when complete."""
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"hel"), [])
        self.assertEqual(splitter.feed(b"lo\nwor"), ["hello"])
        self.assertEqual(splitter.feed(b"ld\n\nx"), ["world", ""])
        self.assertEqual(splitter.flush(), ["x"])
        self.assertEqual(splitter.flush(), [])

    def test_crlf_and_invalid_utf8(self) -> None:
        """A carriage return before the newline is dropped and bad UTF-8 is replaced."""
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"a\r\n\xff\xfeb\n"), ["a", "\ufffd\ufffdb"])

    def test_long_lines_are_cut(self) -> None:
        """A line longer than the limit is passed on in pieces, even unterminated."""
        splitter = LineSplitter(max_bytes=4)
        self.assertEqual(splitter.feed(b"abcdefghij\n"), ["abcd", "efgh", "ij"])
        self.assertEqual(splitter.feed(b"0123456789"), ["0123", "4567"])
        self.assertEqual(splitter.flush(), ["89"])


class ChildEnvironmentTests(SynchronousTestCase):
    """Building a child's environment from an allow-list."""

    def test_allow_list(self) -> None:
        """Only allow-listed, non-empty variables are kept, and extras are added."""
        environ = {"PATH": "/bin", "HOME": "", "SECRET": "x", "NIX_REMOTE": "daemon"}
        self.assertEqual(
            child_environment(environ, GIT_TERMINAL_PROMPT="0"),
            {"PATH": "/bin", "NIX_REMOTE": "daemon", "GIT_TERMINAL_PROMPT": "0"})

    def test_custom_names(self) -> None:
        """A caller can choose the allowed names."""
        self.assertEqual(child_environment({"A": "1", "B": "2"}, ["B"]), {"B": "2"})


@implementer(IProcessTransport)
class FakeTransport:
    """The process transport of :class:`FakeProcessReactor`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[Any] = []
        self.stdin_closed = False
        self.exited = False
        self.pipes_closed = False

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, signum: Any) -> None:
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(signum)

    # The rest of the interface, which the code under test never uses.

    def closeStdout(self) -> None:
        raise NotImplementedError

    def closeStderr(self) -> None:
        raise NotImplementedError

    def closeChildFD(self, descriptor: int) -> None:
        raise NotImplementedError

    def writeToChild(self, childFD: int, data: bytes) -> None:
        raise NotImplementedError

    def loseConnection(self) -> None:
        self.pipes_closed = True

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def writeSequence(self, data: Iterable[bytes]) -> None:
        raise NotImplementedError

    def getHost(self) -> IAddress:
        raise NotImplementedError

    def getPeer(self) -> IAddress:
        raise NotImplementedError


class FakeProcessReactor(Clock):
    """A clock whose ``spawnProcess`` records the call and starts nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []

    def spawnProcess(self, processProtocol: IProcessProtocol, executable: str,
                     args: Sequence[str], env: Mapping[str, str], *,
                     usePTY: bool = False) -> IProcessTransport:
        transport = FakeTransport(pid=4242 + len(self.spawned))
        self.spawned.append(dict(protocol=processProtocol, executable=executable,
                                 args=args, env=env, usePTY=usePTY,
                                 transport=transport))
        processProtocol.makeConnection(transport)
        return transport


class FakeReactorTests(SynchronousTestCase):
    """Timers, signals and results, driven by a fake reactor."""

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.group_signals: list[tuple[int, int]] = []
        self.group_exists = True

    def signal_group(self, pgid: int, signum: int) -> None:
        if not self.group_exists:
            raise ProcessLookupError(pgid)
        self.group_signals.append((pgid, signum))

    def spawn(self, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("kill_grace", 2)
        child = spawn_process(self.reactor, ["nix-build", "x.nix"], env={"PATH": "/p"},
                              signal_group=self.signal_group, **kwargs)
        spawned = self.reactor.spawned[-1]
        return child, spawned["protocol"], spawned["transport"]

    def test_spawn_arguments(self) -> None:
        """The command runs under the reaper, told the grace period and our pid, with exactly the given environment and no PTY."""
        child, _, transport = self.spawn()
        spawned = self.reactor.spawned[0]
        self.assertEqual(spawned["executable"], sys.executable)
        self.assertEqual(spawned["args"], [
            sys.executable, "-I", "-S", os.path.abspath(reaper.__file__), "2.0", "0",
            str(os.getpid()), "--", "nix-build", "x.nix"])
        self.assertEqual(spawned["env"], {"PATH": "/p"})
        self.assertFalse(spawned["usePTY"])
        self.assertTrue(transport.stdin_closed)
        self.assertEqual(child.pid, 4242)

    def test_success(self) -> None:
        """Exit status 0 gives stdout, the tail, and leaves no timer."""
        child, protocol, _ = self.spawn()
        protocol.childDataReceived(1, b"/nix/store/a\n")
        protocol.childDataReceived(2, b"building\nlast")
        protocol.processEnded(Failure(ProcessDone(0)))
        result = self.successResultOf(child.result)
        self.assertEqual(result, ProcessResult(
            ("nix-build", "x.nix"), 4242, b"/nix/store/a\n", ("building", "last")))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_failure_carries_status_and_tail(self) -> None:
        """A non-zero exit fails with the status and the last lines."""
        child, protocol, _ = self.spawn(tail_lines=2)
        protocol.childDataReceived(2, b"one\ntwo\nthree\n")
        protocol.processEnded(Failure(ProcessTerminated(exitCode=100)))
        failure = self.failureResultOf(child.result, ProcessFailed)
        self.assertEqual(failure.value.exit_code, 100)
        self.assertIsNone(failure.value.signal)
        self.assertEqual(failure.value.tail, ("two", "three"))
        self.assertIn("nix-build exited with status 100", str(failure.value))

    def test_timeout_terminates_then_kills_group(self) -> None:
        """
        At the deadline the result fails at once and the group gets
        SIGTERM; SIGKILL follows after the grace period and the reaper's
        margin, for a reaper that has not ended its tree by itself.
        """
        child, protocol, _ = self.spawn(timeout=10, kill_grace=2)
        ended = child.when_ended()
        self.reactor.advance(9.9)
        self.assertEqual(self.group_signals, [])
        self.assertNoResult(child.result)
        self.reactor.advance(0.1)
        self.assertEqual(self.group_signals, [(4242, signal.SIGTERM)])
        failure = self.failureResultOf(child.result, ProcessTimedOut)
        self.assertEqual(failure.value.timeout, 10)
        self.reactor.advance(2 + REAPER_MARGIN - 0.1)
        self.assertEqual(self.group_signals, [(4242, signal.SIGTERM)])
        self.reactor.advance(0.1)
        self.assertEqual(self.group_signals,
                         [(4242, signal.SIGTERM), (4242, signal.SIGKILL)])
        self.assertNoResult(ended)
        protocol.processEnded(Failure(ProcessTerminated(signal=9)))
        self.successResultOf(ended)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timeout_does_not_wait_for_open_pipes(self) -> None:
        """
        A timed-out child whose pipes stay open after it exited (held by a
        process outside its tree) has failed already; its pipes are closed
        on our side after the drain time, and then it has ended.
        """
        child, protocol, transport = self.spawn(timeout=3, kill_grace=2)
        ended = child.when_ended()
        self.reactor.advance(3)
        self.failureResultOf(child.result, ProcessTimedOut)
        self.reactor.advance(0.5)
        protocol.processExited(Failure(ProcessTerminated(signal=15)))
        self.reactor.advance(PIPE_DRAIN - 0.1)
        self.assertFalse(transport.pipes_closed)
        self.reactor.advance(0.1)
        self.assertTrue(transport.pipes_closed)
        self.assertNoResult(ended)
        # Closing our ends of the pipes is what ends the process protocol.
        protocol.processEnded(Failure(ProcessTerminated(signal=15)))
        self.successResultOf(ended)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_exit_then_end_leaves_no_drain_timer(self) -> None:
        """A child whose pipes close right after it exits succeeds, with no timer left."""
        child, protocol, transport = self.spawn()
        protocol.processExited(Failure(ProcessDone(0)))
        protocol.processEnded(Failure(ProcessDone(0)))
        self.successResultOf(child.result)
        self.assertFalse(transport.pipes_closed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_exit_during_grace_cancels_kill_timer(self) -> None:
        """A child that exits on SIGTERM leaves no pending timer, and stragglers of its group get SIGKILL."""
        child, protocol, _ = self.spawn(timeout=1, kill_grace=5)
        self.reactor.advance(1)
        protocol.processEnded(Failure(ProcessTerminated(signal=15)))
        self.failureResultOf(child.result, ProcessTimedOut)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.group_signals,
                         [(4242, signal.SIGTERM), (4242, signal.SIGKILL)])

    def test_missing_group_falls_back_to_the_child(self) -> None:
        """When the group does not exist yet, the child itself is signalled."""
        child, protocol, transport = self.spawn(timeout=1)
        self.group_exists = False
        self.reactor.advance(1)
        self.assertEqual(transport.signals, [signal.SIGTERM])
        transport.exited = True
        self.reactor.advance(5)
        self.assertEqual(transport.signals, [signal.SIGTERM])
        protocol.processEnded(Failure(ProcessTerminated(signal=15)))
        self.failureResultOf(child.result, ProcessTimedOut)

    def test_cancel_kills_group(self) -> None:
        """Cancelling the result signals the group and ends in CancelledError."""
        child, protocol, _ = self.spawn()
        ended = child.when_ended()
        child.result.cancel()
        self.failureResultOf(child.result, CancelledError)
        self.assertEqual(self.group_signals, [(4242, signal.SIGTERM)])
        self.assertNoResult(ended)
        protocol.processEnded(Failure(ProcessTerminated(signal=15)))
        self.successResultOf(ended)
        self.successResultOf(child.when_ended())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_run_process_cancel_waits_for_the_end(self) -> None:
        """
        Cancelling ``run_process`` signals the group, but fails with
        CancelledError only once the child has ended.
        """
        result = run_process(self.reactor, ["nix-build", "x.nix"], env={"PATH": "/p"},
                             timeout=10, kill_grace=2, signal_group=self.signal_group)
        protocol = self.reactor.spawned[-1]["protocol"]
        result.cancel()
        self.assertEqual(self.group_signals, [(4242, signal.SIGTERM)])
        self.assertNoResult(result)
        protocol.processEnded(Failure(ProcessTerminated(signal=15)))
        self.failureResultOf(result, CancelledError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_run_process_timeout_waits_for_the_end(self) -> None:
        """
        ``run_process`` fails on timeout once the reaper has ended the tree,
        which takes no longer than the grace period, the reaper's margin
        and the pipes' drain time, whatever holds the pipes.
        """
        result = run_process(self.reactor, ["nix-build", "x.nix"], env={"PATH": "/p"},
                             timeout=10, kill_grace=2, signal_group=self.signal_group)
        protocol = self.reactor.spawned[-1]["protocol"]
        self.reactor.advance(10)
        self.assertNoResult(result)
        self.reactor.advance(2 + REAPER_MARGIN)
        self.assertEqual(self.group_signals,
                         [(4242, signal.SIGTERM), (4242, signal.SIGKILL)])
        self.assertNoResult(result)
        protocol.processExited(Failure(ProcessTerminated(signal=9)))
        self.reactor.advance(PIPE_DRAIN)
        self.assertTrue(self.reactor.spawned[-1]["transport"].pipes_closed)
        protocol.processEnded(Failure(ProcessTerminated(signal=9)))
        self.failureResultOf(result, ProcessTimedOut)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stdout_limit(self) -> None:
        """Stdout beyond the limit kills the child and fails with OutputTooLarge."""
        child, protocol, _ = self.spawn(max_stdout=10)
        protocol.childDataReceived(1, b"123456")
        self.assertEqual(self.group_signals, [])
        protocol.childDataReceived(1, b"789012")
        self.assertEqual(self.group_signals, [(4242, signal.SIGTERM)])
        failure = self.failureResultOf(child.result, OutputTooLarge)
        self.assertEqual(failure.value.limit, 10)
        protocol.processEnded(Failure(ProcessTerminated(signal=15)))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_only_stderr_is_logged(self) -> None:
        """Stderr lines are logged; stdout is collected, not logged."""
        lines: list[str] = []
        child, protocol, _ = self.spawn(logger=line_logger(lines.append))
        protocol.childDataReceived(1, b"out\n")
        protocol.childDataReceived(2, b"err\n")
        protocol.processEnded(Failure(ProcessDone(0)))
        self.assertEqual(lines, ["err"])
        self.assertEqual(self.successResultOf(child.result).stdout, b"out\n")

    def test_log_events(self) -> None:
        """Each line becomes a log event carrying line, argv0, pid and the caller's fields."""
        logger = Logger(namespace="test")
        with capturedLogs() as events:
            child, protocol, _ = self.spawn(logger=logger,
                                            log_fields={"image": "hello"})
            protocol.childDataReceived(2, b"building '/nix/store/x.drv'\n")
            protocol.processEnded(Failure(ProcessDone(0)))
        lines = [e for e in events if "line" in e]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["line"], "building '/nix/store/x.drv'")
        self.assertEqual(lines[0]["argv0"], "nix-build")
        self.assertEqual(lines[0]["pid"], 4242)
        self.assertEqual(lines[0]["image"], "hello")
        self.assertEqual(lines[0]["stream"], "stderr")
        self.assertEqual(lines[0]["log_namespace"], "test")


class RealChildProcessTests(TestCase):
    """Real child processes of this interpreter."""

    timeout = 30

    async def test_lines_stream_before_exit(self) -> None:
        """A line is logged while the child still runs: the child waits for a file the log observer creates."""
        marker = os.path.abspath(self.mktemp())
        seen: list[str] = []

        def on_line(line: str) -> None:
            seen.append(line)
            if line == "waiting":
                open(marker, "w").close()

        code = """
            import os, sys, time
            sys.stderr.write("waiting\\n"); sys.stderr.flush()
            deadline = time.time() + 10
            while not os.path.exists(%r) and time.time() < deadline:
                time.sleep(0.01)
            sys.stderr.write("saw marker\\n" if os.path.exists(%r) else "no marker\\n")
        """ % (marker, marker)
        result = await run_process(reactor, python(code), env=ENV, timeout=20,
                                   logger=line_logger(on_line))
        self.assertEqual(seen, ["waiting", "saw marker"])
        self.assertEqual(result.tail, ("waiting", "saw marker"))

    async def test_large_stderr_and_stdout(self) -> None:
        """Megabytes on stderr and on stdout at once do not hang, stdout is complete, and the tail is bounded."""
        code = """
            import sys
            for i in range(40000):
                sys.stderr.write("log line %05d " % i + "x" * 40 + "\\n")
                if i % 10 == 0:
                    sys.stdout.write("%d\\n" % i)
        """
        count: list[str] = []
        result = await run_process(
            reactor, python(code), env=ENV, timeout=20, tail_lines=3,
            logger=line_logger(count.append))
        self.assertEqual(len(count), 40000)
        self.assertEqual(result.stdout,
                         b"".join(b"%d\n" % i for i in range(0, 40000, 10)))
        self.assertEqual(len(result.tail), 3)
        self.assertTrue(result.tail[-1].startswith("log line 39999 "))

    async def test_nonzero_exit(self) -> None:
        """A non-zero exit raises ProcessFailed with the status and the tail."""
        code = """
            import sys
            print("error: something broke", file=sys.stderr)
            sys.exit(3)
        """
        with self.assertRaises(ProcessFailed) as caught:
            await run_process(reactor, python(code), env=ENV, timeout=20)
        self.assertEqual(caught.exception.exit_code, 3)
        self.assertEqual(caught.exception.tail, ("error: something broke",))

    async def test_partial_last_line(self) -> None:
        """An unterminated last line is passed on when the child ends."""
        lines: list[str] = []
        code = "import sys; sys.stderr.write('first\\nno newline')"
        result = await run_process(reactor, python(code), env=ENV, timeout=20,
                                   logger=line_logger(lines.append))
        self.assertEqual(lines, ["first", "no newline"])
        self.assertEqual(result.tail, ("first", "no newline"))

    async def test_environment_is_exact(self) -> None:
        """The child sees exactly the environment it was given."""
        result = await run_process(
            reactor, ["env"], env={"PATH": ENV["PATH"], "NIX_REMOTE": "daemon"},
            timeout=20)
        self.assertEqual(sorted(result.stdout.splitlines()),
                         [b"NIX_REMOTE=daemon", b"PATH=" + ENV["PATH"].encode()])

    async def test_own_process_group(self) -> None:
        """The program is a child of its reaper, in the reaper's own session and process group."""
        code = "import os; print(os.getppid(), os.getpgid(0), os.getsid(0))"
        result = await run_process(reactor, python(code), env=ENV, timeout=20)
        ppid, pgid, sid = result.stdout.split()
        self.assertEqual(int(ppid), result.pid)
        self.assertEqual(int(pgid), result.pid)
        self.assertEqual(int(sid), result.pid)
        self.assertNotEqual(os.getpgid(0), result.pid)

    async def test_killed_by_a_signal(self) -> None:
        """A program killed by a signal is reported so, as if it had no reaper."""
        code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
        with self.assertRaises(ProcessFailed) as caught:
            await run_process(reactor, python(code), env=ENV, timeout=20)
        self.assertEqual((caught.exception.signal, caught.exception.exit_code),
                         (signal.SIGKILL, None))

    async def test_default_signal_dispositions(self) -> None:
        """The program does not inherit the interpreter's ignored SIGPIPE and SIGXFSZ."""
        result = await run_process(reactor, ["cat", "/proc/self/status"], env=ENV,
                                   timeout=20)
        [ignored] = [line.split()[1] for line in result.stdout.decode().splitlines()
                     if line.startswith("SigIgn:")]
        mask = int(ignored, 16)
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):
            self.assertFalse(mask & (1 << (signum - 1)), signum)

    async def test_missing_program(self) -> None:
        """A program that does not exist fails with status 127 and says why."""
        with self.assertRaises(ProcessFailed) as caught:
            await run_process(reactor, ["nixeryd-no-such-program"], env=ENV,
                              timeout=20)
        self.assertEqual(caught.exception.exit_code, 127)
        self.assertIn("cannot run nixeryd-no-such-program", caught.exception.tail[0])

    async def _grandchild_test(self, child_ignores_term: bool) -> None:
        grandchild = """
            import signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(60)
        """
        code = """
            import signal, subprocess, sys, time
            if %r:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            g = subprocess.Popen([sys.executable, "-c", %r],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            print("grandchild", g.pid, file=sys.stderr, flush=True)
            time.sleep(60)
        """ % (child_ignores_term, textwrap.dedent(grandchild))
        child = spawn_process(reactor, python(code), env=ENV, timeout=1.5,
                              kill_grace=0.5)
        with self.assertRaises(ProcessTimedOut) as caught:
            await child.result
        await child.when_ended()
        line = [l for l in caught.exception.tail if l.startswith("grandchild ")]
        self.assertEqual(len(line), 1, caught.exception.tail)
        grandchild_pid = int(line[0].split()[1])
        assert child.pid is not None
        self.assertFalse(is_alive(child.pid))
        self.assertTrue(await wait_until_gone(grandchild_pid))

    async def test_timeout_kills_grandchild(self) -> None:
        """On timeout a child dies of SIGTERM and its grandchild, which ignores SIGTERM and left our pipes, is killed too."""
        await self._grandchild_test(child_ignores_term=False)

    async def test_timeout_escalates_to_sigkill(self) -> None:
        """A group that ignores SIGTERM is killed with SIGKILL after the grace period."""
        await self._grandchild_test(child_ignores_term=True)

    async def test_cancel_kills(self) -> None:
        """Cancelling the result kills the running child."""
        child, started = spawn_sleeper()
        await started
        child.result.cancel()
        with self.assertRaises(CancelledError):
            await child.result
        await child.when_ended()
        assert child.pid is not None
        self.assertFalse(is_alive(child.pid))


class _Collector(ProcessProtocol):
    """Collects a plain child's stdout lines; fires when one starts with a word."""

    def __init__(self, word: str) -> None:
        self.lines: list[str] = []
        self.seen: Deferred[None] = Deferred()
        self._word = word
        self._splitter = LineSplitter()

    def outReceived(self, data: bytes) -> None:
        for line in self._splitter.feed(data):
            self.lines.append(line)
            if line.startswith(self._word) and not self.seen.called:
                self.seen.callback(None)


#: A stand-in for the daemon: runs the escaping program as a step with no
#: deadline and prints the step's stderr lines on its stdout.
_DAEMON = """
import sys
from twisted.internet import reactor
from twisted.logger import Logger
from nixeryd.build.process import spawn_process

def observe(event):
    if "line" in event:
        print(event["line"], flush=True)

spawn_process(reactor, [sys.executable, %r, "sleep"], env={"PATH": %r},
              timeout=None, kill_grace=0.5, logger=Logger(observer=observe))
reactor.run()
"""


class EscapedDescendantTests(TestCase):
    """
    A step whose descendant made a session of its own, ignores SIGTERM and
    keeps the step's stdout and stderr open (:mod:`tests.escaping`).
    """

    timeout = 30

    def spawn_escaping(self, mode: str, **kwargs: Any
                       ) -> tuple[Any, list[str], Deferred[None]]:
        """The step, its stderr lines so far, and a Deferred of its ``sleeping`` line."""
        lines: list[str] = []
        asleep: Deferred[None] = Deferred()

        def on_line(line: str) -> None:
            lines.append(line)
            if line.startswith("sleeping ") and not asleep.called:
                asleep.callback(None)

        child = spawn_process(reactor, [sys.executable, escaping.PROGRAM, mode],
                              env=ENV, logger=line_logger(on_line), **kwargs)
        return child, lines, asleep

    def assert_escaped(self, lines: list[str], step_pid: int | None) -> int:
        """The grandchild's pid, checked to be outside the step's session."""
        pid = escaped_pid(lines)
        assert pid is not None, lines
        self.assertNotEqual(os.getsid(pid), step_pid)
        return pid

    async def test_timeout_fails_at_the_deadline(self) -> None:
        """
        The result fails at the deadline, not when the descendant lets the
        pipes go; the tree is gone within the grace period, the
        descendant included.
        """
        started = time.monotonic()
        child, lines, asleep = self.spawn_escaping("sleep", timeout=1.0, kill_grace=0.5)
        await asleep
        grandchild = self.assert_escaped(lines, child.pid)
        with self.assertRaises(ProcessTimedOut):
            await child.result
        # The descendant sleeps for a minute: anything close to the
        # deadline means nobody waited for it.
        self.assertLess(time.monotonic() - started, 1.0 + 2.0)
        await child.when_ended()
        self.assertLess(time.monotonic() - started, 1.0 + 0.5 + REAPER_MARGIN + 2.0)
        # The reaper reaps its whole tree before it exits: no polling.
        self.assertFalse(is_alive(grandchild))
        program = sleeping_pid(lines)
        assert program is not None
        self.assertFalse(is_alive(program))

    async def test_run_process_timeout(self) -> None:
        """``run_process`` fails at the deadline, once the tree, the descendant included, is gone."""
        lines: list[str] = []
        started = time.monotonic()
        with self.assertRaises(ProcessTimedOut):
            await run_process(reactor, [sys.executable, escaping.PROGRAM, "sleep"],
                              env=ENV, timeout=1.0, kill_grace=3,
                              logger=line_logger(lines.append))
        # The program dies of SIGTERM; the reaper kills the rest at once,
        # without waiting for the grace period.
        self.assertLess(time.monotonic() - started, 1.0 + 2.0)
        grandchild = escaped_pid(lines)
        assert grandchild is not None
        self.assertFalse(is_alive(grandchild))

    async def test_cancel_ends_the_tree(self) -> None:
        """Cancelling a run (as the daemon's stop does) ends when the whole tree has."""
        lines: list[str] = []
        asleep: Deferred[None] = Deferred()

        def on_line(line: str) -> None:
            lines.append(line)
            if line.startswith("sleeping ") and not asleep.called:
                asleep.callback(None)

        result = run_process(reactor, [sys.executable, escaping.PROGRAM, "sleep"],
                             env=ENV, timeout=20, kill_grace=0.5,
                             logger=line_logger(on_line))
        await asleep
        grandchild = escaped_pid(lines)
        assert grandchild is not None
        started = time.monotonic()
        result.cancel()
        with self.assertRaises(CancelledError):
            await result
        self.assertLess(time.monotonic() - started, 0.5 + REAPER_MARGIN + 2.0)
        self.assertFalse(is_alive(grandchild))

    async def test_exit_kills_what_is_left(self) -> None:
        """A step that exits leaving a descendant succeeds at once, and the descendant is killed."""
        started = time.monotonic()
        child, lines, _ = self.spawn_escaping("exit", timeout=20)
        result = await child.result
        self.assertEqual(result.stdout, b"done\n")
        self.assertLess(time.monotonic() - started, 10)
        grandchild = escaped_pid(lines)
        assert grandchild is not None
        self.assertFalse(is_alive(grandchild))

    async def test_daemon_killed(self) -> None:
        """When the daemon is killed with SIGKILL, its steps' whole trees end too."""
        collector = _Collector("sleeping ")
        code = _DAEMON % (escaping.PROGRAM, ENV["PATH"])
        env = dict(ENV, PYTHONPATH=os.pathsep.join(sys.path))
        transport = reactor.spawnProcess(collector, sys.executable,
                                         [sys.executable, "-c", code], env=env)
        ended: Deferred[None] = Deferred()
        collector.processEnded = lambda reason: ended.callback(None)  # type: ignore[method-assign]
        await collector.seen
        grandchild = escaped_pid(collector.lines)
        program = sleeping_pid(collector.lines)
        assert grandchild is not None and program is not None
        transport.signalProcess("KILL")
        await ended
        # Nothing of ours is their parent any more: poll /proc, briefly.
        self.assertTrue(await wait_until_gone(program))
        self.assertTrue(await wait_until_gone(grandchild))


class WithoutPrctlTests(TestCase):
    """
    A reaper that cannot call ``prctl`` (switched off through
    :data:`~nixeryd.build.reaper.NO_PRCTL`, as a seccomp filter or a
    system other than Linux would refuse it): it says so in one line and
    ends the step's process group.
    """

    timeout = 30

    async def test_group_is_ended(self) -> None:
        """
        The step still succeeds, its log's first line says what is lost,
        the switch does not reach the program, and a double-forked
        descendant left in the group (re-parented away from the reaper,
        which is no subreaper now) is killed when the program exits.
        """
        code = """
            import os, signal, sys, time
            if os.fork() == 0:
                grandchild = os.fork()
                if grandchild == 0:
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    os.close(1); os.close(2)
                    time.sleep(60)
                    os._exit(0)
                print(grandchild, flush=True)
                os._exit(0)
            os.wait()
            print(sorted(os.environ), flush=True)
        """
        env = dict(ENV, **{reaper.NO_PRCTL: "1"})
        result = await run_process(reactor, python(code), env=env, timeout=20)
        self.assertEqual(result.tail[0], "reaper: prctl is unavailable (disabled by"
                         " NIXERYD_REAPER_NO_PRCTL): the step's process group is"
                         " ended, not its descendants that leave it, nor the step"
                         " when the daemon is killed")
        grandchild, environ = result.stdout.splitlines()
        self.assertNotIn(reaper.NO_PRCTL.encode(), environ)
        self.assertIn(b"'PATH'", environ)
        # Re-parented away from the reaper, the grandchild is not ours to
        # wait for: poll /proc, briefly.
        self.assertTrue(await wait_until_gone(int(grandchild)))

    async def test_orphan_in_the_group_is_found(self) -> None:
        """Without the subreaper, the tree walk adds the members of the group."""
        child, started = spawn_sleeper()
        child.result.addErrback(lambda failure: None)
        self.addCleanup(child.when_ended)
        self.addCleanup(child.terminate)
        await started
        assert child.pid is not None
        [program] = reaper.descendants(child.pid)
        # Seen from a process it is not below, only through the group.
        with open("/proc/sys/kernel/pid_max") as f:
            elsewhere = int(f.read())  # No process has this id.
        self.assertNotIn(program, reaper.descendants(elsewhere))
        self.assertIn(program, reaper.descendants(elsewhere, group=child.pid))
        self.assertNotIn(child.pid, reaper.descendants(child.pid, group=child.pid))


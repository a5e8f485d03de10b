"""
Tests for :mod:`nixeryd.service.builds` (build records and their history)
and :mod:`nixeryd.service.buildlog` (the logger feeding a record).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from nixeryd.build.sources import PinnedSource
from nixeryd.core.errors import BuildFailed
from nixeryd.service.buildlog import BuildLog
from nixeryd.service.builds import (BuildHistory, BuildPhase, BuildRecord,
                                    LayerSummary, describe_pinned_source)


class Recorder:
    """A listener that writes down what it is told."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.phases: list[BuildPhase] = []

    def log_line(self, record: BuildRecord, line: str) -> None:
        self.lines.append(line)

    def changed(self, record: BuildRecord) -> None:
        self.phases.append(record.phase)


def start(history: BuildHistory, image: str = "shell/hello") -> BuildRecord:
    return history.start(image=image, tag="latest", packages=("hello",),
                         system="x86_64-linux", source="path /srv/pkgs",
                         revision=None)


class BuildRecordTests(SynchronousTestCase):
    """One build's state, timings, log and listeners."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.history = BuildHistory(self.clock, keep_builds=3, keep_lines=2)

    def test_phases_and_timings(self) -> None:
        """Phases are entered in turn with their start times; the end is final."""
        record = start(self.history)
        self.assertEqual(record.phase, BuildPhase.WAITING)
        self.clock.advance(2)
        record.enter(BuildPhase.EVALUATING)
        self.clock.advance(3)
        record.enter(BuildPhase.BUILDING)
        self.assertEqual(record.duration(), 5)
        record.succeed("sha256:" + "a" * 64, "built")
        self.clock.advance(10)
        self.assertEqual(record.duration(), 5)
        self.assertEqual(record.phase_started[BuildPhase.EVALUATING], 1002)
        self.assertEqual(record.phase_started[BuildPhase.BUILDING], 1005)
        record.fail("too late")
        record.enter(BuildPhase.LAYERING)
        self.assertEqual(record.phase, BuildPhase.SUCCEEDED)
        self.assertEqual(record.message, "built")

    def test_log_bounded(self) -> None:
        """Only the last lines are kept; the count covers all of them."""
        record = start(self.history)
        for line in ("one", "two", "three"):
            record.add_log_line(line)
        self.assertEqual(list(record.log), ["two", "three"])
        self.assertEqual(record.log_lines, 3)

    def test_listeners(self) -> None:
        """Listeners hear lines and changes until the build ends or they leave."""
        record = start(self.history)
        heard, left = Recorder(), Recorder()
        record.subscribe(heard)
        stop = record.subscribe(left)
        record.add_log_line("building")
        stop()
        record.enter(BuildPhase.LAYERING)
        record.add_layer(LayerSummary("sha256:" + "b" * 64, 10, "hello-1.0", False))
        record.fail("the build of package hello failed")
        record.add_log_line("after the end")
        self.assertEqual(heard.lines, ["building"])
        self.assertEqual(heard.phases, [BuildPhase.LAYERING, BuildPhase.LAYERING,
                                        BuildPhase.FAILED])
        self.assertEqual(left.lines, ["building"])
        self.assertEqual(left.phases, [])
        self.assertEqual(record.total_layer_bytes(), 10)

    def test_failing_listener_is_logged(self) -> None:
        """A listener that raises does not stop the others."""
        record = start(self.history)

        class Broken(Recorder):
            def log_line(self, record: BuildRecord, line: str) -> None:
                raise RuntimeError("broken")

        fine = Recorder()
        record.subscribe(Broken())
        record.subscribe(fine)
        record.add_log_line("x")
        self.assertEqual(fine.lines, ["x"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class BuildHistoryTests(SynchronousTestCase):
    """Running builds are kept; finished ones up to the limit."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.history = BuildHistory(self.clock, keep_builds=2)

    def test_ids_unique_and_url_safe(self) -> None:
        records = [start(self.history) for _ in range(20)]
        ids = {r.id for r in records}
        self.assertEqual(len(ids), 20)
        for build_id in ids:
            self.assertRegex(build_id, r"\A[0-9a-f]{12}\Z")
        self.assertIs(self.history.get(records[0].id), records[0])
        self.assertIsNone(self.history.get("nope"))

    def test_watch(self) -> None:
        """Watchers see every record started while they watch."""
        seen: list[str] = []
        stop = self.history.watch(lambda record: seen.append(record.image))
        start(self.history, "one")
        stop()
        start(self.history, "two")
        self.assertEqual(seen, ["one"])

    def test_finished_builds_bounded(self) -> None:
        """The oldest finished builds go; running builds always stay."""
        running = start(self.history, "running")
        done = []
        for n in range(4):
            record = start(self.history, "done%d" % (n,))
            self.clock.advance(1)
            record.succeed("sha256:" + "c" * 64, "built")
            done.append(record)
        start(self.history, "later")
        self.assertIs(self.history.get(running.id), running)
        self.assertEqual([r.image for r in self.history.recent()], ["done3", "done2"])
        self.assertEqual([r.image for r in self.history.running()], ["running", "later"])
        self.assertEqual([r.image for r in self.history.waiting()], ["running", "later"])
        self.assertEqual(len(list(self.history)), 4)
        self.assertEqual([r.image for r in self.history.recent(1)], ["done3"])


class DescribeSourceTests(SynchronousTestCase):
    """Package sources described for people."""

    def test_kinds(self) -> None:
        """A path, a git repository (without credentials) and a channel."""
        self.assertEqual(describe_pinned_source(PinnedSource(
            "path", {"kind": "path", "path": "/srv/pkgs"}, None)), "path /srv/pkgs")
        git = PinnedSource("git", {"kind": "git", "fetchGit": {
            "url": "https://user:token@git.example/pkgs.git", "rev": "a" * 40}}, "a" * 40)
        self.assertEqual(describe_pinned_source(git), "git https://git.example/pkgs.git")
        scp = PinnedSource("git", {"kind": "git", "fetchGit": {
            "url": "git@git.example:pkgs.git"}}, "a" * 40)
        self.assertEqual(describe_pinned_source(scp), "git git@git.example:pkgs.git")
        self.assertEqual(describe_pinned_source(PinnedSource(
            "channel", {"kind": "channel", "channel": "nixos-unstable"}, None)),
            "channel nixos-unstable")
        self.assertEqual(describe_pinned_source(PinnedSource("other", {}, None)), "other")


class BuildLogTests(SynchronousTestCase):
    """A build's logger: Nix's lines and nixeryd's account, into the record and on."""

    def setUp(self) -> None:
        self.history = BuildHistory(Clock())
        self.record = start(self.history)
        self.passed_on: list[LogEvent] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            self.passed_on.append(event)

        self.observe = observe
        self.build = BuildLog(self.record, publisher=observe)

    def stderr(self, line: str) -> None:
        """Log ``line`` as the process runner logs a child's stderr."""
        self.build.log.info("{argv0}[{pid}] {line}", argv0="nix-build", pid=7,
                            line=line, stream="stderr")

    def test_nix_lines(self) -> None:
        """
        Nix's lines join the record as they are; the service log gets them
        at DEBUG, and Nix's ``error:`` lines at WARN.
        """
        self.stderr("building '/nix/store/x-failing-1.0.drv'...")
        self.stderr("error: builder for '/nix/store/x-failing-1.0.drv' failed")
        self.assertEqual(list(self.record.log), [
            "building '/nix/store/x-failing-1.0.drv'...",
            "error: builder for '/nix/store/x-failing-1.0.drv' failed"])
        self.assertEqual([e["log_level"] for e in self.passed_on],
                         [LogLevel.debug, LogLevel.warn])
        self.assertEqual({e["build"] for e in self.passed_on}, {self.record.id})
        self.assertEqual(formatEvent(self.passed_on[0]),
                         "nix-build[7] building '/nix/store/x-failing-1.0.drv'...")

    def test_account(self) -> None:
        """nixeryd's own events join the record after ``nixeryd:``, at their level."""
        self.build.log.info("Evaluating {packages}", packages="hello, shell")
        self.build.log.warn("Something odd")
        self.assertEqual(list(self.record.log), ["nixeryd: Evaluating hello, shell",
                                                 "nixeryd: Something odd"])
        self.assertEqual([e["log_level"] for e in self.passed_on],
                         [LogLevel.info, LogLevel.warn])

    def test_outcomes(self) -> None:
        """Failing gives the error the build's id and ends the record with its message."""
        error = BuildFailed("the build of package hello failed", "hello")
        self.build.failed(error)
        self.assertEqual(error.build_id, self.record.id)
        self.assertEqual((self.record.phase, self.record.message),
                         (BuildPhase.FAILED, "the build of package hello failed"))
        self.assertEqual(self.passed_on[-1]["log_level"], LogLevel.warn)
        self.assertEqual(self.record.log[-1], "nixeryd: shell/hello:latest failed:"
                         " the build of package hello failed")
        other = BuildLog(start(self.history), publisher=self.observe)
        other.succeeded("sha256:" + "d" * 64, "built in 1.0 s: 2 layers, 1.0 kB")
        self.assertEqual((other.record.phase, other.record.manifest_digest),
                         (BuildPhase.SUCCEEDED, "sha256:" + "d" * 64))
        self.assertEqual(self.passed_on[-1]["log_level"], LogLevel.info)
        cancelled = BuildLog(start(self.history), publisher=self.observe)
        cancelled.cancelled("the registry is stopping")
        self.assertEqual(cancelled.record.message, "cancelled: the registry is stopping")

    def test_crashed(self) -> None:
        """An unexpected failure is logged with its traceback; the record says little."""
        try:
            raise RuntimeError("bug")
        except RuntimeError:
            self.build.crashed(Failure())
        self.assertEqual(self.record.message, "internal server error")
        self.assertIsInstance(self.passed_on[-1]["log_failure"].value, RuntimeError)

    def test_credentials_left_out(self) -> None:
        """URLs' credentials stay out of the record, which anyone pulling may read."""
        self.stderr("fetching Git repository 'https://user:s3cret@git.example/pkgs'")
        self.build.log.info("Fetching {url}", url="https://token@git.example/pkgs")
        self.assertEqual(list(self.record.log), [
            "fetching Git repository 'https://git.example/pkgs'",
            "nixeryd: Fetching https://git.example/pkgs"])

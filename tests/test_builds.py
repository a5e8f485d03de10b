"""
Tests for :mod:`nixeryd.service.builds`: build records and their history.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.service.builds import (BuildHistory, BuildPhase, BuildRecord,
                                    LayerSummary)


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

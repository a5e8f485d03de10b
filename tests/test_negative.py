"""
Tests for :mod:`nixeryd.service.negative`: permanent failures remembered
for a bounded time and count.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.core.errors import (BuildFailed, BuildTimedOut, ManifestUnknown, TooManyRequests,
                                 Unavailable, UnknownPackages)
from nixeryd.service.negative import FailureMemory, is_permanent


class PermanentTests(SynchronousTestCase):
    """Which failures are remembered."""

    def test_permanent(self) -> None:
        """Unknown packages or tags and failed builds are."""
        for error in (UnknownPackages(["nosuch"]), BuildFailed("failed", "x"),
                      ManifestUnknown("no such branch")):
            self.assertTrue(is_permanent(error), error)

    def test_not_permanent(self) -> None:
        """Timeouts, transient failures, refusals and other exceptions are not."""
        for error in (BuildTimedOut("build", 600, "package slow"), Unavailable("later"),
                      TooManyRequests("full"), RuntimeError("bug")):
            self.assertFalse(is_permanent(error), error)


class FailureMemoryTests(SynchronousTestCase):
    """Remembered until the time is up, the least recently asked for forgotten first."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.memory = FailureMemory(self.clock, ttl=300, moving_ttl=60, size=2)

    def test_pinned_for_the_ttl(self) -> None:
        """A pinned revision's failure is the same error, until the TTL passes."""
        error = UnknownPackages(["nosuch"])
        error.build_id = "0123456789ab"
        self.memory.remember("k", error, moving=False)
        self.clock.advance(299)
        again = self.memory.recall("k")
        self.assertIs(again, error)
        assert again is not None
        self.assertEqual(again.build_id, "0123456789ab")
        self.clock.advance(1)
        self.assertIsNone(self.memory.recall("k"))
        self.assertEqual(len(self.memory), 0)

    def test_moving_for_its_window(self) -> None:
        """A moving source's failure is kept no longer than its images are."""
        self.memory.remember("k", BuildFailed("failed"), moving=True)
        self.clock.advance(59)
        self.assertIsNotNone(self.memory.recall("k"))
        self.clock.advance(1)
        self.assertIsNone(self.memory.recall("k"))

    def test_traceback_dropped(self) -> None:
        """A recalled error is raised afresh: its old traceback is gone."""
        try:
            raise BuildFailed("failed")
        except BuildFailed as e:
            self.memory.remember("k", e, moving=False)
        again = self.memory.recall("k")
        assert again is not None
        self.assertIsNone(again.__traceback__)

    def test_transient_not_kept(self) -> None:
        """A timeout or a 503 is not remembered."""
        self.memory.remember("a", BuildTimedOut("evaluation", 1, "x"), moving=False)
        self.memory.remember("b", Unavailable("later"), moving=False)
        self.assertEqual(len(self.memory), 0)

    def test_bounded_count(self) -> None:
        """Past its size the least recently asked-for failure is forgotten."""
        for key in ("a", "b"):
            self.memory.remember(key, BuildFailed(key), moving=False)
        self.memory.recall("a")
        self.memory.remember("c", BuildFailed("c"), moving=False)
        self.assertIsNone(self.memory.recall("b"))
        self.assertIsNotNone(self.memory.recall("a"))
        self.assertIsNotNone(self.memory.recall("c"))

    def test_zero_ttl_keeps_nothing(self) -> None:
        """A TTL of 0 remembers no failure."""
        memory = FailureMemory(self.clock, ttl=0, moving_ttl=60)
        memory.remember("k", BuildFailed("failed"), moving=False)
        self.assertIsNone(memory.recall("k"))

    def test_forget(self) -> None:
        """A failure can be dropped."""
        self.memory.remember("k", BuildFailed("failed"), moving=False)
        self.memory.forget("k")
        self.memory.forget("k")
        self.assertIsNone(self.memory.recall("k"))

"""
Tests for :mod:`nixeryd.service.slots`: slots for Nix steps that long
steps leave to short ones.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.service.slots import NixSlots


class NixSlotsTests(SynchronousTestCase):
    """The rule: fewer than ``size`` young steps, fewer than ``2 × size`` in all."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.slots = NixSlots(self.clock, 2, long_after=10)
        self.done: dict[str, Deferred[None]] = {}
        self.started: list[str] = []

    def step(self, name: str) -> Deferred[None]:
        """A step holding a slot until ``self.done[name]`` fires."""
        self.done[name] = Deferred()

        async def run() -> None:
            async with self.slots.slot():
                self.started.append(name)
                await self.done[name]

        return Deferred.fromCoroutine(run())

    def test_size_at_once(self) -> None:
        """``size`` steps start at once; the next waits for one to end."""
        steps = [self.step(name) for name in "abc"]
        self.assertEqual(self.started, ["a", "b"])
        self.assertTrue(self.slots.full())
        self.assertEqual((self.slots.running, self.slots.waiting), (2, 1))
        self.done["a"].callback(None)
        self.successResultOf(steps[0])
        self.assertEqual(self.started, ["a", "b", "c"])

    def test_long_steps_leave_room(self) -> None:
        """
        Two slow steps hold both slots only until they are long: then the
        next step starts beside them, up to twice the size in all.
        """
        for name in "ab":
            self.step(name)
        self.step("small")
        self.clock.advance(9.9)
        self.assertEqual(self.started, ["a", "b"])
        self.clock.advance(0.1)
        self.assertEqual(self.started, ["a", "b", "small"])
        self.done["small"].callback(None)
        for name in "cdef":
            self.step(name)
        self.assertEqual(self.started, ["a", "b", "small", "c", "d"])
        self.clock.advance(10)
        # Four long steps: twice the size, however long they are.
        self.assertEqual(self.started, ["a", "b", "small", "c", "d"])
        self.assertEqual((self.slots.running, self.slots.young), (4, 0))
        self.done["a"].callback(None)
        self.assertEqual(self.started[-1], "e")

    def test_order_kept(self) -> None:
        """Waiting steps start in the order they came."""
        for name in "abcde":
            self.step(name)
        self.done["b"].callback(None)
        self.done["a"].callback(None)
        self.assertEqual(self.started, ["a", "b", "c", "d"])

    def test_cancelled_wait_leaves_the_line(self) -> None:
        """A step cancelled while waiting never starts and takes no slot."""
        self.step("a")
        self.step("b")
        waiting = self.step("c")
        self.step("d")
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.done["a"].callback(None)
        self.assertEqual(self.started, ["a", "b", "d"])

    def test_release_of_a_young_step_cancels_its_timer(self) -> None:
        """A step ended before it is long leaves no timer behind."""
        self.step("a")
        self.done["a"].callback(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((self.slots.running, self.slots.young), (0, 0))

    def test_failed_step_frees_its_slot(self) -> None:
        """A step that fails frees its slot too."""
        failed = self.step("a")
        self.done["a"].errback(RuntimeError("nix failed"))
        self.failureResultOf(failed, RuntimeError)
        self.assertEqual(self.slots.running, 0)

    def test_bad_size(self) -> None:
        """Slots come at least one at a time."""
        self.assertRaises(ValueError, NixSlots, self.clock, 0)

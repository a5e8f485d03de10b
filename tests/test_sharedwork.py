"""
Tests for :mod:`nixeryd.core.sharedwork`.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.core.sharedwork import SharedWork


class SharedWorkTests(SynchronousTestCase):
    """One piece of work per key, a Deferred per caller."""

    def setUp(self) -> None:
        self.started: list[Deferred[str]] = []
        self.shared: SharedWork[str, str] = SharedWork()

    def start(self) -> Deferred[str]:
        work: Deferred[str] = Deferred()
        self.started.append(work)
        return work

    def test_one_run_for_concurrent_callers(self) -> None:
        """Callers of one key while its work runs share that work."""
        first = self.shared.wait("k", self.start)
        second = self.shared.wait("k", self.start)
        self.assertEqual(len(self.started), 1)
        self.assertIn("k", self.shared)
        self.assertEqual(self.shared.waiters("k"), 2)
        self.started[0].callback("done")
        self.assertEqual(self.successResultOf(first), "done")
        self.assertEqual(self.successResultOf(second), "done")
        self.assertNotIn("k", self.shared)
        self.assertEqual(len(self.shared), 0)

    def test_distinct_keys_run_separately(self) -> None:
        """Each key has its own work."""
        self.shared.wait("a", self.start)
        self.shared.wait("b", self.start)
        self.assertEqual(len(self.started), 2)
        self.assertEqual(len(self.shared), 2)

    def test_new_run_after_completion(self) -> None:
        """A caller after the work ended starts it again."""
        first = self.shared.wait("k", self.start)
        self.started[0].callback("one")
        second = self.shared.wait("k", self.start)
        self.assertEqual(len(self.started), 2)
        self.started[1].callback("two")
        self.assertEqual(self.successResultOf(first), "one")
        self.assertEqual(self.successResultOf(second), "two")

    def test_cancel_removes_only_that_caller(self) -> None:
        """A cancelled caller fails alone; the work goes on for the rest."""
        first = self.shared.wait("k", self.start)
        second = self.shared.wait("k", self.start)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(self.shared.waiters("k"), 1)
        self.assertNoResult(self.started[0])
        self.started[0].callback("done")
        self.assertEqual(self.successResultOf(second), "done")

    def test_failure_reaches_every_caller(self) -> None:
        """A failure of the work fails each caller with it."""
        first = self.shared.wait("k", self.start)
        second = self.shared.wait("k", self.start)
        self.started[0].errback(ValueError("broken"))
        self.failureResultOf(first, ValueError)
        self.failureResultOf(second, ValueError)
        self.assertEqual(self.flushLoggedErrors(ValueError), [])

    def test_start_raising(self) -> None:
        """A ``start`` that raises fails the caller and leaves no work behind."""
        def start() -> Deferred[str]:
            raise RuntimeError("cannot start")

        waiter = self.shared.wait("k", start)
        self.failureResultOf(waiter, RuntimeError)
        self.assertNotIn("k", self.shared)
        again = self.shared.wait("k", self.start)
        self.assertNoResult(again)

    def test_cancel_all(self) -> None:
        """Stopping cancels the work itself, which fails every caller."""
        waiter = self.shared.wait("k", self.start)
        self.shared.cancel_all()
        self.failureResultOf(waiter, CancelledError)
        self.assertNotIn("k", self.shared)

    def test_on_done_sees_outcome_first(self) -> None:
        """The completion hook gets the key and outcome before the callers."""
        seen: list[tuple[str, object]] = []
        order: list[str] = []
        def on_done(key: str, outcome: object) -> None:
            seen.append((key, outcome))
            order.append("hook")

        shared: SharedWork[str, str] = SharedWork(on_done)
        waiter = shared.wait("k", self.start)
        waiter.addCallback(lambda _: order.append("caller"))
        self.started[0].callback("v")
        self.assertEqual(seen, [("k", "v")])
        self.assertEqual(order, ["hook", "caller"])

    def test_on_done_error_is_logged(self) -> None:
        """A failing completion hook is logged; callers still get the result."""
        def hook(key: str, outcome: str | Failure) -> None:
            raise KeyError(key)

        shared: SharedWork[str, str] = SharedWork(hook)
        waiter = shared.wait("k", self.start)
        self.started[0].callback("v")
        self.assertEqual(self.successResultOf(waiter), "v")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)


class AbandonedHookTests(SynchronousTestCase):
    """The ``on_abandoned`` hook: told when the last waiter of running work goes."""

    def setUp(self) -> None:
        self.started: list[Deferred[str]] = []
        self.abandoned: list[str] = []

        def on_abandoned(key: str, work: Deferred[str]) -> bool:
            self.abandoned.append(key)
            work.cancel()
            return True

        self.shared: SharedWork[str, str] = SharedWork(on_abandoned=on_abandoned)

    def start(self) -> Deferred[str]:
        work: Deferred[str] = Deferred()
        self.started.append(work)
        return work

    def test_not_while_a_waiter_remains(self) -> None:
        """One waiter of two leaving is not abandonment."""
        first = self.shared.wait("k", self.start)
        second = self.shared.wait("k", self.start)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(self.abandoned, [])
        self.started[0].callback("v")
        self.assertEqual(self.successResultOf(second), "v")

    def test_last_waiter_leaving(self) -> None:
        """
        The last waiter leaving calls the hook once, which may cancel the
        work; the key is then free for new work.
        """
        first = self.shared.wait("k", self.start)
        second = self.shared.wait("k", self.start)
        first.cancel()
        second.cancel()
        self.assertEqual(self.abandoned, ["k"])
        self.assertTrue(self.started[0].called)
        self.failureResultOf(first, CancelledError)
        self.failureResultOf(second, CancelledError)
        self.assertNotIn("k", self.shared)
        third = self.shared.wait("k", self.start)
        self.assertEqual(len(self.started), 2)
        self.started[1].callback("again")
        self.assertEqual(self.successResultOf(third), "again")

    def test_hook_may_let_work_go_on(self) -> None:
        """A hook that does not cancel leaves the work running for later callers."""
        def keep(key: str, work: Deferred[str]) -> bool:
            self.abandoned.append(key)
            return False

        shared: SharedWork[str, str] = SharedWork(on_abandoned=keep)
        only = shared.wait("k", self.start)
        only.cancel()
        self.failureResultOf(only, CancelledError)
        self.assertEqual(self.abandoned, ["k"])
        self.assertIn("k", shared)
        later = shared.wait("k", self.start)
        self.started[0].callback("v")
        self.assertEqual(self.successResultOf(later), "v")
        self.assertEqual(len(self.started), 1)

    def test_hook_error_is_logged(self) -> None:
        """A failing hook is logged; the cancelled waiter still fails alone."""
        def hook(key: str, work: Deferred[str]) -> bool:
            raise KeyError(key)

        shared: SharedWork[str, str] = SharedWork(on_abandoned=hook)
        only = shared.wait("k", self.start)
        only.cancel()
        self.failureResultOf(only, CancelledError)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertNoResult(self.started[0])

    def test_not_after_the_work_ended(self) -> None:
        """Cancelling a waiter whose work has delivered calls no hook."""
        only = self.shared.wait("k", self.start)
        self.started[0].callback("v")
        only.cancel()
        self.assertEqual(self.abandoned, [])
        self.assertEqual(self.successResultOf(only), "v")

    def test_cancelled_work_still_ending_is_not_joined(self) -> None:
        """
        Work that takes a while to end once cancelled (a process being
        stopped) is not joined: a caller meanwhile starts new work, and the
        old work's late outcome reaches nobody.
        """
        stopped: Deferred[None] = Deferred()

        async def stop_slowly() -> str:
            try:
                await Deferred()
            except CancelledError:
                await stopped
                raise
            return "never"

        only = self.shared.wait("k", lambda: Deferred.fromCoroutine(stop_slowly()))
        only.cancel()
        self.failureResultOf(only, CancelledError)
        self.assertEqual(self.abandoned, ["k"])
        later = self.shared.wait("k", self.start)
        self.assertEqual(len(self.started), 1)
        self.assertEqual(self.shared.waiters("k"), 1)
        stopped.callback(None)
        self.assertNoResult(later)
        self.assertIn("k", self.shared)
        self.started[0].callback("new")
        self.assertEqual(self.successResultOf(later), "new")
        self.assertNotIn("k", self.shared)

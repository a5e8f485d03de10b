"""
Tests for :mod:`nixeryd.metrics.readiness` (the background rounds of
checks, on a fake clock, and ``/readyz`` answering from their result) and
:mod:`nixeryd.app.readychecks` (the daemon's checks: package source, Nix,
storage).
"""

from __future__ import annotations

import os
from typing import Optional

import treq
from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nixeryd.app.config import Config, config_from
from nixeryd.app.preflight import PROBE_KEY, PROBE_NAMESPACE
from nixeryd.app.readychecks import readiness_checks
from nixeryd.core.threads import InlineRunner
from nixeryd.metrics.readiness import NOT_CHECKED, Readiness
from nixeryd.metrics.resources import ReadyResource
from nixeryd.testing.storage import MemoryStorage
from tests.e2e import PACKAGE_SET, require_tools


class ScriptedCheck:
    """A check whose every call waits for the test to answer it."""

    def __init__(self) -> None:
        self.calls: list[Deferred[Optional[str]]] = []
        self.cancelled = 0

    def __call__(self) -> Deferred[Optional[str]]:
        d: Deferred[Optional[str]] = Deferred(lambda _: self._cancel())
        self.calls.append(d)
        return d

    def _cancel(self) -> None:
        self.cancelled += 1

    def answer(self, problem: Optional[str]) -> None:
        """Answer the last call."""
        self.calls[-1].callback(problem)


class ReadinessTests(SynchronousTestCase):
    """Rounds of checks on a fake clock."""

    def render_readyz(self, method: bytes = b"GET") -> tuple[int, bytes]:
        """``/readyz``'s status and body, over HTTP in memory."""
        agent = RequestTraversalAgent(ReadyResource(self.readiness))
        d = agent.request(method, b"http://registry.test/readyz")
        agent.flush()
        response = self.successResultOf(d)
        body = treq.content(response)
        agent.flush()
        return response.code, self.successResultOf(body)

    def setUp(self) -> None:
        self.clock = Clock()
        self.source, self.storage = ScriptedCheck(), ScriptedCheck()
        self.readiness = Readiness(self.clock, interval=15, timeout=60)
        self.readiness.use([("source", self.source), ("storage", self.storage)])

    def start(self) -> None:
        self.readiness.startService()
        self.addCleanup(self.readiness.stopService)

    def answer_round(self, source: Optional[str], storage: Optional[str]) -> None:
        self.source.answer(source)
        self.storage.answer(storage)

    def test_not_ready_until_checked(self) -> None:
        """Before the first round ends, ``/readyz`` is 503 and says why."""
        self.assertEqual(self.render_readyz(),
                         (503, b"not ready\n- " + NOT_CHECKED.encode() + b"\n"))
        self.start()
        self.assertEqual((len(self.source.calls), len(self.storage.calls)), (1, 1))
        self.assertFalse(self.readiness.ready)
        self.answer_round(None, None)
        self.assertEqual(self.render_readyz(), (200, b"ok\n"))

    def test_flips_and_back(self) -> None:
        """
        A failing check makes ``/readyz`` 503 with its line, from the next
        round on; it is 200 again once a round passes.
        """
        self.start()
        self.answer_round(None, None)
        self.clock.advance(15)
        self.answer_round(None, "STORAGE_PATH /s cannot be written: disk full")
        self.assertEqual(self.render_readyz(), (
            503, b"not ready\n- STORAGE_PATH /s cannot be written: disk full\n"))
        self.assertEqual(self.render_readyz(b"HEAD"), (503, b""))
        self.clock.advance(15)
        self.answer_round("source gone", "still full")
        self.assertEqual(self.readiness.problems, ("source gone", "still full"))
        self.clock.advance(15)
        self.answer_round(None, None)
        self.assertEqual(self.render_readyz(), (200, b"ok\n"))
        self.assertEqual(len(self.source.calls), 4)

    def test_interval_and_no_overlap(self) -> None:
        """
        Rounds start at most every interval, and never while one runs: a
        slow round is followed at once by the next when it ends.
        """
        self.start()
        self.clock.advance(5)
        self.answer_round(None, None)
        self.clock.advance(9.9)
        self.assertEqual(len(self.source.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.source.calls), 2)
        # This round is slow: nothing else starts while it runs.
        self.clock.advance(40)
        self.assertEqual(len(self.source.calls), 2)
        self.answer_round(None, None)
        self.assertEqual(len(self.source.calls), 2)
        self.clock.advance(0)
        self.assertEqual(len(self.source.calls), 3)

    def test_round_timeout(self) -> None:
        """A round that does not end in time is cancelled and counts as failing."""
        self.start()
        self.source.answer(None)
        self.clock.advance(60)
        self.assertEqual(self.storage.cancelled, 1)
        self.assertEqual(self.readiness.problems,
                         ("the readiness checks did not end within 60 seconds",))
        self.clock.advance(0)
        self.assertEqual(len(self.storage.calls), 2)

    def test_check_error(self) -> None:
        """A check that raises is a problem named after it, and is logged."""
        def broken() -> Deferred[Optional[str]]:
            raise ValueError("oops")

        self.readiness.use([("nix", broken)])
        self.start()
        self.assertEqual(self.readiness.problems,
                         ("nix: the check failed unexpectedly (see the log)",))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        # Immediate rounds are spaced by the interval all the same.
        self.clock.advance(14)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 0)
        self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_stop(self) -> None:
        """Stopping cancels the round running and starts no other."""
        self.readiness.startService()
        self.readiness.stopService()
        self.assertEqual((self.source.cancelled, self.storage.cancelled), (1, 1))
        self.clock.advance(100)
        self.assertEqual(len(self.source.calls), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ReadyChecksTests(TestCase):
    """The daemon's checks, run on the real reactor (Nix is a real process)."""

    def config(self, **environ: str) -> Config:
        return config_from({}, {"STORAGE_PATH": "/s", **environ})

    def setUp(self) -> None:
        self.storage = MemoryStorage(self.mktemp())

    async def run_checks(self, config: Config) -> dict[str, Optional[str]]:
        checks = readiness_checks(config, reactor=reactor, env=dict(os.environ),
                                  runner=InlineRunner(), storage=self.storage)
        return {name: await check() for name, check in checks}

    async def test_all_pass(self) -> None:
        """A package set, Nix and a writable storage: no problem; the probe is written."""
        require_tools("nix-instantiate")
        problems = await self.run_checks(self.config(NIXERY_PKGS_PATH=PACKAGE_SET))
        self.assertEqual(problems, {"source": None, "nix": None, "storage": None})
        self.assertIn((PROBE_NAMESPACE, PROBE_KEY), self.storage.documents)

    async def test_problems(self) -> None:
        """A missing package set and a storage that cannot write: one line each."""
        missing = os.path.abspath(self.mktemp())
        self.storage.failures["put_document"] = OSError(28, "No space left on device")
        checks = readiness_checks(self.config(NIXERY_PKGS_PATH=missing), reactor=reactor,
                                  env=dict(os.environ), runner=InlineRunner(),
                                  storage=self.storage)
        problems = {name: await check() for name, check in checks if name != "nix"}
        self.assertEqual(problems, {
            "source": "NIXERY_PKGS_PATH %s does not exist; set NIXERY_PKGS_PATH (or"
                      " --pkgs-path) to a package set directory" % (missing,),
            "storage": "STORAGE_PATH /s cannot be written: [Errno 28] No space left on"
                       " device; set STORAGE_PATH (or --storage-path) to a directory"
                       " nixeryd can create and write"})

    async def test_nix_missing(self) -> None:
        """Nix that cannot be run is a problem, said as at start-up."""
        checks = dict(readiness_checks(self.config(NIXERY_PKGS_PATH=PACKAGE_SET),
                                       reactor=reactor, env={"PATH": self.mktemp()},
                                       runner=InlineRunner(), storage=self.storage))
        problem = await checks["nix"]()
        assert problem is not None
        self.assertTrue(problem.startswith("Nix cannot be run ("), problem)

    def test_cancelled(self) -> None:
        """Cancelling a check (a round's timeout) cancels its work."""
        gate: Deferred[None] = Deferred()
        self.storage.put_document = lambda *args: gate  # type: ignore[method-assign]
        checks = dict(readiness_checks(self.config(NIXERY_PKGS_PATH=PACKAGE_SET),
                                       reactor=reactor, env={}, runner=InlineRunner(),
                                       storage=self.storage))
        async def storage_check() -> Optional[str]:
            return await checks["storage"]()

        running = Deferred.fromCoroutine(storage_check())
        self.assertNoResult(running)
        running.cancel()
        self.failureResultOf(running, CancelledError)
        # The storage call was cancelled too (its result went to the check).
        self.assertTrue(gate.called)

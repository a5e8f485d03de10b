"""
The image service's limits on cold work, over a scripted Nix with gates
and a fake clock: admission (the queue, one client's share), abandoned
work cancelled, permanent failures remembered, and build slots that slow
builds leave to small ones.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger

from nixeryd.build.builder import ImageBuilder
from nixeryd.build.closure import ClosureGraph
from nixeryd.build.nix import Resolution
from nixeryd.build.progress import BuildPhase
from nixeryd.build.sources import PinnedSource
from nixeryd.core import defaults
from nixeryd.core.documents import Image
from nixeryd.core.errors import (BuildFailed, BuildTimedOut, TooManyRequests, Unavailable,
                                 UnknownPackages)
from nixeryd.core.threads import InlineRunner
from nixeryd.core.threads import Runner
from nixeryd.service.images import ImageService
from nixeryd.testing.gates import follow
from nixeryd.testing.nix import FakeNix, FakeSource
from nixeryd.testing.runners import ManualRunner
from nixeryd.testing.storage import MemoryStorage
from tests.buildfixtures import POPULARITY, ImageFixture

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FLOODER = "192.0.2.66"
USER = "198.51.100.7"


class HeldNix:
    """
    A :class:`FakeNix` whose builds of some packages wait for a gate of
    their own (the slow packages), while the others go through.

    :ivar gates: requested packages (sorted) → the gate their builds wait for.
    """

    def __init__(self, nix: FakeNix) -> None:
        self.nix = nix
        self.gates: dict[tuple[str, ...], Deferred[None]] = {}

    async def resolve(self, source: PinnedSource, packages: Sequence[str],
                      optional: Sequence[str] = (), system: str = "x86_64-linux",
                      *, image: str | None = None,
                      log: Logger | None = None) -> Resolution:
        return await self.nix.resolve(source, packages, optional, system,
                                      image=image, log=log)

    async def build(self, resolution: Resolution, *, image: str | None = None,
                    gc_root: str | None = None, log: Logger | None = None) -> ClosureGraph:
        gate = self.gates.get(tuple(sorted(p.requested for p in resolution.packages)))
        if gate is not None:
            await follow(gate)
        return await self.nix.build(resolution, image=image, gc_root=gc_root, log=log)


class LimitsFixture(ImageFixture):
    """Image services over memory storage, a scripted Nix and a fake clock."""

    def setUp(self) -> None:
        self.make_store()
        self.storage = MemoryStorage(self.temp_directory())
        self.clock = Clock()
        self.source = FakeSource()
        self.held = HeldNix(self.nix)

    def make_service(self, runner: Runner | None = None, **kwargs: Any) -> ImageService:
        """A new image service over the shared storage and the held Nix."""
        builder = ImageBuilder(nix=self.held, storage=self.storage,
                               runner=runner or InlineRunner(), popularity=POPULARITY)
        return ImageService(source=self.source, nix=self.held, builder=builder,
                            storage=self.storage, clock=self.clock, **kwargs)

    def image(self, service: ImageService, name: str = "toola", tag: str = "latest",
              client: str | None = USER) -> Deferred[Image]:
        """Ask ``service`` for an image, as the client at ``client``."""
        return Deferred.fromCoroutine(service.image(name, tag, client=client))


class AdmissionTests(LimitsFixture):
    """Cold work beyond the queue, or beyond a client's share, is refused at once."""

    def test_flood_from_one_address(self) -> None:
        """
        A flood of distinct cold names from one address gets its share (a
        quarter of the queue) and 429s with Retry-After for the rest; a
        user at another address is admitted and served.
        """
        service = self.make_service(max_queue=8)
        self.nix.resolve_gate = Deferred()
        flood = [self.image(service, "nosuch%d" % (n,), client=FLOODER) for n in range(100)]
        refused = [d for d in flood if d.called]
        self.assertEqual(len(refused), 98)
        errors = [self.failureResultOf(d, TooManyRequests).value for d in refused]
        self.assertEqual({(e.status, e.code, e.retry_after) for e in errors},
                         {(429, "TOOMANYREQUESTS", 10)})
        self.assertIn("from your address", errors[0].message)
        self.assertIn("try again in 10 seconds", errors[0].message)
        user = self.image(service, "toola", client=USER)
        self.assertNoResult(user)
        self.nix.resolve_gate.callback(None)
        self.successResultOf(user)
        self.assertEqual(len(self.nix.resolve_calls), 3)
        for d in flood[:2]:
            self.failureResultOf(d, UnknownPackages)

    def test_queue_full_for_everyone(self) -> None:
        """
        Past the queue every client is refused, with a message saying the
        registry is full; once a piece of work ends, a new one is admitted.
        """
        service = self.make_service(max_queue=4)
        self.nix.resolve_gate = Deferred()
        admitted = [self.image(service, "nosuch%d" % (n,), client="192.0.2.%d" % (n,))
                    for n in range(4)]
        refused = self.image(service, "toola", client=USER)
        error = self.failureResultOf(refused, TooManyRequests).value
        self.assertIn("already making 4 images", error.message)
        admitted[0].cancel()
        self.failureResultOf(admitted[0], CancelledError)
        user = self.image(service, "toola", client=USER)
        self.nix.resolve_gate.callback(None)
        self.successResultOf(user)
        for d in admitted[1:]:
            self.failureResultOf(d, UnknownPackages)

    def test_joining_work_is_never_refused(self) -> None:
        """
        Requests for an image already in the making join it: they are not
        counted again and not refused, whoever asks.
        """
        service = self.make_service(max_queue=1)
        self.nix.build_gate = Deferred()
        waiting = [self.image(service, client="192.0.2.%d" % (n,)) for n in range(16)]
        self.assertEqual(len(service.cold.admission), 1)
        self.failureResultOf(self.image(service, "toolb"), TooManyRequests)
        self.nix.build_gate.callback(None)
        images = {id(self.successResultOf(d)) for d in waiting}
        self.assertEqual(len(images), 1)
        self.assertEqual(len(service.cold.admission), 0)
        self.successResultOf(self.image(service, "toolb"))

    def test_warm_image_never_refused(self) -> None:
        """An image in memory is served whatever the queue holds."""
        service = self.make_service(max_queue=1)
        built = self.successResultOf(self.image(service, "toola"))
        self.nix.resolve_gate = Deferred()
        self.image(service, "toolb")
        self.assertIs(self.successResultOf(self.image(service, "toola")), built)
        self.assertIs(service.cached_image("toola", "latest"), built)
        self.nix.resolve_gate.callback(None)

    def test_share_freed_when_work_ends(self) -> None:
        """A client's work that ended, served or failed, no longer counts."""
        service = self.make_service(max_queue=4)
        self.failureResultOf(self.image(service, "nosuch", client=FLOODER), UnknownPackages)
        self.successResultOf(self.image(service, "toola", client=FLOODER))
        self.assertEqual(service.cold.admission.of(FLOODER), 0)


class AbandonedTests(LimitsFixture):
    """Work nobody waits for is cancelled, unless it is writing layers."""

    def test_queued_work_never_starts_nix(self) -> None:
        """
        Work waiting for an evaluation slot whose clients all went away is
        cancelled before it asks Nix anything; its record says why, and it
        no longer counts against the queue.
        """
        service = self.make_service(max_builds=1)
        self.nix.resolve_gate = Deferred()
        first = self.image(service, "toola")
        queued = [self.image(service, name, client=FLOODER)
                  for name in ("toolb", "toola/toolb")]
        self.assertEqual(len(self.nix.resolve_calls), 1)
        for d in queued:
            d.cancel()
            self.failureResultOf(d, CancelledError)
        self.assertEqual(service.cold.admission.of(FLOODER), 0)
        cancelled = [r for r in service.builds if r.phase is BuildPhase.CANCELLED]
        self.assertEqual(sorted(r.image for r in cancelled), ["toola/toolb", "toolb"])
        self.assertEqual({r.message for r in cancelled},
                         {"cancelled: every client went away"})
        self.nix.resolve_gate.callback(None)
        self.successResultOf(first)
        self.assertEqual([call[1] for call in self.nix.resolve_calls], [("toola",)])

    def test_running_evaluation_cancelled(self) -> None:
        """An evaluation whose every client went away is cancelled as it runs."""
        service = self.make_service()
        self.nix.resolve_gate = Deferred()
        waiters = [self.image(service, "toola") for _ in range(2)]
        waiters[0].cancel()
        [record] = service.builds
        self.assertEqual(record.phase, BuildPhase.EVALUATING)
        waiters[1].cancel()
        for d in waiters:
            self.failureResultOf(d, CancelledError)
        self.assertEqual(record.phase, BuildPhase.CANCELLED)
        self.nix.resolve_gate.callback(None)
        self.assertEqual(self.nix.build_calls, [])
        self.assertEqual(len(service.cold), 0)

    def test_layering_goes_on(self) -> None:
        """
        Work whose clients went away once Nix is done (writing layers)
        goes on: the next request is served from memory, without Nix.
        """
        runner = ManualRunner()
        service = self.make_service(runner=runner)
        only = self.image(service, "toola")
        [record] = service.builds
        while record.phase is not BuildPhase.LAYERING:
            function, args, kwargs, d = runner.pending.pop(0)
            d.callback(function(*args, **kwargs))
        only.cancel()
        self.failureResultOf(only, CancelledError)
        runner.run_pending()
        self.assertEqual(record.phase, BuildPhase.SUCCEEDED)
        self.forget_calls()
        self.successResultOf(self.image(service, "toola"))
        self.assertEqual(self.nix.resolve_calls, [])

    def forget_calls(self) -> None:
        """Reset the Nix call records."""
        del self.nix.resolve_calls[:]
        del self.nix.build_calls[:]


class FailureMemoryTests(LimitsFixture):
    """Permanent failures are answered from memory for a while."""

    def test_unknown_name_one_nix_call(self) -> None:
        """
        The same unknown name asked 200 times is evaluated once; every
        answer is the same error, with the same build page.
        """
        service = self.make_service()
        errors = [self.failureResultOf(self.image(service, "nosuch"), UnknownPackages).value
                  for _ in range(200)]
        self.assertEqual(len(self.nix.resolve_calls), 1)
        self.assertEqual({e.build_id for e in errors}, {errors[0].build_id})
        self.assertIsNotNone(errors[0].build_id)
        self.assertEqual(len(list(service.builds)), 1)

    def test_failed_build_pinned_source(self) -> None:
        """
        A failed build of a pinned revision is remembered for the failure
        TTL, then built again.
        """
        self.source = FakeSource("channel", COMMIT)
        service = self.make_service(failure_ttl=300)
        self.nix.build_error = BuildFailed("the build of package toola failed", "toola")
        first = self.failureResultOf(self.image(service), BuildFailed).value
        self.clock.advance(299)
        self.assertIs(self.failureResultOf(self.image(service), BuildFailed).value, first)
        self.assertEqual(len(self.nix.build_calls), 1)
        self.clock.advance(1)
        self.nix.build_error = None
        self.successResultOf(self.image(service))
        self.assertEqual(len(self.nix.build_calls), 2)

    def test_moving_source_for_its_window(self) -> None:
        """A moving source's failure is kept only as long as its images are."""
        service = self.make_service(failure_ttl=300, moving_ttl=60)
        self.failureResultOf(self.image(service, "nosuch"), UnknownPackages)
        self.clock.advance(59)
        self.failureResultOf(self.image(service, "nosuch"), UnknownPackages)
        self.assertEqual(len(self.nix.resolve_calls), 1)
        self.clock.advance(1)
        self.failureResultOf(self.image(service, "nosuch"), UnknownPackages)
        self.assertEqual(len(self.nix.resolve_calls), 2)

    def test_timeouts_and_transient_failures_not_kept(self) -> None:
        """A timeout or a 503 is tried again at once."""
        service = self.make_service()
        for error in (BuildTimedOut("build", 600, "package toola"),
                      Unavailable("the Nix daemon is unavailable")):
            self.nix.build_error = error
            self.failureResultOf(self.image(service), type(error))
        self.nix.build_error = None
        self.successResultOf(self.image(service))
        self.assertEqual(len(self.nix.build_calls), 3)

    def test_zero_ttl(self) -> None:
        """With a failure TTL of 0 nothing is remembered."""
        service = self.make_service(failure_ttl=0)
        for _ in range(2):
            self.failureResultOf(self.image(service, "nosuch"), UnknownPackages)
        self.assertEqual(len(self.nix.resolve_calls), 2)


class SlotTests(LimitsFixture):
    """Slow builds leave their slots to small images after a while."""

    def test_small_image_beside_two_slow_builds(self) -> None:
        """
        Two slow builds hold both build slots; a small image waits only
        until they are long, then builds beside them.
        """
        service = self.make_service(max_builds=2)
        for packages in (("toola",), ("toolb",)):
            self.held.gates[packages] = Deferred()
        slow = [self.image(service, "toola"), self.image(service, "toolb")]
        small = self.image(service, "toola/toolb")
        self.assertEqual(len(self.nix.build_calls), 0)
        [record] = [r for r in service.builds if r.image == "toola/toolb"]
        self.assertEqual(record.phase, BuildPhase.WAITING)
        self.clock.advance(defaults.LONG_NIX_STEP - 0.1)
        self.assertNoResult(small)
        self.clock.advance(0.1)
        self.successResultOf(small)
        for gate in self.held.gates.values():
            gate.callback(None)
        for d in slow:
            self.successResultOf(d)

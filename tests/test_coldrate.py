"""
Tests for the rate bound of :mod:`nixeryd.service.admission`: cold work
one client (a user, or an address) may start per minute, and its setting.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.app.config import config_from
from nixeryd.core import defaults
from nixeryd.core.errors import TooManyRequests
from nixeryd.core.documents import Image
from nixeryd.service.admission import Admission
from nixeryd.service.images import ImageService
from nixeryd.testing.nix import FakeSource
from tests.test_images import COMMIT, ServiceFixture

BASE_ENV = {"NIXERY_PKGS_PATH": "/srv/pkgs", "STORAGE_PATH": "/srv/storage"}


class RateTests(SynchronousTestCase):
    """At most ``per_minute`` builds started per client in any minute."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.admission = Admission(100, per_minute=3, clock=self.clock)

    def build(self, client: str) -> None:
        """Cold work that asks Nix, then ends."""
        ticket = self.admission.admit(client)
        ticket.building()
        ticket.release()

    def test_bound(self) -> None:
        """The fourth build within a minute is a 429 whose wait ends the window."""
        for _ in range(3):
            self.build("192.0.2.7")
            self.clock.advance(10)
        ticket = self.admission.admit("192.0.2.7")
        with self.assertRaises(TooManyRequests) as raised:
            ticket.building()
        error = raised.exception
        self.assertEqual((error.status, error.code), (429, "TOOMANYREQUESTS"))
        self.assertEqual(error.retry_after, 30)
        self.assertEqual(error.message, "your address started 3 builds in the last minute,"
                         " the most one client may start; try again in 30 seconds")
        ticket.release()
        self.clock.advance(30)
        self.build("192.0.2.7")

    def test_cache_answers_do_not_count(self) -> None:
        """Cold work that starts no build (a cache answered) is neither counted nor refused."""
        for _ in range(3):
            self.build("192.0.2.7")
        for _ in range(20):
            self.admission.admit("192.0.2.7").release()

    def test_per_client(self) -> None:
        """Another address, and a user, have bounds of their own."""
        for _ in range(3):
            self.build("192.0.2.7")
        self.build("192.0.2.8")
        for _ in range(3):
            self.build("user:alice")
        with self.assertRaises(TooManyRequests) as raised:
            self.build("user:alice")
        self.assertTrue(raised.exception.message.startswith("user alice started 3 builds"))

    def test_refusal_not_counted(self) -> None:
        """A request refused by the queue does not use up the client's rate."""
        admission = Admission(1, per_minute=2, clock=self.clock)
        held = admission.admit("192.0.2.7")
        for _ in range(5):
            with self.assertRaises(TooManyRequests) as raised:
                admission.admit("192.0.2.9")
            self.assertEqual(raised.exception.detail["for"], "registry")
        held.release()
        for _ in range(2):
            ticket = admission.admit("192.0.2.9")
            ticket.building()
            ticket.release()

    def test_off(self) -> None:
        """0 is no bound."""
        admission = Admission(100)
        for _ in range(50):
            ticket = admission.admit("192.0.2.7")
            ticket.building()
            ticket.release()

    def test_no_clock(self) -> None:
        with self.assertRaises(ValueError):
            Admission(10, per_minute=1)


class SettingTests(SynchronousTestCase):
    """``NIXERY_COLD_PER_MINUTE`` / ``--cold-per-minute``."""

    def test_default_and_given(self) -> None:
        self.assertEqual(config_from({}, BASE_ENV).private.cold_per_minute,
                         defaults.COLD_PER_MINUTE)
        self.assertEqual(config_from({}, {**BASE_ENV, "NIXERY_COLD_PER_MINUTE": "0"}
                                     ).private.cold_per_minute, 0)
        self.assertEqual(config_from({"cold-per-minute": "5"}, BASE_ENV
                                     ).private.cold_per_minute, 5)

    def test_out_of_range(self) -> None:
        with self.assertRaises(UsageError):
            config_from({"cold-per-minute": "-1"}, BASE_ENV)


class ServiceRateTests(ServiceFixture):
    """The image service counts builds, never warm pulls or cache answers."""

    def image_for(self, service: ImageService, name: str, client: str) -> Deferred[Image]:
        return Deferred.fromCoroutine(service.image(name, "latest", client=client))

    def test_warm_pulls_never_limited(self) -> None:
        service = self.make_service(cold_per_minute=1)
        self.successResultOf(self.image_for(service, "toola", "192.0.2.7"))
        for _ in range(20):
            self.successResultOf(self.image_for(service, "toola", "192.0.2.7"))
        failure = self.failureResultOf(self.image_for(service, "toolb", "192.0.2.7"),
                                       TooManyRequests)
        self.assertEqual(failure.value.detail, {"limit": 1, "for": "rate"})
        self.assertEqual(failure.value.retry_after, 60)
        self.successResultOf(self.image_for(service, "toolb", "192.0.2.8"))
        self.clock.advance(60)
        self.successResultOf(self.image_for(service, "toolb", "192.0.2.7"))

    def test_manifest_cache_answers_not_counted(self) -> None:
        """A pinned image already stored is served by a new daemon without counting."""
        self.source = FakeSource("git", COMMIT)
        self.successResultOf(self.image(self.make_service(), "toola"))
        self.successResultOf(self.image(self.make_service(), "toolb"))
        service = self.make_service(cold_per_minute=1)
        self.successResultOf(self.image_for(service, "toola", "192.0.2.7"))
        self.successResultOf(self.image_for(service, "toolb", "192.0.2.7"))
        # The one build the rate allows is still there.
        self.successResultOf(self.image_for(service, "toola/toolb", "192.0.2.7"))

    def test_evaluated_again_not_counted(self) -> None:
        """A moving source's image evaluated again when it expires is no build."""
        service = self.make_service(cold_per_minute=1, moving_ttl=10)
        self.successResultOf(self.image_for(service, "toola", "192.0.2.7"))
        for _ in range(3):
            self.clock.advance(11)
            self.successResultOf(self.image_for(service, "toola", "192.0.2.7"))
        self.assertEqual(len(self.nix.resolve_calls), 4)
        self.failureResultOf(self.image_for(service, "toolb", "192.0.2.7"), TooManyRequests)

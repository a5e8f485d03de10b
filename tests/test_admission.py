"""
Tests for :mod:`nixeryd.service.admission` and its settings: the queue of
cold work and one client's share of it.
"""

from __future__ import annotations

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.app.config import config_from
from nixeryd.core import defaults
from nixeryd.core.errors import TooManyRequests
from nixeryd.service.admission import Admission, client_key, client_share

BASE_ENV = {"NIXERY_PKGS_PATH": "/srv/pkgs", "STORAGE_PATH": "/srv/storage"}


class ClientKeyTests(SynchronousTestCase):
    """Who counts as one client."""

    def test_ipv4(self) -> None:
        """An IPv4 address is one client."""
        self.assertEqual(client_key("192.0.2.7"), "192.0.2.7")

    def test_ipv6_by_network(self) -> None:
        """Addresses of one IPv6 /64 are one client; another /64 is another."""
        self.assertEqual(client_key("2001:db8:0:1::7"), "2001:db8:0:1::/64")
        self.assertEqual(client_key("2001:db8:0:1:ffff::1"), "2001:db8:0:1::/64")
        self.assertEqual(client_key("2001:db8:0:2::7"), "2001:db8:0:2::/64")

    def test_ipv4_mapped(self) -> None:
        """An IPv4-mapped IPv6 address counts as its IPv4 address."""
        self.assertEqual(client_key("::ffff:192.0.2.7"), "192.0.2.7")

    def test_no_address(self) -> None:
        """No address, no client."""
        self.assertIsNone(client_key(None))
        self.assertIsNone(client_key(""))


class AdmissionTests(SynchronousTestCase):
    """The queue and the share of one address."""

    def test_share(self) -> None:
        """A quarter of the queue, at least one."""
        self.assertEqual([client_share(n) for n in (1, 3, 4, 32, 33)], [1, 1, 1, 8, 8])

    def test_client_share_full(self) -> None:
        """
        One address gets a quarter of the queue; the next is refused with
        a message saying so and when to retry, while another address is
        admitted.
        """
        admission = Admission(8, retry_after=30)
        tickets = [admission.admit("192.0.2.1") for _ in range(2)]
        with self.assertRaises(TooManyRequests) as refused:
            admission.admit("192.0.2.1")
        error = refused.exception
        self.assertEqual((error.status, error.code, error.retry_after),
                         (429, "TOOMANYREQUESTS", 30))
        self.assertIn("from your address", error.message)
        self.assertIn("try again in 30 seconds", error.message)
        self.assertEqual(error.detail, {"limit": 2, "for": "address"})
        admission.admit("192.0.2.2")
        self.assertEqual((len(admission), admission.of("192.0.2.1")), (3, 2))
        tickets[0].release()
        tickets[0].release()
        self.assertEqual(admission.of("192.0.2.1"), 1)
        admission.admit("192.0.2.1")

    def test_queue_full(self) -> None:
        """Past the queue every client is refused, until work ends."""
        admission = Admission(4)
        tickets = [admission.admit("192.0.2.%d" % (n,)) for n in range(4)]
        with self.assertRaises(TooManyRequests) as refused:
            admission.admit("192.0.2.99")
        self.assertIn("already making 4 images", refused.exception.message)
        self.assertEqual(refused.exception.detail, {"limit": 4, "for": "registry"})
        self.assertRaises(TooManyRequests, admission.admit, None)
        tickets[3].release()
        admission.admit("192.0.2.99")

    def test_one_image_in_words(self) -> None:
        """The messages count in words a person reads."""
        admission = Admission(1)
        admission.admit("192.0.2.1")
        with self.assertRaises(TooManyRequests) as refused:
            admission.admit("192.0.2.2")
        self.assertIn("already making 1 image, the most", refused.exception.message)
        shared = Admission(4)
        shared.admit("192.0.2.1")
        with self.assertRaises(TooManyRequests) as refused:
            shared.admit("192.0.2.1")
        self.assertIn("1 image asked for from your address is already being made",
                      refused.exception.message)

    def test_no_address_only_the_queue(self) -> None:
        """Work without an address is held to the queue only."""
        admission = Admission(4)
        for _ in range(4):
            admission.admit(None)
        self.assertRaises(TooManyRequests, admission.admit, None)

    def test_bad_size(self) -> None:
        """A queue holds at least one."""
        self.assertRaises(ValueError, Admission, 0)


class SettingTests(SynchronousTestCase):
    """NIXERY_MAX_QUEUE/--max-queue and NIXERY_FAILURE_TTL/--failure-ttl."""

    def test_defaults(self) -> None:
        """Not given: the defaults."""
        config = config_from({}, BASE_ENV)
        self.assertEqual((config.max_queue, config.failure_ttl),
                         (defaults.MAX_QUEUE, defaults.FAILURE_TTL))

    def test_given(self) -> None:
        """The option wins over the variable."""
        config = config_from({"max-queue": "5"}, dict(
            BASE_ENV, NIXERY_MAX_QUEUE="9", NIXERY_FAILURE_TTL="0"))
        self.assertEqual((config.max_queue, config.failure_ttl), (5, 0.0))

    def test_out_of_range(self) -> None:
        """A queue of none, or a negative or infinite time, is refused."""
        for env in ({"NIXERY_MAX_QUEUE": "0"}, {"NIXERY_FAILURE_TTL": "-1"},
                    {"NIXERY_FAILURE_TTL": "inf"}):
            with self.assertRaises(UsageError) as caught:
                config_from({}, dict(BASE_ENV, **env))
            self.assertIn(list(env)[0], str(caught.exception))

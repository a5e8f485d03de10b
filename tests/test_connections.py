"""
Tests for :mod:`nixeryd.registry.connections` and its settings: limits
per client and in all, the busy answer, the report of refusals and aborts,
the total sized from the open-file limit, and ``nixeryd serve`` raising
that limit at start-up.
"""

from __future__ import annotations

import resource

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import LogEvent
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.app import servecmd
from nixeryd.app.config import config_from
from nixeryd.app.tap import connection_limits
from nixeryd.core import defaults
from nixeryd.registry.connections import (BUSY_ANSWER, BusyAnswer, ConnectionGuard,
                                          ConnectionLimits, connections_for_descriptors)
from nixeryd.registry.deadlines import DeadlineChannel
from tests.connectioncases import LIMITS, connect, limited_site, listing_logger, statuses

GONE = Failure(ConnectionDone())
ENVIRON = {"NIXERY_PKGS_PATH": "/srv/pkgs", "STORAGE_PATH": "/srv/storage"}


def recording_guard(limits: ConnectionLimits = LIMITS
                    ) -> tuple[ConnectionGuard, Clock, list[LogEvent]]:
    """A guard whose report lines are kept in a list, on a fake clock."""
    clock = Clock()
    events: list[LogEvent] = []
    return ConnectionGuard(limits, clock, logger=listing_logger(events)), clock, events


class AdmissionTests(SynchronousTestCase):
    """New connections within the limits get a channel; others a 503."""

    def test_per_client_limit(self) -> None:
        """
        A client over its limit gets the busy answer and a closed
        connection; other clients are still admitted; a closed connection
        makes room again.
        """
        site, _ = limited_site()
        channels = [connect(site, "10.0.0.1")[0] for _ in range(LIMITS.per_client)]
        self.assertTrue(all(isinstance(c, DeadlineChannel) for c in channels))
        refused, transport = connect(site, "10.0.0.1")
        self.assertIsInstance(refused, BusyAnswer)
        self.assertEqual(transport.value(), BUSY_ANSWER)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(statuses(transport.value()), [503])
        self.assertIn(b"\r\nRetry-After: 1\r\n", transport.value())
        other, _ = connect(site, "10.0.0.2")
        self.assertIsInstance(other, DeadlineChannel)
        channels[0].connectionLost(GONE)
        again, _ = connect(site, "10.0.0.1")
        self.assertIsInstance(again, DeadlineChannel)
        self.assertEqual(site.connections.open_from("10.0.0.1"), LIMITS.per_client)

    def test_per_client_limit_ipv6_network(self) -> None:
        """
        IPv6 clients are counted by their /64, as admission counts them:
        other addresses in the same network share the limit, another
        network does not; an IPv4-mapped address is its IPv4 address.
        """
        site, _ = limited_site()
        for n in range(LIMITS.per_client):
            channel, _ = connect(site, "2001:db8::%x" % (n + 1,))
            self.assertIsInstance(channel, DeadlineChannel)
        refused, _ = connect(site, "2001:db8::ffff")
        self.assertIsInstance(refused, BusyAnswer)
        self.assertEqual(site.connections.open_from("2001:db8::/64"), LIMITS.per_client)
        other, _ = connect(site, "2001:db8:0:1::1")
        self.assertIsInstance(other, DeadlineChannel)
        mapped, _ = connect(site, "::ffff:10.0.0.9")
        self.assertIsInstance(mapped, DeadlineChannel)
        self.assertEqual(site.connections.open_from("10.0.0.9"), 1)

    def test_total_limit(self) -> None:
        """Beyond the total, every client is refused until one leaves."""
        site, _ = limited_site()
        channels = [connect(site, "10.0.1.%d" % (n,))[0] for n in range(LIMITS.total)]
        self.assertEqual(site.connections.open, LIMITS.total)
        refused, _ = connect(site, "10.0.2.1")
        self.assertIsInstance(refused, BusyAnswer)
        channels[-1].connectionLost(GONE)
        self.assertEqual(site.connections.open, LIMITS.total - 1)
        admitted, _ = connect(site, "10.0.2.1")
        self.assertIsInstance(admitted, DeadlineChannel)

    def test_lost_once(self) -> None:
        """A connection is given back once, however often it is said to be lost."""
        site, _ = limited_site()
        channel, _ = connect(site)
        other, _ = connect(site)
        channel.connectionLost(GONE)
        channel.connectionLost(GONE)
        self.assertEqual(site.connections.open, 1)
        self.assertEqual(site.connections.open_from("10.0.0.1"), 1)
        other.connectionLost(GONE)
        self.assertEqual(site.connections.open, 0)

    def test_served_within_limits(self) -> None:
        """An admitted connection is an ordinary HTTP connection."""
        site, _ = limited_site()
        channel, transport = connect(site)
        channel.dataReceived(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(statuses(transport.value()), [200])


class ReportTests(SynchronousTestCase):
    """Refusals and aborts are reported in at most one line an interval."""

    def test_one_line_per_interval(self) -> None:
        """Many events make one line: counts by reason, a few clients."""
        guard, clock, events = recording_guard()
        for n in range(LIMITS.per_client + 4):
            guard.admit("10.0.0.1")
        guard.note("10.0.0.2", "aborted with no whole request within 10 s")
        for n in range(10):
            guard.note("10.0.1.%d" % (n,), "aborted with no whole request within 10 s")
        self.assertEqual(events, [])
        self.assertEqual(guard.pending, 15)
        clock.advance(60)
        [event] = events
        self.assertEqual(event["count"], 15)
        self.assertEqual(event["reasons"], {
            "refused over the limit of 3 per client": 4,
            "aborted with no whole request within 10 s": 11})
        self.assertEqual(len(event["clients"]), 5)
        self.assertTrue(event["client_list"].endswith(", ..."))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(guard.pending, 0)

    def test_quiet_schedules_nothing(self) -> None:
        """Admissions and releases alone schedule no report."""
        guard, clock, events = recording_guard()
        guard.admit("10.0.0.1")
        guard.release("10.0.0.1")
        self.assertEqual(clock.getDelayedCalls(), [])
        guard.flush()
        self.assertEqual(events, [])

    def test_site_stopping_reports(self) -> None:
        """What is pending is reported when the site stops listening."""
        site, clock = limited_site()
        events: list[LogEvent] = []
        guard = ConnectionGuard(LIMITS, clock, logger=listing_logger(events))
        site._connections = guard
        for _ in range(LIMITS.per_client + 1):
            connect(site)
        site.stopFactory()
        [event] = events
        self.assertEqual(event["count"], 1)
        self.assertEqual(guard.pending, 0)


class SizingTests(SynchronousTestCase):
    """The total carried by the open-file limit, and the settings."""

    def test_descriptors(self) -> None:
        """Half of what the reserve and the sendfile threads leave; never 0."""
        reserve = defaults.DESCRIPTOR_RESERVE + defaults.BLOB_THREADS
        self.assertEqual(connections_for_descriptors(1024), (1024 - reserve) // 2)
        self.assertEqual(connections_for_descriptors(65536), (65536 - reserve) // 2)
        self.assertEqual(connections_for_descriptors(100), 1)

    def test_default_limits(self) -> None:
        """The defaults come from one place; the total from this process's limit."""
        limits = ConnectionLimits()
        self.assertEqual(
            (limits.head_timeout, limits.idle_timeout, limits.stall_timeout,
             limits.per_client),
            (defaults.HEAD_TIMEOUT, defaults.IDLE_TIMEOUT, defaults.STALL_TIMEOUT,
             defaults.MAX_CONNECTIONS_PER_CLIENT))
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertEqual(limits.total, connections_for_descriptors(soft))

    def test_settings(self) -> None:
        """Each setting reaches the limits; the total never exceeds the descriptors'."""
        config = config_from({}, dict(ENVIRON, NIXERY_HEAD_TIMEOUT="2.5",
                                      NIXERY_IDLE_TIMEOUT="7",
                                      NIXERY_STALL_TIMEOUT="11",
                                      NIXERY_MAX_CONNECTIONS_PER_CLIENT="9",
                                      NIXERY_MAX_CONNECTIONS="100"))
        self.assertEqual(connection_limits(config, 65536), ConnectionLimits(
            head_timeout=2.5, idle_timeout=7.0, stall_timeout=11.0, per_client=9,
            total=100))
        self.assertEqual(connection_limits(config, 300).total, connections_for_descriptors(300))
        unset = config_from({}, ENVIRON)
        self.assertEqual(connection_limits(unset, 4096).total,
                         connections_for_descriptors(4096))

    def test_bad_settings(self) -> None:
        """Zero, negative, infinite and non-numbers are refused, naming the setting."""
        for variable, value in (("NIXERY_HEAD_TIMEOUT", "0"), ("NIXERY_IDLE_TIMEOUT", "-1"),
                                ("NIXERY_STALL_TIMEOUT", "inf"),
                                ("NIXERY_MAX_CONNECTIONS_PER_CLIENT", "0"),
                                ("NIXERY_MAX_CONNECTIONS", "many")):
            with self.subTest(variable=variable):
                error = self.assertRaises(UsageError, config_from, {},
                                          dict(ENVIRON, **{variable: value}))
                self.assertIn(variable, str(error))


class OpenFileLimitTests(SynchronousTestCase):
    """``nixeryd serve`` raises its soft limit of open files to the hard one."""

    def limits(self, soft: int, hard: int, settable: bool = True) -> list[tuple[int, int]]:
        """Stand in for the process's limits; the settings made are returned."""
        made: list[tuple[int, int]] = []

        def setrlimit(which: int, limits: tuple[int, int]) -> None:
            self.assertEqual(which, resource.RLIMIT_NOFILE)
            if not settable:
                raise ValueError("not allowed")
            made.append(limits)

        self.patch(resource, "getrlimit", lambda which: (soft, hard))
        self.patch(resource, "setrlimit", setrlimit)
        return made

    def test_raised(self) -> None:
        made = self.limits(1024, 524288)
        self.assertEqual(servecmd.raise_open_file_limit(), (1024, 524288, 524288))
        self.assertEqual(made, [(524288, 524288)])

    def test_already_there(self) -> None:
        made = self.limits(65536, 65536)
        self.assertEqual(servecmd.raise_open_file_limit(), (65536, 65536, 65536))
        self.assertEqual(made, [])

    def test_unlimited_hard(self) -> None:
        made = self.limits(1024, resource.RLIM_INFINITY)
        self.assertEqual(servecmd.raise_open_file_limit(),
                         (1024, servecmd.UNLIMITED_OPEN_FILES, -1))
        self.assertEqual(made, [(servecmd.UNLIMITED_OPEN_FILES, resource.RLIM_INFINITY)])

    def test_refused(self) -> None:
        self.limits(1024, 4096, settable=False)
        self.assertEqual(servecmd.raise_open_file_limit(), (1024, 1024, 4096))

    def test_one_line(self) -> None:
        """One line says the limits before and after, and the connections they carry."""
        events: list[LogEvent] = []
        self.patch(servecmd, "log", listing_logger(events))
        options = servecmd.parse(["--pkgs-path", "/srv/pkgs", "--storage-path", "/srv/s",
                                  "--max-connections-per-client", "8"], environ={})
        servecmd.log_connection_limits(options, 1024, 65536, 65536)
        [event] = events
        self.assertEqual((event["before"], event["soft"], event["hard"]), (1024, 65536, 65536))
        self.assertEqual(event["total"], connections_for_descriptors(65536))
        self.assertEqual(event["per_client"], 8)
        self.assertEqual(event["raised"], " (raised from 1024)")

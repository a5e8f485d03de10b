"""
Tests for :mod:`nixeryd.registry.tlsguard`: TLS handshakes on the plain HTTP port.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, Logger, LogEvent, formatEvent
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import provider

from nixeryd.testing.images import FakeImageService, write_sample_image
from nixeryd.testing.network import RawClient, serve_locally
from nixeryd.registry.floodreport import REPORTED_CLIENTS
from nixeryd.registry.tlsguard import (PLAIN_HTTP_ANSWER, TLSGuardChannel, TLSGuardSite,
                                      TLSRefusals)
from nixeryd.registry.site import make_site


def client_hello() -> bytes:
    """The bytes of a real TLS ClientHello, as Python's ssl module sends it."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    connection = context.wrap_bio(incoming, outgoing, server_hostname="registry.test")
    try:
        connection.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def connected_channel(site: TLSGuardSite | None = None,
                      client: str = "127.0.0.1") -> tuple[Any, StringTransport]:
    """
    A channel of the registry site (or of ``site``) on an in-memory
    transport; the registry site counts refusals and keeps its
    connections' deadlines on a fake clock, so that no report or deadline
    stays scheduled on the reactor.
    """
    if site is None:
        site = make_site(FakeImageService(), clock=Clock())
        site.tls_refusals = TLSRefusals(Clock())
    channel = site.buildProtocol(IPv4Address("TCP", client, 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", client, 40000))
    channel.makeConnection(transport)
    return channel, transport


def listing_logger(events: list[LogEvent]) -> Logger:
    """A logger appending its events to ``events``."""
    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    return Logger(observer=observe)


def counting(interval: float = 60.0) -> tuple[TLSRefusals, Clock, list[LogEvent]]:
    """Refusals counted on a fake clock, their log events in a list."""
    clock = Clock()
    events: list[LogEvent] = []
    return TLSRefusals(clock, interval, listing_logger(events)), clock, events


class GuardTests(SynchronousTestCase):
    """The channel's reaction to the first byte."""

    def test_site_uses_guard(self) -> None:
        """The registry site builds guarded channels."""
        channel, _ = connected_channel()
        self.assertIsInstance(channel, TLSGuardChannel)
        channel.connectionLost(None)

    def test_client_hello_answered(self) -> None:
        """A ClientHello gets the plain 400 at once and the connection closes."""
        hello = client_hello()
        self.assertEqual(hello[0], 0x16)
        channel, transport = connected_channel()
        channel.dataReceived(hello[:5])
        self.assertEqual(transport.value(), PLAIN_HTTP_ANSWER)
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(hello[5:])
        self.assertEqual(transport.value(), PLAIN_HTTP_ANSWER)

    def test_answer_is_http(self) -> None:
        """The answer is a complete HTTP/1.1 400 response with a correct length."""
        head, _, body = PLAIN_HTTP_ANSWER.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 400 Bad Request")
        self.assertIn(b"Content-Length: %d" % (len(body),), lines)
        self.assertIn(b"Connection: close", lines)

    def test_http_passes(self) -> None:
        """An ordinary request, even split into pieces, is served."""
        channel, transport = connected_channel()
        channel.dataReceived(b"G")
        channel.dataReceived(b"ET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(transport.value().endswith(b"\r\n\r\n{}"))
        self.assertFalse(transport.disconnecting)
        channel.connectionLost(None)

    def test_later_0x16_is_http(self) -> None:
        """Only the first byte of a connection is checked."""
        channel, transport = connected_channel()
        channel.dataReceived(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        transport.clear()
        channel.dataReceived(b"\x16garbage\r\n\r\n")
        self.assertNotEqual(transport.value(), PLAIN_HTTP_ANSWER)
        channel.connectionLost(None)


class RefusalReportTests(SynchronousTestCase):
    """Refused handshakes are counted and reported at most once an interval."""

    def test_one_line_per_interval(self) -> None:
        """Refusals within an interval make one line, when it ends, with their count."""
        refusals, clock, events = counting()
        for _ in range(3):
            refusals.refused("10.0.0.1")
            clock.advance(10)
        refusals.refused("10.0.0.2")
        self.assertEqual(events, [])
        self.assertEqual(refusals.pending, 4)
        clock.advance(30)
        [event] = events
        self.assertEqual(
            formatEvent(event),
            "Refused 4 TLS handshakes on the plain HTTP port in the last minute"
            " (from 10.0.0.1, 10.0.0.2); clients fall back to plain HTTP")
        self.assertEqual((event["count"], event["clients"]), (4, ["10.0.0.1", "10.0.0.2"]))
        self.assertEqual(refusals.pending, 0)

    def test_quiet_schedules_nothing(self) -> None:
        """Without refusals nothing is scheduled or logged; the next one starts anew."""
        refusals, clock, events = counting()
        self.assertEqual(clock.getDelayedCalls(), [])
        refusals.refused("10.0.0.1")
        clock.advance(60)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(600)
        self.assertEqual(len(events), 1)
        refusals.refused("10.0.0.1")
        clock.advance(59)
        self.assertEqual(len(events), 1)
        clock.advance(1)
        self.assertEqual(formatEvent(events[1]),
                         "Refused 1 TLS handshake on the plain HTTP port in the last minute"
                         " (from 10.0.0.1); clients fall back to plain HTTP")

    def test_lines_an_interval_apart(self) -> None:
        """A steady stream of refusals gives one line per interval, not one per refusal."""
        refusals, clock, events = counting(interval=30)
        for _ in range(300):
            refusals.refused("10.0.0.1")
            clock.advance(1)
        self.assertEqual([event["count"] for event in events], [30] * 10)
        self.assertIn("in the last 30 seconds", formatEvent(events[0]))

    def test_clients_bounded(self) -> None:
        """A report names a few distinct clients, then says there were more."""
        refusals, clock, events = counting()
        for n in range(REPORTED_CLIENTS + 3):
            refusals.refused("10.0.0.%d" % (n,))
            refusals.refused("10.0.0.%d" % (n,))
        clock.advance(60)
        [event] = events
        self.assertEqual(event["clients"],
                         ["10.0.0.%d" % (n,) for n in range(REPORTED_CLIENTS)])
        self.assertTrue(formatEvent(event).endswith(
            "10.0.0.%d, ...); clients fall back to plain HTTP" % (REPORTED_CLIENTS - 1,)))

    def test_flush(self) -> None:
        """Flushing reports what is pending at once and leaves no timer behind."""
        refusals, clock, events = counting()
        refusals.flush()
        self.assertEqual(events, [])
        refusals.refused("10.0.0.1")
        refusals.flush()
        self.assertEqual([event["count"] for event in events], [1])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_channels_count_on_their_site(self) -> None:
        """Each refusing channel counts on its site; plain HTTP counts nothing."""
        site = make_site(FakeImageService(), clock=Clock())
        refusals, clock, events = counting()
        site.tls_refusals = refusals
        for client in ("10.0.0.1", "10.0.0.2"):
            channel, _ = connected_channel(site, client)
            channel.dataReceived(client_hello())
        channel, _ = connected_channel(site)
        channel.dataReceived(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        channel.connectionLost(None)
        self.assertEqual(refusals.pending, 2)
        site.stopFactory()
        [event] = events
        self.assertEqual(event["clients"], ["10.0.0.1", "10.0.0.2"])

    def test_site_default_uses_its_reactor(self) -> None:
        """Unless given one, a site counts on its own reactor."""
        site = make_site(FakeImageService())
        clock = Clock()
        site.reactor = clock
        channel, _ = connected_channel(site)
        channel.dataReceived(client_hello())
        channel.connectionLost(None)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        site.stopFactory()
        self.assertEqual(clock.getDelayedCalls(), [])


class RealConnectionTests(TestCase):
    """The guard over real loopback TCP."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.images = FakeImageService()
        self.images.add_sample_image(
            "x", "latest", write_sample_image(self.directory, {"hello": b"hi\n"}))
        base = serve_locally(self, make_site(self.images))
        self.port = int(base.rsplit(":", 1)[1])

    async def test_prompt_answer(self) -> None:
        """A ClientHello over TCP is answered and closed well within a second."""
        client = RawClient(client_hello())
        started = time.monotonic()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        await client.closed.addTimeout(5, reactor)
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(client.received, PLAIN_HTTP_ANSWER)

    async def test_skopeo_falls_back_quickly(self) -> None:
        """skopeo inspect tries TLS, falls back to HTTP at once, and succeeds."""
        skopeo = shutil.which("skopeo")
        if skopeo is None:
            raise SkipTest("skopeo is not installed")
        self.images.tag_lists["x"] = ["latest"]
        started = time.monotonic()
        out, err, code = await getProcessOutputAndValue(
            skopeo,
            ["inspect", "--tls-verify=false",
             "docker://127.0.0.1:%d/x:latest" % (self.port,)],
            env=dict(os.environ), reactor=reactor)
        elapsed = time.monotonic() - started
        self.assertEqual(code, 0, err)
        document = json.loads(out)
        self.assertEqual(document["RepoTags"], ["latest"])
        self.assertEqual(document["Architecture"], "amd64")
        self.assertLess(elapsed, 5.0, "skopeo took %.2f s" % (elapsed,))

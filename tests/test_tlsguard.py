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
from twisted.internet.testing import StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from nixeryd.testing.images import FakeImageService, write_sample_image
from nixeryd.testing.network import RawClient, serve_locally
from nixeryd.registry.tlsguard import PLAIN_HTTP_ANSWER, TLSGuardChannel
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


def connected_channel() -> tuple[Any, StringTransport]:
    """A channel of the registry site on an in-memory transport."""
    site = make_site(FakeImageService())
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    channel.makeConnection(transport)
    return channel, transport


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

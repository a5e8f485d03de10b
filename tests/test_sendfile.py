"""
Tests for :mod:`nixeryd.registry.sendfile`: blob bodies when every
``sendfile`` thread is taken, and waiting for the headers to leave
Twisted's buffer.
"""

from __future__ import annotations

import os

import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool

from nixeryd.build.manifest import sha256_digest
from nixeryd.core.defaults import STALL_TIMEOUT
from nixeryd.registry.sendfile import SendfileSender
from nixeryd.registry.site import RegistrySite, RootResource
from nixeryd.testing.network import RawClient, serve_locally
from nixeryd.testing.runners import ManualRunner
from tests.registrycases import FakeStreamedRequest, LoopbackTestCase, wait_until


class SendfileSlotTests(LoopbackTestCase):
    """Blob bodies when every sendfile thread is taken."""

    def setUp(self) -> None:
        super().setUp()
        self.blob_pool = self.start_blob_pool(1)
        root = RootResource(self.images, self.blob_pool)
        self.resource = root.registry
        self.base = serve_locally(self, RegistrySite(root))
        self.port = int(self.base.rsplit(":", 1)[1])
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    async def test_busy_pool_falls_back(self) -> None:
        """
        While a client that reads nothing holds the only thread, other blob
        downloads are still served whole (through the reactor), and the
        thread is given back when that client leaves.
        """
        _, digest = self.add_random_blob(64 * 1024 * 1024)
        blobs = self.resource.blobs
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        stalled = RawClient(b"GET /v2/a/blobs/" + digest.encode() + b" HTTP/1.1\r\n"
                            b"Host: x\r\n\r\n")
        await connectProtocol(endpoint, stalled)
        stalled.pause_reading()
        await wait_until(lambda: blobs.free_sendfile_threads == 0)
        [blob] = [b for b in self.sample.blobs if b.size > 0][:1]
        response = await treq.get(self.base + "/v2/a/blobs/" + blob.digest, pool=self.pool)
        self.assertEqual(sha256_digest(await response.content()), blob.digest)
        await stalled.disconnect()
        await wait_until(lambda: blobs.free_sendfile_threads == 1, timeout=10)


class StuckTransport:
    """A socket whose buffer still holds the response headers, forever."""

    dataBuffer = b"headers"
    offset = 0
    _tempDataLen = 0
    aborted = False

    def fileno(self) -> int:
        raise AssertionError("a sender used the socket before the headers left")

    def abortConnection(self) -> None:
        self.aborted = True


class SendfileDrainTests(SynchronousTestCase):
    """Waiting for the response headers to leave Twisted's buffer."""

    def test_backs_off_then_gives_up(self) -> None:
        """
        A connection whose buffer never drains is checked ever more rarely
        (never in a busy loop), then aborted (not closed gracefully: that
        would wait for the buffer) after the stall timeout, and the thread
        slot is released.
        """
        released = []
        clock = Clock()
        request = FakeStreamedRequest()
        opened = open(os.devnull, "rb")
        transport = StuckTransport()
        sender = SendfileSender(
            request, transport, opened, 0, 10, runner=ManualRunner(), clock=clock,
            release=lambda: released.append(True))
        sender._when_drained()
        delays = []
        while clock.getDelayedCalls():
            [call] = clock.getDelayedCalls()
            delays.append(call.getTime() - clock.seconds())
            clock.advance(delays[-1])
        self.assertTrue(transport.aborted)
        self.assertFalse(request.lost)
        self.assertAlmostEqual(clock.seconds(), STALL_TIMEOUT)
        self.assertEqual(released, [True])
        self.assertTrue(opened.closed)
        self.assertEqual(delays[:3], [0.0, 0.001, 0.002])
        self.assertEqual(max(delays), 0.25)
        self.assertLess(len(delays), STALL_TIMEOUT / 0.25 + 20)

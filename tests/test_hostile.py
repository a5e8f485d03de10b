"""
Hostile clients over real loopback sockets, with small limits: slowloris
(connections dribbling a request a byte at a time), a flood of
connections from one address, and clients that never read a large blob,
whose bodies go through the reactor or with ``sendfile``.

The kernel's behaviour matters here (buffers that fill, resets), so these
use real sockets; each test is bounded to a few seconds.
"""

from __future__ import annotations

import os
import time

import treq
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IAddress, IReactorTCP
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from nixeryd.build.manifest import sha256_digest
from nixeryd.core.threads import ThreadPoolService
from nixeryd.registry.connections import BUSY_ANSWER, ConnectionLimits
from nixeryd.registry.site import RegistrySite, make_site
from nixeryd.testing.network import RawClient, serve_locally
from tests.connectioncases import open_descriptors
from tests.registrycases import LoopbackTestCase, wait_until

#: Small limits, so that each rule shows within a second or two.
LIMITS = ConnectionLimits(head_timeout=1.0, idle_timeout=5.0, stall_timeout=1.0,
                          per_client=60, total=200)


class Dribbler(Protocol):
    """A client that sends nothing by itself; :attr:`closed` fires when it ends."""

    def __init__(self) -> None:
        self.closed: Deferred[None] = Deferred()
        self.received = b""
        self.open = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.open = False
        self.closed.callback(None)


class OneClient(ClientFactory):
    """Connects one :class:`RawClient`, :attr:`client`."""

    def __init__(self, request: bytes) -> None:
        self.client = RawClient(request)

    def buildProtocol(self, addr: IAddress | None) -> RawClient:
        return self.client


class HostileTestCase(LoopbackTestCase):
    """A site with :data:`LIMITS` on a loopback port."""

    def serve(self, limits: ConnectionLimits = LIMITS,
              blob_pool: ThreadPoolService | None = None) -> RegistrySite:
        """Serve the sample images with ``limits``; sets :attr:`port`."""
        site = make_site(self.images, blob_pool, limits=limits)
        base = serve_locally(self, site)
        self.base = base
        self.port = int(base.rsplit(":", 1)[1])
        return site

    def endpoint(self) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)

    async def served(self, bind: str = "127.0.0.1") -> None:
        """A new client (from ``bind``) gets its answer."""
        factory = OneClient(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        IReactorTCP(reactor).connectTCP("127.0.0.1", self.port, factory,
                                        bindAddress=(bind, 0))
        client = factory.client
        await client.closed.addTimeout(5, reactor)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200 OK\r\n"), client.received)


class SlowlorisTests(HostileTestCase):
    """Connections dribbling their request are closed by the request deadline."""

    async def test_dribblers_closed(self) -> None:
        """
        50 connections sending a byte every 0.1 s are all aborted when the
        request deadline passes (not before), having been answered
        nothing; a new client is then served at once.
        """
        site = self.serve()
        # The deadline of the first connection counts from its connect: so
        # does this test, however long the 50 connects take.
        started = time.monotonic()
        dribblers = [await connectProtocol(self.endpoint(), Dribbler()) for _ in range(50)]
        request = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"
        sent = [0]

        def dribble() -> None:
            for dribbler in dribblers:
                if dribbler.open and dribbler.transport is not None:
                    dribbler.transport.write(request[sent[0]:sent[0] + 1])
            sent[0] += 1

        loop = task.LoopingCall(dribble)
        loop.start(0.1)
        self.addCleanup(lambda: loop.stop() if loop.running else None)
        await task.deferLater(
            reactor, max(0.0, LIMITS.head_timeout * 0.7 - (time.monotonic() - started)),
            lambda: None)
        self.assertEqual(sum(d.open for d in dribblers), 50)
        self.assertEqual(site.connections.open, 50)
        await DeferredList([d.closed for d in dribblers]).addTimeout(5, reactor)
        elapsed = time.monotonic() - started
        loop.stop()
        self.assertEqual(sum(d.open for d in dribblers), 0)
        self.assertLess(elapsed, LIMITS.head_timeout + 1.5)
        self.assertEqual([d.received for d in dribblers if d.received], [])
        await wait_until(lambda: site.connections.open == 0)
        self.assertEqual(site.connections.pending, 50)
        site.connections.flush()
        await self.served()


class FloodTests(HostileTestCase):
    """Connections beyond the per-client limit are refused at once."""

    async def test_flood_from_one_address(self) -> None:
        """
        Of 70 idle connections from one address, 60 are held and 10 get
        the busy answer and are closed at once; another address is still
        served.
        """
        site = self.serve(ConnectionLimits(head_timeout=10.0, idle_timeout=10.0,
                                           stall_timeout=10.0, per_client=60, total=200))
        clients = [await connectProtocol(self.endpoint(), Dribbler()) for _ in range(70)]
        refused = clients[60:]
        await DeferredList([c.closed for c in refused]).addTimeout(5, reactor)
        for client in refused:
            # The answer may be lost to a reset if the client had sent bytes;
            # these sent none, so it arrives.
            self.assertEqual(client.received, BUSY_ANSWER)
        self.assertEqual(sum(c.open for c in clients[:60]), 60)
        self.assertEqual(site.connections.open_from("127.0.0.1"), 60)
        await self.served("127.0.0.2")
        for client in clients[:60]:
            assert client.transport is not None
            client.transport.loseConnection()
        await DeferredList([c.closed for c in clients[:60]]).addTimeout(5, reactor)
        await wait_until(lambda: site.connections.open == 0)
        site.connections.flush()

    async def test_flood_over_the_total(self) -> None:
        """Beyond the total, new connections from any address are refused."""
        site = self.serve(ConnectionLimits(head_timeout=10.0, idle_timeout=10.0,
                                           stall_timeout=10.0, per_client=60, total=5))
        clients = [await connectProtocol(self.endpoint(), Dribbler()) for _ in range(8)]
        await DeferredList([c.closed for c in clients[5:]]).addTimeout(5, reactor)
        self.assertEqual([c.received for c in clients[5:]], [BUSY_ANSWER] * 3)
        self.assertEqual(site.connections.open, 5)
        for client in clients[:5]:
            assert client.transport is not None
            client.transport.loseConnection()
        await DeferredList([c.closed for c in clients[:5]]).addTimeout(5, reactor)
        await wait_until(lambda: site.connections.open == 0)
        await self.served("127.0.0.2")
        site.connections.flush()


class StalledReaderTests(HostileTestCase):
    """Clients that never read a large blob lose their socket and its file."""

    STALLED = 4

    def blob_pool(self) -> ThreadPoolService | None:
        """No sendfile threads: bodies go through the reactor."""
        return None

    async def test_stalled_readers_aborted(self) -> None:
        """
        Clients that stop reading a 24 MiB blob keep their connection and
        blob file for the stall timeout, then lose both; a client reading
        the same blob meanwhile gets all of it.
        """
        site = self.serve(blob_pool=self.blob_pool())
        data, digest = self.add_random_blob(24 * 1024 * 1024)
        path = os.path.realpath(os.path.join(self.directory, digest.split(":")[1]))
        request = (b"GET /v2/a/blobs/" + digest.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        stalled = []
        for _ in range(self.STALLED):
            client = RawClient(request)
            await connectProtocol(self.endpoint(), client)
            client.pause_reading()
            stalled.append(client)
        started = time.monotonic()
        await wait_until(lambda: open_descriptors(path) == self.STALLED)
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.get(self.base + "/v2/a/blobs/" + digest, pool=pool)
        self.assertEqual(sha256_digest(await response.content()), digest)
        self.assertEqual(site.connections.open, self.STALLED)
        await wait_until(lambda: site.connections.open == 0, timeout=10)
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, LIMITS.stall_timeout * 0.9)
        self.assertLess(elapsed, LIMITS.stall_timeout + 3.0)
        self.assertEqual(open_descriptors(path), 0)
        for client in stalled:
            assert client.transport is not None
            client.transport.loseConnection()
        site.connections.flush()


class SendfileStalledReaderTests(StalledReaderTests):
    """The same, with bodies sent by ``sendfile`` threads."""

    def blob_pool(self) -> ThreadPoolService | None:
        """Enough sendfile threads for every client."""
        return self.start_blob_pool(self.STALLED + 2)

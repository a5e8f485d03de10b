"""
Tests for :mod:`nixeryd.registry.site`: the real site on a loopback port
(streaming, keep-alive, disconnects, the access log, pipelining), with
blob bodies sent through the reactor and with ``sendfile``, and a build's
event stream on a real connection.
"""

from __future__ import annotations

import hashlib

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from nixeryd.build.manifest import sha256_digest
from nixeryd.registry.site import RegistrySite, make_site
from nixeryd.service.builds import BuildHistory, BuildPhase
from nixeryd.testing.network import RawClient, serve_locally
from tests.registrycases import LoopbackTestCase, RecordingBlobPool, wait_until


class LoopbackTests(LoopbackTestCase):
    """The real site on a loopback port."""

    def setUp(self) -> None:
        super().setUp()
        self.base = serve_locally(self, self.site_under_test())
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.port = int(self.base.rsplit(":", 1)[1])

    def site_under_test(self) -> RegistrySite:
        """The site these tests serve: blob bodies go through the reactor."""
        return make_site(self.images)

    def connect(self, client: RawClient) -> Deferred[RawClient]:
        """Connect ``client`` to the site."""
        connected: Deferred[RawClient] = connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        return connected

    async def test_large_blob_streams(self) -> None:
        """A multi-MiB blob arrives whole and intact, also in a range."""
        data, digest = self.add_random_blob(6 * 1024 * 1024 + 123)
        response = await treq.get(self.base + "/v2/a/blobs/" + digest, pool=self.pool)
        body = await response.content()
        self.assertEqual(response.code, 200)
        self.assertEqual(hashlib.sha256(body).hexdigest(), digest.split(":")[1])
        response = await treq.get(self.base + "/v2/a/blobs/" + digest, pool=self.pool,
                                  headers=Headers({b"Range": [b"bytes=1000000-4999999"]}))
        body = await response.content()
        self.assertEqual(response.code, 206)
        self.assertEqual(body, data[1000000:5000000])

    async def test_keep_alive(self) -> None:
        """Many requests on persistent connections are all answered."""
        for _ in range(20):
            response = await treq.get(self.base + "/v2/shell/git/manifests/latest",
                                      pool=self.pool)
            self.assertEqual(await response.content(),
                             self.sample.image.docker.body)

    async def test_disconnect_cancels_own_wait(self) -> None:
        """A client leaving cancels its own wait and not another client's."""
        self.images.hold = True
        leaving = RawClient(b"GET /v2/shell/git/manifests/latest HTTP/1.1\r\n"
                            b"Host: x\r\n\r\n")
        await self.connect(leaving)
        await self.images.wait_for_held(1).addTimeout(5, reactor)
        staying = treq.get(self.base + "/v2/shell/git/manifests/latest", pool=self.pool)
        await self.images.wait_for_held(2).addTimeout(5, reactor)
        first, second = self.images.held
        await leaving.disconnect()
        await first.cancellation.addTimeout(5, reactor)
        self.assertFalse(second.cancelled)
        self.assertEqual(leaving.received, b"")
        second.release()
        response = await staying
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), self.sample.image.docker.body)

    async def test_access_log(self) -> None:
        """Each request produces one access event with its fields."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        response = await treq.get(self.base + "/v2/shell/git/manifests/latest?ns=x",
                                  pool=self.pool)
        body = await response.content()
        response = await treq.head(self.base + "/v2/nope/blobs/sha256:x", pool=self.pool)
        await response.content()
        access = [event for event in events
                  if event.get("log_namespace") == "nixeryd.access"]
        self.assertEqual(len(access), 2)
        first, second = access
        self.assertEqual(
            (first["method"], first["path"], first["status"], first["bytes"],
             first["client"]),
            ("GET", "/v2/shell/git/manifests/latest?ns=x", 200, len(body), "127.0.0.1"))
        self.assertGreaterEqual(first["duration"], 0)
        self.assertEqual((second["method"], second["status"]), ("HEAD", 400))

    async def test_socket_pipelining(self) -> None:
        """Two pipelined requests on one socket get two answers in order."""
        client = RawClient(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
                           b"GET /v2/a/blobs/x HTTP/1.1\r\nHost: x\r\n"
                           b"Connection: close\r\n\r\n")
        await self.connect(client)
        await client.closed
        self.assertEqual(client.received.count(b"HTTP/1.1 "), 2)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200 "))
        self.assertIn(b"HTTP/1.1 400 ", client.received)


class SendfileLoopbackTests(LoopbackTests):
    """
    The same loopback tests with blob bodies sent by ``sendfile`` from a
    thread pool, as the daemon serves them.
    """

    def site_under_test(self) -> RegistrySite:
        """The site with a blob pool, whose calls are recorded."""
        self.blob_pool = self.start_blob_pool(4)
        self.recording_pool = RecordingBlobPool(self.blob_pool)
        return make_site(self.images, self.recording_pool)

    async def test_blob_sent_by_sendfile(self) -> None:
        """On a plain TCP connection the body goes out through the blob pool."""
        [blob] = [b for b in self.sample.blobs if b.size > 0][:1]
        response = await treq.get(self.base + "/v2/a/blobs/" + blob.digest, pool=self.pool)
        body = await response.content()
        self.assertEqual(sha256_digest(body), blob.digest)
        self.assertEqual([f.__name__ for f in self.recording_pool.functions],
                         ["send_file_range"])

    async def test_client_leaving_mid_blob(self) -> None:
        """
        A client that disconnects during a large body ends that response;
        the server goes on answering others.
        """
        data, digest = self.add_random_blob(64 * 1024 * 1024)
        leaving = RawClient(b"GET /v2/a/blobs/" + digest.encode() + b" HTTP/1.1\r\n"
                            b"Host: x\r\n\r\n")
        await self.connect(leaving)
        await leaving.wait_for_bytes(1024 * 1024 + 1).addTimeout(5, reactor)
        await leaving.disconnect()
        self.assertLess(len(leaving.received), len(data))
        response = await treq.get(self.base + "/v2/shell/git/manifests/latest",
                                  pool=self.pool)
        self.assertEqual(await response.content(), self.sample.image.docker.body)
        await wait_until(lambda: not self.blob_pool.pool.working)


class EventStreamLoopbackTests(LoopbackTestCase):
    """A build's page and event stream on a real connection."""

    def setUp(self) -> None:
        super().setUp()
        self.history = BuildHistory(reactor)
        self.base = serve_locally(self, make_site(self.images, builds=self.history,
                                                  source="path /srv/pkgs"))
        self.port = int(self.base.rsplit(":", 1)[1])

    async def test_live_lines_then_disconnect(self) -> None:
        """
        Lines reach the client as they are logged; a client that goes away
        is unsubscribed from the record.
        """
        record = self.history.start(image="shell/hello", tag="latest", packages=("hello",),
                                    system="x86_64-linux", source="path /srv/pkgs",
                                    revision=None)
        record.enter(BuildPhase.BUILDING)
        client = RawClient(b"GET /builds/" + record.id.encode() + b"/events HTTP/1.1\r\n"
                           b"Host: x\r\n\r\n")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        # The events arrive over a real socket, which fires nothing to wait
        # for but the bytes themselves: poll for them, bounded.
        await wait_until(lambda: b"event: state" in client.received)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200 "))
        self.assertIn(b"Content-Type: text/event-stream; charset=utf-8\r\n", client.received)
        self.assertEqual(len(record._listeners), 1)
        record.add_log_line("a <live> line")
        await wait_until(lambda: b"data: a <live> line" in client.received)
        await client.disconnect()
        await wait_until(lambda: not record._listeners)
        record.add_log_line("nobody listens")
        record.succeed("sha256:" + "c" * 64, "built")

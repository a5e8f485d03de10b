"""
Tests for :mod:`nixeryd.registry.deadlines`: the request deadline, the
idle timeout and the stall rule of each connection, on a fake clock.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.registry.deadlines import MAX_REQUEST_BODY
from nixeryd.service.builds import BuildHistory, BuildPhase
from nixeryd.testing.images import FakeImageService, write_sample_image
from nixeryd.registry.site import RegistrySite
from tests.connectioncases import (LIMITS, ConnectionTransport, connect, limited_site,
                                   open_descriptors, statuses)

PING = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"

GONE = Failure(ConnectionDone())


def run_for(clock: Clock, seconds: float) -> None:
    """
    Let ``seconds`` pass a second at a time, as they do: a fake clock
    advanced at once runs every call due with the time already at the end.
    """
    whole = int(seconds)
    clock.pump([1.0] * whole)
    if seconds > whole:
        clock.advance(seconds - whole)


class RequestDeadlineTests(SynchronousTestCase):
    """A request must arrive whole in time, however it is dribbled."""

    def test_dribbled_request_aborted(self) -> None:
        """
        A byte a second does not renew the deadline: the connection is
        aborted when it passes, and the abort is counted.
        """
        site, clock = limited_site()
        channel, transport = connect(site)
        for byte in PING[:9]:
            channel.dataReceived(bytes([byte]))
            clock.advance(1)
        self.assertFalse(transport.aborted)
        clock.advance(LIMITS.head_timeout - 9)
        self.assertTrue(transport.aborted)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(site.connections.pending, 1)

    def test_silent_connection_aborted(self) -> None:
        """A connection that sends nothing is aborted after the deadline."""
        site, clock = limited_site()
        _, transport = connect(site)
        clock.advance(LIMITS.head_timeout - 0.001)
        self.assertFalse(transport.aborted)
        clock.advance(0.001)
        self.assertTrue(transport.aborted)

    def test_whole_request_in_time(self) -> None:
        """A request that arrives in time is answered, and no deadline is left."""
        site, clock = limited_site()
        channel, transport = connect(site)
        channel.dataReceived(PING[:5])
        clock.advance(9)
        channel.dataReceived(PING[5:])
        self.assertEqual(statuses(transport.value()), [200])
        clock.advance(LIMITS.head_timeout)
        self.assertFalse(transport.aborted)
        self.assertFalse(transport.disconnecting)

    def test_no_deadline_while_answering(self) -> None:
        """A request waiting for the image service has no deadline at all."""
        images = FakeImageService()
        images.hold = True
        site, clock = limited_site(images)
        channel, transport = connect(site)
        channel.dataReceived(b"GET /v2/a/manifests/latest HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(len(images.held), 1)
        clock.advance(3600)
        self.assertFalse(transport.aborted)
        self.assertFalse(transport.disconnecting)
        images.held[0].release()
        self.assertEqual(statuses(transport.value()), [404])

    def test_big_body_refused(self) -> None:
        """A body over the limit is refused with 413 before it is read."""
        site, _ = limited_site()
        channel, transport = connect(site)
        channel.dataReceived(b"POST /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                             % (MAX_REQUEST_BODY + 1,))
        self.assertEqual(statuses(transport.value()), [413])
        self.assertTrue(transport.disconnecting)

    def test_body_of_unstated_length_refused(self) -> None:
        """A chunked body, which could be of any length, is refused with 411."""
        site, _ = limited_site()
        channel, transport = connect(site)
        channel.dataReceived(b"POST /v2/ HTTP/1.1\r\nHost: x\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n")
        self.assertEqual(statuses(transport.value()), [411])
        self.assertTrue(transport.disconnecting)

    def test_content_length_of_thousands_of_digits(self) -> None:
        """
        A Content-Length Python would refuse to convert is a 400, not an
        exception out of the channel; one of small value but many leading
        zeros too.
        """
        for value in (b"9" * 5000, b"0" * 5000 + b"1"):
            with self.subTest(value=value[:10]):
                site, _ = limited_site()
                channel, transport = connect(site)
                channel.dataReceived(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                     + value + b"\r\n\r\n")
                self.assertEqual(statuses(transport.value()), [400])
                self.assertTrue(transport.disconnecting)

    def test_small_body_accepted(self) -> None:
        """A small body is read as usual (and the method then refused)."""
        site, _ = limited_site()
        channel, transport = connect(site)
        channel.dataReceived(b"POST /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        self.assertEqual(statuses(transport.value()), [405])


class IdleTimeoutTests(SynchronousTestCase):
    """Between requests, a kept-alive connection waits a bounded time."""

    def test_idle_connection_closed(self) -> None:
        """After a response, the connection is closed when the idle time ends."""
        site, clock = limited_site()
        channel, transport = connect(site)
        channel.dataReceived(PING)
        clock.advance(LIMITS.idle_timeout - 0.001)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.001)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        self.assertEqual(site.connections.pending, 0, "idle closes are routine, not reported")

    def test_next_request_has_its_own_deadline(self) -> None:
        """
        The first byte of the next request ends the idle wait and starts
        that request's deadline.
        """
        site, clock = limited_site()
        channel, transport = connect(site)
        channel.dataReceived(PING)
        clock.advance(LIMITS.idle_timeout - 1)
        channel.dataReceived(PING[:3])
        clock.advance(LIMITS.head_timeout - 1)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(PING[3:])
        self.assertEqual(statuses(transport.value()), [200, 200])
        clock.advance(LIMITS.head_timeout)
        self.assertFalse(transport.disconnecting)

    def test_next_request_dribbled(self) -> None:
        """A next request that does not arrive whole in time is aborted."""
        site, clock = limited_site()
        channel, transport = connect(site)
        channel.dataReceived(PING)
        channel.dataReceived(b"G")
        clock.advance(LIMITS.head_timeout)
        self.assertTrue(transport.aborted)

    def test_pipelined_requests(self) -> None:
        """Requests sent together are all answered, then the idle wait starts."""
        site, clock = limited_site()
        channel, transport = connect(site)
        channel.dataReceived(PING * 3)
        self.assertEqual(statuses(transport.value()), [200, 200, 200])
        clock.advance(LIMITS.head_timeout)
        self.assertFalse(transport.disconnecting)
        clock.advance(LIMITS.idle_timeout - LIMITS.head_timeout)
        self.assertTrue(transport.disconnecting)

    def test_idle_wait_starts_once_the_response_has_left(self) -> None:
        """
        A response written whole into a full buffer (a long tag list) is
        done for Twisted at once; the idle wait starts only once its bytes
        have left the buffer, however long the client takes to read them.
        """
        images = FakeImageService()
        images.tag_lists["a"] = ["tag-%06d" % (n,) for n in range(20000)]
        site, clock = limited_site(images)
        channel, transport = connect(site)
        transport.hold()
        channel.dataReceived(b"GET /v2/a/tags/list HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.producer_paused)
        for _ in range(4):
            run_for(clock, LIMITS.idle_timeout)
            transport.take(1000)
        self.assertFalse(transport.disconnecting)
        transport.take(transport.held)
        run_for(clock, LIMITS.idle_timeout - 1)
        self.assertFalse(transport.disconnecting)
        run_for(clock, 1)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)

    def test_close_requested(self) -> None:
        """A client asking to close gets its answer, then the connection closes."""
        site, clock = limited_site()
        channel, transport = connect(site)
        channel.dataReceived(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(statuses(transport.value()), [200])
        self.assertTrue(transport.disconnecting)
        channel.connectionLost(GONE)
        self.assertEqual(clock.getDelayedCalls(), [])


class StallTests(SynchronousTestCase):
    """A response whose client reads nothing is aborted; one that reads is not."""

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.images = FakeImageService()
        # Random bytes do not compress: a layer of four chunks of BlobSender's.
        self.sample = write_sample_image(directory, {"x": os.urandom(1024 * 1024)})
        self.images.add_sample_image("a", "latest", self.sample)
        self.request = (b"GET /v2/a/blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n"
                        % (self.sample.layer.digest.encode(),))
        self.path = os.path.realpath(self.sample.layer.path)

    def blob_request(self) -> tuple[RegistrySite, Clock, Any, ConnectionTransport]:
        """A blob request whose client has read nothing: its buffer is full."""
        site, clock = limited_site(self.images)
        channel, transport = connect(site)
        transport.hold()
        channel.dataReceived(self.request)
        self.assertTrue(transport.producer_paused)
        self.assertEqual(open_descriptors(self.path), 1)
        return site, clock, channel, transport

    def test_paused_without_progress_aborted(self) -> None:
        """
        A connection Twisted has paused (its buffer full) whose kernel
        takes nothing is aborted after the stall timeout, not before; once
        lost, the response's blob file is closed and its place given back.
        """
        site, clock, _, transport = self.blob_request()
        run_for(clock, LIMITS.stall_timeout - 0.001)
        self.assertFalse(transport.aborted)
        clock.advance(0.001)
        self.assertTrue(transport.aborted)
        self.assertEqual(site.connections.pending, 1)
        transport.lose()
        self.assertEqual(open_descriptors(self.path), 0)
        self.assertEqual(site.connections.open, 0)
        site.connections.flush()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_slow_reader_kept(self) -> None:
        """
        A client whose kernel takes a few bytes now and then is kept; when
        it stops taking any, it is aborted within a quarter more than the
        stall timeout.
        """
        _, clock, _, transport = self.blob_request()
        for _ in range(10):
            run_for(clock, LIMITS.stall_timeout * 0.9)
            transport.take(10)
        self.assertFalse(transport.aborted)
        run_for(clock, LIMITS.stall_timeout)
        self.assertFalse(transport.aborted)
        run_for(clock, LIMITS.stall_timeout / 4)
        self.assertTrue(transport.aborted)

    def test_reader_gets_the_whole_blob(self) -> None:
        """
        A client that reads everything, however slowly, gets the whole
        blob: its connection is never aborted, and the blob file is closed
        at the end.
        """
        _, clock, _, transport = self.blob_request()
        while transport.held:
            run_for(clock, LIMITS.stall_timeout * 0.9)
            transport.take(transport.held)
        self.assertFalse(transport.aborted)
        self.assertEqual(transport.value().split(b"\r\n\r\n", 1)[1],
                         open(self.path, "rb").read())
        self.assertEqual(open_descriptors(self.path), 0)

    def test_close_that_cannot_finish_aborted(self) -> None:
        """A graceful close waiting for bytes the client never reads is aborted."""
        site, clock = limited_site()
        channel, transport = connect(site)
        transport.hold()
        channel.dataReceived(PING.replace(b"Host: x", b"Connection: close"))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        clock.advance(LIMITS.stall_timeout)
        self.assertTrue(transport.aborted)

    def test_event_stream_is_no_stall(self) -> None:
        """
        A build's event stream read by its client is kept for as long as
        the build runs: its heartbeats are not a stall, nor is the quiet
        between them.
        """
        clock = Clock()
        history = BuildHistory(clock)
        site, _ = limited_site(builds=history, clock=clock)
        record = history.start(image="shell/hello", tag="latest", packages=("hello",),
                               system="x86_64-linux", source="path /srv/pkgs", revision=None)
        record.enter(BuildPhase.BUILDING)
        channel, transport = connect(site)
        channel.dataReceived(b"GET /builds/%s/events HTTP/1.1\r\nHost: x\r\n\r\n"
                             % (record.id.encode(),))
        self.assertEqual(statuses(transport.value()), [200])
        for _ in range(40):
            clock.advance(LIMITS.stall_timeout / 2)
        self.assertFalse(transport.aborted)
        self.assertFalse(transport.disconnecting)
        self.assertIn(b": ", transport.value().split(b"\r\n\r\n", 1)[1])
        channel.connectionLost(GONE)
        self.assertEqual(site.connections.open, 0)

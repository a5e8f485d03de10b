"""
Tests for :mod:`nixeryd.build.popularity`: decoding popularity documents and
loading them from files and URLs, where failure must never be fatal.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, ParamSpec, TypeVar

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from nixeryd.build import popularity
from nixeryd.build.popularity import load_popularity, parse_popularity
from nixeryd.core.threads import InlineRunner

SAMPLE = {"glibc-2.37-8": 31337, "zlib-1.3": 4000, "hello-2.12.1": 2}
#: Runs the file reading and decoding of the loads below.
RUNNER = InlineRunner()

T = TypeVar("T")
P = ParamSpec("P")


async def listen(site: Site) -> tuple[IListeningPort, int]:
    """Listen with ``site`` on a free loopback port; the port and its number."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    return port, address.port


class ParsePopularityTests(SynchronousTestCase):
    """Tests for :func:`parse_popularity`."""

    def test_object_of_counts(self) -> None:
        """A JSON object of integer counts decodes to the same mapping."""
        self.assertEqual(parse_popularity(json.dumps(SAMPLE).encode()), SAMPLE)

    def test_empty_object(self) -> None:
        """An empty object is valid and means no data."""
        self.assertEqual(parse_popularity(b"{}"), {})

    def test_not_an_object(self) -> None:
        """JSON other than an object is rejected."""
        for document in (b"[]", b'[["glibc-2.37", 3]]', b"3", b'"glibc"', b"null"):
            self.assertRaises(ValueError, parse_popularity, document)

    def test_non_integer_counts(self) -> None:
        """Counts that are not integers (booleans included) are rejected."""
        for count in ("3", 2.5, True, None, [1], {"n": 1}):
            document = json.dumps({"glibc-2.37": 1, "zlib-1.3": count}).encode()
            error = self.assertRaises(ValueError, parse_popularity, document)
            self.assertIn("zlib-1.3", str(error))

    def test_negative_count(self) -> None:
        """A negative count is rejected."""
        self.assertRaises(ValueError, parse_popularity, b'{"zlib-1.3": -1}')

    def test_malformed(self) -> None:
        """Invalid JSON and invalid UTF-8 are rejected as ValueError."""
        for data in (b"", b"{", b'{"zlib": 1,}', b'{"\xff": 1}'):
            self.assertRaises(ValueError, parse_popularity, data)


class _Served(Resource):
    """A resource answering every GET with a fixed status and body."""

    isLeaf = True

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__()
        self.status = status
        self.body = body
        self.requests = 0

    def render_GET(self, request: Request) -> bytes:
        self.requests += 1
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        return self.body


class _Hanging(Resource):
    """A resource that never answers; it records when clients give up."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.started: Deferred[None] = Deferred()
        self.abandoned: list[Deferred[None]] = []

    def render_GET(self, request: Request) -> Any:
        finished = request.notifyFinish()
        finished.addErrback(lambda _: None)
        self.abandoned.append(finished)
        if not self.started.called:
            self.started.callback(None)
        return NOT_DONE_YET


class _TrackingSite(Site):
    """A site that can wait until every connection it accepted is closed."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.closed: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        closed: Deferred[None] = Deferred()
        self.closed.append(closed)
        original = protocol.connectionLost

        def connection_lost(reason: Any) -> None:
            try:
                original(reason)
            finally:
                closed.callback(None)

        protocol.connectionLost = connection_lost
        return protocol


class LoadPopularityTests(TestCase):
    """Tests for :func:`load_popularity` with real files and a real server."""

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def own_events(self, level: LogLevel) -> list[dict[str, Any]]:
        """The events this module logged at ``level``."""
        return [event for event in self.events
                if event.get("log_namespace") == popularity.__name__
                and event["log_level"] == level]

    def assert_one_warning(self, source: str, error_text: str) -> None:
        """Exactly one warning names ``source`` and an error containing ``error_text``."""
        [warning] = self.own_events(LogLevel.warn)
        self.assertEqual(warning["source"], source)
        self.assertIn(error_text, warning["error"])
        self.assertEqual(self.own_events(LogLevel.info), [])

    def write_file(self, data: bytes) -> str:
        """A file of the test's holding ``data``."""
        path: str = self.mktemp() + ".json"
        with open(path, "wb") as stream:
            stream.write(data)
        return path

    async def serve(self, resource: Resource) -> str:
        """
        Serve ``resource`` on a loopback port for the test; return its URL.
        Cleanup stops listening and waits for every connection to close.
        """
        site = _TrackingSite(resource)
        port, number = await listen(site)

        async def stop() -> None:
            await maybeDeferred(port.stopListening)
            await gatherResults(site.closed)

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        return "http://127.0.0.1:%d/popularity.json" % (number,)

    async def test_no_source(self) -> None:
        """No configured source gives empty data and logs nothing."""
        self.assertEqual(await load_popularity(None, reactor=reactor, runner=RUNNER), {})
        self.assertEqual(await load_popularity("", reactor=reactor, runner=RUNNER), {})
        self.assertEqual(self.own_events(LogLevel.warn), [])

    async def test_file(self) -> None:
        """A local file's counts are loaded, and the load is logged."""
        path = self.write_file(json.dumps(SAMPLE).encode())
        self.assertEqual(await load_popularity(path, reactor=reactor, runner=RUNNER), SAMPLE)
        [event] = self.own_events(LogLevel.info)
        self.assertEqual((event["count"], event["source"]), (len(SAMPLE), path))

    async def test_runner_injected(self) -> None:
        """
        File reading and decoding go through the given runner, for files
        and URLs alike.
        """
        calls: list[str] = []

        class RecordingRunner:
            def run(self, function: Callable[P, T], /,
                    *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
                calls.append(function.__name__)
                return deferToThread(function, *args, **kwargs)

        path = self.write_file(json.dumps(SAMPLE).encode())
        url = await self.serve(_Served(200, json.dumps(SAMPLE).encode()))
        runner = RecordingRunner()
        self.assertEqual(await load_popularity(path, reactor=reactor, runner=runner),
                         SAMPLE)
        self.assertEqual(await load_popularity(url, reactor=reactor, runner=runner),
                         SAMPLE)
        self.assertEqual(calls, ["_read_and_parse", "parse_popularity"])

    async def test_missing_file(self) -> None:
        """A missing file gives empty data and a warning naming it."""
        path = os.path.abspath(self.mktemp())
        self.assertEqual(await load_popularity(path, reactor=reactor, runner=RUNNER), {})
        self.assert_one_warning(path, "FileNotFoundError")

    async def test_malformed_file(self) -> None:
        """A file that is not a popularity object gives empty data and a warning."""
        path = self.write_file(b'["glibc-2.37"]')
        self.assertEqual(await load_popularity(path, reactor=reactor, runner=RUNNER), {})
        self.assert_one_warning(path, "JSON object")

    async def test_file_too_large(self) -> None:
        """A file over the size limit gives empty data and a warning."""
        self.patch(popularity, "MAX_POPULARITY_BYTES", 10)
        path = self.write_file(json.dumps(SAMPLE).encode())
        self.assertEqual(await load_popularity(path, reactor=reactor, runner=RUNNER), {})
        self.assert_one_warning(path, "PopularityTooLarge")

    async def test_url(self) -> None:
        """Counts served over HTTP are loaded."""
        resource = _Served(200, json.dumps(SAMPLE).encode())
        url = await self.serve(resource)
        self.assertEqual(await load_popularity(url, reactor=reactor, runner=RUNNER), SAMPLE)
        self.assertEqual(resource.requests, 1)
        [event] = self.own_events(LogLevel.info)
        self.assertEqual((event["count"], event["source"]), (len(SAMPLE), url))

    async def test_url_not_found(self) -> None:
        """A 404 gives empty data and a warning with the status."""
        url = await self.serve(_Served(404, b'{"error": "no such file"}'))
        self.assertEqual(await load_popularity(url, reactor=reactor, runner=RUNNER), {})
        self.assert_one_warning(url, "HTTP 404")

    async def test_url_malformed(self) -> None:
        """A served document that is not valid JSON gives empty data and a warning."""
        url = await self.serve(_Served(200, b"<html>not json</html>"))
        self.assertEqual(await load_popularity(url, reactor=reactor, runner=RUNNER), {})
        self.assert_one_warning(url, "JSONDecodeError")

    async def test_url_too_large(self) -> None:
        """A served document over the size limit gives empty data and a warning."""
        self.patch(popularity, "MAX_POPULARITY_BYTES", 10)
        url = await self.serve(_Served(200, json.dumps(SAMPLE).encode()))
        self.assertEqual(await load_popularity(url, reactor=reactor, runner=RUNNER), {})
        self.assert_one_warning(url, "PopularityTooLarge")

    async def test_url_timeout(self) -> None:
        """
        A server that never answers is abandoned after the timeout, giving
        empty data and a warning.
        """
        resource = _Hanging()
        url = await self.serve(resource)
        self.assertEqual(await load_popularity(url, reactor=reactor, runner=RUNNER, timeout=0.2), {})
        self.assert_one_warning(url, "TimeoutError")
        self.assertTrue(resource.started.called)
        await gatherResults(resource.abandoned)

    async def test_url_unreachable(self) -> None:
        """A URL nothing listens on gives empty data and a warning."""
        port, number = await listen(Site(Resource()))
        url = "http://127.0.0.1:%d/popularity.json" % (number,)
        await maybeDeferred(port.stopListening)
        self.assertEqual(await load_popularity(url, reactor=reactor, runner=RUNNER), {})
        self.assert_one_warning(url, "ConnectionRefused")

    async def test_cancel(self) -> None:
        """Cancelling a load in progress cancels it without a warning."""
        resource = _Hanging()
        url = await self.serve(resource)
        loading = Deferred.fromCoroutine(load_popularity(url, reactor=reactor, runner=RUNNER))
        await resource.started
        loading.cancel()
        self.failureResultOf(loading, CancelledError)
        self.assertEqual(self.own_events(LogLevel.warn), [])
        await gatherResults(resource.abandoned)
        await deferLater(reactor, 0, lambda: None)

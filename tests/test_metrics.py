"""
Tests for :mod:`nixeryd.metrics`: route labels, the request counts of the
real site on a loopback port (blob bodies through the reactor and with
``sendfile``), ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, and the
build, cache, layer and storage metrics of an image service over a
scripted Nix and a fake clock.
"""

from __future__ import annotations

import random
import threading
from typing import Any, Callable, ParamSpec, TypeVar

import treq
from prometheus_client import REGISTRY
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from nixeryd.build.builder import ImageBuilder
from nixeryd.core.documents import Image
from nixeryd.core.errors import BuildFailed, Unavailable
from nixeryd.core.threads import InlineRunner, ThreadPoolService
from nixeryd.metrics.daemon import DaemonMetrics
from nixeryd.metrics.monitoring import Monitoring, make_monitoring
from nixeryd.metrics.routes import ROUTES, method_label, route_of
from nixeryd.registry.site import RegistrySite, make_site
from nixeryd.service.images import ImageService
from nixeryd.testing.nix import FakeSource
from nixeryd.testing.network import RawClient, serve_locally
from nixeryd.testing.storage import MemoryStorage
from tests.buildfixtures import POPULARITY, ImageFixture
from tests.metricsfixtures import Samples, parse_samples, series, value
from tests.registrycases import LoopbackTestCase, RecordingBlobPool, wait_until

P = ParamSpec("P")
T = TypeVar("T")

REQUESTS = "nixeryd_http_requests_total"
BYTES = "nixeryd_http_response_bytes_total"


class RouteTests(SynchronousTestCase):
    """:func:`route_of` and :func:`method_label`."""

    def test_routes(self) -> None:
        """Each path the site answers has its route; the rest is ``other``."""
        for path, route in (
                (b"/v2/", "ping"), (b"/v2", "ping"),
                (b"/v2/shell/git/manifests/latest", "manifest"),
                (b"/v2/a/manifests/sha256:" + b"a" * 64, "manifest"),
                (b"/v2/a/blobs/sha256:" + b"b" * 64, "blob"),
                (b"/v2/a/b/c/tags/list", "tags"),
                (b"/v2/a/referrers/sha256:" + b"c" * 64, "referrers"),
                (b"/v2/referrers/x", "other"),
                (b"/", "index"),
                (b"/builds/abc", "build_page"), (b"/builds/abc/log", "build_page"),
                (b"/builds/abc/events", "build_events"),
                (b"/metrics", "metrics"), (b"/healthz", "health"), (b"/readyz", "health"),
                (b"/v2/manifests/latest", "other"), (b"/v2/blobs/x", "other"),
                (b"/v2/tags/list", "other"), (b"/v2/a/b", "other"),
                (b"/favicon.ico", "other"), (b"", "other"), (b"/metrics/x", "other")):
            with self.subTest(path=path):
                self.assertEqual(route_of(path), route)

    def test_any_path(self) -> None:
        """Whatever bytes a path holds, its route is one of the fixed set."""
        chooser = random.Random(7)
        for _ in range(2000):
            path = bytes(chooser.randrange(256) for _ in range(chooser.randrange(40)))
            self.assertIn(route_of(b"/" + path), ROUTES)
            self.assertIn(route_of(b"/v2/" + path), ROUTES)

    def test_methods(self) -> None:
        """Common methods keep their name; any other is ``other``."""
        self.assertEqual([method_label(m) for m in (b"GET", b"HEAD", b"DELETE", b"BREW",
                                                    b"get")],
                         ["GET", "HEAD", "DELETE", "other", "other"])


class DaemonMetricsTests(SynchronousTestCase):
    """:class:`DaemonMetrics` on its own."""

    def samples(self, metrics: DaemonMetrics) -> Samples:
        return parse_samples(metrics.exposition().decode("utf-8"))

    def test_requests_counted(self) -> None:
        """Each request counts once under its labels; body bytes by route."""
        metrics = DaemonMetrics()
        metrics.request_done(b"/v2/a/blobs/sha256:x", b"GET", 200, 1000)
        metrics.request_done(b"/v2/b/blobs/sha256:y", b"GET", 200, 24)
        metrics.request_done(b"/v2/a/blobs/sha256:x", b"HEAD", 200, 0)
        metrics.request_done(b"/v2/a/manifests/latest", b"GET", 404, 80)
        samples = self.samples(metrics)
        self.assertEqual(value(samples, REQUESTS,
                               {"route": "blob", "method": "GET", "status": "200"}), 2)
        self.assertEqual(value(samples, REQUESTS,
                               {"route": "blob", "method": "HEAD", "status": "200"}), 1)
        self.assertEqual(value(samples, REQUESTS,
                               {"route": "manifest", "method": "GET", "status": "404"}), 1)
        self.assertEqual(value(samples, BYTES, {"route": "blob"}), 1024)
        self.assertEqual(value(samples, BYTES, {"route": "manifest"}), 80)

    def test_cardinality_bounded(self) -> None:
        """
        Thousands of random paths and methods make no more series than
        there are routes, method labels and statuses used.
        """
        metrics = DaemonMetrics()
        chooser = random.Random(11)
        for _ in range(3000):
            path = b"/" + bytes(chooser.randrange(33, 127) for _ in range(20))
            method = bytes(chooser.randrange(65, 91) for _ in range(5))
            metrics.request_done(path, method, chooser.choice((200, 404)), 10)
        labels = series(self.samples(metrics), REQUESTS)
        self.assertLessEqual(len(labels), 2 * 2)
        self.assertEqual({tuple(sorted(l.items())) for l in labels},
                         {(("method", "other"), ("route", "other"), ("status", s))
                          for s in ("200", "404")})

    def test_own_registry(self) -> None:
        """
        Two daemons' metrics count apart, and nothing goes to the global
        registry.
        """
        first, second = DaemonMetrics(), DaemonMetrics()
        first.storage_failed()
        self.assertEqual(value(self.samples(first), "nixeryd_storage_errors_total"), 1)
        self.assertEqual(value(self.samples(second), "nixeryd_storage_errors_total"), 0)
        self.assertIsNone(REGISTRY.get_sample_value("nixeryd_storage_errors_total"))

    def test_fixed_series_from_start(self) -> None:
        """Outcomes, phases and cache results are shown at zero before anything happens."""
        samples = self.samples(DaemonMetrics())
        self.assertEqual(sorted(l["outcome"] for l in series(samples, "nixeryd_builds_total")),
                         ["cancelled", "failed", "succeeded"])
        self.assertEqual(
            sorted(l["phase"] for l in series(samples, "nixeryd_build_phase_seconds_count")),
            ["building", "evaluating", "layering"])
        self.assertEqual(len(series(samples, "nixeryd_cache_requests_total")), 4)
        self.assertEqual(len(series(samples, BYTES)), len(ROUTES))


class SiteMetricsTests(LoopbackTestCase):
    """
    The real site with monitoring on a loopback port; blob bodies go
    through the reactor.  Requests share one persistent connection, so a
    scrape is answered only after the request before it has finished (and
    been counted).
    """

    def setUp(self) -> None:
        super().setUp()
        self.monitoring = make_monitoring(reactor)
        self.base = serve_locally(self, self.site_under_test())
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 1
        self.addCleanup(self.pool.closeCachedConnections)

    def site_under_test(self) -> RegistrySite:
        """The site: no blob pool."""
        return make_site(self.images, monitoring=self.monitoring)

    async def get(self, path: str, method: str = "GET",
                  headers: dict[bytes, list[bytes]] | None = None) -> tuple[int, bytes]:
        response = await treq.request(method, self.base + path, pool=self.pool,
                                      headers=Headers(headers or {}))
        return response.code, await response.content()

    async def scrape(self) -> Samples:
        status, body = await self.get("/metrics")
        self.assertEqual(status, 200)
        return parse_samples(body.decode("utf-8"))

    async def test_manifest_and_blob(self) -> None:
        """A warm manifest and a blob are counted, with every byte of their bodies."""
        self.images.warm.add(("shell/git", "latest"))
        status, manifest = await self.get("/v2/shell/git/manifests/latest")
        self.assertEqual(status, 200)
        blob = max(self.sample.blobs, key=lambda b: b.size)
        status, body = await self.get("/v2/shell/git/blobs/" + blob.digest)
        self.assertEqual((status, len(body)), (200, blob.size))
        samples = await self.scrape()
        self.assertEqual(value(samples, REQUESTS, {"route": "manifest", "method": "GET",
                                                   "status": "200"}), 1)
        self.assertEqual(value(samples, REQUESTS, {"route": "blob", "method": "GET",
                                                   "status": "200"}), 1)
        self.assertEqual(value(samples, BYTES, {"route": "manifest"}), len(manifest))
        self.assertEqual(value(samples, BYTES, {"route": "blob"}), blob.size)

    async def test_large_blob_and_range(self) -> None:
        """A multi-MiB body and a range of it count the bytes actually sent."""
        data, digest = self.add_random_blob(3 * 1024 * 1024 + 5)
        status, body = await self.get("/v2/a/blobs/" + digest)
        self.assertEqual(body, data)
        status, part = await self.get("/v2/a/blobs/" + digest,
                                      headers={b"Range": [b"bytes=100-1099"]})
        self.assertEqual((status, len(part)), (206, 1000))
        samples = await self.scrape()
        self.assertEqual(value(samples, BYTES, {"route": "blob"}), len(data) + 1000)
        self.assertEqual(value(samples, REQUESTS, {"route": "blob", "method": "GET",
                                                   "status": "206"}), 1)

    async def test_random_paths_bounded(self) -> None:
        """Requests for random paths all count under a few label sets."""
        chooser = random.Random(3)
        for _ in range(30):
            name = "".join(chooser.choice("abcdefghij/%.") for _ in range(12))
            await self.get("/" + name)
            await self.get("/v2/" + name)
        samples = await self.scrape()
        routes = {labels["route"] for labels in series(samples, REQUESTS)}
        self.assertLessEqual(routes, {"other", "index", "ping", "metrics"})
        self.assertLessEqual(len(series(samples, REQUESTS)), 6)

    async def test_health_endpoints(self) -> None:
        """
        ``/healthz`` answers ``ok``; ``/readyz`` is 503 before any check
        has run; HEAD gets GET's status and headers, other methods 405.
        """
        self.assertEqual(await self.get("/healthz"), (200, b"ok\n"))
        status, body = await self.get("/readyz")
        self.assertEqual(status, 503)
        self.assertEqual(body, b"not ready\n- the readiness checks have not run yet\n")
        for path, status in (("/healthz", 200), ("/readyz", 503), ("/metrics", 200)):
            with self.subTest(path=path):
                response = await treq.head(self.base + path, pool=self.pool)
                await response.content()
                self.assertEqual(response.code, status)
                get = await treq.get(self.base + path, pool=self.pool)
                get_body = await get.content()
                self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                                 get.headers.getRawHeaders(b"content-type"))
                if path != "/metrics":
                    # The exposition grows with each request counted.
                    self.assertEqual(response.headers.getRawHeaders(b"content-length"),
                                     [b"%d" % (len(get_body),)])
                posted = await treq.post(self.base + path, pool=self.pool)
                await posted.content()
                self.assertEqual(posted.code, 405)
        samples = await self.scrape()
        self.assertEqual(value(samples, REQUESTS, {"route": "health", "method": "HEAD",
                                                   "status": "503"}), 1)
        self.assertEqual(value(samples, REQUESTS, {"route": "metrics", "method": "POST",
                                                   "status": "405"}), 1)
        response = await treq.get(self.base + "/metrics", pool=self.pool)
        await response.content()
        [content_type] = response.headers.getRawHeaders(b"content-type")
        self.assertEqual(content_type, b"text/plain; version=0.0.4; charset=utf-8")


class SendfileSiteMetricsTests(SiteMetricsTests):
    """The same, with blob bodies sent by ``sendfile`` from a thread pool."""

    def site_under_test(self) -> RegistrySite:
        """The site with a blob pool, whose calls are recorded."""
        self.recording_pool = RecordingBlobPool(self.start_blob_pool(2))
        return make_site(self.images, self.recording_pool, monitoring=self.monitoring)

    async def test_large_blob_and_range(self) -> None:
        """The bytes ``sendfile`` moved are counted, for a whole body and a range."""
        await super().test_large_blob_and_range()
        self.assertEqual([f.__name__ for f in self.recording_pool.functions],
                         ["send_file_range"] * 2)


class HeldBlobPool:
    """
    A blob pool that runs work on a real pool but hands each result back
    only when the test releases it.

    :ivar held: ``(arguments, the real result, the result handed back)``
        of every call, in order.
    """

    def __init__(self, pool: ThreadPoolService) -> None:
        self._pool = pool
        self.held: list[tuple[tuple[Any, ...], Deferred[Any], Deferred[Any]]] = []

    @property
    def size(self) -> int:
        """The real pool's size."""
        return self._pool.size

    def run(self, function: Callable[P, T], /,
            *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """Run ``function`` on the real pool; its result waits for :meth:`release`."""
        handed: Deferred[T] = Deferred()
        self.held.append((args, self._pool.run(function, *args, **kwargs), handed))
        return handed

    async def release(self) -> None:
        """Hand back every result, once the work has ended."""
        for _, done, handed in self.held:
            try:
                handed.callback(await done)
            except Exception:
                handed.errback()


class SendfileClosedEarlyTests(LoopbackTestCase):
    """A client that closes the connection as soon as it has the whole body."""

    async def test_counted(self) -> None:
        """
        The response is logged and counted, with every byte, although the
        connection was gone when the ``sendfile`` thread reported back.
        """
        monitoring = make_monitoring(reactor)
        pool = HeldBlobPool(self.start_blob_pool(1))
        base = serve_locally(self, make_site(self.images, pool, monitoring=monitoring))
        data, digest = self.add_random_blob(300_000)
        client = RawClient(b"GET /v2/a/blobs/" + digest.encode() + b" HTTP/1.1\r\n"
                           b"Host: x\r\n\r\n")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1",
                                                 int(base.rsplit(":", 1)[1])), client)
        # Bytes over a real socket and a pool thread fire no event to wait
        # for: poll, bounded.
        await wait_until(lambda: client.received.endswith(data))
        await client.disconnect()
        [(arguments, _, _)] = pool.held
        stop = arguments[4]
        assert isinstance(stop, threading.Event)
        await wait_until(stop.is_set)
        await pool.release()
        samples = parse_samples(monitoring.metrics.exposition().decode("utf-8"))
        self.assertEqual(value(samples, REQUESTS, {"route": "blob", "method": "GET",
                                                   "status": "200"}), 1)
        self.assertEqual(value(samples, BYTES, {"route": "blob"}), len(data))


class ServiceMetricsFixture(ImageFixture):
    """Image services with metrics over a scripted Nix, one storage and a fake clock."""

    def setUp(self) -> None:
        self.make_store()
        self.storage = MemoryStorage(self.temp_directory())
        self.clock = Clock()
        self.metrics = DaemonMetrics()

    def make_service(self, **kwargs: Any) -> ImageService:
        builder = ImageBuilder(nix=self.nix, storage=self.storage, runner=InlineRunner(),
                               popularity=POPULARITY, instruments=self.metrics)
        service = ImageService(source=FakeSource(), nix=self.nix, builder=builder,
                               storage=self.storage, clock=self.clock,
                               instruments=self.metrics, **kwargs)
        self.addCleanup(self.metrics.follow(service.builds))
        return service

    def image(self, service: ImageService, name: str = "toola") -> Deferred[Image]:
        return Deferred.fromCoroutine(service.image(name, "latest"))

    def samples(self) -> Samples:
        return parse_samples(self.metrics.exposition().decode("utf-8"))

    def phase(self, phase: str) -> tuple[float, float]:
        """How many times ``phase`` was timed, and the seconds in all."""
        samples = self.samples()
        return (value(samples, "nixeryd_build_phase_seconds_count", {"phase": phase}),
                value(samples, "nixeryd_build_phase_seconds_sum", {"phase": phase}))


class BuildMetricsTests(ServiceMetricsFixture):
    """Builds, their phases, the caches and the layer timings."""

    def test_failed_build(self) -> None:
        """
        A build that fails while building counts as failed, with the time
        it spent evaluating and building (on the service's clock).
        """
        service = self.make_service()
        self.nix.resolve_gate = Deferred()
        self.nix.build_gate = Deferred()
        self.nix.build_error = BuildFailed("the build of package toola failed", "toola")
        result = self.image(service)
        self.clock.advance(2)
        self.nix.resolve_gate.callback(None)
        self.clock.advance(3)
        self.nix.build_gate.callback(None)
        self.failureResultOf(result, BuildFailed)
        samples = self.samples()
        self.assertEqual([value(samples, "nixeryd_builds_total", {"outcome": o})
                          for o in ("succeeded", "failed", "cancelled")], [0, 1, 0])
        self.assertEqual(self.phase("evaluating"), (1, 2.0))
        self.assertEqual(self.phase("building"), (1, 3.0))
        self.assertEqual(self.phase("layering"), (0, 0))
        self.assertEqual(value(samples, "nixeryd_layer_compress_seconds_count"), 0)

    def test_built_then_cached(self) -> None:
        """
        A build writes and stores every layer (timed) after missing both
        caches; the same image after a restart is a manifest cache hit.
        """
        written = self.count_store_layers()
        self.successResultOf(self.image(self.make_service()))
        samples = self.samples()
        layers = len(written) + 1  # and the customisation layer
        self.assertGreater(len(written), 0)
        self.assertEqual(value(samples, "nixeryd_builds_total", {"outcome": "succeeded"}), 1)
        self.assertEqual([self.phase(p)[0] for p in ("evaluating", "building", "layering")],
                         [1, 1, 1])
        self.assertEqual(value(samples, "nixeryd_layer_compress_seconds_count"), layers)
        self.assertEqual(value(samples, "nixeryd_layer_upload_seconds_count"), layers)
        self.assertGreater(value(samples, "nixeryd_layer_compress_seconds_sum"), 0)
        cache = {(l["cache"], l["result"]): value(samples, "nixeryd_cache_requests_total", l)
                 for l in series(samples, "nixeryd_cache_requests_total")}
        self.assertEqual(cache, {("manifest", "miss"): 1, ("manifest", "hit"): 0,
                                 ("layer", "miss"): len(written), ("layer", "hit"): 0})

        # toolb shares every layer but its own with toola: layer cache hits.
        self.successResultOf(self.image(self.make_service(), "toolb"))
        samples = self.samples()
        self.assertGreater(value(samples, "nixeryd_cache_requests_total",
                                 {"cache": "layer", "result": "hit"}), 0)
        # A restart: toola is answered from the manifest cache after evaluation.
        self.successResultOf(self.image(self.make_service()))
        samples = self.samples()
        self.assertEqual(value(samples, "nixeryd_cache_requests_total",
                               {"cache": "manifest", "result": "hit"}), 1)
        self.assertEqual(value(samples, "nixeryd_builds_total", {"outcome": "succeeded"}), 3)
        self.assertEqual(self.phase("layering")[0], 2)

    def test_running_and_waiting(self) -> None:
        """The gauges show builds running and those waiting for a slot."""
        service = self.make_service(max_builds=1)
        self.nix.build_gate = Deferred()
        first, second = self.image(service, "toola"), self.image(service, "toolb")
        samples = self.samples()
        self.assertEqual((value(samples, "nixeryd_builds_in_flight"),
                          value(samples, "nixeryd_builds_waiting")), (1, 1))
        self.nix.build_gate.callback(None)
        self.successResultOf(first)
        self.successResultOf(second)
        samples = self.samples()
        self.assertEqual((value(samples, "nixeryd_builds_in_flight"),
                          value(samples, "nixeryd_builds_waiting")), (0, 0))

    def test_cancelled(self) -> None:
        """A build cut short by the service stopping counts as cancelled."""
        service = self.make_service()
        service.startService()
        self.nix.build_gate = Deferred()
        result = self.image(service)
        service.stopService()
        result.addErrback(lambda _: None)
        self.assertEqual(value(self.samples(), "nixeryd_builds_total",
                               {"outcome": "cancelled"}), 1)


class StorageMetricsTests(ServiceMetricsFixture):
    """Storage failures the service sees."""

    def test_blob_lookup(self) -> None:
        """A failing blob lookup (a 503) is counted."""
        service = self.make_service()
        self.storage.failures["blob"] = OSError(28, "No space left on device")
        d = Deferred.fromCoroutine(service.blob("sha256:" + "a" * 64))
        self.failureResultOf(d, Unavailable)
        self.assertEqual(value(self.samples(), "nixeryd_storage_errors_total"), 1)

    def test_failing_build(self) -> None:
        """A build whose layers cannot be stored counts one storage error."""
        service = self.make_service()
        self.storage.failures["store_blob_file"] = OSError(28, "No space left on device")
        self.failureResultOf(self.image(service), Unavailable)
        samples = self.samples()
        self.assertEqual(value(samples, "nixeryd_storage_errors_total"), 1)
        self.assertEqual(value(samples, "nixeryd_builds_total", {"outcome": "failed"}), 1)


class MonitoringTests(SynchronousTestCase):
    """:func:`make_monitoring`."""

    def test_new_each_time(self) -> None:
        """Each daemon gets metrics and readiness of its own."""
        first, second = make_monitoring(Clock()), make_monitoring(Clock())
        self.assertIsInstance(first, Monitoring)
        self.assertIsNot(first.metrics, second.metrics)
        self.assertIsNot(first.readiness, second.readiness)
        self.assertFalse(first.readiness.ready)

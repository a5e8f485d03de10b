"""
Every metric of one daemon (:class:`DaemonMetrics`), in a
``CollectorRegistry`` of its own: nothing goes to ``prometheus_client``'s
global registry, so two daemons (or two tests) in one process never share
a count.

It is the :class:`~nixeryd.metrics.hooks.Instruments` of the image
service and the builder, the
:class:`~nixeryd.metrics.buildtimes.BuildReports` of the build records,
and counts each finished request for the site (:meth:`request_done`).

The request path is the hot one: one call per request from the site's
access log.  Its label children are made once per (route, method,
status) and kept, so a request costs two dictionary look-ups and one or
two increments; the labels come from small fixed sets
(:mod:`nixeryd.metrics.routes`), so the number of series stays bounded.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from nixeryd.build.progress import BuildPhase
from nixeryd.metrics.buildtimes import TIMED_PHASES, follow_builds
from nixeryd.metrics.routes import ROUTES, method_label, route_of
from nixeryd.service.builds import BuildHistory
from nixeryd.storage.gcs.retry import RETRY_REASONS

#: The content type of :meth:`DaemonMetrics.exposition`.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4.encode("ascii")

#: Seconds: a build phase takes from a moment (a cached evaluation) to an
#: hour (a large build).
PHASE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Seconds: writing or storing one layer.
LAYER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

#: Cache label values.
MANIFEST_CACHE = "manifest"
LAYER_CACHE = "layer"

#: The methods of Cloud Storage requests, as retry labels.
GCS_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

#: How a build ended, as its outcome label.
OUTCOMES = {BuildPhase.SUCCEEDED: "succeeded", BuildPhase.FAILED: "failed",
            BuildPhase.CANCELLED: "cancelled"}


class DaemonMetrics:
    """
    The daemon's metrics and their registry.

    :ivar registry: the registry ``/metrics`` shows.
    """

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self._requests = Counter(
            "nixeryd_http_requests", "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"], registry=registry)
        self._response_bytes = Counter(
            "nixeryd_http_response_bytes", "Response body bytes sent, by route.",
            ["route"], registry=registry)
        self._builds = Counter(
            "nixeryd_builds", "Image builds that ended (those that asked Nix), by outcome.",
            ["outcome"], registry=registry)
        self._phases = Histogram(
            "nixeryd_build_phase_seconds",
            "Seconds builds spent in each phase (evaluating, building, layering).",
            ["phase"], buckets=PHASE_BUCKETS, registry=registry)
        self._compress = Histogram(
            "nixeryd_layer_compress_seconds",
            "Seconds writing one layer took: tar, gzip and hashing.",
            buckets=LAYER_BUCKETS, registry=registry)
        self._upload = Histogram(
            "nixeryd_layer_upload_seconds",
            "Seconds storing one written layer took (a move, or an upload).",
            buckets=LAYER_BUCKETS, registry=registry)
        self._cache = Counter(
            "nixeryd_cache_requests", "Lookups in the manifest and layer caches, by result.",
            ["cache", "result"], registry=registry)
        self._storage_errors = Counter(
            "nixeryd_storage_errors", "Storage failures seen by the image service.",
            registry=registry)
        self._gcs_retries = Counter(
            "nixeryd_gcs_retries",
            "Cloud Storage requests sent again after a transient failure, by reason"
            " (server_error, throttled, timeout, connection) and method.",
            ["reason", "method"], registry=registry)
        self._in_flight = Gauge(
            "nixeryd_builds_in_flight", "Builds evaluating, building or layering now.",
            registry=registry)
        self._waiting = Gauge(
            "nixeryd_builds_waiting", "Builds waiting for an evaluation or build slot.",
            registry=registry)
        # Every fixed series exists from the start (at zero), so rates work
        # from the first scrape.
        self._bytes_by_route = {route: self._response_bytes.labels(route) for route in ROUTES}
        self._outcomes = {phase: self._builds.labels(label) for phase, label in OUTCOMES.items()}
        self._phase_children = {phase: self._phases.labels(phase.value)
                                for phase in TIMED_PHASES}
        self._manifest_cache = (self._cache.labels(MANIFEST_CACHE, "miss"),
                                self._cache.labels(MANIFEST_CACHE, "hit"))
        self._layer_cache = (self._cache.labels(LAYER_CACHE, "miss"),
                             self._cache.labels(LAYER_CACHE, "hit"))
        self._gcs_retry_children = {
            (reason, method): self._gcs_retries.labels(reason, method)
            for reason in RETRY_REASONS for method in GCS_METHODS}
        #: (route, method label, status) → its request counter.
        self._request_children: dict[tuple[str, str, int], Counter] = {}

    # -- requests (once per request, from the site's access log) ------------

    def request_done(self, path: bytes, method: bytes, status: int, sent: int) -> None:
        """
        Count a finished request for ``path`` (without query) and the
        ``sent`` body bytes of its response.
        """
        route = route_of(path)
        key = (route, method_label(method), status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self._requests.labels(
                route, key[1], str(status))
        child.inc()
        if sent:
            self._bytes_by_route[route].inc(sent)

    # -- builds -------------------------------------------------------------

    def follow(self, history: BuildHistory) -> Callable[[], None]:
        """
        Count the builds of ``history`` from now on, time their phases and
        show how many run and wait; returns the call that stops counting
        new builds.
        """
        self._in_flight.set_function(
            lambda: len(history.running()) - len(history.waiting()))
        self._waiting.set_function(lambda: len(history.waiting()))
        return follow_builds(history, self)

    def build_phase(self, phase: BuildPhase, seconds: float) -> None:
        """A build spent ``seconds`` in ``phase``."""
        child = self._phase_children.get(phase)
        if child is not None:
            child.observe(seconds)

    def build_ended(self, outcome: BuildPhase) -> None:
        """A build ended with ``outcome``."""
        child = self._outcomes.get(outcome)
        if child is not None:
            child.inc()

    # -- the image service and the builder (Instruments) --------------------

    def manifest_cache(self, hit: bool) -> None:
        """A lookup in the manifest cache."""
        self._manifest_cache[hit].inc()

    def layer_cache(self, hit: bool) -> None:
        """A lookup in the layer cache."""
        self._layer_cache[hit].inc()

    def layer_written(self, seconds: float) -> None:
        """A layer was written in ``seconds``."""
        self._compress.observe(seconds)

    def layer_stored(self, seconds: float) -> None:
        """A layer was stored in ``seconds``."""
        self._upload.observe(seconds)

    def storage_failed(self) -> None:
        """A storage call failed."""
        self._storage_errors.inc()

    # -- Cloud Storage (RetryObserver) -------------------------------------

    def gcs_retry(self, reason: str, method: str) -> None:
        """A Cloud Storage request is sent again after a failure of ``reason``."""
        child = self._gcs_retry_children.get((reason, method))
        if child is not None:
            child.inc()

    # -- the exposition -----------------------------------------------------

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

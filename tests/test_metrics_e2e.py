"""
End-to-end test of ``/metrics``, ``/healthz`` and ``/readyz`` on a real
``nixeryd serve``: real Nix builds one image and fails another, its blobs
go out with ``sendfile``, and the scraped exposition parses with
``prometheus_client``'s parser and shows all of it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

from nixeryd.metrics.routes import ROUTES
from tests.daemon import Daemon
from tests.daemoncases import DaemonTestCase
from tests.e2e import fresh_package_set
from tests.metricsfixtures import Samples, parse_samples, series, value

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def scrape(registry: Daemon) -> Samples:
    """The daemon's metrics, parsed."""
    status, headers, body = registry.request("/metrics")
    assert status == 200, status
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8", headers
    return parse_samples(body.decode("utf-8"))


def wait_for(registry: Daemon, done: Callable[[Samples], bool],
             timeout: float = 10.0) -> Samples:
    """
    Scrape until ``done`` holds.  A blob sent with ``sendfile`` is counted
    when its thread reports back to the daemon's reactor, just after the
    client has every byte: the daemon is another process, so there is no
    event to wait for but the scrape itself (bounded polling).
    """
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(registry)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


class MetricsEndToEnd(DaemonTestCase):
    """The metrics and health of a real daemon."""

    def test_build_blobs_and_health(self) -> None:
        """
        A real build's phases, layers and blobs, a failed build, the caches
        and the requests all show in ``/metrics``; ``/healthz`` and
        ``/readyz`` answer 200, HEAD too.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        registry = self.daemon("--pkgs-path", fresh_package_set(workdir))

        status, _, body = registry.request("/v2/hello/manifests/latest",
                                           headers={"Accept": OCI_MANIFEST})
        self.assertEqual(status, 200, body)
        layers = json.loads(body)["layers"]
        for layer in layers:
            status, _, blob = registry.request("/v2/hello/blobs/" + layer["digest"])
            self.assertEqual((status, len(blob)), (200, layer["size"]))
        status, _, _ = registry.request("/v2/failing/manifests/latest")
        self.assertEqual(status, 404)

        blob_bytes = sum(layer["size"] for layer in layers)
        samples = wait_for(registry, lambda s: value(
            s, "nixeryd_http_response_bytes_total", {"route": "blob"}) >= blob_bytes)
        self.assertEqual(value(samples, "nixeryd_http_response_bytes_total",
                               {"route": "blob"}), blob_bytes)
        self.assertEqual(value(samples, "nixeryd_http_requests_total",
                               {"route": "blob", "method": "GET", "status": "200"}),
                         len(layers))
        self.assertEqual(value(samples, "nixeryd_http_requests_total",
                               {"route": "manifest", "method": "GET", "status": "404"}), 1)
        self.assertLessEqual({labels["route"] for labels in
                              series(samples, "nixeryd_http_requests_total")}, set(ROUTES))

        self.assertEqual([value(samples, "nixeryd_builds_total", {"outcome": o})
                          for o in ("succeeded", "failed", "cancelled")], [1, 1, 0])
        counts = {phase: value(samples, "nixeryd_build_phase_seconds_count", {"phase": phase})
                  for phase in ("evaluating", "building", "layering")}
        self.assertEqual(counts, {"evaluating": 2, "building": 2, "layering": 1})
        for phase in ("evaluating", "building", "layering"):
            self.assertGreater(value(samples, "nixeryd_build_phase_seconds_sum",
                                     {"phase": phase}), 0, phase)
        # Every layer of a new package set is written and stored, the
        # customisation layer included.
        self.assertEqual(value(samples, "nixeryd_layer_compress_seconds_count"), len(layers))
        self.assertEqual(value(samples, "nixeryd_layer_upload_seconds_count"), len(layers))
        self.assertEqual(value(samples, "nixeryd_cache_requests_total",
                               {"cache": "layer", "result": "miss"}), len(layers) - 1)
        # Both images were looked up after their evaluation.
        self.assertEqual(value(samples, "nixeryd_cache_requests_total",
                               {"cache": "manifest", "result": "miss"}), 2)
        self.assertEqual((value(samples, "nixeryd_builds_in_flight"),
                          value(samples, "nixeryd_builds_waiting"),
                          value(samples, "nixeryd_storage_errors_total")), (0, 0, 0))

        self.assertEqual(registry.request("/healthz")[::2], (200, b"ok\n"))
        # The first readiness round runs Nix; it may still be running
        # just after start-up (bounded polling of another process).
        deadline = time.monotonic() + 30
        while registry.request("/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(registry.request("/readyz")[::2], (200, b"ok\n"))
        for path in ("/metrics", "/healthz", "/readyz"):
            status, headers, body = registry.request(path, "HEAD")
            self.assertEqual((status, body), (200, b""), path)

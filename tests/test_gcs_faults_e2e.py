"""
A real daemon (real Nix, the offline package set) on GCS storage whose
emulator goes away and comes back, behind the tests' fault proxy: what
HTTP clients and skopeo get, what the daemon logs and counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest

from tests.daemon import Daemon
from tests.daemoncases import DaemonTestCase
from tests.e2e import PACKAGE_SET, require_tools
from tests.faultproxy import FaultProxy
from tests.gcsemulator import MISSING_REASON, start_emulator

_log = Logger()


class GCSOutageEndToEnd(DaemonTestCase):
    """The emulator down and back, with the daemon's own retry and circuit settings."""

    #: Real Nix builds, and pulls that may wait out retries, on a loaded machine.
    timeout = 300

    async def test_outage_and_recovery(self) -> None:
        """
        While the emulator is down: the warm manifest is served (200),
        cold pulls get 503 UNAVAILABLE with a Retry-After of at most the
        circuit's 10 s (skopeo shows the 503), the circuit's opening is
        logged once and no traceback at all, and the retries are counted
        in /metrics.  Once it is back, the cold image is built.
        """
        if MISSING_REASON is not None:
            raise SkipTest(MISSING_REASON)
        skopeo = require_tools("skopeo")["skopeo"]
        emulator = await start_emulator(reactor, os.path.abspath(self.mktemp()),
                                        bucket="nixeryd-e2e")
        self.addCleanup(lambda: Deferred.fromCoroutine(emulator.stop()))
        proxy = FaultProxy(reactor, ("127.0.0.1", int(emulator.endpoint.rsplit(":", 1)[1])))
        proxy.start()
        self.addCleanup(proxy.stop)
        registry: Daemon = await deferToThread(
            self.daemon, "--pkgs-path", PACKAGE_SET, "--storage-backend", "gcs",
            "--gcs-bucket", "nixeryd-e2e", "--gcs-endpoint", proxy.endpoint)
        status, _, body = await deferToThread(registry.request, "/v2/hello/manifests/latest")
        self.assertEqual(status, 200, body)

        proxy.down()
        status, _, again = await deferToThread(registry.request, "/v2/hello/manifests/latest")
        self.assertEqual((status, again), (200, body))
        answers = []
        for name in ("toola", "toolb"):
            started = time.monotonic()
            status, headers, error = await deferToThread(
                registry.request, "/v2/%s/manifests/latest" % (name,))
            answers.append((status, headers.get("retry-after"), time.monotonic() - started))
            self.assertEqual(status, 503, error)
            self.assertEqual(json.loads(error)["errors"][0]["code"], "UNAVAILABLE")
            self.assertLessEqual(int(headers["retry-after"]), 10)
        inspected = await deferToThread(subprocess.run, [
            skopeo, "inspect", "--tls-verify=false", "--retry-times=0",
            "docker://%s/toola/toolb" % (registry.address,)],
            capture_output=True, text=True, timeout=300)
        _log.info("With the emulator down: manifest answers {answers}; skopeo: {stderr}",
                  answers=answers, stderr=inspected.stderr.strip())
        self.assertNotEqual(inspected.returncode, 0)
        self.assertIn("503", inspected.stderr)
        _, _, metrics = await deferToThread(registry.request, "/metrics")
        retries = [line for line in metrics.decode().splitlines()
                   if line.startswith("nixeryd_gcs_retries_total{")
                   and 'reason="connection"' in line and not line.endswith(" 0.0")]
        self.assertNotEqual(retries, [])
        self.assertEqual(len(registry.events_with(event="gcs-circuit-open")), 1)
        self.assertNotIn("Traceback", registry.log_text())

        proxy.up()
        deadline = time.monotonic() + 60
        while True:
            status, headers, body = await deferToThread(
                registry.request, "/v2/toola/manifests/latest")
            if status == 200 or time.monotonic() > deadline:
                break
            await deferLater(reactor, float(headers.get("retry-after", "1")))
        self.assertEqual(status, 200, body)
        self.assertEqual(len(registry.events_with(event="gcs-circuit-closed")), 1)

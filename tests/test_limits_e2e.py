"""
End-to-end tests of the limits on cold work: a real daemon, real Nix and
a fresh copy of the offline package set (so every image is cold), on
loopback only.  A flood of requests for distinct cold images, abandoned
by their clients, must neither be built nor delay a person's pull; two
slow builds must not keep a small image waiting; a full queue is a 429
that skopeo waits out as told.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import time

from tests.daemon import Daemon
from tests.daemoncases import DaemonTestCase
from tests.e2e import fresh_package_set, require_tools
from tests.flood import connect, flood

#: Packages of the offline set whose combinations make distinct images.
PACKAGES = ("busybox", "libfoo", "toola", "toolb", "bashinteractive", "coreutils",
            "moreutils", "nano", "hardlinks", "multi", "xorg.libx11",
            "python3packages.pyyaml", "7zz")


def cold_images(count: int) -> list[str]:
    """Manifest paths of ``count`` distinct images (pairs, then triples, of packages)."""
    combinations = itertools.chain(itertools.combinations(PACKAGES, 2),
                                   itertools.combinations(PACKAGES, 3))
    return ["/v2/%s/manifests/latest" % ("/".join(names),)
            for names in itertools.islice(combinations, count)]


class LimitsEndToEnd(DaemonTestCase):
    """The daemon keeps its Nix work for the clients that wait for it."""

    def cold_daemon(self, *args: str) -> Daemon:
        """A daemon over a fresh package set: nothing of it is built yet."""
        return self.daemon("--pkgs-path", fresh_package_set(self.mktemp()), *args)

    def wait_for(self, daemon: Daemon, what: str, condition: object) -> None:
        """
        Poll the daemon's log (a real process: no event to wait on) every
        0.1 s for at most 30 s until ``condition()`` holds.
        """
        assert callable(condition)
        deadline = time.monotonic() + 30
        while not condition():
            if time.monotonic() > deadline:
                self.fail("%s did not happen in 30 s:\n%s" % (what, daemon.log_text()))
            time.sleep(0.1)

    def test_abandoned_flood(self) -> None:
        """
        300 requests for distinct cold images from 250 addresses, abandoned
        after 3 s: beyond the queue (32) they are answered 429 at once with
        Retry-After; the admitted ones are cancelled when their clients go;
        a person's cold pull right after takes what it takes alone (before
        these limits: about 20 s, with all 300 evaluated and built).
        """
        registry = self.cold_daemon()
        sources = ["127.0.1.%d" % (n,) for n in range(1, 251)]
        answers = flood(registry.port, cold_images(300), sources, hold=3.0)
        refused = [a for a in answers if a.status == 429]
        self.assertGreaterEqual(len(refused), 200, answers)
        self.assertEqual({a.retry_after for a in refused}, {"10"})
        assert refused[0].message is not None
        self.assertIn("the registry is already making 32 images", refused[0].message)
        started = time.monotonic()
        status, _, body = registry.request("/v2/hello/manifests/latest")
        seconds = time.monotonic() - started
        self.assertEqual(status, 200, body)
        self.assertLess(seconds, 10, "a cold pull after the flood took %.1f s" % (seconds,))
        # Not exactly the queue's 32 (+1 for the pull above): requests of the
        # flood that arrive after earlier abandoned work was cancelled are
        # admitted into the room it left, and how many do depends on the
        # machine's speed. Without the limits all 300 were evaluated.
        self.assertLess(self.nix_processes(registry, "nix-instantiate"), 100)
        self.wait_for(registry, "the abandoned work's end", lambda: registry.events_with(
            reason="every client went away"))

    def test_small_image_beside_slow_builds(self) -> None:
        """
        Two slow builds hold both build slots; a small image builds beside
        them once they have run 10 s (before: only when they ended, here
        at NIX_TIMEOUT, 30 s).  When their clients go, they are cancelled
        and their builder killed.
        """
        registry = self.cold_daemon("--nix-timeout", "30")
        status, _, _ = registry.request("/v2/busybox/manifests/latest")
        self.assertEqual(status, 200)
        slow = [connect(registry.port, "/v2/slow/manifests/latest"),
                connect(registry.port, "/v2/slow/busybox/manifests/latest")]
        try:
            self.wait_for(registry, "two slow builds", lambda: self.nix_processes(
                registry, "nix-build") >= 3)
            started = time.monotonic()
            status, _, body = registry.request("/v2/hello/manifests/latest")
            seconds = time.monotonic() - started
        finally:
            sleeper = re.search(r"slow: sleeper pid (\d+)", registry.log_text())
            for connection in slow:
                connection.close()
        self.assertEqual(status, 200, body)
        self.assertLess(seconds, 20, "hello took %.1f s beside two slow builds" % (seconds,))
        self.wait_for(registry, "both slow builds cancelled", lambda: len(
            registry.events_with(reason="every client went away")) >= 2)
        assert sleeper is not None
        self.wait_for(registry, "the slow builder's end", lambda: not os.path.exists(
            "/proc/" + sleeper.group(1)))

    def test_skopeo_waits_for_room(self) -> None:
        """
        With the queue full, skopeo is answered 429 with Retry-After: 10
        (the message says what is full); it waits as told and asks again,
        and gets the image once the queue has room (here: the slow build's
        client went away, so its build was cancelled).
        """
        tools = require_tools("skopeo")
        registry = self.cold_daemon("--max-queue", "1")
        slow = connect(registry.port, "/v2/slow/manifests/latest", "127.0.0.2")
        try:
            self.wait_for(registry, "the slow build", lambda: self.nix_processes(
                registry, "nix-build") >= 1)
            skopeo = subprocess.Popen(
                [tools["skopeo"], "inspect", "--tls-verify=false",
                 "docker://%s/hello" % (registry.address,)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.addCleanup(skopeo.kill)
            self.wait_for(registry, "a 429 for hello", lambda: registry.events_with(
                path="/v2/hello/manifests/latest", status=429))
        finally:
            slow.close()
        _, stderr = skopeo.communicate(timeout=60)
        self.assertEqual(skopeo.returncode, 0, stderr)
        statuses = [e["status"] for e in registry.events_with(
            path="/v2/hello/manifests/latest")]
        self.assertEqual((statuses[0], statuses[-1]), (429, 200))

"""
The real daemon on a storage that fills up, then turns read-only: a cold
pull is answered 503 ``UNAVAILABLE`` with ``Retry-After`` and the reason,
warm images go on being served, the log holds one warning for each kind
of failure (no traceback), nothing is left half-written, and once the
storage can be written again the next pull succeeds.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tests.daemoncases import DaemonTestCase
from tests.e2e import fresh_package_set
from tests.tmpfs import fill, mount_tmpfs, remount


def level(event: dict[str, Any]) -> str:
    """An event's level name, as the JSON log writes it."""
    value = event.get("log_level")
    if isinstance(value, dict):
        return str(value.get("name"))
    return str(value)


class FullStorageEndToEnd(DaemonTestCase):
    """A full, then read-only, storage under a running daemon."""

    def setUp(self) -> None:
        mount = mount_tmpfs(self, "8m")
        self.mount = mount
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        self.storage = os.path.join(mount, "storage")
        self.registry = self.daemon("--pkgs-path", fresh_package_set(work),
                                    storage=self.storage)

    def pull(self, name: str) -> tuple[int, dict[str, str], bytes]:
        return self.registry.request("/v2/%s/manifests/latest" % (name,))

    def assert_unavailable(self, name: str, reason: str) -> None:
        """A cold pull of ``name`` is 503 UNAVAILABLE, Retry-After, saying ``reason``."""
        status, headers, body = self.pull(name)
        self.assertEqual(status, 503, body)
        self.assertEqual(headers.get("retry-after"), "10")
        [error] = json.loads(body)["errors"]
        self.assertEqual(error["code"], "UNAVAILABLE")
        self.assertTrue(error["message"].startswith(
            "the registry cannot store images now (%s); try again later" % (reason,)),
            error["message"])

    def assert_warm_served(self, manifest: bytes) -> None:
        """The image pulled first is still served, manifest and blobs."""
        status, _, body = self.pull("hello")
        self.assertEqual((status, body), (200, manifest))
        for layer in json.loads(body)["layers"]:
            status, _, _ = self.registry.request("/v2/hello/blobs/" + layer["digest"])
            self.assertEqual(status, 200)

    def writer_files(self) -> list[str]:
        """What the writers' temporary directories hold."""
        tmp = os.path.join(self.storage, "nixeryd", "tmp")
        found = []
        for name in os.listdir(tmp):
            path = os.path.join(tmp, name)
            if os.path.isdir(path):
                found += [os.path.join(name, entry) for entry in os.listdir(path)]
        return found

    def storage_warnings(self) -> list[dict[str, Any]]:
        return [e for e in self.registry.events()
                if e.get("event") == "storage-failing" and level(e) == "warn"]

    def test_full_then_read_only(self) -> None:
        status, _, manifest = self.pull("hello")
        self.assertEqual(status, 200, manifest)

        filler = fill(self.mount)
        for name in ("multi", "nano", "multi"):
            self.assert_unavailable(name, "No space left on device")
        self.assert_warm_served(manifest)
        self.assertEqual(self.writer_files(), [])
        [warning] = self.storage_warnings()
        self.assertEqual(warning["kind"], "ENOSPC")
        os.unlink(filler)
        status, _, body = self.pull("multi")
        self.assertEqual(status, 200, body)

        remount(self.mount, "ro")
        self.addCleanup(remount, self.mount, "rw")
        for _ in range(2):
            self.assert_unavailable("nano", "Read-only file system")
        self.assert_warm_served(manifest)
        self.assertEqual([w["kind"] for w in self.storage_warnings()], ["ENOSPC", "EROFS"])
        remount(self.mount, "rw")
        status, _, body = self.pull("nano")
        self.assertEqual(status, 200, body)

        events = self.registry.events()
        self.assertEqual([e for e in events if level(e) in ("error", "critical")], [])
        self.assertEqual([e for e in events if "log_failure" in e], [])
        self.assertEqual([e for e in events if level(e) == "warn"
                          and e.get("event") != "storage-failing"], [])

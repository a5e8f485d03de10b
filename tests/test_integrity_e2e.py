"""
End-to-end tests of blob integrity: a layer replaced in storage by other
bytes of the same size is never served.  It is found, made again and
pulled with its right content by skopeo, on each path that reuses a blob:
the warm daemon that built the image, a second daemon after a restart
(the manifest cache), and a new image sharing the layer (the layer
cache); on a Cloud Storage emulator and on the filesystem.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Awaitable, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest

from nixeryd.storage.gcs.recentblobs import WINDOW as RECENT_WINDOW
from tests.daemon import Daemon
from tests.daemoncases import DaemonTestCase
from tests.e2e import PACKAGE_SET, require_tools, run

#: The layer damaged: one that toola and toolb (every image) share.
SHARED = "nss-cacert-3.0"


def layer_by_comment(config: bytes, manifest: bytes, comment: str) -> str:
    """The digest of the layer whose history entry has ``comment``."""
    history = [entry for entry in json.loads(config)["history"]
               if not entry.get("empty_layer")]
    layers = json.loads(manifest)["layers"]
    found = [i for i, entry in enumerate(history) if entry.get("comment") == comment]
    assert len(found) == 1, history
    [index] = found
    digest: str = layers[index]["digest"]
    return digest


def flipped(data: bytes) -> bytes:
    """Other bytes of the same size."""
    return bytes(b ^ 0xFF for b in data)


class DamagedLayerEndToEnd(DaemonTestCase):
    """A damaged layer on every reuse path, pulled by skopeo."""

    async def pull(self, registry: Daemon, image: str) -> None:
        """skopeo copies the image to a new OCI layout (it checks every digest)."""
        layout = os.path.abspath(self.mktemp())
        await deferToThread(run, [
            "skopeo", "copy", "--src-tls-verify=false",
            "docker://%s/%s" % (registry.address, image), "oci:%s:img" % (layout,)])

    async def shared_layer(self, registry: Daemon) -> str:
        status, _, manifest = await deferToThread(registry.request,
                                                  "/v2/toola/manifests/latest")
        self.assertEqual(status, 200, manifest)
        config_digest = json.loads(manifest)["config"]["digest"]
        status, _, config = await deferToThread(registry.request,
                                                "/v2/toola/blobs/" + config_digest)
        self.assertEqual(status, 200)
        return layer_by_comment(config, manifest, SHARED)

    async def scenario(self, args: list[str], storage: str,
                       read: Callable[[str], Awaitable[bytes]],
                       write: Callable[[str, bytes], Awaitable[None]]) -> None:
        """
        The three reuse paths, one after the other, each with the layer
        damaged anew; ``read``/``write`` reach the blob behind the
        daemons' backs.
        """
        require_tools("skopeo")
        daemon_args = ["--pkgs-path", PACKAGE_SET] + args

        async def start() -> Daemon:
            return await deferToThread(self.daemon, *daemon_args, storage=storage)

        async def damage(digest: str) -> bytes:
            """
            Damage the blob, then let the time pass during which a daemon
            answers a blob it saw intact without looking again.
            """
            good = await read(digest)
            self.assertEqual("sha256:" + hashlib.sha256(good).hexdigest(), digest)
            await write(digest, flipped(good))
            await deferLater(reactor, RECENT_WINDOW + 0.1)
            return good

        async def repaired(digest: str, good: bytes) -> None:
            self.assertEqual(await read(digest), good)

        def logged(registry: Daemon, text: str) -> bool:
            return text in registry.log_text()

        # The warm daemon that built the image.
        warm = await start()
        await self.pull(warm, "toola")
        layer = await self.shared_layer(warm)
        good = await damage(layer)
        await self.pull(warm, "toola")
        await repaired(layer, good)
        self.assertTrue(logged(warm, "is damaged in storage: making again"))

        # A second daemon after a restart: the manifest cache.
        await deferToThread(warm.stop)
        await damage(layer)
        restarted = await start()
        await self.pull(restarted, "toola")
        await repaired(layer, good)
        self.assertTrue(logged(restarted, "has a damaged blob " + layer))

        # A new image sharing the layer: the layer cache.
        await damage(layer)
        fresh = await start()
        await self.pull(fresh, "toolb")
        await repaired(layer, good)
        self.assertTrue(logged(fresh, "Cached layer %s is damaged" % (layer,)))
        # Every image from every daemon still running.
        for registry in (restarted, fresh):
            for image in ("toola", "toolb"):
                await self.pull(registry, image)

    async def test_gcs(self) -> None:
        """On a Cloud Storage emulator: an object replaced under the layer's name."""
        from twisted.internet import reactor

        from tests.gcsemulator import MISSING_REASON, start_emulator
        if MISSING_REASON is not None:
            raise SkipTest(MISSING_REASON)
        emulator = await start_emulator(reactor, os.path.abspath(self.mktemp()),
                                        bucket="nixeryd-e2e")
        self.addCleanup(lambda: Deferred.fromCoroutine(emulator.stop()))

        def name(digest: str) -> str:
            return "blobs/sha256/" + digest.split(":")[1]

        async def read(digest: str) -> bytes:
            data = await emulator.download(name(digest))
            assert data is not None
            return data

        async def write(digest: str, data: bytes) -> None:
            await emulator.put(name(digest), data)

        await self.scenario(["--storage-backend", "gcs", "--gcs-bucket", "nixeryd-e2e",
                             "--gcs-endpoint", emulator.endpoint],
                            os.path.abspath(self.mktemp()), read, write)

    async def test_filesystem(self) -> None:
        """On the filesystem: the layer's file rewritten in place."""
        storage = os.path.abspath(self.mktemp())

        def path(digest: str) -> str:
            return os.path.join(storage, "blobs", "sha256", digest.split(":")[1])

        def read_file(digest: str) -> bytes:
            with open(path(digest), "rb") as f:
                return f.read()

        def write_file(digest: str, data: bytes) -> None:
            with open(path(digest), "r+b") as f:
                f.write(data)

        async def read(digest: str) -> bytes:
            data: bytes = await deferToThread(read_file, digest)
            return data

        async def write(digest: str, data: bytes) -> None:
            await deferToThread(write_file, digest, data)

        await self.scenario([], storage, read, write)

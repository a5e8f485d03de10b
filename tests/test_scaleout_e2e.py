"""
End-to-end test of several daemons on one bucket (a Cloud Storage
emulator), as behind a load balancer: one builds while the others serve
what it built, different images build at once on different daemons, one
daemon is restarted in the middle of a build, and in the end every image
is pulled by skopeo from every daemon, with the same digests everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest

from tests.daemon import Daemon
from tests.daemoncases import DaemonTestCase
from tests.e2e import fresh_package_set, require_tools, run

#: The images of the test: one per package set entry, ``ticker`` taking
#: about five seconds to build.
IMAGES = ("hello", "toola", "toolb", "ticker")


class ThreeDaemonsEndToEnd(DaemonTestCase):
    """Three daemons sharing one bucket."""

    timeout = 900

    def pull(self, registry: Daemon, image: str) -> None:
        """skopeo copies the image to a new OCI layout (every digest checked)."""
        layout = os.path.abspath(self.mktemp())
        run(["skopeo", "copy", "--src-tls-verify=false",
             "docker://%s/%s" % (registry.address, image), "oci:%s:img" % (layout,)])

    def digest(self, registry: Daemon, image: str) -> str:
        status, headers, body = registry.request("/v2/%s/manifests/latest" % (image,))
        self.assertEqual(status, 200, body)
        return headers["docker-content-digest"]

    def builds(self, registry: Daemon) -> int:
        return self.nix_processes(registry, "nix-build")

    def wait_for_build(self, registry: Daemon, before: int, deadline: float = 120) -> None:
        """Until ``registry`` has started a Nix build beyond ``before``."""
        ends = time.monotonic() + deadline
        while self.builds(registry) <= before:
            if time.monotonic() > ends:
                raise AssertionError("no build started:\n" + registry.log_text())
            time.sleep(0.1)

    def split_pull(self, registries: tuple[Daemon, ...], image: str) -> None:
        """
        The manifest from one daemon, the config and each layer from the
        next ones in turn (redirects followed), every digest checked.
        """
        status, _, body = registries[0].request("/v2/%s/manifests/latest" % (image,))
        self.assertEqual(status, 200, body)
        manifest = json.loads(body)
        blobs = [manifest["config"]] + manifest["layers"]
        for index, descriptor in enumerate(blobs):
            registry = registries[1 + index % (len(registries) - 1)]
            status, _, data = registry.request("/v2/%s/blobs/%s" % (image, descriptor["digest"]))
            self.assertEqual(status, 200)
            self.assertEqual("sha256:" + hashlib.sha256(data).hexdigest(), descriptor["digest"])
            self.assertEqual(len(data), descriptor["size"])

    async def test_three_daemons_one_bucket(self) -> None:
        from twisted.internet import reactor

        from tests.gcsemulator import MISSING_REASON, start_emulator
        if MISSING_REASON is not None:
            raise SkipTest(MISSING_REASON)
        require_tools("skopeo")
        emulator = await start_emulator(reactor, os.path.abspath(self.mktemp()),
                                        bucket="nixeryd-shared")
        self.addCleanup(lambda: Deferred.fromCoroutine(emulator.stop()))
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        pkgs = fresh_package_set(workdir)
        args = ("--pkgs-path", pkgs, "--storage-backend", "gcs",
                "--gcs-bucket", "nixeryd-shared", "--gcs-endpoint", emulator.endpoint)

        def start() -> Daemon:
            return self.daemon(*args)

        first, second, third = await gatherResults(
            [deferToThread(start) for _ in range(3)])

        # One builds; the two others serve what it built, without building.
        await deferToThread(self.pull, first, "hello")
        self.assertEqual(self.builds(first), 1)
        await gatherResults([deferToThread(self.pull, registry, "hello")
                             for registry in (second, third)])
        self.assertEqual((self.builds(second), self.builds(third)), (0, 0))

        # Different images built at once on different daemons, while the
        # third is stopped in the middle of its build and started again.
        third_builds = self.builds(third)
        doomed = deferToThread(self.digest, third, "ticker")
        doomed.addErrback(lambda failure: None)  # Its daemon goes away.
        await deferToThread(self.wait_for_build, third, third_builds)
        concurrent = gatherResults([deferToThread(self.pull, first, "toola"),
                                    deferToThread(self.pull, second, "toolb")])
        await deferToThread(third.stop)
        await doomed
        self.assertIn("Cancelled: the registry is stopping", third.log_text())
        third = await deferToThread(start)
        await concurrent
        self.assertEqual((self.builds(first), self.builds(second)), (2, 1))

        # Every image from every daemon, the same everywhere: the first
        # daemon asked builds what is missing (the image whose build was
        # cut), the others serve it.
        registries = (first, second, third)
        for image in IMAGES:
            built = await deferToThread(self.digest, first, image)
            others = await gatherResults([deferToThread(self.digest, registry, image)
                                          for registry in (second, third)])
            self.assertEqual(set(others), {built}, image)
            await gatherResults([deferToThread(self.pull, registry, image)
                                 for registry in registries])
        self.assertEqual([self.builds(registry) for registry in registries], [3, 1, 0])
        # No stickiness: one pull's requests spread over the daemons.
        await deferToThread(self.split_pull, registries, "toolb")
        for registry in registries:
            self.assertNotIn("damaged", registry.log_text())
            self.assertNotIn("Traceback", registry.log_text())

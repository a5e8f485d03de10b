"""
End-to-end tests of one name for two platforms: a real daemon serving
``linux/amd64,linux/arm64`` from the offline package set, built by real
Nix on this (x86_64) machine, and real clients choosing their platform:
skopeo, podman and containerd's ctr.  The arm64 image holds Debian's
aarch64 busybox, run here under ``qemu-aarch64-static``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import struct
from typing import Any

from tests.daemoncases import DaemonTestCase, podman_command
from tests.e2e import PACKAGE_SET, require_tools, run

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
#: ELF ``e_machine`` values.
EM_X86_64 = 62
EM_AARCH64 = 183


def elf_machine(path: str) -> int:
    """The ``e_machine`` of a little-endian ELF file."""
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF", (path, head[:4])
    assert head[5] == 1, "not little-endian"
    machine: int = struct.unpack_from("<H", head, 18)[0]
    return machine


class PlatformsEndToEnd(DaemonTestCase):
    """A daemon with ``--platforms linux/amd64,linux/arm64``."""

    def setUp(self) -> None:
        require_tools("skopeo", "umoci")
        self.registry = self.daemon("--pkgs-path", PACKAGE_SET,
                                    "--platforms", "linux/amd64,linux/arm64")

    def reference(self, name: str) -> str:
        return "%s/%s" % (self.registry.address, name)

    def index(self, name: str) -> dict[str, str]:
        """``{architecture: manifest digest}`` of the name's Docker manifest list."""
        raw = run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                   "docker://" + self.reference(name)]).stdout
        document = json.loads(raw)
        self.assertEqual(document["mediaType"], DOCKER_LIST)
        return {entry["platform"]["architecture"]: entry["digest"]
                for entry in document["manifests"]}

    def manifest(self, name: str, digest: str) -> dict[str, Any]:
        """A manifest of ``name``, by digest."""
        status, _, body = self.registry.request("/v2/%s/manifests/%s" % (name, digest))
        self.assertEqual(status, 200)
        document: dict[str, Any] = json.loads(body)
        return document

    def copy(self, name: str, *arch: str) -> str:
        """``skopeo copy`` into an OCI layout, unpacked by umoci: the root file system."""
        layout = os.path.abspath(self.mktemp())
        run(["skopeo", *arch, "copy", "--src-tls-verify=false",
             "docker://" + self.reference(name), "oci:%s:img" % (layout,)])
        bundle = os.path.abspath(self.mktemp())
        run(["umoci", "unpack", "--image", "%s:img" % (layout,), bundle])
        return os.path.join(bundle, "rootfs")

    def test_skopeo_inspect_raw(self) -> None:
        """
        The index names one manifest per platform with its platform
        object, each served by digest; an OCI client gets the OCI index.
        """
        raw = run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                   "docker://" + self.reference("shell/hello")]).stdout
        document = json.loads(raw)
        self.assertEqual(document["mediaType"], DOCKER_LIST)
        self.assertEqual([entry["platform"] for entry in document["manifests"]],
                         [{"architecture": "amd64", "os": "linux"},
                          {"architecture": "arm64", "os": "linux", "variant": "v8"}])
        for entry in document["manifests"]:
            status, headers, body = self.registry.request(
                "/v2/shell/hello/manifests/" + entry["digest"], "GET")
            self.assertEqual((status, headers["docker-content-digest"], len(body)),
                             (200, entry["digest"], entry["size"]))
        status, headers, body = self.registry.request(
            "/v2/shell/hello/manifests/latest", "GET",
            {"Accept": "%s, %s" % (OCI_MANIFEST, OCI_INDEX)})
        self.assertEqual((status, headers["content-type"]), (200, OCI_INDEX))
        self.assertEqual(len(json.loads(body)["manifests"]), 2)
        inspected = json.loads(run(
            ["skopeo", "--override-arch", "arm64", "inspect", "--tls-verify=false",
             "docker://" + self.reference("shell/hello")]).stdout)
        arm64 = self.manifest("shell/hello", document["manifests"][1]["digest"])
        self.assertEqual((inspected["Architecture"], inspected["Layers"]),
                         ("arm64", [layer["digest"] for layer in arm64["layers"]]))

    def test_arm64_image_runs_under_qemu(self) -> None:
        """
        ``skopeo --override-arch arm64 copy`` gets the arm64 image: its
        busybox is an aarch64 ELF file, which runs the image's ``hello``
        under ``qemu-aarch64-static`` and reports an aarch64 machine.  The
        same reference without an override is the amd64 image.
        """
        tools = require_tools("qemu-aarch64-static")
        rootfs = self.copy("shell/hello", "--override-arch", "arm64")
        [busybox] = glob.glob(os.path.join(rootfs, "nix/store/*-busybox-1.0/bin/busybox"))
        self.assertEqual(elf_machine(busybox), EM_AARCH64)
        [hello] = glob.glob(os.path.join(rootfs, "nix/store/*-hello-1.0/bin/hello"))
        ran = run([tools["qemu-aarch64-static"], busybox, "sh", "-c",
                   'sh "$1"; uname -m', "sh", hello])
        self.assertEqual(ran.stdout, "Hello, world!\naarch64\n")
        amd64 = self.copy("shell/hello")
        [busybox] = glob.glob(os.path.join(amd64, "nix/store/*-busybox-1.0/bin/busybox"))
        self.assertEqual(elf_machine(busybox), EM_X86_64)
        ran = run(["chroot", amd64, "/bin/bash", "-c", "hello; uname -m"])
        self.assertEqual(ran.stdout, "Hello, world!\nx86_64\n")

    def test_arm64_meta_package(self) -> None:
        """``arm64/hello`` stays one arm64 manifest: the index's arm64 entry."""
        digests = self.index("hello")
        status, headers, body = self.registry.request(
            "/v2/arm64/hello/manifests/latest", "GET",
            {"Accept": "%s, %s" % (DOCKER_LIST, OCI_INDEX)})
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"],
                         "application/vnd.docker.distribution.manifest.v2+json")
        self.assertEqual(headers["docker-content-digest"], digests["arm64"])

    def test_podman_pull_arch(self) -> None:
        """``podman pull --arch arm64`` gets the arm64 image; a plain pull the amd64 one."""
        tools = require_tools("podman")
        podman = podman_command(tools["podman"], self.short_directory())
        digests = self.index("hello")
        image = self.reference("hello")
        pulled = run(podman + ["pull", "--arch", "arm64", "--tls-verify=false", image])
        self.assertNotIn("does not match", pulled.stderr)
        for arch in ("arm64", "amd64"):
            if arch == "amd64":
                run(podman + ["pull", "--tls-verify=false", image])
            inspected = json.loads(run(podman + ["image", "inspect", image]).stdout)[0]
            config = self.manifest("hello", digests[arch])["config"]["digest"]
            self.assertEqual((inspected["Architecture"], "sha256:" + inspected["Id"]),
                             (arch, config))
        run(podman + ["rmi", "--all", "--force"], check=False)

    def test_containerd_platforms(self) -> None:
        """
        ``ctr images pull --platform linux/arm64`` fetches the arm64
        manifest alone; ``--all-platforms`` both; the image's target is
        the index either way.
        """
        tools = require_tools("containerd", "ctr")
        socket_path = self.containerd()
        ctr = [tools["ctr"], "--address", socket_path]
        digests = self.index("toola")
        ref = self.reference("toola") + ":latest"
        pulled = run(ctr + ["images", "pull", "--plain-http", "--platform", "linux/arm64",
                            ref]).stdout
        self.assertIn("manifest-" + digests["arm64"], pulled)
        self.assertNotIn("manifest-" + digests["amd64"], pulled)
        listed = run(ctr + ["images", "list"]).stdout
        self.assertIn(DOCKER_LIST, listed)
        self.assertIn("linux/arm64", listed)
        contents = run(ctr + ["content", "list", "--quiet"]).stdout.split()
        self.assertIn(digests["arm64"], contents)
        self.assertNotIn(digests["amd64"], contents)
        run(ctr + ["images", "pull", "--plain-http", "--all-platforms", ref])
        contents = run(ctr + ["content", "list", "--quiet"]).stdout.split()
        self.assertIn(digests["amd64"], contents)
        self.assertIn(digests["arm64"], contents)

    def test_no_builder_for_the_platform(self) -> None:
        """
        A package whose derivation is for aarch64-linux cannot be built on
        this machine without a builder for it: skopeo shows the message
        that says what to configure, for the arm64 name and for the index.
        """
        for name in ("arm64/native", "native"):
            failed = run(["skopeo", "inspect", "--tls-verify=false",
                          "docker://" + self.reference(name)], check=False)
            self.assertNotEqual(failed.returncode, 0)
            self.assertIn("manifest unknown: package native", failed.stderr)
            self.assertIn("cannot be built for aarch64-linux: this registry builds for"
                          " x86_64-linux only; the registry's operator can add a remote"
                          " builder for aarch64-linux", failed.stderr)
        # A client that takes no index gets the amd64 image, which needs
        # no arm64 build.
        status, headers, body = self.registry.request(
            "/v2/native/manifests/latest", "GET",
            {"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        self.assertEqual((status, headers["docker-content-digest"]),
                         (200, "sha256:" + hashlib.sha256(body).hexdigest()))
        config = json.loads(body)["config"]["digest"]
        status, _, blob = self.registry.request("/v2/native/blobs/" + config)
        self.assertEqual((status, json.loads(blob)["architecture"]), (200, "amd64"))

    def test_digests_stable_across_instances(self) -> None:
        """
        Another daemon, with a storage of its own and the platforms named
        in the other order, serves the same index, byte for byte; so does
        this one after a restart.
        """
        raw = run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                   "docker://" + self.reference("toolb")]).stdout
        other = self.daemon("--pkgs-path", PACKAGE_SET,
                            "--platforms", "linux/arm64,linux/amd64")
        again = run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                     "docker://%s/toolb" % (other.address,)]).stdout
        self.assertEqual(again, raw)
        self.registry.stop()
        self.registry.start()
        restarted = run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                         "docker://" + self.reference("toolb")]).stdout
        self.assertEqual(restarted, raw)

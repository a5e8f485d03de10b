"""
End-to-end tests of ``python -m nixeryd build`` with real Nix, skopeo,
umoci and chroot, using the offline package set in ``tests/pkgs``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

from twisted.trial.unittest import TestCase

from tests.e2e import (build_command, child_environment, require_root,
                       require_tools, run)


class BuildCommandEndToEnd(TestCase):
    """The build command, as a user runs it."""

    def setUp(self) -> None:
        require_root()
        self.tools = require_tools("nix-build", "skopeo", "umoci", "chroot")
        self.env = child_environment()

    def build(self, name: str, *extra: str, check: bool = True,
              out: str | None = None) -> tuple[str, subprocess.CompletedProcess[str]]:
        out = out or self.mktemp()
        result = run(build_command(name, out, *extra), env=self.env, check=check)
        return out, result

    def test_image_runs_under_chroot(self) -> None:
        """
        A built image is accepted by skopeo, unpacked by umoci, and its
        binary runs under chroot, through the symlink layer.
        """
        out, result = self.build("hello")
        # stdout: the Docker manifest, as docker pull gets it; stderr names the OCI one.
        docker_digest = result.stdout.strip()
        self.assertRegex(docker_digest, r"^sha256:[0-9a-f]{64}$")
        docker = json.load(open(os.path.join(out, "blobs", "sha256", docker_digest[7:])))
        self.assertEqual(docker["mediaType"],
                         "application/vnd.docker.distribution.manifest.v2+json")
        found = re.search(r"the OCI manifest is (sha256:[0-9a-f]{64})", result.stderr)
        assert found is not None, result.stderr
        digest = found.group(1)
        index = json.load(open(os.path.join(out, "index.json")))
        [entry] = index["manifests"]
        self.assertEqual(entry["digest"], digest)
        self.assertEqual(entry["annotations"]["org.opencontainers.image.ref.name"], "latest")
        inspected = json.loads(run(["skopeo", "inspect", "oci:%s:latest" % (out,)]).stdout)
        self.assertEqual(inspected["Digest"], digest)
        self.assertEqual(inspected["Architecture"], "amd64")
        copy = self.mktemp()
        run(["skopeo", "copy", "oci:%s:latest" % (out,), "oci:%s:copied" % (copy,)])
        bundle = self.mktemp()
        run(["umoci", "unpack", "--image", "%s:copied" % (copy,), bundle])
        rootfs = os.path.join(bundle, "rootfs")
        ran = run(["chroot", rootfs, "/bin/hello"])
        self.assertEqual(ran.stdout, "Hello, world!\n")
        self.assertEqual(os.stat(os.path.join(rootfs, "tmp")).st_mode & 0o7777, 0o1777)
        self.assertIn("printed the digest of the Docker manifest", result.stderr)

    def test_shell_image(self) -> None:
        """
        The ``shell`` meta-package gives bash as the default command, a
        working ``/usr/bin/env`` and PATH in the config.
        """
        out, result = self.build("shell/hello")
        bundle = self.mktemp()
        run(["umoci", "unpack", "--image", "%s:latest" % (out,), bundle])
        config = json.load(open(os.path.join(bundle, "config.json")))
        self.assertEqual(config["process"]["args"], ["bash"])
        self.assertIn("PATH=/bin", config["process"]["env"])
        rootfs = os.path.join(bundle, "rootfs")
        ran = run(["chroot", rootfs, "/usr/bin/env", "bash", "-c", "hello && echo ok"])
        self.assertEqual(ran.stdout, "Hello, world!\nok\n")

    def test_same_digest_twice(self) -> None:
        """Building the same name into two fresh directories gives one digest."""
        _, first = self.build("toola/toolb/hello")
        _, second = self.build("hello/toolb/toola")
        self.assertEqual(first.stdout, second.stdout)

    def test_tag_names_the_reference(self) -> None:
        """``--tag`` names the image in index.json."""
        out, _ = self.build("hello", "--tag", "v1")
        index = json.load(open(os.path.join(out, "index.json")))
        self.assertEqual(
            [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]],
            ["v1"])

    def test_unknown_packages(self) -> None:
        """Unknown packages exit with code 2 and a message naming each of them."""
        _, result = self.build("hello/nope/xorg.nothere", check=False)
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("nope", result.stderr)
        self.assertIn("xorg.nothere", result.stderr)
        self.assertEqual(result.stdout, "")

    def test_failed_build(self) -> None:
        """A failed build exits non-zero with the tail of the build log."""
        _, result = self.build("failing", check=False)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("failing", result.stderr)
        self.assertIn("  | ", result.stderr)

    def test_invalid_name(self) -> None:
        """An invalid name is refused before Nix starts."""
        _, result = self.build("Hello/../x", check=False)
        self.assertEqual(result.returncode, 2)
        self.assertIn("invalid image name", result.stderr)
        self.assertNotIn("Resolved", result.stderr)

    def test_arm64_image(self) -> None:
        """The ``arm64`` meta-package builds for aarch64 and says arm64 in the config."""
        out, _ = self.build("arm64/hello")
        inspected = json.loads(run(["skopeo", "inspect", "oci:%s:latest" % (out,)]).stdout)
        self.assertEqual(inspected["Architecture"], "arm64")

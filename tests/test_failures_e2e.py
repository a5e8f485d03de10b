"""
End-to-end tests of failed pulls: a real daemon, real Nix and the offline
package set, pulled by skopeo and podman.  What matters is what the
person running the client reads on its stderr: the package, what went
wrong, and the address of the build's page, which must be a real build.
"""

from __future__ import annotations

import re
import subprocess

from tests.daemoncases import DaemonTestCase, podman_command
from tests.e2e import PACKAGE_SET, require_tools, run

#: The address of a build's page in a client's message.
_BUILD_PAGE = re.compile(r"http://127\.0\.0\.1:(\d+)/builds/([0-9a-f]{12})")

#: Seconds allowed for each Nix step, so that ``slow`` times out soon.
NIX_TIMEOUT = 3


class FailedPullsEndToEnd(DaemonTestCase):
    """skopeo and podman show why a pull failed, and where the build's log is."""

    def setUp(self) -> None:
        self.tools = require_tools("skopeo", "podman")
        self.registry = self.daemon("--pkgs-path", PACKAGE_SET,
                                    "--nix-timeout", str(NIX_TIMEOUT))
        self.podman_state = self.short_directory()

    def skopeo(self, name: str) -> str:
        """``skopeo inspect`` of ``name``, which must fail: its stderr."""
        return self.failed([self.tools["skopeo"], "inspect", "--tls-verify=false",
                            "docker://%s/%s" % (self.registry.address, name)])

    def podman(self, name: str) -> str:
        """``podman pull`` of ``name``, which must fail: its stderr."""
        return self.failed(podman_command(self.tools["podman"], self.podman_state) + [
            "pull", "--tls-verify=false", "%s/%s" % (self.registry.address, name)])

    def failed(self, argv: list[str]) -> str:
        result: subprocess.CompletedProcess[str] = run(argv, check=False, timeout=60)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        return result.stderr

    def assert_shown(self, stderr: str, package: str, reason: str | re.Pattern[str]) -> str:
        """
        The client's stderr shows the registry's message: the package, the
        reason and the page of a build the daemon ran for this package.

        :returns: the build's id.
        """
        self.assertIn("manifest unknown: ", stderr)
        self.assertIn(package, stderr)
        if isinstance(reason, str):
            self.assertIn(reason, stderr)
        else:
            self.assertRegex(stderr, reason)
        match = _BUILD_PAGE.search(stderr)
        assert match is not None, stderr
        self.assertEqual(int(match.group(1)), self.registry.port)
        build_id = match.group(2)
        status, _, page = self.registry.request("/builds/" + build_id)
        self.assertEqual(status, 200)
        self.assertIn(package, page.decode("utf-8"))
        self.assertTrue(self.registry.events_with(build=build_id))
        return build_id

    def assert_both_clients(self, package: str, reason: str | re.Pattern[str], *,
                            remembered: bool = True) -> None:
        """
        skopeo and podman both show it: a permanent failure is remembered,
        so both name the same build; a timeout is not, so each names a
        build of its own.
        """
        first = self.assert_shown(self.skopeo(package), package, reason)
        second = self.assert_shown(self.podman(package), package, reason)
        if remembered:
            self.assertEqual(first, second)
        else:
            self.assertNotEqual(first, second)

    def test_failing_build(self) -> None:
        """A package whose builder fails: the builder's exit status."""
        self.assert_both_clients(
            "failing", "the build of package failing failed (builder exited with status 1)")

    def test_broken_package(self) -> None:
        """A package marked broken: nixpkgs' refusal, as Nix words it."""
        self.assert_both_clients(
            "brokenpkg", "package brokenpkg cannot be evaluated: Package 'brokenpkg-1.0'"
            " is marked as broken, refusing to evaluate")

    def test_unfree_package(self) -> None:
        """An unfree package: nixpkgs' refusal, as Nix words it."""
        self.assert_both_clients(
            "unfreepkg", "package unfreepkg cannot be evaluated: Package"
            " \u2018unfreepkg-1.0\u2019 has an unfree license (\u2018unfree\u2019),"
            " refusing to evaluate")

    def test_timeout(self) -> None:
        """
        A build past NIX_TIMEOUT: the step, the limit and the setting.  On a
        busy machine the image's other packages may still be building when
        the limit passes, and the message then names them too.
        """
        self.assert_both_clients(
            "slow", re.compile(
                r"the build of (package slow|packages ([\w.-]+, )*slow) in image slow timed out"
                r" after %d seconds \(NIX_TIMEOUT sets the limit\)" % (NIX_TIMEOUT,)),
            remembered=False)

    def test_head_like_get(self) -> None:
        """HEAD of a failing image answers GET's status and headers, without a body."""
        path = "/v2/failing/manifests/latest"
        get_status, get_headers, body = self.registry.request(path)
        head_status, head_headers, head_body = self.registry.request(path, "HEAD")
        self.assertEqual((get_status, head_status, head_body), (404, 404, b""))
        for name in ("content-type", "content-length", "docker-distribution-api-version"):
            self.assertEqual(head_headers.get(name), get_headers.get(name), name)
        self.assertEqual(int(get_headers["content-length"]), len(body))

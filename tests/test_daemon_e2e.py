"""
End-to-end tests of the registry: a real ``twistd nixery`` on loopback,
the offline package set built by real Nix, and real clients (skopeo,
umoci, chroot, podman, containerd's ctr).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest

from tests.daemon import Daemon
from tests.daemoncases import DaemonTestCase, podman_command
from tests.e2e import (PACKAGE_SET, fresh_package_set, require_tools,
                       run)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class ClientsEndToEnd(DaemonTestCase):
    """Real registry clients pull from the daemon."""

    def setUp(self) -> None:
        self.registry = self.daemon("--pkgs-path", PACKAGE_SET)

    def test_skopeo_inspect_copy_umoci_chroot(self) -> None:
        """
        skopeo inspects and copies an image (falling back from HTTPS at
        once), umoci unpacks it and its binary runs under chroot.
        """
        require_tools("skopeo", "umoci", "chroot")
        started = time.monotonic()
        inspected = json.loads(run(
            ["skopeo", "inspect", "--tls-verify=false",
             "docker://%s/shell/hello" % (self.registry.address,)]).stdout)
        # A plain port that ignored the TLS ClientHello would stall 10 s.
        self.assertLess(time.monotonic() - started, 8)
        self.assertEqual(inspected["Architecture"], "amd64")
        self.assertIn("latest", inspected["RepoTags"])
        layout = self.mktemp()
        run(["skopeo", "copy", "--src-tls-verify=false",
             "docker://%s/shell/hello" % (self.registry.address,), "oci:%s:img" % (layout,)])
        bundle = self.mktemp()
        run(["umoci", "unpack", "--image", "%s:img" % (layout,), bundle])
        ran = run(["chroot", os.path.join(bundle, "rootfs"), "/bin/bash", "-c", "hello"])
        self.assertEqual(ran.stdout, "Hello, world!\n")

    def test_podman_pull_and_run(self) -> None:
        """podman (vfs storage) pulls the image and runs its binary."""
        tools = require_tools("podman", "runc")
        podman = podman_command(tools["podman"], self.short_directory())
        image = "%s/hello" % (self.registry.address,)
        run(podman + ["pull", "--tls-verify=false", image])
        ran = run(podman + ["run", "--rm", "--runtime", tools["runc"], "--network", "none",
                            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                            image, "/bin/hello"])
        self.assertEqual(ran.stdout, "Hello, world!\n", ran.stderr)
        run(podman + ["rmi", "--all", "--force"], check=False)

    def test_containerd_pull(self) -> None:
        """
        containerd's ctr pulls with HEAD by tag, then GET by the digest the
        HEAD announced, and verifies every blob.
        """
        tools = require_tools("containerd", "ctr")
        socket_path = self.containerd()
        ref = "%s/toola:latest" % (self.registry.address,)
        pulled = run([tools["ctr"], "--address", socket_path, "images", "pull",
                      "--plain-http", ref])
        self.assertIn("done", pulled.stdout)
        listed = run([tools["ctr"], "--address", socket_path, "images", "list"]).stdout
        self.assertIn(ref, listed)
        methods = [(str(e.get("method")), str(e.get("path") or ""))
                   for e in self.registry.events()
                   if e.get("method") and "/manifests/" in str(e.get("path") or "")]
        self.assertEqual(methods[0], ("HEAD", "/v2/toola/manifests/latest"))
        self.assertTrue(any(m == "GET" and "/manifests/sha256:" in p for m, p in methods),
                        methods)
        self.assertEqual(self.nix_processes(self.registry, "nix-build"), 1)


class BuildSharingEndToEnd(DaemonTestCase):
    """Concurrent and repeated requests share builds."""

    def test_sixteen_cold_requests_one_build(self) -> None:
        """16 parallel cold requests for one image cause one build and get one digest."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        registry = self.daemon("--pkgs-path", fresh_package_set(workdir))

        def pull(_: int) -> tuple[int, str, bytes]:
            status, headers, body = registry.request(
                "/v2/toola/toolb/manifests/latest")
            return status, headers.get("docker-content-digest", ""), body

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(pull, range(16)))
        self.assertEqual({status for status, _, _ in results}, {200})
        digests = {digest for _, digest, _ in results}
        self.assertEqual(len(digests), 1)
        [digest] = digests
        self.assertEqual(digest, "sha256:" + hashlib.sha256(results[0][2]).hexdigest())
        self.assertEqual(self.nix_processes(registry, "nix-build"), 1)
        self.assertEqual(self.nix_processes(registry, "nix-instantiate"), 1)

    def test_head_then_get_builds_once(self) -> None:
        """A HEAD then a GET by tag build once and agree on digest and length."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        registry = self.daemon("--pkgs-path", fresh_package_set(workdir))
        status, head, body = registry.request("/v2/hello/manifests/latest", "HEAD")
        self.assertEqual((status, body), (200, b""))
        status, get, body = registry.request("/v2/hello/manifests/latest")
        self.assertEqual(status, 200)
        for name in ("docker-content-digest", "content-length", "content-type"):
            self.assertEqual(head[name], get[name])
        self.assertEqual(int(get["content-length"]), len(body))
        self.assertEqual(get["content-type"], DOCKER_MANIFEST)
        self.assertEqual(self.nix_processes(registry, "nix-build"), 1)

    def test_restart_pinned_source_no_nix(self) -> None:
        """
        A git source pulled by commit is served warm after a restart with
        no Nix (or git) process at all.
        """
        require_tools("git")
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        repo = fresh_package_set(workdir)
        git = ["git", "-C", repo, "-c", "user.name=t", "-c", "user.email=t@localhost"]
        run(git + ["init", "-q"])
        run(git + ["add", "."])
        run(git + ["commit", "-q", "-m", "package set"])
        commit = run(git + ["rev-parse", "HEAD"]).stdout.strip()
        storage = os.path.join(workdir, "storage")
        first = self.daemon("--pkgs-repo", "file://" + repo, storage=storage)
        status, headers, body = first.request("/v2/hello/manifests/" + commit)
        self.assertEqual(status, 200, body)
        self.assertEqual(self.nix_processes(first, "nix-build"), 1)
        first.stop()
        second = self.daemon("--pkgs-repo", "file://" + repo, storage=storage)
        status, again, body_again = second.request("/v2/hello/manifests/" + commit)
        self.assertEqual(status, 200, body_again)
        self.assertEqual(again["docker-content-digest"], headers["docker-content-digest"])
        self.assertEqual(body_again, body)
        self.assertEqual(second.events_with(process_event="started"), [])

    def test_restart_moving_source_evaluates_only(self) -> None:
        """
        A local package set is evaluated again after a restart, but the
        image already built is served without a build.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        pkgs = fresh_package_set(workdir)
        storage = os.path.join(workdir, "storage")
        first = self.daemon("--pkgs-path", pkgs, storage=storage)
        status, headers, _ = first.request("/v2/hello/manifests/latest")
        self.assertEqual(status, 200)
        first.stop()
        second = self.daemon("--pkgs-path", pkgs, storage=storage)
        status, again, _ = second.request("/v2/hello/manifests/latest")
        self.assertEqual(status, 200)
        self.assertEqual(again["docker-content-digest"], headers["docker-content-digest"])
        self.assertEqual(self.nix_processes(second, "nix-instantiate"), 1)
        self.assertEqual(self.nix_processes(second, "nix-build"), 0)


class ErrorsEndToEnd(DaemonTestCase):
    """Errors from the real daemon are registry JSON with the right codes."""

    def setUp(self) -> None:
        self.registry = self.daemon("--pkgs-path", PACKAGE_SET, "--nix-timeout", "3")

    def error(self, path: str, method: str = "GET"
              ) -> tuple[int, dict[str, str], dict[str, Any]]:
        status, headers, body = self.registry.request(path, method)
        self.assertEqual(headers["content-type"], "application/json")
        [error] = json.loads(body)["errors"]
        return status, headers, error

    def test_unknown_packages(self) -> None:
        """Unknown packages: 404 MANIFEST_UNKNOWN naming every one of them."""
        status, _, error = self.error("/v2/hello/nope/xorg.nothere/manifests/latest")
        self.assertEqual((status, error["code"]), (404, "MANIFEST_UNKNOWN"))
        self.assertIn("nope", error["message"])
        self.assertIn("xorg.nothere", error["message"])
        self.assertEqual(self.nix_processes(self.registry, "nix-build"), 0)

    def test_build_failure(self) -> None:
        """A failed build: 404 MANIFEST_UNKNOWN naming the package and its build, no log."""
        status, _, error = self.error("/v2/failing/manifests/latest")
        self.assertEqual((status, error["code"]), (404, "MANIFEST_UNKNOWN"))
        self.assertIn("failing", error["message"])
        self.assertEqual(sorted(error["detail"]), ["build", "package"])

    def test_build_timeout(self) -> None:
        """A build past the timeout is answered as a timeout, and Nix is stopped."""
        status, _, error = self.error("/v2/slow/manifests/latest")
        self.assertEqual(status, 404)
        self.assertIn("timed out", error["message"])

    def test_invalid_name_never_reaches_nix(self) -> None:
        """Invalid names are refused with 400 NAME_INVALID before Nix runs."""
        for path in ("/v2/Hello/manifests/latest", "/v2/a//b/manifests/latest",
                     "/v2/a/../b/manifests/latest", "/v2/" + "a" * 300 + "/manifests/latest"):
            status, _, error = self.error(path)
            self.assertEqual((status, error["code"]), (400, "NAME_INVALID"), path)
        self.assertEqual(self.registry.events_with(process_event="started"), [])

    def test_invalid_and_unknown_digests(self) -> None:
        """Bad digests are 400 DIGEST_INVALID; unknown blobs 404 BLOB_UNKNOWN."""
        status, _, error = self.error("/v2/hello/blobs/sha256:xyz")
        self.assertEqual((status, error["code"]), (400, "DIGEST_INVALID"))
        status, _, error = self.error("/v2/hello/blobs/sha256:" + "0" * 64)
        self.assertEqual((status, error["code"]), (404, "BLOB_UNKNOWN"))
        status, _, error = self.error("/v2/hello/manifests/sha256:" + "0" * 64)
        self.assertEqual((status, error["code"]), (404, "MANIFEST_UNKNOWN"))

    def test_other_methods(self) -> None:
        """Methods other than GET and HEAD are 405 UNSUPPORTED."""
        status, headers, error = self.error("/v2/hello/manifests/latest", "PUT")
        self.assertEqual((status, error["code"]), (405, "UNSUPPORTED"))
        self.assertEqual(self.registry.events_with(process_event="started"), [])

    def test_blob_range_and_oci_manifest(self) -> None:
        """
        An OCI-only client gets the OCI manifest, and its layers can be
        fetched whole or by range with matching digests.
        """
        status, headers, body = self.registry.request(
            "/v2/hello/manifests/latest", headers={"Accept": OCI_MANIFEST})
        self.assertEqual((status, headers["content-type"]), (200, OCI_MANIFEST))
        layer = json.loads(body)["layers"][-1]
        status, headers, whole = self.registry.request("/v2/hello/blobs/" + layer["digest"])
        self.assertEqual(status, 200)
        self.assertEqual("sha256:" + hashlib.sha256(whole).hexdigest(), layer["digest"])
        self.assertEqual(len(whole), layer["size"])
        status, headers, part = self.registry.request(
            "/v2/hello/blobs/" + layer["digest"], headers={"Range": "bytes=10-99"})
        self.assertEqual(status, 206)
        self.assertEqual(part, whole[10:100])
        self.assertEqual(headers["content-range"], "bytes 10-99/%d" % (len(whole),))


class GCSStorageEndToEnd(DaemonTestCase):
    """The daemon on GCS storage (a real emulator), pulled by skopeo."""

    async def test_pull_through_redirects(self) -> None:
        """
        Layers are uploaded to the bucket, blob requests are answered with
        303 redirects to it, and skopeo follows them to a runnable image.
        """
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThread

        from tests.gcsemulator import MISSING_REASON, start_emulator
        if MISSING_REASON is not None:
            raise SkipTest(MISSING_REASON)
        require_tools("skopeo", "umoci", "chroot")
        emulator = await start_emulator(reactor, os.path.abspath(self.mktemp()),
                                        bucket="nixeryd-e2e")
        self.addCleanup(lambda: Deferred.fromCoroutine(emulator.stop()))
        registry = await deferToThread(
            self.daemon, "--pkgs-path", PACKAGE_SET, "--storage-backend", "gcs",
            "--gcs-bucket", "nixeryd-e2e", "--gcs-endpoint", emulator.endpoint)
        status, headers, body = await deferToThread(
            registry.request, "/v2/hello/manifests/latest")
        self.assertEqual(status, 200, body)
        layer = json.loads(body)["layers"][0]["digest"]
        redirect = await deferToThread(self.head_without_following, registry, layer)
        self.assertEqual(redirect.status, 303)
        self.assertTrue(redirect.getheader("Location").startswith(emulator.endpoint))
        layout = self.mktemp()
        await deferToThread(run, [
            "skopeo", "copy", "--src-tls-verify=false",
            "docker://%s/hello" % (registry.address,), "oci:%s:img" % (layout,)])
        bundle = self.mktemp()
        await deferToThread(run, ["umoci", "unpack", "--image", "%s:img" % (layout,), bundle])
        ran = await deferToThread(run, ["chroot", os.path.join(bundle, "rootfs"), "/bin/hello"])
        self.assertEqual(ran.stdout, "Hello, world!\n")

    @staticmethod
    def head_without_following(registry: Daemon, digest: str) -> Any:
        """The daemon's own answer to a blob GET, redirects not followed."""
        connection = http.client.HTTPConnection(registry.address, timeout=30)
        try:
            connection.request("GET", "/v2/hello/blobs/" + digest)
            response = connection.getresponse()
            response.read()
            return response
        finally:
            connection.close()

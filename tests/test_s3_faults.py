"""
Pulls on S3 storage while S3 is down: ``rclone serve s3`` stopped under a
storage made as the daemon makes it (:func:`build_s3_storage`, with its
outage circuit and the daemon's retry metrics).  A sustained outage opens
the bucket's circuit, and cold pulls then get 503 ``UNAVAILABLE`` with a
``Retry-After`` without a request sent, as with Cloud Storage
(:mod:`tests.test_gcs_faults`); a warm manifest is still answered from
memory.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.logger import LogLevel, capturedLogs

from nixeryd.build.builder import ImageBuilder
from nixeryd.core.documents import Image
from nixeryd.core.errors import RegistryError
from nixeryd.metrics.daemon import DaemonMetrics
from nixeryd.service.failures import storage_unavailable
from nixeryd.service.images import ImageService
from nixeryd.storage.circuit import OPEN, Circuit, CircuitOpen
from nixeryd.storage.s3.http import BACKEND
from nixeryd.storage.s3.storage import S3Storage, build_s3_storage
from nixeryd.testing.nix import FakeSource
from tests.buildfixtures import POPULARITY, ImageFixture, Outcome
from tests.rclones3 import ACCESS_KEY, REGION, SECRET_KEY, RcloneTestCase

#: Seconds the circuit stays open: longer than the test takes once it is.
OPEN_FOR = 30


class S3OutageTests(RcloneTestCase, ImageFixture):
    """Cold and warm pulls on an S3 bucket whose server stops."""

    def started(self) -> None:
        self.make_store()
        self.metrics = DaemonMetrics()
        # Opens soon (3 failures over 0.3 s), as tests/test_gcs_faults.py's.
        self.circuit = Circuit(reactor, backend=BACKEND, failures=3, sustained=0.3,
                               open_for=OPEN_FOR, target="s3://" + self.server.bucket)
        self.storage = build_s3_storage(
            reactor, self.runner, self.server.bucket, region=REGION,
            environ={"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
            endpoint=self.server.endpoint, spool_directory=self.mktemp(),
            persistent_connections=False, retry_observer=self.metrics,
            circuit=self.circuit)
        self.addCleanup(self.storage.close)

    def service(self, storage: S3Storage) -> ImageService:
        """A new image service (empty memory) on ``storage``."""
        builder = ImageBuilder(nix=self.nix, storage=storage, runner=self.runner,
                               popularity=POPULARITY)
        return ImageService(source=FakeSource(), nix=self.nix, builder=builder,
                            storage=storage, clock=reactor)

    async def pull(self, service: ImageService, name: str) -> Outcome:
        """Pull ``name``: the image, or the error a client gets."""
        try:
            return await service.image(name, "latest")
        except RegistryError as e:
            return (e.status, e.code, e.retry_after)

    def s3_retries(self) -> list[str]:
        """The retry series of the S3 backend that counted something."""
        return [line for line in self.metrics.exposition().decode().splitlines()
                if line.startswith('nixeryd_storage_retries_total{backend="s3",')
                and not line.endswith(" 0.0")]

    async def test_outage_opens_the_circuit(self) -> None:
        """
        With the server stopped, a cold pull gets 503 UNAVAILABLE with a
        Retry-After within the circuit's time once the outage lasted (its
        requests retried, each retry logged and counted for S3); the next
        one, and any storage call, fail at once with CircuitOpen; the warm
        manifest is still served; no critical line or traceback is logged.
        """
        service = self.service(self.storage)
        warm = await self.pull(service, "toola")
        assert isinstance(warm, Image), warm
        await self.server.stop()
        with capturedLogs() as events:
            first = await self.pull(service, "toolb")
            self.assertEqual(self.circuit.state, OPEN)
            refused = self.circuit.refused
            second = await self.pull(service, "toola/toolb")
            self.assertEqual(await service.image("toola", "latest"), warm)
        for outcome in (first, second):
            self.assert_unavailable(outcome, OPEN_FOR)
        self.assertGreater(self.circuit.refused, refused)

        with self.assertRaises(CircuitOpen) as caught:
            await self.storage.has_blob("sha256:" + "0" * 64)
        unavailable = storage_unavailable(caught.exception)
        assert unavailable is not None
        self.assertEqual((unavailable.status, unavailable.retry_after),
                         (503, caught.exception.retry_after))

        self.assertNotEqual(self.s3_retries(), [])
        self.assertTrue(all('reason="connection"' in line for line in self.s3_retries()),
                        self.s3_retries())
        retried = [e for e in events if e.get("event") == "storage-retry"]
        self.assertNotEqual(retried, [])
        self.assertEqual({e["backend"] for e in retried}, {"s3"})
        opened = [e for e in events if e.get("event") == "storage-circuit-open"]
        self.assertEqual([(e["backend"], e["target"]) for e in opened],
                         [("s3", "s3://" + self.server.bucket)])
        self.assertEqual([e for e in events if e["log_level"] == LogLevel.critical
                          or "log_failure" in e], [])

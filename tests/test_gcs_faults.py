"""
Pulls on GCS storage while Cloud Storage misbehaves, as it does every day:
a real emulator (gcp-storage-emulator) behind the tests' fault-injecting
proxy (:mod:`tests.faultproxy`), an image service with a scripted Nix
building real layers.  Each pull either succeeds, with every blob in the
bucket matching its digest, or fails with a retryable status (503
``UNAVAILABLE`` with ``Retry-After``); a warm manifest is answered from
memory whatever the storage does.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel, capturedLogs

from nixeryd.build.builder import ImageBuilder
from nixeryd.core.documents import Image
from nixeryd.core.errors import RegistryError
from nixeryd.service.images import ImageService
from nixeryd.storage.gcs import GCSStorage
from nixeryd.storage.gcs.circuit import CLOSED, Circuit
from nixeryd.storage.gcs.objects import blob_object_name
from nixeryd.testing.nix import FakeSource
from tests.buildfixtures import POPULARITY, ImageFixture
from tests.faultproxy import (
    Answer, CutRequest, CutResponse, RequestHead, any_request, method_is, uploads_to)
from tests.gcssupport import ProxiedEmulatorTestCase

_log = Logger()

#: What a pull ended with: the image, or the status, code and Retry-After
#: the client got.
Outcome = Image | tuple[int, str, int | None]


def downloads(head: RequestHead) -> bool:
    """Matches the downloads of object content (documents)."""
    return head.method == "GET" and head.query("alt") == "media"


def outage_circuit() -> Circuit:
    """A circuit that opens soon (3 failures over 0.3 s) and probes after 1 s."""
    return Circuit(reactor, failures=3, sustained=0.3, open_for=1)


class PullFaultTests(ProxiedEmulatorTestCase, ImageFixture):
    """Cold and warm pulls through the fault proxy."""

    async def _start(self) -> None:
        await super()._start()
        self.make_store()

    def service(self, storage: GCSStorage | None = None) -> ImageService:
        """A new image service (empty memory) on ``storage``, or a new proxied storage."""
        if storage is None:
            storage = self.proxied_storage()
        builder = ImageBuilder(nix=self.nix, storage=storage, runner=self.runner,
                               popularity=POPULARITY)
        return ImageService(source=FakeSource(), nix=self.nix, builder=builder,
                            storage=storage, clock=reactor)

    async def pull(self, service: ImageService, name: str = "toola") -> Outcome:
        """Pull ``name``: the image, with every blob checked in the bucket; or the error."""
        try:
            image = await service.image(name, "latest")
        except RegistryError as e:
            return (e.status, e.code, e.retry_after)
        manifest: dict[str, Any] = json.loads(image.docker.body)
        for descriptor in [manifest["config"], *manifest["layers"]]:
            stored = await self.emulator.download(blob_object_name(descriptor["digest"]))
            self.assertIsNotNone(stored, descriptor["digest"])
            assert stored is not None
            self.assertEqual("sha256:" + hashlib.sha256(stored).hexdigest(),
                             descriptor["digest"])
        return image

    async def assert_pulled(self, service: ImageService, name: str = "toola") -> Image:
        outcome = await self.pull(service, name)
        assert isinstance(outcome, Image), outcome
        return outcome

    async def test_server_error_bursts(self) -> None:
        """
        Two 503s in a row for each kind of request a cold pull makes
        (lookups, blob uploads, cache document writes): the pull succeeds.
        """
        rules = [self.proxy.add(matches, Answer(503), times=2) for matches in (
            method_is("GET"), uploads_to("blobs/"), uploads_to("nixeryd/"))]
        await self.assert_pulled(self.service())
        self.assertEqual([rule.times for rule in rules], [0, 0, 0])

    async def test_throttled_with_retry_after(self) -> None:
        """
        A blob upload answered 429 with Retry-After: 1 is sent again only
        after the wait asked for (up to the policy's longest wait, 0.2 s
        here, where the backoff alone would wait at most 0.05 s); the pull
        succeeds.
        """
        throttled = self.proxy.add(uploads_to("blobs/"), Answer(429, {"Retry-After": "1"}))
        await self.assert_pulled(self.service())
        self.assertEqual(throttled.times, 0)
        [first] = [index for index, head in enumerate(self.proxy.requests)
                   if throttled.matches(head)][:1]
        name = self.proxy.requests[first].query("name")
        retry = next(index for index in range(first + 1, len(self.proxy.requests))
                     if self.proxy.requests[index].query("name") == name)
        self.assertGreaterEqual(self.proxy.arrivals[retry] - self.proxy.arrivals[first], 0.2)

    async def test_uploads_cut(self) -> None:
        """A blob's and a document's multipart uploads cut after 100 bytes: sent again."""
        self.proxy.add(uploads_to("blobs/"), CutRequest(after=100))
        self.proxy.add(uploads_to("nixeryd/"), CutRequest(after=100))
        await self.assert_pulled(self.service())
        self.assertEqual(self.proxy.cuts, 2)

    async def test_download_cut(self) -> None:
        """
        A second instance reads the cached documents; their downloads cut
        after 20 bytes are read again, and it serves the same image.
        """
        built = await self.assert_pulled(self.service())
        self.proxy.add(downloads, CutResponse(after=20), times=2)
        again = await self.assert_pulled(self.service())
        self.assertEqual(self.proxy.cuts, 2)
        self.assertEqual(again.docker.digest, built.docker.digest)
        self.assertEqual(len(self.nix.build_calls), 1)

    async def test_emulator_down_and_back(self) -> None:
        """
        With the emulator gone, cold pulls get 503 UNAVAILABLE with a
        Retry-After within the circuit's time (the first once the outage
        lasted, the next at once), the warm manifest is still served from
        memory, no critical line or traceback is logged; once it is back
        and the Retry-After passed, a cold pull succeeds.
        """
        circuit = outage_circuit()
        service = self.service(self.proxied_storage(circuit=circuit))
        warm = await self.assert_pulled(service, "toola")
        self.proxy.down()
        with capturedLogs() as events:
            started = reactor.seconds()
            first = await self.pull(service, "toolb")
            refused = circuit.refused
            between = reactor.seconds()
            second = await self.pull(service, "toola/toolb")
            _log.info("Cold pulls with the emulator down: {first!r} in {one:.2f} s, then"
                      " {second!r} in {two:.2f} s", first=first, second=second,
                      one=between - started, two=reactor.seconds() - between)
            self.assertEqual(service.cached_image("toola", "latest"), warm)
            self.assertEqual(await service.image("toola", "latest"), warm)
        for outcome in (first, second):
            assert isinstance(outcome, tuple), outcome
            status, code, retry_after = outcome
            self.assertEqual((status, code), (503, "UNAVAILABLE"))
            assert retry_after is not None
            self.assertLessEqual(retry_after, 1)
        self.assertGreater(circuit.refused, refused)
        self.assertEqual([e for e in events if e["log_level"] == LogLevel.critical
                          or "log_failure" in e], [])
        self.proxy.up()
        await deferLater(reactor, 1.1)
        await self.assert_pulled(service, "toolb")
        self.assertEqual(circuit.state, CLOSED)

    async def test_outage_sends_nothing_while_open(self) -> None:
        """
        Cloud Storage answering 503 to everything: once the circuit is
        open, a cold pull fails with 503 without a single request sent; it
        closes by itself when Cloud Storage answers again.
        """
        circuit = outage_circuit()
        service = self.service(self.proxied_storage(circuit=circuit))
        outage = self.proxy.add(any_request, Answer(503), times=10 ** 6)
        first = await self.pull(service, "toola")
        sent = len(self.proxy.requests)
        second = await self.pull(service, "toolb")
        self.assertEqual((first[:2], second[:2]),  # type: ignore[index]
                         ((503, "UNAVAILABLE"), (503, "UNAVAILABLE")))
        self.assertEqual(len(self.proxy.requests), sent)
        outage.times = 0
        await deferLater(reactor, 1.1)
        await self.assert_pulled(service, "toolb")
        self.assertEqual(circuit.state, CLOSED)

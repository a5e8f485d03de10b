"""
Tests for :mod:`nixeryd.service.pulls`: pulls marked in memory, written
in the background once a day per manifest, the newest day kept when
daemons share a storage; and the image service marking every manifest it
serves and forgetting from memory what nobody pulled.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.build.builder import ImageBuilder
from nixeryd.core.documents import Image
from nixeryd.core.errors import ManifestUnknown
from nixeryd.core.threads import InlineRunner
from nixeryd.service.images import ImageService
from nixeryd.service.pulls import (DAY, PULL_NAMESPACE, PullRecorder, day_of, day_text,
                                   pull_document, pulled_day)
from nixeryd.testing.nix import FakeSource
from nixeryd.testing.storage import MemoryStorage, digest_of
from tests.buildfixtures import POPULARITY, ImageFixture

FIRST, SECOND = digest_of(b"first manifest"), digest_of(b"second manifest")
#: A Monday at noon, UTC.
NOON = 19844 * DAY + 12 * 3600


class DayTests(SynchronousTestCase):
    """Days and pull documents."""

    def test_days(self) -> None:
        """A time's UTC day, written as a date, reads back as the same day."""
        self.assertEqual(day_of(NOON), 19844)
        self.assertEqual(day_of(19845 * DAY - 1), 19844)
        self.assertEqual(day_text(19844), "2024-05-01")
        self.assertEqual(pulled_day(pull_document(FIRST, 19844)), 19844)
        self.assertEqual(pull_document(FIRST, 19844), {"digest": FIRST, "day": "2024-05-01"})

    def test_not_a_pull_document(self) -> None:
        """Anything but a document with a date reads as no day."""
        documents: list[object] = [None, [], {}, {"day": 3}, {"day": "yesterday"}, "2024-05-01"]
        for document in documents:
            self.assertIsNone(pulled_day(document))


class RecorderTests(SynchronousTestCase):
    """:class:`PullRecorder` over a fake clock and in-memory storage."""

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.clock = Clock()
        self.clock.advance(NOON)
        self.storage = MemoryStorage(directory, now=self.clock.seconds)
        self.recorder = PullRecorder(self.storage, self.clock, interval=60,
                                     sweep_interval=6 * 3600)
        self.recorder.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.recorder.running:
            self.successResultOf(self.recorder.stopService())

    def recorded(self) -> dict[str, Any]:
        """Key → pull document, as stored."""
        return {key: self.successResultOf(self.storage.get_document(namespace, key))
                for namespace, key in self.storage.documents if namespace == PULL_NAMESPACE}

    def test_marked_then_written_in_the_background(self) -> None:
        """Marks touch no storage; the next interval writes one document per manifest."""
        for _ in range(1000):
            self.recorder.pulled(FIRST)
        self.recorder.pulled(SECOND)
        self.assertEqual(sum(self.storage.calls.values()), 0)
        self.clock.advance(59)
        self.assertEqual(self.recorded(), {})
        self.clock.advance(1)
        self.assertEqual(self.recorded(), {
            FIRST[7:]: {"digest": FIRST, "day": "2024-05-01"},
            SECOND[7:]: {"digest": SECOND, "day": "2024-05-01"}})
        self.assertEqual(self.storage.calls["put_document"], 2)

    def test_once_a_day(self) -> None:
        """A manifest pulled again the same day is not written again; the next day it is."""
        self.recorder.pulled(FIRST)
        self.clock.advance(60)
        self.recorder.pulled(FIRST)
        self.clock.advance(60)
        self.assertEqual(self.storage.calls["put_document"], 1)
        self.assertEqual(self.storage.calls["get_document"], 1)
        self.clock.advance(DAY)
        self.recorder.pulled(FIRST)
        self.clock.advance(60)
        self.assertEqual(self.storage.calls["put_document"], 2)
        self.assertEqual(self.recorded()[FIRST[7:]]["day"], "2024-05-02")

    def test_newest_day_kept(self) -> None:
        """A later day written by another daemon is never replaced by an earlier one."""
        self.successResultOf(self.storage.put_document(
            PULL_NAMESPACE, FIRST[7:], pull_document(FIRST, 19845)))
        self.successResultOf(self.storage.put_document(
            PULL_NAMESPACE, SECOND[7:], pull_document(SECOND, 19800)))
        self.recorder.pulled(FIRST)
        self.recorder.pulled(SECOND)
        self.clock.advance(60)
        self.assertEqual(self.recorded()[FIRST[7:]]["day"], "2024-05-02")
        self.assertEqual(self.recorded()[SECOND[7:]]["day"], "2024-05-01")

    def test_failed_write_tried_again(self) -> None:
        """A write that fails is logged once and made at the next interval."""
        self.storage.failures["put_document"] = OSError(28, "No space left on device")
        self.recorder.pulled(FIRST)
        self.clock.advance(60)
        self.assertEqual(self.recorded(), {})
        del self.storage.failures["put_document"]
        self.clock.advance(60)
        self.assertEqual(list(self.recorded()), [FIRST[7:]])

    def test_written_when_stopped(self) -> None:
        """Stopping writes what is marked at once."""
        self.recorder.pulled(FIRST)
        self.successResultOf(self.recorder.stopService())
        self.assertEqual(list(self.recorded()), [FIRST[7:]])
        self.clock.advance(3600)
        self.assertEqual(self.storage.calls["put_document"], 1)

    def test_sweep(self) -> None:
        """Every sweep interval, the sweeper gets what was pulled since the last one."""
        swept: list[set[str]] = []
        self.recorder.on_sweep(swept.append)
        self.recorder.pulled(FIRST)
        self.clock.advance(60)
        self.recorder.pulled(SECOND)
        self.clock.pump([60] * (6 * 60 - 1))
        self.assertEqual(swept, [{FIRST, SECOND}])
        self.clock.pump([60] * 6 * 60)
        self.assertEqual(swept, [{FIRST, SECOND}, set()])


class ImageServicePullTests(ImageFixture):
    """The image service marks what it serves and forgets what nobody pulled."""

    def setUp(self) -> None:
        self.make_store()
        self.clock = Clock()
        self.storage = MemoryStorage(self.temp_directory(), now=self.clock.seconds)
        self.recorder = PullRecorder(self.storage, self.clock)
        builder = ImageBuilder(nix=self.nix, storage=self.storage, runner=InlineRunner(),
                               popularity=POPULARITY)
        self.service = ImageService(source=FakeSource(), nix=self.nix, builder=builder,
                                    storage=self.storage, clock=self.clock,
                                    pulls=self.recorder)

    def image(self, service: ImageService, name: str) -> Deferred[Image]:
        """Ask ``service`` for an image."""
        return Deferred.fromCoroutine(service.image(name, "latest"))

    def pending(self) -> set[str]:
        """What the recorder holds, not yet written."""
        pending: set[str] = self.recorder._pending
        return pending

    def built(self, name: str = "toola") -> Image:
        """An image built and served by ``name``."""
        return self.successResultOf(self.image(self.service, name))

    def test_every_manifest_served_is_marked(self) -> None:
        """A build, a warm answer and a manifest by digest each mark their manifest."""
        image = self.built()
        self.assertEqual(self.pending(), {image.docker.digest})
        self.recorder._pending.clear()
        self.assertIs(self.service.cached_image("toola", "latest"), image)
        self.assertEqual(self.pending(), {image.docker.digest})
        self.successResultOf(Deferred.fromCoroutine(self.service.manifest(image.oci.digest)))
        self.assertEqual(self.pending(), {image.docker.digest, image.oci.digest})

    def test_misses_are_not_marked(self) -> None:
        """A name not in memory and an unknown digest mark nothing."""
        self.assertIsNone(self.service.cached_image("toola", "latest"))
        self.failureResultOf(Deferred.fromCoroutine(
            self.service.manifest(digest_of(b"none"))), ManifestUnknown)
        self.assertEqual(self.pending(), set())

    def test_unpulled_images_forgotten(self) -> None:
        """A sweep forgets the images and manifests nobody pulled; the others stay in memory."""
        kept, dropped = self.built("toola"), self.built("toolb")
        self.recorder._sweep()
        self.assertIs(self.service.cached_image("toola", "latest"), kept)
        self.assertIs(self.service.cached_image("toolb", "latest"), dropped)
        self.recorder._pending.clear()
        self.recorder._used.clear()
        self.service.cached_image("toola", "latest")
        self.recorder._sweep()
        self.assertIs(self.service.cached_image("toola", "latest"), kept)
        self.assertIsNone(self.service.cached_image("toolb", "latest"))
        reads = self.storage.calls["read_small_blob"]
        self.successResultOf(Deferred.fromCoroutine(self.service.manifest(kept.oci.digest)))
        self.assertEqual(self.storage.calls["read_small_blob"], reads)
        self.successResultOf(Deferred.fromCoroutine(self.service.manifest(dropped.oci.digest)))
        self.assertEqual(self.storage.calls["read_small_blob"], reads + 1)

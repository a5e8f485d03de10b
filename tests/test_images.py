"""
Tests for :mod:`nixeryd.service.images`: the image service over a scripted Nix,
a fake package source, in-memory storage and a fake clock.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from zope.interface import provider

from nixeryd.build.builder import ImageBuilder
from nixeryd.build.progress import BuildPhase
from nixeryd.core.text import human_size
from nixeryd.core.documents import Image, RedirectBlob
from nixeryd.core.errors import (
    BlobUnknown,
    BuildFailed,
    DigestInvalid,
    ManifestUnknown,
    NameInvalid,
    Unavailable,
    UnknownPackages,
)
from nixeryd.core.threads import InlineRunner
from nixeryd.service.builds import BuildRecord
from nixeryd.storage.integrity import BlobCorrupt
from nixeryd.service.images import STOP_WAIT, ImageService
from nixeryd.testing.nix import FakeSource
from nixeryd.testing.storage import MemoryStorage
from tests.buildfixtures import POPULARITY, SOURCE, ImageFixture

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class RecordingService(Service):
    """A child service that records being started and stopped."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def startService(self) -> None:
        super().startService()
        self.events.append("start")

    def stopService(self) -> None:
        super().stopService()
        self.events.append("stop")


class ServiceFixture(ImageFixture):
    """Builds image services over one storage, as a restart would."""

    def setUp(self) -> None:
        self.make_store()
        self.storage = MemoryStorage(self.temp_directory())
        self.clock = Clock()
        self.source = FakeSource()

    def make_service(self, **kwargs: Any) -> ImageService:
        """A new image service (and builder) over the shared storage."""
        builder = ImageBuilder(nix=self.nix, storage=self.storage, runner=InlineRunner(),
                               popularity=POPULARITY)
        return ImageService(source=self.source, nix=self.nix, builder=builder,
                            storage=self.storage, clock=self.clock, **kwargs)

    def image(self, service: ImageService, name: str = "toola",
              tag: str = "latest") -> Deferred[Image]:
        """Ask ``service`` for an image."""
        return Deferred.fromCoroutine(service.image(name, tag))

    def forget_calls(self) -> None:
        """Reset the Nix and source call records."""
        del self.nix.resolve_calls[:]
        del self.nix.build_calls[:]
        del self.source.pins[:]

    def capture_log(self) -> list[LogEvent]:
        """Events logged by the image service (and its builds) from now on."""
        events: list[LogEvent] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            if event.get("log_namespace", "").startswith("nixeryd.service."):
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return events


class CoalescingTests(ServiceFixture):
    """Identical requests share one build."""

    def test_concurrent_requests_one_build(self) -> None:
        """Sixteen concurrent requests for one image cause one resolve and one build."""
        service = self.make_service()
        self.nix.build_gate = Deferred()
        waiting = [self.image(service) for _ in range(16)]
        for d in waiting:
            self.assertNoResult(d)
        self.assertEqual((len(self.nix.resolve_calls), len(self.nix.build_calls)), (1, 1))
        self.nix.build_gate.callback(None)
        images = [self.successResultOf(d) for d in waiting]
        self.assertTrue(all(image is images[0] for image in images))
        self.assertEqual(self.nix.builds_finished, 1)
        self.assertEqual(len(self.source.pins), 1)

    def test_reordered_names_share(self) -> None:
        """``toola/toolb`` and ``toolb/toola`` at the same time are one build."""
        service = self.make_service()
        self.nix.build_gate = Deferred()
        first = self.image(service, "toola/toolb")
        second = self.image(service, "toolb/toola")
        self.nix.build_gate.callback(None)
        self.assertIs(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(len(self.nix.build_calls), 1)

    def test_cancel_one_waiter(self) -> None:
        """Cancelling one waiter fails only that wait; the build goes on for the others."""
        service = self.make_service()
        self.nix.build_gate = Deferred()
        waiting = [self.image(service) for _ in range(3)]
        waiting[0].cancel()
        self.failureResultOf(waiting[0], CancelledError)
        self.assertNoResult(waiting[1])
        self.nix.build_gate.callback(None)
        self.assertIs(self.successResultOf(waiting[1]), self.successResultOf(waiting[2]))
        self.assertEqual(self.nix.builds_finished, 1)

    def test_cancel_every_waiter(self) -> None:
        """
        When every waiter is gone while Nix builds, the build is cancelled
        (its record says why) and the next request starts again.
        """
        service = self.make_service()
        self.nix.build_gate = Deferred()
        only = self.image(service)
        only.cancel()
        self.failureResultOf(only, CancelledError)
        [record] = service.builds
        self.assertEqual((record.phase, record.message),
                         (BuildPhase.CANCELLED, "cancelled: every client went away"))
        self.nix.build_gate.callback(None)
        self.assertEqual(self.nix.builds_finished, 0)
        self.successResultOf(self.image(service))
        self.assertEqual((len(self.nix.resolve_calls), len(self.nix.build_calls)), (2, 2))

    def test_failure_reaches_every_waiter(self) -> None:
        """A failed build fails every waiter with the same error and is logged once."""
        events = self.capture_log()
        service = self.make_service()
        self.nix.build_gate = Deferred()
        self.nix.build_error = BuildFailed("the build of package toola failed", "toola")
        waiting = [self.image(service) for _ in range(4)]
        self.nix.build_gate.callback(None)
        errors = {id(self.failureResultOf(d, BuildFailed).value) for d in waiting}
        self.assertEqual(errors, {id(self.nix.build_error)})
        warnings = [e for e in events if e["log_level"] >= LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["error"], "the build of package toola failed")
        self.assertEqual(warnings[0]["build"], self.nix.build_error.build_id)

    def test_unexpected_failure_logged_once(self) -> None:
        """An unexpected exception reaches every waiter and is logged once with its traceback."""
        service = self.make_service()
        self.nix.build_gate = Deferred()
        self.nix.build_error = RuntimeError("bug")
        waiting = [self.image(service) for _ in range(3)]
        self.nix.build_gate.callback(None)
        for d in waiting:
            self.failureResultOf(d, RuntimeError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failure_not_remembered(self) -> None:
        """After a transient failure the next request tries again."""
        service = self.make_service()
        self.nix.build_error = Unavailable("the Nix daemon is unavailable")
        self.failureResultOf(self.image(service), Unavailable)
        self.nix.build_error = None
        self.successResultOf(self.image(service))
        self.assertEqual(len(self.nix.build_calls), 2)

    def test_sequential_requests_one_build(self) -> None:
        """A HEAD then a GET (two calls in a row) cause one build."""
        service = self.make_service()
        first = self.successResultOf(self.image(service))
        second = self.successResultOf(self.image(service))
        self.assertIs(first, second)
        self.assertEqual((len(self.nix.resolve_calls), len(self.nix.build_calls)), (1, 1))

    def test_unknown_packages(self) -> None:
        """Unknown packages fail the request without a build."""
        service = self.make_service()
        failure = self.failureResultOf(self.image(service, "nosuchthing"), UnknownPackages)
        self.assertEqual(failure.value.packages, ("nosuchthing",))
        self.assertEqual(self.nix.build_calls, [])

    def test_invalid_name_and_tag(self) -> None:
        """An invalid name or tag is refused before the source or Nix is asked."""
        service = self.make_service()
        self.failureResultOf(self.image(service, "Toola"), NameInvalid)
        self.failureResultOf(self.image(service, "toola", ".bad"), ManifestUnknown)
        self.assertEqual((self.source.pins, self.nix.resolve_calls), ([], []))

    def test_max_builds(self) -> None:
        """
        With ``max_builds=1`` a second image is evaluated at once but its
        build waits for the first build to finish.
        """
        service = self.make_service(max_builds=1)
        self.nix.build_gate = Deferred()
        first, second = self.image(service, "toola"), self.image(service, "toolb")
        self.assertEqual([call[1] for call in self.nix.resolve_calls],
                         [("toola",), ("toolb",)])
        self.assertEqual(len(self.nix.build_calls), 1)
        self.nix.build_gate.callback(None)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual([call[1] for call in self.nix.resolve_calls],
                         [("toola",), ("toolb",)])

    def test_warm_image_not_behind_builds(self) -> None:
        """
        An image already built, whose memory entry expired, is evaluated and
        served while another image's build holds every build slot.
        """
        service = self.make_service(max_builds=1, moving_ttl=1.0)
        built = self.successResultOf(self.image(service, "toola"))
        self.clock.advance(2)
        self.nix.build_gate = Deferred()
        busy = self.image(service, "toolb")
        self.assertEqual(self.successResultOf(self.image(service, "toola")), built)
        self.nix.build_gate.callback(None)
        self.successResultOf(busy)

    def test_waits_for_start_up(self) -> None:
        """
        Requests wait for the start-up work (which decides the layering),
        then go on.
        """
        started: Deferred[None] = Deferred()
        service = self.make_service(on_start=lambda: started)
        service.startService()
        self.addCleanup(service.stopService)
        pending = self.image(service)
        self.assertEqual(self.source.pins, [])
        started.callback(None)
        self.successResultOf(pending)
        self.assertEqual(len(self.nix.build_calls), 1)

    def test_unnameable_reference_does_not_fail(self) -> None:
        """
        A tag the storage index cannot hold (``v1-``) is still served; the
        index just does not name it, while it names a later build.
        """
        service = self.make_service(reference=lambda name, tag: name + ":" + tag)
        self.successResultOf(self.image(service, "toola", "v1-"))
        self.assertEqual(self.storage.references, {})
        self.successResultOf(self.image(service, "toolb", "v1"))
        self.assertEqual(list(self.storage.references), ["toolb:v1"])

    def test_tags_ignored_by_source_share_work(self) -> None:
        """
        For a source that ignores tags (a local path), two tags of one image
        share one evaluation and one build; both tags are listed.
        """
        service = self.make_service()
        self.nix.build_gate = Deferred()
        first, second = self.image(service, tag="a"), self.image(service, tag="b")
        self.nix.build_gate.callback(None)
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual((len(self.nix.resolve_calls), len(self.nix.build_calls)), (1, 1))
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(service.tags("toola"))),
                         ["a", "b", "latest"])

    def test_git_tags_are_separate(self) -> None:
        """For a git source, each tag is pinned on its own."""
        self.source = FakeSource("git", COMMIT)
        service = self.make_service()
        self.successResultOf(self.image(service, tag="a"))
        self.successResultOf(self.image(service, tag="b"))
        self.assertEqual(self.source.pins, ["a", "b"])

    def test_two_builds_at_once(self) -> None:
        """With ``max_builds=2`` two different images build at the same time."""
        service = self.make_service(max_builds=2)
        self.nix.build_gate = Deferred()
        first, second = self.image(service, "toola"), self.image(service, "toolb")
        self.assertEqual(len(self.nix.build_calls), 2)
        self.nix.build_gate.callback(None)
        self.assertNotEqual(self.successResultOf(first).oci.digest,
                            self.successResultOf(second).oci.digest)


class CacheTests(ServiceFixture):
    """The memory entries and the manifest cache in storage."""

    def test_pinned_restart_needs_no_nix(self) -> None:
        """With a pinned source, a new service over the same storage serves a warm image with no Nix call."""
        self.source = FakeSource("git", COMMIT)
        built = self.successResultOf(self.image(self.make_service()))
        self.forget_calls()
        again = self.successResultOf(self.image(self.make_service()))
        self.assertEqual(again, built)
        self.assertEqual((self.nix.resolve_calls, self.nix.build_calls), ([], []))

    def test_moving_restart_resolves_only(self) -> None:
        """With a moving source, a new service resolves again but reuses the built image."""
        built = self.successResultOf(self.image(self.make_service()))
        self.forget_calls()
        again = self.successResultOf(self.image(self.make_service()))
        self.assertEqual(again, built)
        self.assertEqual((len(self.nix.resolve_calls), len(self.nix.build_calls)), (1, 0))

    def test_pinned_key_includes_revision(self) -> None:
        """Another revision of a pinned source is resolved again."""
        self.source = FakeSource("git", COMMIT)
        self.successResultOf(self.image(self.make_service()))
        self.source.revision = "f" * 40
        self.forget_calls()
        self.successResultOf(self.image(self.make_service()))
        self.assertEqual((len(self.nix.resolve_calls), len(self.nix.build_calls)), (1, 0))

    def test_moving_entry_expires(self) -> None:
        """A moving source's memory entry answers until ``moving_ttl`` passes, then it is evaluated again."""
        service = self.make_service(moving_ttl=60.0)
        self.successResultOf(self.image(service))
        self.clock.advance(59)
        self.successResultOf(self.image(service))
        self.assertEqual((len(self.source.pins), len(self.nix.resolve_calls)), (1, 1))
        self.clock.advance(2)
        self.successResultOf(self.image(service))
        self.assertEqual((len(self.source.pins), len(self.nix.resolve_calls)), (2, 2))
        self.assertEqual(len(self.nix.build_calls), 1)

    def test_cached_image_follows_memory(self) -> None:
        """
        ``cached_image`` answers only what memory holds and is current: not
        before the first build, then the built image, then nothing once a
        moving source's entry has expired.
        """
        service = self.make_service(moving_ttl=60.0)
        self.assertIsNone(service.cached_image("toola", "latest"))
        built = self.successResultOf(self.image(service))
        self.assertEqual(service.cached_image("toola", "latest"), built)
        self.assertIsNone(service.cached_image("toola", "other"))
        self.clock.advance(61)
        self.assertIsNone(service.cached_image("toola", "latest"))

    def test_moving_source_change_rebuilds(self) -> None:
        """When a moving source now resolves to other store paths, the image is rebuilt."""
        service = self.make_service(moving_ttl=10.0)
        before = self.successResultOf(self.image(service))
        newer = self.store.add("toolA-2.0", {"bin/toolA": b"#!/bin/sh\nA2\n"},
                               references=[self.libfoo, self.busybox])
        self.nix.add(("toola",), self.store.resolution(SOURCE, {"toola": newer}),
                     self.store.closure([newer]))
        self.successResultOf(self.image(service))
        self.assertEqual(len(self.nix.build_calls), 1)
        self.clock.advance(11)
        after = self.successResultOf(self.image(service))
        self.assertNotEqual(after.oci.digest, before.oci.digest)
        self.assertEqual(len(self.nix.build_calls), 2)

    def test_pinned_by_tag_never_expires(self) -> None:
        """A tag that is itself the pinned commit stays in memory whatever the time."""
        self.source = FakeSource("git", COMMIT)
        service = self.make_service(moving_ttl=1.0)
        self.successResultOf(self.image(service, tag=COMMIT))
        self.clock.advance(10 ** 6)
        self.successResultOf(self.image(service, tag=COMMIT))
        self.assertEqual(len(self.source.pins), 1)

    def test_pinned_branch_repins_without_nix(self) -> None:
        """A branch tag is pinned again after the TTL, and the new pin hits the cache without Nix."""
        self.source = FakeSource("git", COMMIT)
        service = self.make_service(moving_ttl=1.0)
        self.successResultOf(self.image(service, tag="latest"))
        self.clock.advance(2)
        self.successResultOf(self.image(service, tag="latest"))
        self.assertEqual(len(self.source.pins), 2)
        self.assertEqual((len(self.nix.resolve_calls), len(self.nix.build_calls)), (1, 1))

    def test_deleted_layer_rebuilds(self) -> None:
        """A cached image whose layer blob was deleted is built again, to the same digest."""
        self.source = FakeSource("git", COMMIT)
        built = self.successResultOf(self.image(self.make_service()))
        layer = json.loads(built.oci.body)["layers"][0]["digest"]
        self.storage.delete_blob(layer)
        self.forget_calls()
        again = self.successResultOf(self.image(self.make_service()))
        self.assertEqual(len(self.nix.build_calls), 1)
        self.assertEqual(again, built)
        self.assertIn(layer, self.storage.blobs)

    def own_layer(self, service: ImageService) -> tuple[Image, str]:
        """``toola`` built by ``service``, and a layer ``toolb`` does not share."""
        image = self.successResultOf(self.image(service, "toola"))
        other = self.successResultOf(self.image(service, "toolb"))
        layers = lambda i: {l["digest"] for l in json.loads(i.docker.body)["layers"]}
        own = sorted(layers(image) - layers(other))
        self.assertTrue(own)
        return image, own[0]

    def test_blob_gone_forgets_image(self) -> None:
        """
        A blob of an image held in memory found gone (``BLOB_UNKNOWN``, the
        garbage collector having removed it) has that image forgotten, with
        every name and tag it answered: its next pull builds again what is
        missing; images not naming the blob stay.
        """
        self.source = FakeSource("git", COMMIT)
        service = self.make_service()
        image, layer = self.own_layer(service)
        self.successResultOf(self.image(service, "toola", "v1"))
        other = self.successResultOf(self.image(service, "toolb"))
        self.storage.delete_blob(layer)
        self.assertEqual(service.cached_image("toola", "latest"), image)
        events = self.capture_log()
        self.failureResultOf(Deferred.fromCoroutine(service.blob(layer)), BlobUnknown)
        self.assertIsNone(service.cached_image("toola", "latest"))
        self.assertIsNone(service.cached_image("toola", "v1"))
        self.assertEqual(service.cached_image("toolb", "latest"), other)
        self.assertIn(layer, [e.get("blob") for e in events])
        self.forget_calls()
        self.assertEqual(self.successResultOf(self.image(service, "toola")), image)
        self.assertEqual(len(self.nix.build_calls), 1)
        self.assertIn(layer, self.storage.blobs)
        # Unknown digests that no image names forget nothing.
        self.failureResultOf(Deferred.fromCoroutine(service.blob("sha256:" + "0" * 64)),
                             BlobUnknown)
        self.assertEqual(service.cached_image("toola", "latest"), image)

    def test_lookup_finding_blob_gone_forgets_image(self) -> None:
        """
        A manifest cache lookup that finds a blob of the image gone has the
        image forgotten under its other names and tags still in memory.
        """
        self.source = FakeSource("git", COMMIT)
        service = self.make_service(moving_ttl=1.0)
        image, layer = self.own_layer(service)
        self.clock.advance(0.5)
        self.assertEqual(self.successResultOf(self.image(service, "toola", "v1")), image)
        self.clock.advance(0.6)
        self.assertEqual(service.cached_image("toola", "v1"), image)
        self.storage.delete_blob(layer)
        self.assertEqual(self.successResultOf(self.image(service, "toola")), image)
        self.assertIn(layer, self.storage.blobs)
        self.assertIsNone(service.cached_image("toola", "v1"))

    def damage(self, digest: str) -> bytes:
        """Replace a stored blob by other bytes of its size; the right bytes."""
        good = self.storage.blobs[digest]
        self.storage.damage_blob(digest, bytes(b ^ 0xFF for b in good))
        return good

    def test_damaged_layer_rebuilt_after_restart(self) -> None:
        """
        A cached image (pinned source) whose layer was replaced by other
        bytes of the same size is not served from the manifest cache by a
        new service: it is built again, which writes the layer anew.
        """
        self.source = FakeSource("git", COMMIT)
        built = self.successResultOf(self.image(self.make_service()))
        layer = json.loads(built.oci.body)["layers"][0]["digest"]
        good = self.damage(layer)
        self.forget_calls()
        events = self.capture_log()
        again = self.successResultOf(self.image(self.make_service()))
        self.assertEqual(again, built)
        self.assertEqual(len(self.nix.build_calls), 1)
        self.assertEqual(self.storage.blobs[layer], good)
        self.assertIn("has a damaged", [e.get("how") for e in events])

    def test_damaged_blob_of_warm_image_made_again(self) -> None:
        """
        A blob request for an image held in memory that finds its blob
        damaged has the image made again, and is answered with the blob
        repaired, never the damaged bytes; other images stay in memory.
        """
        service = self.make_service()
        image, layer = self.own_layer(service)
        other = self.successResultOf(self.image(service, "toolb"))
        good = self.damage(layer)
        self.forget_calls()
        where = self.successResultOf(Deferred.fromCoroutine(service.blob(layer)))
        self.assertEqual(where.digest, layer)
        self.assertEqual(self.storage.blobs[layer], good)
        self.assertEqual(len(self.nix.build_calls), 1)
        self.assertEqual(service.cached_image("toola", "latest"), image)
        self.assertEqual(service.cached_image("toolb", "latest"), other)

    def test_damaged_blob_nobody_names_not_served(self) -> None:
        """A damaged blob that no image in memory names is answered as unknown."""
        service = self.make_service()
        image, layer = self.own_layer(service)
        self.damage(layer)
        service2 = self.make_service()
        failure = self.failureResultOf(Deferred.fromCoroutine(service2.blob(layer)),
                                       BlobCorrupt)
        self.assertEqual(failure.value.code, "BLOB_UNKNOWN")

    def test_reference_recorded(self) -> None:
        """A built image is named in the storage's index by the reference function."""
        service = self.make_service(reference=lambda name, tag: name + ":" + tag)
        image = self.successResultOf(self.image(service, "toola", "v1"))
        recorded = self.storage.references["toola:v1"]
        self.assertEqual((recorded["digest"], recorded["size"], recorded["mediaType"]),
                         (image.oci.digest, len(image.oci.body), image.oci.media_type))


class ManifestTests(ServiceFixture):
    """Manifests by digest, blobs and tags."""

    def manifest(self, service: ImageService, digest: str) -> Deferred[Any]:
        """Ask ``service`` for a manifest by digest."""
        return Deferred.fromCoroutine(service.manifest(digest))

    def test_manifests_after_build(self) -> None:
        """Both manifests of a built image are served by digest."""
        service = self.make_service()
        image = self.successResultOf(self.image(service))
        for document in (image.docker, image.oci):
            self.assertEqual(self.successResultOf(self.manifest(service, document.digest)),
                             document)

    def test_manifests_after_restart(self) -> None:
        """A new service serves both manifests from storage."""
        image = self.successResultOf(self.image(self.make_service()))
        service = self.make_service()
        for document in (image.docker, image.oci):
            self.assertEqual(self.successResultOf(self.manifest(service, document.digest)),
                             document)
        self.assertEqual(self.storage.calls["read_small_blob"], 2)
        self.successResultOf(self.manifest(service, image.oci.digest))
        self.assertEqual(self.storage.calls["read_small_blob"], 2)

    def test_other_blobs_are_not_manifests(self) -> None:
        """A layer or config digest is an unknown manifest, as is a digest never stored."""
        image = self.successResultOf(self.image(self.make_service()))
        body = json.loads(image.oci.body)
        service = self.make_service()
        for digest in (body["layers"][0]["digest"], body["config"]["digest"],
                       "sha256:" + "0" * 64):
            self.failureResultOf(self.manifest(service, digest), ManifestUnknown)

    def test_invalid_digest(self) -> None:
        """A malformed digest is refused before storage is asked."""
        service = self.make_service()
        for digest in ("sha256:../../x", "md5:" + "0" * 32, "sha256:" + "A" * 64):
            self.failureResultOf(self.manifest(service, digest), DigestInvalid)
            self.failureResultOf(Deferred.fromCoroutine(service.blob(digest)),
                                 DigestInvalid)
        self.assertEqual(self.storage.calls["read_small_blob"], 0)

    def test_blob(self) -> None:
        """Blobs come from storage; a missing one is unknown."""
        image = self.successResultOf(self.image(self.make_service()))
        service = self.make_service()
        layer = json.loads(image.oci.body)["layers"][0]["digest"]
        where = self.successResultOf(Deferred.fromCoroutine(service.blob(layer)))
        self.assertIsInstance(where, RedirectBlob)
        self.assertEqual(where.digest, layer)
        self.failureResultOf(Deferred.fromCoroutine(service.blob("sha256:" + "0" * 64)),
                             BlobUnknown)

    def test_tags(self) -> None:
        """Tags list ``latest`` and every tag served for the name, sorted."""
        service = self.make_service()
        tags = lambda name: self.successResultOf(Deferred.fromCoroutine(service.tags(name)))
        self.assertEqual(tags("toola"), ["latest"])
        self.successResultOf(self.image(service, "toola", "v2"))
        self.successResultOf(self.image(service, "toola", "v1"))
        self.assertEqual(tags("toola"), ["latest", "v1", "v2"])
        self.assertEqual(tags("toolb"), ["latest"])
        self.failureResultOf(Deferred.fromCoroutine(service.tags("a//b")), NameInvalid)


class LifecycleTests(ServiceFixture):
    """Starting and stopping the service."""

    def test_children_follow(self) -> None:
        """Children start with the service and stop with it."""
        child = RecordingService()
        service = self.make_service()
        child.setServiceParent(service)
        service.startService()
        self.assertEqual(child.events, ["start"])
        self.successResultOf(service.stopService())
        self.assertEqual(child.events, ["start", "stop"])

    def test_children_stop_in_reverse_one_at_a_time(self) -> None:
        """
        Children stop in reverse order of addition, each only once the one
        added after it has finished stopping.
        """
        events: list[str] = []
        second_stopping: Deferred[None] = Deferred()

        class Child(Service):
            def __init__(self, label: str, stopped: Deferred[None] | None) -> None:
                self.label = label
                self.stopped = stopped

            def stopService(self) -> Deferred[None] | None:
                super().stopService()
                events.append(self.label)
                return self.stopped

        service = self.make_service()
        Child("first", None).setServiceParent(service)
        Child("second", second_stopping).setServiceParent(service)
        service.startService()
        stopping = service.stopService()
        self.assertEqual(events, ["second"])
        self.assertNoResult(stopping)
        second_stopping.callback(None)
        self.assertEqual(events, ["second", "first"])
        self.successResultOf(stopping)

    def slow_to_stop(self) -> Deferred[None]:
        """
        Make the fake Nix's builds, once cancelled, end only when the
        returned Deferred fires (as a real build's process tree ends after
        its grace period).
        """
        tree_ended: Deferred[None] = Deferred()
        fake_build = self.nix.build

        async def build(resolution: Any, **kwargs: Any) -> Any:
            try:
                return await fake_build(resolution, **kwargs)
            except CancelledError:
                await tree_ended
                raise

        self.nix.build = build  # type: ignore[method-assign]
        return tree_ended

    def gc_roots(self) -> list[str]:
        """The builds' garbage-collector root directories left in storage."""
        return [name for name in os.listdir(self.storage.temp_directory())
                if name.endswith(".gcroots")]

    def test_stop_waits_for_cancelled_builds(self) -> None:
        """
        The stop waits for the builds it cancelled to end, so that their
        clean-up (the GC roots removed, in a thread pool) runs before the
        children (the pools) stop.
        """
        tree_ended = self.slow_to_stop()
        child = RecordingService()
        service = self.make_service()
        child.setServiceParent(service)
        service.startService()
        self.nix.build_gate = Deferred()
        waiting = self.image(service)
        self.assertEqual(len(self.gc_roots()), 1)
        stopping = service.stopService()
        self.clock.advance(STOP_WAIT - 1)
        self.assertNoResult(stopping)
        self.assertEqual(child.events, ["start"])
        self.assertEqual(len(self.gc_roots()), 1)
        tree_ended.callback(None)
        self.successResultOf(stopping)
        self.assertEqual(child.events, ["start", "stop"])
        self.assertEqual(self.gc_roots(), [])
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_wait_is_bounded(self) -> None:
        """Work that does not end within ``STOP_WAIT`` is left; the children stop."""
        tree_ended = self.slow_to_stop()
        events = self.capture_log()
        child = RecordingService()
        service = self.make_service()
        child.setServiceParent(service)
        service.startService()
        self.nix.build_gate = Deferred()
        waiting = self.image(service)
        stopping = service.stopService()
        self.clock.advance(STOP_WAIT)
        self.successResultOf(stopping)
        self.assertEqual(child.events, ["start", "stop"])
        self.assertTrue(any("did not end within" in e.get("log_format", "")
                            and e.get("count") == 1 for e in events))
        tree_ended.callback(None)
        self.failureResultOf(waiting, CancelledError)

    def test_stop_waits_for_abandoned_work(self) -> None:
        """Work cancelled because nobody waits, still ending, is waited for too."""
        tree_ended = self.slow_to_stop()
        service = self.make_service()
        service.startService()
        self.nix.build_gate = Deferred()
        waiting = self.image(service)
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        stopping = service.stopService()
        self.assertNoResult(stopping)
        tree_ended.callback(None)
        self.successResultOf(stopping)
        self.assertEqual(self.gc_roots(), [])


class BuildRecordTests(ServiceFixture):
    """Every Nix build gets a record that follows it to its end."""

    def only_record(self, service: ImageService) -> BuildRecord:
        [record] = list(service.builds)
        return record

    def test_built(self) -> None:
        """
        A build goes through evaluation, build and layering, and ends with
        the Docker manifest's digest and a line saying what was built.
        """
        self.source = FakeSource("git", COMMIT)
        service = self.make_service()
        phases: list[BuildPhase] = []

        def follow(record: BuildRecord) -> None:
            record.subscribe(PhaseRecorder(phases))

        service.builds.watch(follow)
        self.clock.advance(100)
        self.nix.build_gate = Deferred()
        d = self.image(service, "toolb/toola", "v1")
        record = self.only_record(service)
        self.assertEqual((record.image, record.tag, record.packages, record.system,
                          record.revision),
                         ("toolb/toola", "v1", ("toola", "toolb"), "x86_64-linux", COMMIT))
        self.assertEqual(record.source, "git")
        self.assertEqual(record.phase, BuildPhase.BUILDING)
        self.clock.advance(4.25)
        self.nix.build_gate.callback(None)
        image = self.successResultOf(d)
        self.assertEqual(phases, [BuildPhase.EVALUATING, BuildPhase.BUILDING]
                         + [BuildPhase.LAYERING] * (1 + len(record.layers))
                         + [BuildPhase.SUCCEEDED])
        self.assertEqual(record.manifest_digest, image.docker.digest)
        self.assertEqual([layer.digest for layer in record.layers],
                         [layer["digest"] for layer in json.loads(image.docker.body)["layers"]])
        self.assertEqual(record.message, "built in 4.2 s: 5 layers, %s" % (
            human_size(record.total_layer_bytes()),))
        self.assertIn("nixeryd: Evaluating toola, toolb for toolb/toola:v1 (git)",
                      record.log)

    def test_source_described(self) -> None:
        """The record says where the packages come from."""
        self.source = FakeSource("path")
        service = self.make_service()
        self.successResultOf(self.image(service))
        self.assertEqual(self.only_record(service).source, "path")

    def test_no_record_without_nix(self) -> None:
        """Images served from memory or the pinned cache get no record."""
        self.source = FakeSource("git", COMMIT)
        service = self.make_service()
        self.successResultOf(self.image(service))
        self.successResultOf(self.image(service))
        self.successResultOf(self.image(self.make_service()))
        self.assertEqual(len(list(service.builds)), 1)

    def test_same_store_paths(self) -> None:
        """An evaluation that finds an image already stored ends the record saying so."""
        self.successResultOf(self.image(self.make_service()))
        service = self.make_service()
        image = self.successResultOf(self.image(service))
        record = self.only_record(service)
        self.assertEqual(record.phase, BuildPhase.SUCCEEDED)
        self.assertEqual(record.manifest_digest, image.docker.digest)
        self.assertEqual(record.message, "the same store paths as an image already"
                         " stored: served that image")
        self.assertNotIn(BuildPhase.BUILDING, record.phase_started)

    def test_waiting_for_a_slot(self) -> None:
        """A build waiting for the build slot is WAITING, then goes on."""
        service = self.make_service(max_builds=1)
        self.nix.build_gate = Deferred()
        first, second = self.image(service, "toola"), self.image(service, "toolb")
        busy, waiting = list(service.builds)
        self.assertEqual((busy.phase, waiting.phase),
                         (BuildPhase.BUILDING, BuildPhase.WAITING))
        self.assertEqual(service.builds.waiting(), [waiting])
        self.assertIn("nixeryd: Waiting for a build slot", waiting.log)
        self.nix.build_gate.callback(None)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(waiting.phase, BuildPhase.SUCCEEDED)

    def test_nix_lines_in_the_record(self) -> None:
        """
        Nix's lines join the record; the service log gets them at DEBUG, and
        Nix's ``error:`` lines at WARN, with the build's id.
        """
        events = self.capture_log()
        self.nix.resolve_lines = ["evaluating"]
        self.nix.build_lines = ["building '/nix/store/x.drv'", "error: builder failed"]
        self.nix.build_error = BuildFailed("the build of package toola failed", "toola")
        service = self.make_service()
        self.failureResultOf(self.image(service), BuildFailed)
        record = self.only_record(service)
        nix_lines = [line for line in record.log if not line.startswith("nixeryd: ")]
        self.assertEqual(nix_lines, ["evaluating", "building '/nix/store/x.drv'",
                                     "error: builder failed"])
        levels = {e["line"]: e["log_level"] for e in events if e.get("stream") == "stderr"}
        self.assertEqual(levels, {"evaluating": LogLevel.debug,
                                  "building '/nix/store/x.drv'": LogLevel.debug,
                                  "error: builder failed": LogLevel.warn})
        self.assertEqual({e["build"] for e in events if "line" in e}, {record.id})

    def test_failed(self) -> None:
        """
        A failure ends the record with the client's message; the error
        carries the build's id for the page's address.
        """
        self.nix.build_error = BuildFailed("the build of package toola failed", "toola")
        service = self.make_service()
        error = self.failureResultOf(self.image(service), BuildFailed).value
        record = self.only_record(service)
        self.assertEqual(error.build_id, record.id)
        self.assertEqual((record.phase, record.message),
                         (BuildPhase.FAILED, "the build of package toola failed"))
        self.assertEqual(record.log[-1],
                         "nixeryd: toola:latest failed: the build of package toola failed")

    def test_unknown_packages(self) -> None:
        """Unknown packages end the evaluation's record too, with its id on the error."""
        service = self.make_service()
        error = self.failureResultOf(self.image(service, "nosuchthing"),
                                     UnknownPackages).value
        record = self.only_record(service)
        self.assertEqual((record.phase, record.message, error.build_id),
                         (BuildPhase.FAILED, "unknown Nix packages: nosuchthing", record.id))

    def test_storage_failure(self) -> None:
        """
        Storage failing during a build is a transient Unavailable, logged
        with its cause (which the client and the record never see).
        """
        events = self.capture_log()
        self.storage.failures["put_document"] = OSError(28, "No space left on device")
        service = self.make_service()
        error = self.failureResultOf(self.image(service), Unavailable).value
        self.assertEqual((error.status, error.code, error.retry_after),
                         (503, "UNAVAILABLE", 10))
        self.assertEqual(error.message, "the registry cannot store images now"
                         " (No space left on device); try again later")
        record = self.only_record(service)
        self.assertEqual((record.phase, error.build_id), (BuildPhase.FAILED, record.id))
        self.assertTrue(any("No space left" in e.get("cause", "") for e in events))
        del self.storage.failures["put_document"]
        self.successResultOf(self.image(service))

    def test_storage_failure_before_a_build(self) -> None:
        """The pinned cache failing is Unavailable too, with no record."""
        from nixeryd.storage.gcs.http import GCSError
        self.source = FakeSource("git", COMMIT)
        self.storage.failures["get_document"] = GCSError("Cloud Storage answered 503", 503)
        service = self.make_service()
        error = self.failureResultOf(self.image(service), Unavailable).value
        self.assertEqual(error.message, "the registry's storage is unavailable;"
                         " try again later")
        self.assertIsNone(error.build_id)
        self.assertEqual(list(service.builds), [])

    def test_storage_failure_by_digest(self) -> None:
        """Manifests and blobs by digest: storage failures are Unavailable."""
        self.storage.failures["read_small_blob"] = OSError(5, "Input/output error")
        self.storage.failures["blob"] = OSError(5, "Input/output error")
        service = self.make_service()
        for call in (service.manifest, service.blob):
            self.failureResultOf(Deferred.fromCoroutine(call("sha256:" + "0" * 64)),
                                 Unavailable)

    def test_unexpected_failure(self) -> None:
        """An unexpected exception ends the record plainly and is logged with its traceback."""
        self.nix.build_error = RuntimeError("bug")
        service = self.make_service()
        self.failureResultOf(self.image(service), RuntimeError)
        self.assertEqual(self.only_record(service).message, "internal server error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_cancelled_by_stop(self) -> None:
        """Stopping the service cancels builds in progress, fails their waiters and cancels their records."""
        service = self.make_service()
        service.startService()
        self.nix.build_gate = Deferred()
        waiting = self.image(service)
        self.successResultOf(service.stopService())
        self.failureResultOf(waiting, CancelledError)
        record = self.only_record(service)
        self.assertEqual((record.phase, record.message),
                         (BuildPhase.CANCELLED, "cancelled: the registry is stopping"))

    def test_cancelled_call_is_unavailable(self) -> None:
        """A call cancelled by its own timeout, not by a stop, is a transient failure."""
        self.nix.build_error = CancelledError()
        service = self.make_service()
        error = self.failureResultOf(self.image(service), Unavailable).value
        self.assertEqual(error.message, "a call of the registry timed out; try again later")
        self.assertEqual(self.only_record(service).phase, BuildPhase.FAILED)


class PhaseRecorder:
    """A build listener that writes down the phase after every change."""

    def __init__(self, phases: list[BuildPhase]) -> None:
        self.phases = phases

    def log_line(self, record: BuildRecord, line: str) -> None:
        pass

    def changed(self, record: BuildRecord) -> None:
        self.phases.append(record.phase)

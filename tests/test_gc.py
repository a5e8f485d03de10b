"""
Tests for :mod:`nixeryd.gc`: a collector pass over in-memory storage with
a fake clock: which images are kept and which removed (exactly), the grace
period, what is written during the pass, dry runs, and the report.
"""

from __future__ import annotations

import json
import os
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.core import mediatypes
from nixeryd.gc.collector import Collector
from nixeryd.gc.references import CONFIG, LAYER, MANIFEST, referenced
from nixeryd.gc.report import Report
from nixeryd.service.pulls import DAY, day_of, pull_document
from nixeryd.testing.storage import MemoryStorage, digest_of

HOUR = 3600.0
#: Now, in every test: a day at noon.
NOW = 19844 * DAY + 12 * HOUR


@frozen
class FakeImage:
    """What :meth:`GCTests.image` stored for one image."""

    name: str
    docker: str
    oci: str
    config: str
    layers: tuple[str, ...]

    def blobs(self) -> set[str]:
        return {self.docker, self.oci, self.config, *self.layers}


def manifest(media_type: str, config: str, layers: list[str]) -> bytes:
    """A manifest naming ``config`` and ``layers``."""
    return json.dumps({"schemaVersion": 2, "mediaType": media_type,
                       "config": {"digest": config, "size": 1},
                       "layers": [{"digest": layer, "size": 1} for layer in layers]},
                      sort_keys=True).encode()


class ReferencesTests(SynchronousTestCase):
    """What a manifest names."""

    def test_manifest(self) -> None:
        """A manifest names its config and layers."""
        config, layer = digest_of(b"c"), digest_of(b"l")
        self.assertEqual(referenced(manifest(mediatypes.OCI_MANIFEST, config, [layer])),
                         [(config, CONFIG), (layer, LAYER)])

    def test_index(self) -> None:
        """An index names manifests."""
        child = digest_of(b"m")
        body = json.dumps({"schemaVersion": 2, "manifests": [{"digest": child}]}).encode()
        self.assertEqual(referenced(body), [(child, MANIFEST)])

    def test_not_manifests(self) -> None:
        """Layers, configs and JSON without the fields name nothing."""
        for body in (b"\x1f\x8b\x08", b"{not json", b'{"architecture": "amd64",'
                     b' "config": {"Env": []}}', b'{"schemaVersion": 2}', b"[]"):
            self.assertIsNone(referenced(body))


class GCTests(SynchronousTestCase):
    """A collector pass over :class:`MemoryStorage` with a fake clock."""

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.clock = Clock()
        self.storage = MemoryStorage(directory, now=self.clock.seconds)

    def at(self, seconds_ago: float) -> None:
        """Set the clock ``seconds_ago`` before now."""
        self.clock.rightNow = NOW - seconds_ago

    def blob(self, data: bytes) -> str:
        digest = digest_of(data)
        self.successResultOf(self.storage.store_blob_bytes(data, digest))
        return digest

    def image(self, name: str, layers: list[bytes], days_ago: float) -> FakeImage:
        """Store an image as a build does, ``days_ago`` before now."""
        self.at(days_ago * DAY)
        layer_digests = [self.blob(data) for data in layers]
        for data, digest in zip(layers, layer_digests):
            self.successResultOf(self.storage.put_document(
                "layers", "layer-" + digest[7:15], {"digest": digest, "size": len(data)}))
        config = self.blob(b"config of " + name.encode())
        docker = self.blob(manifest(mediatypes.DOCKER_MANIFEST, config, layer_digests))
        oci = self.blob(manifest(mediatypes.OCI_MANIFEST, config, layer_digests))
        self.successResultOf(self.storage.put_document(
            "manifests", "key-" + name, {"docker": docker, "oci": oci}))
        self.successResultOf(self.storage.record_reference(
            name + ":latest", oci, mediatypes.OCI_MANIFEST, 100))
        self.at(0)
        return FakeImage(name, docker, oci, config, tuple(layer_digests))

    def pull(self, digest: str, days_ago: float) -> None:
        """Record a pull of ``digest`` as a daemon does."""
        self.at(days_ago * DAY)
        self.successResultOf(self.storage.put_document(
            "pulls", digest[7:], pull_document(digest, day_of(self.clock.seconds()))))
        self.at(0)

    def collect(self, keep_days: float | None = 10, grace_hours: float = 6,
                dry_run: bool = False) -> Report:
        self.at(0)
        collector = Collector(self.storage, self.clock.seconds, keep_days=keep_days,
                              grace=grace_hours * HOUR, dry_run=dry_run, concurrency=3)
        return self.successResultOf(Deferred.fromCoroutine(collector.collect()))

    def documents(self, namespace: str) -> set[str]:
        return {key for space, key in self.storage.documents if space == namespace}

    def world(self) -> dict[str, FakeImage]:
        """
        ``recent``: built long ago, pulled two days ago; ``unpulled``:
        built long ago, never pulled, sharing a layer with ``recent``;
        ``new``: built three days ago; ``stale``: pulled twenty days ago.
        """
        images = {
            "recent": self.image("recent", [b"shared layer", b"recent layer"], 40),
            "unpulled": self.image("unpulled", [b"shared layer", b"unpulled layer"], 40),
            "new": self.image("new", [b"new layer"], 3),
            "stale": self.image("stale", [b"stale layer"], 40),
        }
        self.pull(images["recent"].docker, 2)
        self.pull(images["stale"].oci, 20)
        return images

    def test_kept_and_removed(self) -> None:
        """Images pulled or built within the retention stay whole; the rest is removed."""
        images = self.world()
        self.at(30 * DAY)
        old_stray = self.blob(b"referenced by nothing")
        self.successResultOf(self.storage.put_document(
            "layers", "orphan", {"digest": digest_of(b"a layer long gone")}))
        self.at(0)
        kept = images["recent"].blobs() | images["new"].blobs()
        report = self.collect()
        self.assertEqual(set(self.storage.blobs), kept)
        self.assertEqual(self.documents("manifests"), {"key-recent", "key-new"})
        self.assertEqual(self.documents("pulls"), {images["recent"].docker[7:]})
        self.assertEqual({document["digest"] for document in self.documents_of("layers").values()},
                         set(images["recent"].layers) | set(images["new"].layers))
        self.assertEqual(set(self.storage.references), {"recent:latest", "new:latest"})
        self.assertEqual((report.images_kept, report.images_removed), (2, 2))
        counts = {kind: tally.count for kind, tally in report.removed.items()}
        self.assertEqual(counts, {"manifest document": 2, "pull document": 1,
                                  "layer document": 3, "manifest": 4, "config": 2,
                                  "layer": 2, "other": 1})
        self.assertEqual(report.index_entries, 2)
        self.assertIn(("other", old_stray, len(b"referenced by nothing")), report.items)
        self.assertEqual(report.blobs_kept.count, len(kept))
        self.assertEqual(report.changed, 0)

    def index(self, name: str, *images: FakeImage) -> str:
        """Store and name a daemon's OCI index of ``images``, as a pull by tag does."""
        body = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
                           "manifests": [{"digest": image.oci, "size": 1}
                                         for image in images]}).encode()
        digest = self.blob(body)
        self.successResultOf(self.storage.record_reference(
            name + ":latest", digest, mediatypes.OCI_INDEX, len(body)))
        return digest

    def test_index_of_platforms(self) -> None:
        """
        A daemon's index of several platforms is kept while its images are,
        and removed (and unnamed) with them; an index naming manifests of
        no image (another tool's) is kept.
        """
        self.at(40 * DAY)
        amd = self.image("multi-amd64", [b"amd64 layer"], 40)
        arm = self.image("multi-arm64", [b"arm64 layer"], 40)
        kept_amd = self.image("kept-amd64", [b"kept amd64 layer"], 40)
        kept_arm = self.image("kept-arm64", [b"kept arm64 layer"], 40)
        self.at(40 * DAY)
        stale = self.index("multi", amd, arm)
        kept = self.index("kept", kept_amd, kept_arm)
        other = self.index("other", FakeImage("x", digest_of(b"x"), digest_of(b"y"),
                                              digest_of(b"z"), ()))
        self.at(0)
        self.pull(kept_amd.docker, 1)
        self.pull(kept_arm.docker, 1)
        self.collect()
        self.assertNotIn(stale, self.storage.blobs)
        self.assertFalse(amd.blobs() & set(self.storage.blobs))
        self.assertIn(kept, self.storage.blobs)
        self.assertTrue(kept_amd.blobs() | kept_arm.blobs() <= set(self.storage.blobs))
        self.assertIn(other, self.storage.blobs)
        self.assertEqual({name for name in self.storage.references
                          if not name.endswith("64:latest")}, {"kept:latest", "other:latest"})

    def test_dry_run_changes_nothing(self) -> None:
        """A dry run removes nothing and reports exactly what the real run then removes."""
        self.world()
        before = (dict(self.storage.blobs), dict(self.storage.documents),
                  json.dumps(self.storage.references, sort_keys=True))
        planned = self.collect(dry_run=True)
        self.assertEqual((dict(self.storage.blobs), dict(self.storage.documents),
                          json.dumps(self.storage.references, sort_keys=True)), before)
        self.assertEqual(self.storage.calls["remove_blob"]
                         + self.storage.calls["remove_document"]
                         + self.storage.calls["prune_references"], 0)
        done = self.collect()
        self.assertEqual(sorted(planned.items), sorted(done.items))
        self.assertEqual(planned.index_entries, done.index_entries)
        self.assertTrue(planned.dry_run)
        self.assertEqual(self.collect().items, [])

    def test_grace(self) -> None:
        """Nothing written within the grace period is removed, whatever references it."""
        self.at(5 * HOUR)
        young = self.blob(b"written five hours ago")
        self.at(7 * HOUR)
        old = self.blob(b"written seven hours ago")
        image = self.image("old", [b"old layer"], 40)
        self.at(HOUR)
        self.successResultOf(self.storage.put_document(
            "manifests", "another-key", {"docker": image.docker, "oci": image.oci}))
        self.collect(grace_hours=6)
        self.assertIn(young, self.storage.blobs)
        self.assertNotIn(old, self.storage.blobs)
        self.assertTrue(image.blobs() <= set(self.storage.blobs))
        self.collect(grace_hours=0.5)
        self.assertNotIn(young, self.storage.blobs)
        self.assertTrue(image.blobs() <= set(self.storage.blobs))

    def test_everything_young_is_kept(self) -> None:
        """Documents and blobs of an expired image written within the grace period stay."""
        self.at(0)
        image = self.image("expired", [b"layer"], 40)
        for name in list(self.storage.written):
            self.storage.written[name] = (NOW - HOUR, self.storage.written[name][1])
        report = self.collect(keep_days=0.01, grace_hours=2)
        self.assertEqual((report.images_kept, report.images_removed), (1, 0))
        self.assertTrue(image.blobs() <= set(self.storage.blobs))
        self.assertEqual(self.documents("manifests"), {"key-expired"})

    def test_written_after_marking(self) -> None:
        """
        A blob stored after marking is kept, and so is an old layer that a
        manifest written then names (a build storing its manifest before
        its cache document).
        """
        expired = self.image("expired", [b"expired layer"], 40)
        written: list[str] = []

        def build_meanwhile() -> None:
            layer = self.blob(b"a layer written during the pass")
            config = self.blob(b"a config written during the pass")
            written.extend([layer, config, self.blob(manifest(
                mediatypes.OCI_MANIFEST, config, [expired.layers[0], layer]))])

        self.storage.before["list_blobs"] = build_meanwhile
        self.collect()
        self.assertTrue(set(written) <= set(self.storage.blobs))
        self.assertIn(expired.layers[0], self.storage.blobs)
        self.assertNotIn(expired.config, self.storage.blobs)
        self.assertNotIn(expired.docker, self.storage.blobs)

    def test_pulled_during_the_pass(self) -> None:
        """A pull document written again before its removal keeps it and its image's blobs."""
        image = self.image("expired", [b"layer"], 40)
        self.pull(image.docker, 30)
        removals: list[str] = []

        def pulled_now() -> None:
            if not removals:
                self.pull(image.docker, 0)
            removals.append("called")

        self.storage.before["remove_document"] = pulled_now
        report = self.collect()
        self.assertEqual(report.changed, 1)
        self.assertEqual(self.documents("pulls"), {image.docker[7:]})
        self.assertTrue({image.docker, image.config, *image.layers} <= set(self.storage.blobs))

    def test_blob_stored_again_during_the_pass(self) -> None:
        """A blob stored again between listing and removal stays."""
        stray = b"stored again"
        self.at(30 * DAY)
        digest = self.blob(stray)
        self.at(0)

        def stored_again() -> None:
            self.blob(stray)

        self.storage.before["remove_blob"] = stored_again
        report = self.collect()
        self.assertIn(digest, self.storage.blobs)
        self.assertEqual(report.changed, 1)
        self.assertEqual(report.removed, {})

    def test_index_entries_of_other_tools_kept(self) -> None:
        """A manifest named in the index but in no cache document is kept with its blobs."""
        self.at(30 * DAY)
        layer, config = self.blob(b"foreign layer"), self.blob(b"foreign config")
        foreign = self.blob(manifest(mediatypes.OCI_MANIFEST, config, [layer]))
        self.successResultOf(self.storage.record_reference(
            "copied:v1", foreign, mediatypes.OCI_MANIFEST, 10))
        self.collect(keep_days=1)
        self.assertTrue({layer, config, foreign} <= set(self.storage.blobs))
        self.assertIn("copied:v1", self.storage.references)

    def test_pulled_by_oci_digest(self) -> None:
        """A pull of either manifest keeps the whole image."""
        image = self.image("oci", [b"layer"], 40)
        self.pull(image.oci, 1)
        self.collect()
        self.assertTrue(image.blobs() <= set(self.storage.blobs))

    def test_pull_keeps_a_manifest_without_documents(self) -> None:
        """
        A manifest pulled within the retention keeps its blobs even when
        its cache documents are gone (a daemon may serve it from memory).
        """
        image = self.image("served", [b"layer"], 40)
        del self.storage.documents[("manifests", "key-served")]
        del self.storage.references["served:latest"]
        self.pull(image.docker, 1)
        self.collect()
        self.assertTrue({image.docker, image.config, *image.layers} <= set(self.storage.blobs))
        self.assertNotIn(image.oci, self.storage.blobs)

    def test_every_image_kept_without_retention(self) -> None:
        """Without a retention every image stays; only what nothing names goes."""
        images = self.world()
        self.at(30 * DAY)
        stray = self.blob(b"stray")
        report = self.collect(keep_days=None)
        self.assertEqual(set(self.storage.blobs),
                         set().union(*(image.blobs() for image in images.values())))
        self.assertEqual([item[1] for item in report.items], [stray])

    def test_broken_documents_removed(self) -> None:
        """Old documents that are not what their namespace holds are removed."""
        self.at(30 * DAY)
        for namespace in ("manifests", "pulls", "layers"):
            self.successResultOf(self.storage.put_document(namespace, "broken", ["?"]))
        self.successResultOf(self.storage.put_document("pulls", "not-a-digest",
                                                       {"day": "2024-01-01"}))
        self.collect()
        self.assertEqual(self.storage.documents, {})

    def test_report_lines(self) -> None:
        """The report says what went, by kind, with bytes; a dry run says "would"."""
        self.world()
        lines = self.collect(dry_run=True).lines(verbose=True)
        self.assertEqual(lines[0], "would keep 2 images pulled or built within 10 days,"
                         " would remove 2; nothing written in the last 6 hours would be removed")
        self.assertIn("would remove 2 manifest cache documents (", lines[1])
        self.assertIn("would remove 0 unreferenced blobs (0 B)", lines)
        self.assertIn("would remove 1 pull document (106 B)", lines)
        self.assertIn("would remove 2 index entries", lines)
        self.assertTrue(any(line.startswith("would remove layer sha256:") for line in lines))
        real = self.collect().lines()
        self.assertTrue(real[1].startswith("removed 2 manifest cache documents"), real)

    def test_storage_failure_fails_the_pass(self) -> None:
        """A storage that fails stops the pass with the error; nothing is removed after it."""
        self.world()
        self.storage.failures["read_small_blob"] = OSError(5, "Input/output error")
        collector = Collector(self.storage, self.clock.seconds, keep_days=10, grace=0)
        self.failureResultOf(Deferred.fromCoroutine(collector.collect()), OSError)
        self.assertEqual(self.storage.calls["remove_blob"], 0)
        self.assertEqual(self.storage.calls["remove_document"], 0)

    def documents_of(self, namespace: str) -> dict[str, Any]:
        return {key: json.loads(data) for (space, key), data in self.storage.documents.items()
                if space == namespace}

"""
Garbage collection of a GCS bucket, on a real emulator: a collector pass
over images stored through the GCS backend, and ``nixeryd gc`` naming the
bucket with the daemon's variables.  :class:`BucketCollectionCases` runs
the same on any bucket (``test_gc_s3`` runs it on S3).

The emulator cannot date an object in the past, so the passes here look
at the bucket from forty days on (their clock is ahead) rather than
ageing what they collect.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

from twisted.internet.threads import deferToThread

from nixeryd.core import mediatypes
from nixeryd.gc.collector import Collector
from nixeryd.service.pulls import DAY, day_of, pull_document
from nixeryd.storage.gcs.objects import blob_object_name
from nixeryd.storage.interface import IStorage
from nixeryd.testing.storage import digest_of
from tests.e2e import child_environment, run
from tests.gcssupport import EmulatorTestCase


def manifest(media_type: str, config: str, layers: list[str]) -> bytes:
    """A manifest naming ``config`` and ``layers``."""
    return json.dumps({"schemaVersion": 2, "mediaType": media_type,
                       "config": {"digest": config, "size": 1},
                       "layers": [{"digest": layer, "size": 1} for layer in layers]}).encode()


if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase as _CasesBase
else:
    _CasesBase = object


class BucketCollectionCases(_CasesBase):
    """
    A pass over a bucket; subclasses set ``storage`` and say how to list
    and read the bucket behind it, and which variables name it.
    """

    storage: IStorage

    async def object_names(self) -> list[str]:
        """Every object in the bucket, seen directly."""
        raise NotImplementedError()

    async def download(self, name: str) -> bytes | None:
        """An object's content, seen directly."""
        raise NotImplementedError()

    def bucket_environment(self) -> dict[str, str]:
        """The variables naming the bucket, as the daemon reads them."""
        raise NotImplementedError()

    async def blob(self, data: bytes) -> str:
        digest = digest_of(data)
        await self.storage.store_blob_bytes(data, digest)
        return digest

    async def image(self, name: str, layers: list[bytes]) -> set[str]:
        """Store an image as a build does; the names of its objects."""
        layer_digests = [await self.blob(data) for data in layers]
        for digest in layer_digests:
            await self.storage.put_document("layers", "l-" + digest[7:19], {"digest": digest})
        config = await self.blob(b"config " + name.encode())
        docker = await self.blob(manifest(mediatypes.DOCKER_MANIFEST, config, layer_digests))
        oci = await self.blob(manifest(mediatypes.OCI_MANIFEST, config, layer_digests))
        await self.storage.put_document("manifests", "m-" + name,
                                        {"docker": docker, "oci": oci})
        await self.storage.record_reference(name + ":latest", oci, mediatypes.OCI_MANIFEST, 1)
        return ({blob_object_name(d) for d in [docker, oci, config] + layer_digests}
                | {"nixeryd/manifests/m-%s.json" % (name,)}
                | {"nixeryd/layers/l-%s.json" % (d[7:19],) for d in layer_digests})

    async def test_pass(self) -> None:
        """
        Forty days on, the image pulled the day before stays whole; the
        other goes with its documents and index entry, except the layer
        it shares; so does an unreferenced blob.
        """
        kept = await self.image("kept", [b"shared layer", b"kept layer"])
        expired = await self.image("expired", [b"shared layer", b"expired layer"])
        later = time.time() + 40 * DAY
        kept_docker = json.loads(await self.download(
            "nixeryd/manifests/m-kept.json") or b"{}")["docker"]
        await self.storage.put_document("pulls", kept_docker[7:],
                                        pull_document(kept_docker, day_of(later) - 1))
        stray = await self.blob(b"referenced by nothing")
        before = set(await self.object_names())
        self.assertTrue({blob_object_name(stray), "index.json"} | kept | expired <= before)

        dry = await Collector(self.storage, lambda: later, keep_days=10, grace=3600,
                              dry_run=True).collect()
        self.assertEqual(set(await self.object_names()), before)
        report = await Collector(self.storage, lambda: later, keep_days=10,
                                 grace=3600).collect()
        after = set(await self.object_names())
        self.assertEqual(before - after,
                         (expired - kept) | {blob_object_name(stray)})
        self.assertEqual(sorted(dry.items), sorted(report.items))
        self.assertEqual((report.images_kept, report.images_removed), (1, 1))
        self.assertEqual(report.index_entries, 1)
        self.assertEqual([m["annotations"]["org.opencontainers.image.ref.name"]
                          for m in await self.storage.list_references()], ["kept:latest"])

    async def test_command(self) -> None:
        """``nixeryd gc`` finds the bucket through the daemon's variables."""
        stray = await self.blob(b"stray")
        kept = await self.image("kept", [b"layer"])
        result = await deferToThread(run, [
            sys.executable, "-m", "nixeryd", "gc", "--grace", "0", "--unsafe-grace"],
            env=child_environment(**self.bucket_environment()))
        self.assertIn("removed 1 unreferenced blob (5 B)", result.stdout.splitlines())
        self.assertEqual(set(await self.object_names()), kept | {"index.json"})
        self.assertNotIn(blob_object_name(stray), await self.object_names())


class GCSCollectionTests(EmulatorTestCase, BucketCollectionCases):
    """A pass over the emulator's bucket."""

    def started(self) -> None:
        self.storage = self.emulator_storage()

    async def object_names(self) -> list[str]:
        return await self.emulator.object_names()

    async def download(self, name: str) -> bytes | None:
        return await self.emulator.download(name)

    def bucket_environment(self) -> dict[str, str]:
        return {"NIXERY_STORAGE_BACKEND": "gcs", "GCS_BUCKET": self.emulator.bucket,
                "STORAGE_EMULATOR_HOST": self.emulator.endpoint}

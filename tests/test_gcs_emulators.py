"""
What the GCS storage does the same on both emulators:

- the content type each object is stored with: cache documents and the
  index as ``application/json``, blobs (small ones in one multipart
  request, large ones resumably) as ``application/octet-stream``.
  gcp-storage-emulator (like Cloud Storage) reads the ``contentType`` of
  the multipart metadata; fake-gcs-server reads the media part's
  ``Content-Type`` header only.  The storage sets both.
- documents written again under generation preconditions (which only
  fake-gcs-server enforces): a changed document replaces the old one, an
  unchanged one is kept.
"""

from __future__ import annotations

import os


from nixeryd.storage.gcs.objects import blob_object_name
from nixeryd.storage.ociindex import REF_NAME
from nixeryd.testing.storage import digest_of
from tests.gcsemulator import FAKE_GCS_MISSING_REASON
from tests.gcssupport import EmulatorTestCase

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


class EmulatorAgreementTests(EmulatorTestCase):
    """On gcp-storage-emulator."""

    async def content_type(self, name: str) -> str | None:
        resource = await self.emulator.object_resource(name)
        assert resource is not None, name
        content_type: str | None = resource.get("contentType")
        return content_type

    async def test_documents_are_json(self) -> None:
        """A cache document and the index are application/json."""
        storage = self.emulator_storage(signed=False)
        await storage.put_document("manifests", "k1", {"a": 1})
        data = b"manifest"
        await storage.store_blob_bytes(data, digest_of(data))
        await storage.record_reference("a:b", digest_of(data), MANIFEST_TYPE, len(data))
        self.assertEqual(await self.content_type("nixeryd/manifests/k1.json"),
                         "application/json")
        self.assertEqual(await self.content_type("index.json"), "application/json")
        self.assertIn(REF_NAME, (await self.emulator.download("index.json") or b"").decode())

    async def test_documents_replaced(self) -> None:
        """A document written again with other content replaces it; the same content is kept."""
        storage = self.emulator_storage(signed=False)
        await storage.put_document("pins", "k", {"v": 1})
        await storage.put_document("pins", "k", {"v": 2})
        self.assertEqual(await storage.get_document("pins", "k"), {"v": 2})
        before = await self.emulator.object_resource("nixeryd/pins/k.json")
        await storage.put_document("pins", "k", {"v": 2})
        after = await self.emulator.object_resource("nixeryd/pins/k.json")
        assert before is not None and after is not None
        self.assertEqual((await storage.get_document("pins", "k"), after["md5Hash"]),
                         ({"v": 2}, before["md5Hash"]))

    async def test_blobs_are_octet_stream(self) -> None:
        """A small blob (multipart) and a large one (resumable): application/octet-stream."""
        storage = self.emulator_storage(signed=False, simple_upload_limit=1024,
                                        chunk_size=256 * 1024)
        small = b"small blob"
        await storage.store_blob_bytes(small, digest_of(small))
        large = os.urandom(300 * 1024)
        path = os.path.join(storage.temp_directory(), "layer")
        with open(path, "wb") as f:
            f.write(large)
        await storage.store_blob_file(path, digest_of(large))
        for data in (small, large):
            self.assertEqual(await self.content_type(blob_object_name(digest_of(data))),
                             "application/octet-stream")


class FakeGCSAgreementTests(EmulatorAgreementTests):
    """The same on fake-gcs-server."""

    skip = FAKE_GCS_MISSING_REASON
    fake_gcs = True

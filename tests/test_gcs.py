"""
What only the GCS backend promises, checked against a real Cloud Storage
emulator (gcp-storage-emulator, run as a child process): the bucket
layout, uploads streamed in chunks and guarded by their MD5, signed blob
URLs, and the storage the daemon builds from its settings.

The contract shared with the other backends is in ``test_storage``;
answers the emulator never gives are in ``test_gcs_client``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tracemalloc
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer

import treq

from nixeryd.core.documents import RedirectBlob
from nixeryd.core.errors import BlobUnknown
from nixeryd.storage.gcs.recentblobs import RecentBlobs
from nixeryd.storage.gcs import GCSError, GCSStorage, build_gcs_storage, load_service_account_key
from nixeryd.storage.gcs.objects import md5_base64
from nixeryd.storage.objectnames import blob_object_name
from nixeryd.storage.gcs.signing import ServiceAccountKey
from nixeryd.storage.ociindex import REF_NAME
from nixeryd.testing.storage import digest_of
from tests.daemon import free_port
from tests.gcssupport import KEY_FILE, EmulatorTestCase, start_pool

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
MiB = 1024 * 1024


@implementer(ILogObserver)
class ChunkEvents:
    """Collects the log events of resumable-upload chunks."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_format", "").startswith("Sent bytes"):
            self.events.append(event)


def capture_chunk_events(case: TestCase) -> list[LogEvent]:
    """Log events of resumable-upload chunks emitted while the test runs."""
    observer = ChunkEvents()
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return observer.events


class GCSEmulatorTests(EmulatorTestCase):
    """GCS-specific behaviour checked against the emulator."""

    def started(self) -> None:
        self.storage = self.emulator_storage()

    async def test_bucket_layout(self) -> None:
        """Blobs, documents and the index land under their documented names."""
        data = b"layout"
        await self.storage.store_blob_bytes(data, digest_of(data))
        await self.storage.put_document("manifests", "k1", {})
        await self.storage.record_reference("a:b", digest_of(data), MANIFEST_TYPE, 6)
        self.assertEqual(await self.emulator.object_names(), sorted([
            "blobs/sha256/" + hashlib.sha256(data).hexdigest(),
            "nixeryd/manifests/k1.json", "index.json"]))

    async def test_index_is_sorted_oci_index(self) -> None:
        """The index is an OCI image index, sorted by reference."""
        first, second = digest_of(b"first"), digest_of(b"second")
        await self.storage.record_reference("zlib/hello:latest", first, MANIFEST_TYPE, 5)
        await self.storage.record_reference("bash:latest", second, MANIFEST_TYPE, 6)
        await self.storage.record_reference("zlib/hello:latest", second, MANIFEST_TYPE, 6)
        data = await self.emulator.download("index.json")
        assert data is not None
        index = json.loads(data)
        self.assertEqual(index["schemaVersion"], 2)
        self.assertEqual(
            [(m["annotations"][REF_NAME], m["digest"], m["size"]) for m in index["manifests"]],
            [("bash:latest", second, 6), ("zlib/hello:latest", second, 6)])

    async def test_resumable_upload_is_streamed(self) -> None:
        """
        A 16 MiB layer goes up in 1 MiB chunks read 64 KiB at a time, arrives
        intact, and the upload's memory peak stays far below the file size.
        """
        storage = self.emulator_storage(chunk_size=1 * MiB, read_size=64 * 1024,
                                        simple_upload_limit=1 * MiB)
        path = os.path.join(storage.temp_directory(), "layer")
        sha, md5 = hashlib.sha256(), hashlib.md5()
        with open(path, "wb") as f:
            for _ in range(16):
                piece = os.urandom(MiB)
                sha.update(piece)
                md5.update(piece)
                f.write(piece)
        del piece
        digest = "sha256:" + sha.hexdigest()
        events = capture_chunk_events(self)

        tracemalloc.start()
        try:
            await storage.store_blob_file(path, digest)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

        self.assertFalse(os.path.exists(path))
        self.assertLess(peak, 4 * MiB)
        self.assertEqual(len(events), 16)
        self.assertEqual({e["last"] - e["first"] + 1 for e in events}, {MiB})
        self.assertTrue(all(e["pieces"] == 16 and e["largest_piece"] == 64 * 1024
                            for e in events))
        resource = await self.emulator.object_resource(blob_object_name(digest))
        assert resource is not None
        self.assertEqual(resource["md5Hash"], base64.b64encode(md5.digest()).decode())
        self.assertEqual(int(resource["size"]), 16 * MiB)
        content = await self.emulator.download(blob_object_name(digest))
        assert content is not None
        self.assertEqual(hashlib.sha256(content).hexdigest(), sha.hexdigest())

    async def test_uneven_resumable_upload(self) -> None:
        """A file that is not a whole number of chunks arrives intact."""
        storage = self.emulator_storage(chunk_size=256 * 1024, simple_upload_limit=1000)
        data = os.urandom(600 * 1024 + 7)
        path = os.path.join(storage.temp_directory(), "layer")
        with open(path, "wb") as f:
            f.write(data)
        events = capture_chunk_events(self)
        await storage.store_blob_file(path, digest_of(data))
        self.assertEqual(len(events), 3)
        self.assertEqual(await self.emulator.download(blob_object_name(digest_of(data))), data)

    async def test_existing_blob_not_uploaded_again(self) -> None:
        """Storing a blob that exists with the same content leaves the object untouched."""
        data = os.urandom(5000)
        digest = digest_of(data)
        await self.storage.store_blob_bytes(data, digest)
        before = await self.emulator.object_resource(blob_object_name(digest))
        assert before is not None
        path = os.path.join(self.storage.temp_directory(), "again")
        with open(path, "wb") as f:
            f.write(data)
        await self.storage.store_blob_file(path, digest)
        await self.storage.store_blob_bytes(data, digest)
        after = await self.emulator.object_resource(blob_object_name(digest))
        assert after is not None
        self.assertEqual(after["generation"], before["generation"])
        self.assertFalse(os.path.exists(path))

    async def test_wrong_object_replaced(self) -> None:
        """An object whose size does not match its digest is overwritten."""
        data = b"the right content"
        digest = digest_of(data)
        await self.emulator.put(blob_object_name(digest), b"truncated")
        await self.storage.store_blob_bytes(data, digest)
        self.assertEqual(await self.emulator.download(blob_object_name(digest)), data)

    async def test_corrupt_single_upload_rejected(self) -> None:
        """A single-request upload whose MD5 does not match its body is refused and not stored."""
        name = blob_object_name(digest_of(b"payload"))
        with self.assertRaises(GCSError) as caught:
            await self.storage.client.upload_bytes(name, b"payload", md5_base64(b"other"), "0")
        self.assertEqual(caught.exception.status, 400)
        self.assertIsNone(await self.emulator.object_resource(name))

    async def test_corrupt_resumable_upload_rejected(self) -> None:
        """A resumable upload whose MD5 does not match the file is refused and not stored."""
        storage = self.emulator_storage(chunk_size=256 * 1024)
        data = os.urandom(300 * 1024)
        path = os.path.join(storage.temp_directory(), "layer")
        with open(path, "wb") as f:
            f.write(data)
        name = blob_object_name(digest_of(data))
        with self.assertRaises(GCSError) as caught:
            await storage.client.upload_file(name, path, len(data),
                                             md5_base64(b"other"), "0")
        self.assertEqual(caught.exception.status, 400)
        self.assertIsNone(await self.emulator.object_resource(name))

    async def test_signed_url(self) -> None:
        """
        The blob answer is a five-minute V4 URL, path style on the emulator,
        identical to google-cloud-storage's for the same time, and it fetches
        the object.
        """
        from google.cloud.storage._signing import (  # type: ignore[import-untyped]
            generate_signed_url_v4)
        from google.oauth2 import service_account

        data = os.urandom(3000)
        digest = digest_of(data)
        await self.storage.store_blob_bytes(data, digest)
        blob = await self.storage.blob(digest)
        assert isinstance(blob, RedirectBlob)
        url = urlsplit(blob.url)
        query = dict(parse_qsl(url.query))
        name = blob_object_name(digest)
        self.assertEqual(url.scheme + "://" + url.netloc, self.emulator.endpoint)
        self.assertEqual(url.path, "/%s/%s" % (self.emulator.bucket, name))
        self.assertEqual(query["X-Goog-Expires"], "300")
        signed_at = datetime.strptime(query["X-Goog-Date"], "%Y%m%dT%H%M%SZ").replace(
            tzinfo=timezone.utc).timestamp()
        self.assertLess(abs(signed_at - reactor.seconds()), 5)

        credentials = service_account.Credentials.from_service_account_file(KEY_FILE)
        expected = generate_signed_url_v4(
            credentials, "/%s/%s" % (self.emulator.bucket, name), expiration=300,
            api_access_endpoint=self.emulator.endpoint, method="GET",
            _request_timestamp=query["X-Goog-Date"])
        self.assertEqual(blob.url, expected)

        response = await treq.get(blob.url, pool=HTTPConnectionPool(reactor, persistent=False))
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), data)

    async def test_blob_requests_share_metadata(self) -> None:
        """
        Requests for one blob at once share one metadata request and get
        the same signed URL; within the window after it, the blob is
        answered again without asking (an object deleted behind the
        storage's back is still answered), after the window the bucket is
        asked again; removing the blob through the storage forgets it.
        """
        clock = Clock()
        self.storage._recent = RecentBlobs(clock.seconds, window=0.05)
        data = os.urandom(1000)
        digest = digest_of(data)
        name = blob_object_name(digest)
        await self.storage.store_blob_bytes(data, digest)
        asked: list[str] = []
        metadata = self.storage.client.metadata

        def counted(name: str) -> Any:
            asked.append(name)
            return metadata(name)

        self.storage.client.metadata = counted  # type: ignore[method-assign]
        answers = await gatherResults([self.storage.blob(digest) for _ in range(5)])
        self.assertEqual(asked, [name])
        self.assertEqual(len(set(answers)), 1)

        await self.storage.client.delete(name)
        clock.advance(0.04)
        self.assertEqual(await self.storage.blob(digest), answers[0])
        self.assertEqual(len(asked), 1)
        clock.advance(0.01)
        with self.assertRaises(BlobUnknown):
            await self.storage.blob(digest)
        self.assertEqual(len(asked), 2)

        await self.emulator.put(name, data)
        await self.storage.blob(digest)
        [stored] = await self.storage.list_blobs()
        self.assertTrue(await self.storage.remove_blob(digest, stored.version))
        with self.assertRaises(BlobUnknown):
            await self.storage.blob(digest)

    async def test_lookup_during_removal_not_trusted(self) -> None:
        """
        A blob lookup on its way while the blob is removed through the
        storage is not remembered: the next request asks the bucket again
        and learns the blob is gone, instead of being sent to a deleted
        object for the rest of the window.
        """
        self.storage._recent = RecentBlobs(Clock().seconds, window=60)
        data = os.urandom(1000)
        digest = digest_of(data)
        name = blob_object_name(digest)
        await self.storage.store_blob_bytes(data, digest)
        [stored] = await self.storage.list_blobs()
        metadata = self.storage.client.metadata
        fetched: Deferred[None] = Deferred()
        held: Deferred[None] = Deferred()

        async def slow(name: str) -> Any:
            resource = await metadata(name)
            fetched.callback(None)
            await held
            return resource

        self.storage.client.metadata = slow  # type: ignore[method-assign]
        answer = self.storage.blob(digest)
        await fetched
        self.assertTrue(await self.storage.remove_blob(digest, stored.version))
        held.callback(None)
        self.assertIsInstance(await answer, RedirectBlob)
        self.storage.client.metadata = metadata  # type: ignore[method-assign]
        with self.assertRaises(BlobUnknown):
            await self.storage.blob(digest)
        self.assertIsNone(self.storage._recent.size(name))

    async def test_missing_object_found_forgets(self) -> None:
        """
        An object found missing by an existence check or a refresh is
        forgotten at once, not answered for the rest of the window.
        """
        self.storage._recent = RecentBlobs(Clock().seconds, window=60)
        for check in (self.storage.has_blob, self.storage.refresh_blob):
            data = os.urandom(1000)
            digest = digest_of(data)
            name = blob_object_name(digest)
            await self.storage.store_blob_bytes(data, digest)
            await self.storage.blob(digest)
            self.assertEqual(self.storage._recent.size(name), 1000)
            await self.storage.client.delete(name)
            await check(digest)
            self.assertIsNone(self.storage._recent.size(name), check)
            with self.assertRaises(BlobUnknown):
                await self.storage.blob(digest)

    async def test_unsigned_url_without_key(self) -> None:
        """Without a key (emulator use), blob answers are plain URLs that still fetch."""
        storage = self.emulator_storage(signed=False)
        data = b"plain"
        await storage.store_blob_bytes(data, digest_of(data))
        blob = await storage.blob(digest_of(data))
        assert isinstance(blob, RedirectBlob)
        self.assertNotIn("?", blob.url)
        response = await treq.get(blob.url, pool=HTTPConnectionPool(reactor, persistent=False))
        self.assertEqual(await response.content(), data)

    async def test_spool_directory(self) -> None:
        """The temporary directory is the storage's own in the configured spool, created at start."""
        spool = self.mktemp()
        storage = self.emulator_storage(spool_directory=spool)
        self.assertEqual(os.path.dirname(storage.temp_directory()), os.path.abspath(spool))
        self.assertTrue(os.path.isdir(storage.temp_directory()))


class BuildTests(EmulatorTestCase):
    """:func:`build_gcs_storage`, as the daemon calls it, on the emulator."""

    def build(self, bucket: str, key: ServiceAccountKey | None = None) -> GCSStorage:
        """The storage the daemon builds for the emulator, closed at the end of the test."""
        storage = build_gcs_storage(reactor, self.runner, bucket, key, self.emulator.endpoint,
                                    spool_directory=self.mktemp())
        self.addCleanup(storage.close)
        return storage

    async def test_anonymous_with_emulator(self) -> None:
        """Without a key, the storage for an emulator endpoint works anonymously."""
        storage = self.build(self.emulator.bucket)
        await storage.check_bucket()
        data = b"from the factory"
        await storage.store_blob_bytes(data, digest_of(data))
        self.assertTrue(await storage.has_blob(digest_of(data)))
        blob = await storage.blob(digest_of(data))
        assert isinstance(blob, RedirectBlob)
        self.assertNotIn("?", blob.url)

    async def test_key_signs_urls(self) -> None:
        """A key read from its file signs the blob URLs."""
        storage = self.build(self.emulator.bucket, load_service_account_key(KEY_FILE))
        await storage.check_bucket()
        data = b"signed"
        await storage.store_blob_bytes(data, digest_of(data))
        blob = await storage.blob(digest_of(data))
        assert isinstance(blob, RedirectBlob)
        self.assertIn("X-Goog-Credential=test-iam-credentials%40", blob.url)

    async def test_missing_bucket(self) -> None:
        """A bucket that does not exist fails the check with a message naming it."""
        storage = self.build("no-such-bucket")
        with self.assertRaises(GCSError) as caught:
            await storage.check_bucket()
        self.assertIn("gs://no-such-bucket does not exist", str(caught.exception))


class ChecksumRequestTests(EmulatorTestCase):
    """What checking a blob costs on Cloud Storage."""

    async def test_one_metadata_request_per_blob_and_process(self) -> None:
        """
        The storage that wrote a blob checks it without a request; another
        one (a restart) asks once and then remembers; the checksum is the
        object's MD5.
        """
        writer = self.emulator_storage()
        data = os.urandom(5000)
        digest = digest_of(data)
        await writer.store_blob_bytes(data, digest)
        asked: list[str] = []

        def counting(storage: GCSStorage) -> None:
            original = storage.client.metadata

            async def metadata(name: str) -> Any:
                asked.append(name)
                return await original(name)

            storage.client.metadata = metadata  # type: ignore[method-assign]

        counting(writer)
        checksum = (await writer.check_blob(digest)).checksum
        self.assertEqual(checksum, "md5:" + md5_base64(data))
        self.assertEqual(asked, [])
        restarted = self.emulator_storage()
        counting(restarted)
        for _ in range(3):
            self.assertTrue((await restarted.check_blob(digest, checksum)).intact)
        self.assertEqual(asked, [blob_object_name(digest)])


class BuildErrorTests(TestCase):
    """Start-up failures that need no server."""

    def setUp(self) -> None:
        self.runner = start_pool(self)

    async def test_no_credentials_for_real_gcs(self) -> None:
        """
        Real Cloud Storage without a key file and without a metadata server
        answering is refused, when first used, with what to set.
        """
        storage = build_gcs_storage(reactor, self.runner, "bucket", None,
                                    metadata_host="127.0.0.1:%d" % (free_port(),))
        self.addCleanup(storage.close)
        with self.assertRaises(GCSError) as caught:
            await storage.check_bucket()
        self.assertIn("no credentials", str(caught.exception))
        self.assertIn("GOOGLE_APPLICATION_CREDENTIALS", str(caught.exception))

    def test_unreadable_key(self) -> None:
        """A key path that cannot be read, or is not a key, is reported with its path."""
        missing = self.mktemp()
        error = self.assertRaises(GCSError, load_service_account_key, missing)
        self.assertIn(missing, str(error))
        not_a_key = self.mktemp()
        with open(not_a_key, "w") as f:
            f.write('{"type": "authorized_user"}')
        error = self.assertRaises(GCSError, load_service_account_key, not_a_key)
        self.assertIn(not_a_key, str(error))

    async def test_unreachable_endpoint(self) -> None:
        """An endpoint nobody listens on is reported as unreachable."""
        endpoint = "http://127.0.0.1:%d" % (free_port(),)
        storage = build_gcs_storage(reactor, self.runner, "bucket", None, endpoint,
                                    spool_directory=self.mktemp())
        self.addCleanup(storage.close)
        with self.assertRaises(GCSError) as caught:
            await storage.check_bucket()
        self.assertIn("cannot reach", str(caught.exception))

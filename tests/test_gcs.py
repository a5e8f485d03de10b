"""
Tests for :mod:`nixeryd.storage.gcs.storage` against a real Cloud Storage emulator
(gcp-storage-emulator, run as a child process), plus a small in-process
twisted.web server for the answers the emulator never gives (403, 500, 412)
and for the OAuth2 token endpoint.

The storage contract shared with the filesystem backend runs on both
backends, so the two are checked to behave alike.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tracemalloc
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

import treq

from nixeryd.core.documents import LocalBlob, RedirectBlob
from nixeryd.core.errors import BlobUnknown, DigestInvalid
from nixeryd.storage.gcs.signing import ServiceAccountKey, format_timestamp, jwt_assertion
from nixeryd.storage.filesystem import FilesystemStorage
from nixeryd.storage.gcs.storage import (
    AccessTokenSource, FileRegionProducer, GCSError, GCSStorage,
    blob_object_name, document_object_name, file_size_and_md5,
    gcs_storage_from_settings, md5_base64)
from nixeryd.storage.ociindex import REF_NAME
from nixeryd.core.threads import ThreadPoolService
from tests.gcsemulator import MISSING_REASON, anonymous_client, start_emulator

KEY_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "gcs-v4",
                        "service-account.json")
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
MiB = 1024 * 1024


def load_key() -> ServiceAccountKey:
    """The dummy service-account key of the signing conformance vectors."""
    with open(KEY_FILE, "rb") as f:
        return ServiceAccountKey.from_json(f.read())


def digest_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def start_pool(case: TestCase) -> ThreadPoolService:
    """A running thread pool, stopped when the test ends."""
    pool = ThreadPoolService(reactor, 4, name="nixeryd-test")
    pool.startService()
    case.addCleanup(pool.stopService)
    return pool


class StorageContractMixin:
    """
    Behaviour every storage backend shares.  Subclasses provide
    :meth:`make_storage`, :meth:`fetch` (the bytes behind a blob answer) and
    :meth:`read_index` (the stored image index).
    """

    storage: Any

    async def fetch(self, blob: Any) -> bytes:
        raise NotImplementedError()

    async def read_index(self) -> dict:
        raise NotImplementedError()

    def write_temp_file(self, data: bytes) -> str:
        """A file in the storage's temporary directory holding ``data``."""
        path = os.path.join(self.storage.temp_directory(), "upload-%d" % (len(data),))
        with open(path, "wb") as f:
            f.write(data)
        return path

    async def test_missing_blob(self) -> None:
        """A blob never stored is absent, unreadable and has no answer."""
        digest = digest_of(b"never stored")
        self.assertFalse(await self.storage.has_blob(digest))
        self.assertIsNone(await self.storage.read_small_blob(digest, 1000))
        with self.assertRaises(BlobUnknown):
            await self.storage.blob(digest)

    async def test_store_bytes(self) -> None:
        """Stored bytes are then present, readable and served unchanged."""
        data = b'{"config": true}\r\n\x00\xff--binary\r\n'
        digest = digest_of(data)
        await self.storage.store_blob_bytes(data, digest)
        self.assertTrue(await self.storage.has_blob(digest))
        self.assertEqual(await self.storage.read_small_blob(digest, 1000), data)
        blob = await self.storage.blob(digest)
        self.assertEqual(blob.digest, digest)
        self.assertEqual(await self.fetch(blob), data)

    async def test_store_file(self) -> None:
        """A stored file becomes the blob and leaves the temporary directory."""
        data = os.urandom(70000)
        path = self.write_temp_file(data)
        await self.storage.store_blob_file(path, digest_of(data))
        self.assertFalse(os.path.exists(path))
        self.assertEqual(await self.fetch(await self.storage.blob(digest_of(data))), data)

    async def test_store_file_invalid_digest_removes_file(self) -> None:
        """A file handed over with an invalid digest is refused and still removed."""
        path = self.write_temp_file(b"data")
        with self.assertRaises(DigestInvalid):
            await self.storage.store_blob_file(path, "sha256:../../etc/passwd")
        self.assertFalse(os.path.exists(path))

    async def test_invalid_digests(self) -> None:
        """Every blob operation refuses digests that are not sha256 and 64 lowercase hex."""
        for digest in ("sha256:" + "A" * 64, "sha512:" + "a" * 64, "sha256:" + "a" * 63,
                       "sha256:../" + "a" * 61, ""):
            with self.assertRaises(DigestInvalid):
                await self.storage.has_blob(digest)
            with self.assertRaises(DigestInvalid):
                await self.storage.blob(digest)
            with self.assertRaises(DigestInvalid):
                await self.storage.read_small_blob(digest, 10)
            with self.assertRaises(DigestInvalid):
                await self.storage.store_blob_bytes(b"x", digest)

    async def test_read_small_blob_limit(self) -> None:
        """A blob larger than the limit reads as None; one at the limit is returned."""
        data = b"0123456789" * 10
        digest = digest_of(data)
        await self.storage.store_blob_bytes(data, digest)
        self.assertIsNone(await self.storage.read_small_blob(digest, 99))
        self.assertEqual(await self.storage.read_small_blob(digest, 100), data)

    async def test_documents(self) -> None:
        """Documents read back as stored, are replaced by later ones, and are None when absent."""
        self.assertIsNone(await self.storage.get_document("closures", "abc"))
        await self.storage.put_document("closures", "abc", {"paths": ["a", "b"], "n": 1})
        self.assertEqual(await self.storage.get_document("closures", "abc"),
                         {"paths": ["a", "b"], "n": 1})
        await self.storage.put_document("closures", "abc", [1, 2, 3])
        self.assertEqual(await self.storage.get_document("closures", "abc"), [1, 2, 3])
        self.assertIsNone(await self.storage.get_document("closures", "abd"))

    async def test_invalid_document_names(self) -> None:
        """Namespaces and keys outside the grammar are refused."""
        for namespace, key in (("Bad", "k"), ("ns", "../k"), ("ns", "a/b"), ("", "k")):
            with self.assertRaises(ValueError):
                await self.storage.put_document(namespace, key, {})
            with self.assertRaises(ValueError):
                await self.storage.get_document(namespace, key)

    async def test_record_reference(self) -> None:
        """References name manifests in a sorted OCI index; recording one again repoints it."""
        first, second = digest_of(b"first"), digest_of(b"second")
        await self.storage.record_reference("zlib/hello:latest", first, MANIFEST_TYPE, 5)
        await self.storage.record_reference("bash:latest", second, MANIFEST_TYPE, 6)
        await self.storage.record_reference("zlib/hello:latest", second, MANIFEST_TYPE, 6)
        index = await self.read_index()
        self.assertEqual(index["schemaVersion"], 2)
        self.assertEqual(
            [(m["annotations"][REF_NAME], m["digest"], m["size"]) for m in index["manifests"]],
            [("bash:latest", second, 6), ("zlib/hello:latest", second, 6)])

    async def test_record_reference_invalid(self) -> None:
        """Invalid references and digests are refused before anything is written."""
        with self.assertRaises(ValueError):
            await self.storage.record_reference("bad ref", digest_of(b"x"), MANIFEST_TYPE, 1)
        with self.assertRaises(DigestInvalid):
            await self.storage.record_reference("ok:latest", "sha256:xyz", MANIFEST_TYPE, 1)


class FilesystemContractTests(StorageContractMixin, TestCase):
    """The shared contract on the filesystem backend, as the reference behaviour."""

    def setUp(self) -> None:
        self.storage = FilesystemStorage(self.mktemp(), start_pool(self))

    async def fetch(self, blob: Any) -> bytes:
        self.assertIsInstance(blob, LocalBlob)
        with open(blob.path, "rb") as f:
            return f.read()

    async def read_index(self) -> dict:
        with open(os.path.join(self.storage.root, "index.json"), "rb") as f:
            return json.load(f)


class EmulatorTestCase(TestCase):
    """Runs a fresh emulator and a storage on it for each test."""

    skip = MISSING_REASON

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self.runner = start_pool(self)
        self.emulator = await start_emulator(reactor)
        self.addCleanup(lambda: Deferred.fromCoroutine(self.emulator.stop()))
        self.storage = self.make_storage()

    def make_storage(self, **overrides: Any) -> GCSStorage:
        """A storage on the emulator's bucket, signing with the dummy key."""
        settings: dict[str, Any] = dict(
            signing_key=load_key(), endpoint=self.emulator.endpoint,
            spool_directory=self.mktemp(),
            pool=HTTPConnectionPool(reactor, persistent=False))
        settings.update(overrides)
        return GCSStorage(reactor, self.runner, self.emulator.bucket, **settings)


class GCSContractTests(StorageContractMixin, EmulatorTestCase):
    """The shared contract on the GCS backend."""

    async def fetch(self, blob: Any) -> bytes:
        self.assertIsInstance(blob, RedirectBlob)
        response = await treq.get(blob.url, pool=HTTPConnectionPool(reactor, persistent=False))
        body = await response.content()
        self.assertEqual(response.code, 200)
        return body

    async def read_index(self) -> dict:
        return json.loads(await self.emulator.download("index.json"))


def capture_chunk_events(case: TestCase) -> list[dict]:
    """Log events of resumable-upload chunks emitted while the test runs."""
    events: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_format", "").startswith("Sent bytes"):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return events


class GCSEmulatorTests(EmulatorTestCase):
    """GCS-specific behaviour checked against the emulator."""

    async def test_bucket_layout(self) -> None:
        """Blobs, documents and the index land under their documented names."""
        data = b"layout"
        await self.storage.store_blob_bytes(data, digest_of(data))
        await self.storage.put_document("manifests", "k1", {})
        await self.storage.record_reference("a:b", digest_of(data), MANIFEST_TYPE, 6)
        self.assertEqual(await self.emulator.object_names(), sorted([
            "blobs/sha256/" + hashlib.sha256(data).hexdigest(),
            "nixeryd/manifests/k1.json", "index.json"]))

    async def test_resumable_upload_is_streamed(self) -> None:
        """
        A 16 MiB layer goes up in 1 MiB chunks read 64 KiB at a time, arrives
        intact, and the upload's memory peak stays far below the file size.
        """
        storage = self.make_storage(chunk_size=1 * MiB, read_size=64 * 1024,
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
        self.assertEqual(resource["md5Hash"], base64.b64encode(md5.digest()).decode())
        self.assertEqual(int(resource["size"]), 16 * MiB)
        content = await self.emulator.download(blob_object_name(digest))
        self.assertEqual(hashlib.sha256(content).hexdigest(), sha.hexdigest())

    async def test_uneven_resumable_upload(self) -> None:
        """A file that is not a whole number of chunks arrives intact."""
        storage = self.make_storage(chunk_size=256 * 1024, simple_upload_limit=1000)
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
        path = os.path.join(self.storage.temp_directory(), "again")
        with open(path, "wb") as f:
            f.write(data)
        await self.storage.store_blob_file(path, digest)
        await self.storage.store_blob_bytes(data, digest)
        after = await self.emulator.object_resource(blob_object_name(digest))
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
            await self.storage._upload_bytes(name, b"payload", md5_base64(b"other"), "0")
        self.assertEqual(caught.exception.status, 400)
        self.assertIsNone(await self.emulator.object_resource(name))

    async def test_corrupt_resumable_upload_rejected(self) -> None:
        """A resumable upload whose MD5 does not match the file is refused and not stored."""
        storage = self.make_storage(chunk_size=256 * 1024)
        data = os.urandom(300 * 1024)
        path = os.path.join(storage.temp_directory(), "layer")
        with open(path, "wb") as f:
            f.write(data)
        name = blob_object_name(digest_of(data))
        with self.assertRaises(GCSError) as caught:
            await storage._upload_file_resumable(name, path, len(data),
                                                 md5_base64(b"other"), "0")
        self.assertEqual(caught.exception.status, 400)
        self.assertIsNone(await self.emulator.object_resource(name))

    async def test_signed_url(self) -> None:
        """
        The blob answer is a five-minute V4 URL, path style on the emulator,
        identical to google-cloud-storage's for the same time, and it fetches
        the object.
        """
        from google.cloud.storage._signing import generate_signed_url_v4
        from google.oauth2 import service_account

        data = os.urandom(3000)
        digest = digest_of(data)
        await self.storage.store_blob_bytes(data, digest)
        blob = await self.storage.blob(digest)
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
            headers={"Host": "127.0.0.1"}, _request_timestamp=query["X-Goog-Date"])
        self.assertEqual(blob.url, expected)

        response = await treq.get(blob.url, pool=HTTPConnectionPool(reactor, persistent=False))
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), data)

    async def test_unsigned_url_without_key(self) -> None:
        """Without a key (emulator use), blob answers are plain URLs that still fetch."""
        storage = self.make_storage(signing_key=None)
        data = b"plain"
        await storage.store_blob_bytes(data, digest_of(data))
        blob = await storage.blob(digest_of(data))
        self.assertNotIn("?", blob.url)
        response = await treq.get(blob.url, pool=HTTPConnectionPool(reactor, persistent=False))
        self.assertEqual(await response.content(), data)

    async def test_spool_directory(self) -> None:
        """The temporary directory is the configured local spool, created at start."""
        spool = self.mktemp()
        storage = self.make_storage(spool_directory=spool)
        self.assertEqual(storage.temp_directory(), os.path.abspath(spool))
        self.assertTrue(os.path.isdir(spool))

    async def test_factory_with_emulator(self) -> None:
        """The factory builds a working anonymous storage for an emulator endpoint."""
        storage = await gcs_storage_from_settings(
            reactor, self.runner, self.emulator.bucket, endpoint=self.emulator.endpoint,
            spool_directory=self.mktemp(), environ={})
        self.addCleanup(storage.close)
        data = b"from the factory"
        await storage.store_blob_bytes(data, digest_of(data))
        self.assertTrue(await storage.has_blob(digest_of(data)))

    async def test_factory_key_from_environment(self) -> None:
        """The key named by GOOGLE_APPLICATION_CREDENTIALS signs the blob URLs."""
        storage = await gcs_storage_from_settings(
            reactor, self.runner, self.emulator.bucket, endpoint=self.emulator.endpoint,
            spool_directory=self.mktemp(),
            environ={"GOOGLE_APPLICATION_CREDENTIALS": KEY_FILE})
        self.addCleanup(storage.close)
        data = b"signed"
        await storage.store_blob_bytes(data, digest_of(data))
        blob = await storage.blob(digest_of(data))
        self.assertIn("X-Goog-Credential=test-iam-credentials%40", blob.url)

    async def test_factory_missing_bucket(self) -> None:
        """A bucket that does not exist stops start-up with a message naming it."""
        with self.assertRaises(GCSError) as caught:
            await gcs_storage_from_settings(
                reactor, self.runner, "no-such-bucket", endpoint=self.emulator.endpoint,
                spool_directory=self.mktemp(), environ={})
        self.assertIn("gs://no-such-bucket does not exist", str(caught.exception))


class FactoryErrorTests(TestCase):
    """Start-up failures that need no server."""

    def setUp(self) -> None:
        self.runner = start_pool(self)

    async def test_no_key_for_real_gcs(self) -> None:
        """Real Cloud Storage without a key file is refused with the variable to set."""
        with self.assertRaises(GCSError) as caught:
            await gcs_storage_from_settings(reactor, self.runner, "bucket", environ={})
        self.assertIn("GOOGLE_APPLICATION_CREDENTIALS", str(caught.exception))

    async def test_unreadable_key(self) -> None:
        """A key path that cannot be read, or is not a key, is reported with its path."""
        missing = self.mktemp()
        with self.assertRaises(GCSError) as caught:
            await gcs_storage_from_settings(reactor, self.runner, "bucket",
                                            credentials_path=missing, environ={})
        self.assertIn(missing, str(caught.exception))
        not_a_key = self.mktemp()
        with open(not_a_key, "w") as f:
            f.write('{"type": "authorized_user"}')
        with self.assertRaises(GCSError):
            await gcs_storage_from_settings(reactor, self.runner, "bucket",
                                            credentials_path=not_a_key, environ={})

    async def test_unreachable_endpoint(self) -> None:
        """An endpoint nobody listens on is reported as unreachable."""
        port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        endpoint = "http://127.0.0.1:%d" % (port.getHost().port,)
        await port.stopListening()
        with self.assertRaises(GCSError) as caught:
            await gcs_storage_from_settings(reactor, self.runner, "bucket",
                                            endpoint=endpoint,
                                            spool_directory=self.mktemp(), environ={})
        self.assertIn("cannot reach", str(caught.exception))


@attrs.define
class Recorded:
    """One request the fake server received."""

    method: str
    uri: str
    headers: dict[str, str]
    body: bytes


class FakeServer(Resource):
    """
    Answers each request with the next scripted ``(status, body)``, or the
    default once the script is used up, and records what it received.
    """

    isLeaf = True

    def __init__(self, default: tuple[int, bytes] = (500, b"{}")) -> None:
        super().__init__()
        self.script: list[tuple[int, bytes]] = []
        self.default = default
        self.requests: list[Recorded] = []

    def render(self, request: Any) -> bytes:
        self.requests.append(Recorded(
            request.method.decode(), request.uri.decode(),
            {k.decode().lower(): v[0].decode()
             for k, v in request.requestHeaders.getAllRawHeaders()},
            request.content.read()))
        status, body = self.script.pop(0) if self.script else self.default
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return body


class FakeServerTestCase(TestCase):
    """A storage talking to an in-process fake server."""

    def setUp(self) -> None:
        self.runner = start_pool(self)
        self.fake = FakeServer()
        port = reactor.listenTCP(0, Site(self.fake), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.endpoint = "http://127.0.0.1:%d" % (port.getHost().port,)
        self.storage = GCSStorage(
            reactor, self.runner, "bucket-1", signing_key=load_key(),
            endpoint=self.endpoint, spool_directory=self.mktemp(),
            pool=HTTPConnectionPool(reactor, persistent=False))


class ErrorStatusTests(FakeServerTestCase):
    """Answers other than 200 and 404 are errors, never "missing"."""

    async def test_forbidden_is_not_missing(self) -> None:
        """A 403 on lookup fails has_blob and blob instead of reporting no blob."""
        self.fake.default = (403, b'{"error": {"message": "no storage.objects.get"}}')
        digest = digest_of(b"x")
        with self.assertRaises(GCSError) as caught:
            await self.storage.has_blob(digest)
        self.assertEqual(caught.exception.status, 403)
        self.assertIn("no storage.objects.get", str(caught.exception))
        with self.assertRaises(GCSError):
            await self.storage.blob(digest)

    async def test_server_error_on_reads(self) -> None:
        """A 500 fails blob and document reads rather than returning None."""
        digest = digest_of(b"x")
        with self.assertRaises(GCSError) as caught:
            await self.storage.read_small_blob(digest, 100)
        self.assertEqual(caught.exception.status, 500)
        with self.assertRaises(GCSError):
            await self.storage.get_document("ns", "key")

    async def test_failed_upload_removes_file(self) -> None:
        """When the upload fails, the error surfaces and the local file is still removed."""
        self.fake.script = [(404, b"{}")]
        path = os.path.join(self.storage.temp_directory(), "layer")
        with open(path, "wb") as f:
            f.write(b"layer")
        with self.assertRaises(GCSError) as caught:
            await self.storage.store_blob_file(path, digest_of(b"layer"))
        self.assertEqual(caught.exception.status, 500)
        self.assertFalse(os.path.exists(path))
        self.assertEqual([r.method for r in self.fake.requests], ["GET", "POST"])
        self.assertIn("ifGenerationMatch=0", self.fake.requests[1].uri)

    async def test_forbidden_bucket_check(self) -> None:
        """A bucket the credentials may not use is reported as such at start-up."""
        self.fake.default = (403, b"{}")
        with self.assertRaises(GCSError) as caught:
            await self.storage.check_bucket()
        self.assertIn("may not use gs://bucket-1", str(caught.exception))

    async def test_concurrent_index_update_retried(self) -> None:
        """
        When the index changes between read and write (412), the update is
        redone, each write guarded by the generation it read.
        """
        index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
        self.fake.script = [
            (404, b"{}"),                                    # no index yet
            (412, b"{}"),                                    # someone created it
            (200, json.dumps({"generation": "7"}).encode()),  # its metadata
            (200, index),                                    # its content
            (200, b"{}"),                                    # our write
        ]
        await self.storage.record_reference("a:b", digest_of(b"m"), MANIFEST_TYPE, 1)
        methods = [(r.method, parse_qs(urlsplit(r.uri).query).get("ifGenerationMatch"))
                   for r in self.fake.requests]
        self.assertEqual(methods, [("GET", None), ("POST", ["0"]), ("GET", None),
                                   ("GET", ["7"]), ("POST", ["7"])])
        self.assertIn(b'"a:b"', self.fake.requests[-1].body)


class FakeTokenEndpoint(Resource):
    """An OAuth2 token endpoint that checks the JWT bearer assertion."""

    isLeaf = True

    def __init__(self, key: ServiceAccountKey) -> None:
        super().__init__()
        self.key = key
        self.issued = 0

    def render_POST(self, request: Any) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        form = parse_qs(request.content.read().decode())
        assertion = form["assertion"][0]
        signing_input, _, signature = assertion.rpartition(".")
        self.key.private_key.public_key().verify(
            base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
            signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
        self.issued += 1
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"access_token": "token-%d" % (self.issued,),
                           "expires_in": 3600, "token_type": "Bearer"}).encode()


class AccessTokenTests(TestCase):
    """Access tokens from a service-account key."""

    def setUp(self) -> None:
        self.runner = start_pool(self)
        self.endpoint = FakeTokenEndpoint(load_key())
        port = reactor.listenTCP(0, Site(self.endpoint), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.key = attrs.evolve(load_key(), token_uri="http://127.0.0.1:%d/token"
                                % (port.getHost().port,))
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.tokens = AccessTokenSource(self.clock, self.runner, self.key,
                                        anonymous_client(reactor), reactor=reactor)

    async def test_token_cached_until_near_expiry(self) -> None:
        """A token is reused while valid and renewed five minutes before it expires."""
        self.assertEqual(await self.tokens.token(), "token-1")
        self.clock.advance(3000)
        self.assertEqual(await self.tokens.token(), "token-1")
        self.clock.advance(301)
        self.assertEqual(await self.tokens.token(), "token-2")
        self.assertEqual(self.endpoint.issued, 2)

    async def test_concurrent_callers_share_a_refresh(self) -> None:
        """Callers waiting during a refresh all get the token of one request."""
        tokens = await gatherResults([self.tokens.token() for _ in range(5)])
        self.assertEqual(tokens, ["token-1"] * 5)
        self.assertEqual(self.endpoint.issued, 1)

    async def test_refused_grant(self) -> None:
        """A token endpoint refusing the grant fails with its answer."""
        refusing = FakeServer(default=(400, b'{"error": "invalid_grant"}'))
        port = reactor.listenTCP(0, Site(refusing), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        key = attrs.evolve(self.key, token_uri="http://127.0.0.1:%d/token"
                           % (port.getHost().port,))
        tokens = AccessTokenSource(self.clock, self.runner, key,
                                   anonymous_client(reactor), reactor=reactor)
        with self.assertRaises(GCSError) as caught:
            await tokens.token()
        self.assertIn("invalid_grant", str(caught.exception))

    async def test_storage_sends_bearer_token(self) -> None:
        """With a token source, every storage request carries the bearer token."""
        fake = FakeServer(default=(404, b"{}"))
        port = reactor.listenTCP(0, Site(fake), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        storage = GCSStorage(
            reactor, self.runner, "bucket-1", signing_key=self.key,
            token_source=self.tokens, endpoint="http://127.0.0.1:%d" % (port.getHost().port,),
            spool_directory=self.mktemp(),
            pool=HTTPConnectionPool(reactor, persistent=False))
        self.assertFalse(await storage.has_blob(digest_of(b"a")))
        self.assertIsNone(await storage.get_document("ns", "k"))
        self.assertEqual([r.headers["authorization"] for r in fake.requests],
                         ["Bearer token-1"] * 2)


class RecordingConsumer:
    """A consumer that records writes and can apply back-pressure."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


class FileRegionProducerTests(TestCase):
    """The streaming request body."""

    def setUp(self) -> None:
        self.runner = start_pool(self)
        self.path = self.mktemp()
        self.data = os.urandom(100_000)
        with open(self.path, "wb") as f:
            f.write(self.data)

    async def test_region_in_pieces(self) -> None:
        """Exactly the region is written, in pieces no larger than the read size."""
        producer = FileRegionProducer(self.runner, self.path, 1000, 50_000, read_size=4096)
        consumer = RecordingConsumer()
        await producer.startProducing(consumer)
        self.assertEqual(b"".join(consumer.writes), self.data[1000:51000])
        self.assertEqual(max(len(w) for w in consumer.writes), 4096)
        self.assertEqual(producer.pieces_read, len(consumer.writes))

    async def test_pause_stops_reading(self) -> None:
        """While paused nothing more is read; resuming finishes the region."""
        producer = FileRegionProducer(self.runner, self.path, 0, 100_000, read_size=1000)
        consumer = RecordingConsumer()
        original_write = consumer.write

        def write_then_pause(data: bytes) -> None:
            original_write(data)
            if len(consumer.writes) == 3:
                producer.pauseProducing()

        consumer.write = write_then_pause  # type: ignore[method-assign]
        finished = producer.startProducing(consumer)
        for _ in range(20):
            await self.runner.run(lambda: None)
        self.assertEqual(len(consumer.writes), 3)
        self.assertFalse(finished.called)
        producer.resumeProducing()
        await finished
        self.assertEqual(b"".join(consumer.writes), self.data)

    async def test_stop_never_fires(self) -> None:
        """After stopProducing, the producer writes nothing more and never fires."""
        producer = FileRegionProducer(self.runner, self.path, 0, 100_000, read_size=1000)
        consumer = RecordingConsumer()
        finished = producer.startProducing(consumer)
        producer.stopProducing()
        for _ in range(20):
            await self.runner.run(lambda: None)
        self.assertLessEqual(len(consumer.writes), 1)
        self.assertFalse(finished.called)

    async def test_short_file_fails(self) -> None:
        """A file shorter than the announced region fails the body instead of hanging."""
        producer = FileRegionProducer(self.runner, self.path, 90_000, 20_000)
        with self.assertRaises(GCSError):
            await producer.startProducing(RecordingConsumer())


class NamingTests(SynchronousTestCase):
    """Object names and hashes."""

    def test_names(self) -> None:
        """Blobs and documents map to their documented object names."""
        digest = digest_of(b"n")
        self.assertEqual(blob_object_name(digest), "blobs/sha256/" + digest[7:])
        self.assertEqual(document_object_name("closures", "k-1.x"),
                         "nixeryd/closures/k-1.x.json")
        self.assertRaises(DigestInvalid, blob_object_name, "sha256:zz")
        self.assertRaises(ValueError, document_object_name, "closures", "a/../b")

    def test_file_md5(self) -> None:
        """The file MD5 is the base64 digest Cloud Storage reports as md5Hash."""
        path = self.mktemp()
        data = os.urandom(3 * 1024 * 1024 + 1)
        with open(path, "wb") as f:
            f.write(data)
        self.assertEqual(file_size_and_md5(path),
                         (len(data), base64.b64encode(hashlib.md5(data).digest()).decode()))

    def test_chunk_size_checked(self) -> None:
        """Resumable chunks that are not multiples of 256 KiB are refused."""
        self.assertRaises(ValueError, GCSStorage, reactor, None, "b1", signing_key=None,
                          spool_directory=self.mktemp(), chunk_size=1000)

    def test_assertion_time(self) -> None:
        """Token assertions use the injected time, not the wall clock."""
        token = jwt_assertion(load_key(), issued_at=42)
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        self.assertEqual((claims["iat"], claims["exp"]), (42, 3642))
        self.assertEqual(format_timestamp(datetime.fromtimestamp(0, timezone.utc)),
                         "19700101T000000Z")

"""
The storage contract, run on every :class:`IStorage` backend: the
in-memory test double (:class:`~nixeryd.testing.storage.MemoryStorage`),
:class:`~nixeryd.storage.filesystem.FilesystemStorage` and
:class:`~nixeryd.storage.gcs.storage.GCSStorage` on a Cloud Storage
emulator and :class:`~nixeryd.storage.s3.storage.S3Storage` on ``rclone
serve s3``; plus digest validation and what the test double adds.

What only one backend promises is tested with that backend
(``test_filesystem``, ``test_gcs``).
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from zope.interface.verify import verifyObject

from nixeryd.core import mediatypes
from nixeryd.core.digests import check_digest, is_valid_digest
from nixeryd.core.documents import LocalBlob, RedirectBlob
from nixeryd.core.errors import BlobUnknown, DigestInvalid
from nixeryd.core.threads import InlineRunner
from nixeryd.storage.filesystem import FilesystemStorage
from nixeryd.storage.integrity import BlobCorrupt, BlobState
from nixeryd.storage.interface import IStorage
from nixeryd.storage.ociindex import REF_NAME
from nixeryd.storage.service import StorageService
from nixeryd.testing.storage import (
    INVALID_DIGESTS,
    MemoryStorage,
    digest_of,
    write_temporary,
)
from tests.gcssupport import EmulatorTestCase
from tests.rclones3 import RcloneTestCase, s3_storage


class DigestTests(SynchronousTestCase):
    """:mod:`nixeryd.core.digests`."""

    def test_valid(self) -> None:
        """A sha256 digest with 64 lowercase hex digits is valid and yields its hex."""
        digest = digest_of(b"x")
        self.assertTrue(is_valid_digest(digest))
        self.assertEqual(check_digest(digest), digest[len("sha256:"):])

    def test_invalid(self) -> None:
        """Anything else is refused with DIGEST_INVALID."""
        for digest in INVALID_DIGESTS:
            self.assertFalse(is_valid_digest(digest), digest)
            error = self.assertRaises(DigestInvalid, check_digest, digest)
            self.assertEqual(error.code, "DIGEST_INVALID")


if TYPE_CHECKING:
    _ContractBase = TestCase
else:
    _ContractBase = object


class StorageContractMixin(_ContractBase):
    """
    The behaviour every :class:`IStorage` backend shares.  Subclasses set
    ``storage`` in ``setUp`` and provide :meth:`fetch` and
    :meth:`recorded_references`.
    """

    storage: IStorage
    #: Why a removal guarded by a version cannot be checked to fail on
    #: this backend, or ``None``.
    guarded_removal_unchecked: str | None = None

    def check_guarded_removal(self) -> None:
        """Skip the rest of the test on a backend that cannot refuse a stale removal."""
        if self.guarded_removal_unchecked is not None:
            raise SkipTest(self.guarded_removal_unchecked)

    async def fetch(self, blob: LocalBlob | RedirectBlob) -> bytes:
        """The bytes a client gets for a blob answer."""
        raise NotImplementedError()

    async def recorded_references(self) -> dict[str, dict[str, Any]]:
        """Reference → index descriptor, as the backend stored them."""
        raise NotImplementedError()

    def write_temporary(self, data: bytes) -> str:
        """A new file in the storage's temp directory holding ``data``."""
        return write_temporary(self.storage, data)

    async def damage(self, digest: str, data: bytes) -> None:
        """Put ``data`` under a stored blob's digest, behind the storage's back."""
        raise NotImplementedError()

    def reopened(self) -> IStorage:
        """The same backend opened again, as by a restarted daemon."""
        raise NotImplementedError()

    async def test_check_blob(self) -> None:
        """
        A stored blob checks intact, again with the checksum the check
        gave; a blob never stored checks missing.
        """
        data = os.urandom(2000)
        digest = digest_of(data)
        await self.storage.store_blob_bytes(data, digest)
        first = await self.storage.check_blob(digest)
        self.assertEqual(first.state, BlobState.INTACT)
        again = await self.reopened().check_blob(digest, first.checksum)
        self.assertEqual(again.state, BlobState.INTACT)
        self.assertEqual(again.checksum, first.checksum)
        missing = await self.storage.check_blob(digest_of(b"never stored"))
        self.assertEqual(missing.state, BlobState.MISSING)
        for bad in INVALID_DIGESTS[:3]:
            with self.assertRaises(DigestInvalid):
                await self.storage.check_blob(bad)

    async def test_damaged_blob_found(self) -> None:
        """
        Other bytes of the same size under a blob's digest are found by a
        storage opened again (given the checksum recorded before) and by
        the storage that wrote it, whose ``blob`` never answers them; the
        blob stored again is intact and served.
        """
        data = os.urandom(3000)
        digest = digest_of(data)
        path = self.write_temporary(data)
        await self.storage.store_blob_file(path, digest)
        checksum = (await self.storage.check_blob(digest)).checksum
        await self.damage(digest, os.urandom(3000))
        restarted = self.reopened()
        check = await restarted.check_blob(digest, checksum)
        self.assertEqual(check.state, BlobState.CORRUPT)
        with self.assertRaises(BlobCorrupt) as caught:
            await restarted.blob(digest)
        self.assertEqual(caught.exception.code, "BLOB_UNKNOWN")
        with self.assertRaises(BlobCorrupt):
            await self.storage.blob(digest)
        self.assertEqual((await self.storage.check_blob(digest, checksum)).state,
                         BlobState.CORRUPT)
        await self.storage.store_blob_bytes(data, digest)
        self.assertEqual((await self.storage.check_blob(digest, checksum)).state,
                         BlobState.INTACT)
        self.assertEqual(await self.fetch(await self.storage.blob(digest)), data)
        self.assertEqual((await restarted.check_blob(digest, checksum)).state,
                         BlobState.INTACT)

    def test_provides_interface(self) -> None:
        """The backend provides IStorage."""
        self.assertTrue(verifyObject(IStorage, self.storage))

    async def test_missing_blob(self) -> None:
        """A blob never stored is absent, unknown to ``blob`` and reads as ``None``."""
        digest = digest_of(b"never stored")
        self.assertFalse(await self.storage.has_blob(digest))
        self.assertIsNone(await self.storage.read_small_blob(digest, 1000))
        with self.assertRaises(BlobUnknown) as caught:
            await self.storage.blob(digest)
        self.assertEqual(caught.exception.code, "BLOB_UNKNOWN")

    async def test_bytes_round_trip(self) -> None:
        """Stored bytes are then present, read back whole and are served unchanged."""
        data = b'{"config": true}\r\n\x00\xff--binary\r\n'
        digest = digest_of(data)
        self.assertFalse(await self.storage.has_blob(digest))
        await self.storage.store_blob_bytes(data, digest)
        self.assertTrue(await self.storage.has_blob(digest))
        self.assertEqual(await self.storage.read_small_blob(digest, 1000), data)
        blob = await self.storage.blob(digest)
        self.assertEqual(blob.digest, digest)
        self.assertEqual(await self.fetch(blob), data)

    async def test_file_round_trip(self) -> None:
        """A stored file becomes the blob and leaves the temporary directory."""
        data = os.urandom(70000)
        digest = digest_of(data)
        path = self.write_temporary(data)
        await self.storage.store_blob_file(path, digest)
        self.assertFalse(os.path.exists(path))
        self.assertTrue(await self.storage.has_blob(digest))
        blob = await self.storage.blob(digest)
        self.assertEqual((blob.digest, blob.size), (digest, len(data)))
        self.assertEqual(await self.fetch(blob), data)
        self.assertEqual(await self.storage.read_small_blob(digest, 70000), data)

    async def test_store_file_failure_removes_file(self) -> None:
        """``store_blob_file`` removes the source file even when it fails."""
        for digest in ("md5:" + "0" * 32, "sha256:../../etc/passwd"):
            path = self.write_temporary(b"data")
            with self.assertRaises(DigestInvalid):
                await self.storage.store_blob_file(path, digest)
            self.assertFalse(os.path.exists(path))

    async def test_read_small_limit(self) -> None:
        """A blob larger than the limit reads as ``None``; one at the limit reads whole."""
        data = b"0123456789" * 10
        digest = digest_of(data)
        await self.storage.store_blob_bytes(data, digest)
        self.assertIsNone(await self.storage.read_small_blob(digest, 99))
        self.assertEqual(await self.storage.read_small_blob(digest, 100), data)

    async def test_invalid_digests(self) -> None:
        """Every digest-taking method refuses an invalid digest with DigestInvalid."""
        for digest in INVALID_DIGESTS:
            with self.assertRaises(DigestInvalid):
                await self.storage.has_blob(digest)
            with self.assertRaises(DigestInvalid):
                await self.storage.blob(digest)
            with self.assertRaises(DigestInvalid):
                await self.storage.refresh_blob(digest)
            with self.assertRaises(DigestInvalid):
                await self.storage.read_small_blob(digest, 10)
            with self.assertRaises(DigestInvalid):
                await self.storage.store_blob_bytes(b"x", digest)
            path = self.write_temporary(b"x")
            with self.assertRaises(DigestInvalid):
                await self.storage.store_blob_file(path, digest)
            with self.assertRaises(DigestInvalid):
                await self.storage.record_reference(
                    "latest", digest, mediatypes.OCI_MANIFEST, 1)

    async def test_documents_round_trip(self) -> None:
        """A document reads back equal, is replaced by a later put, and a missing one is ``None``."""
        self.assertIsNone(await self.storage.get_document("layers", "k"))
        document = {"digest": digest_of(b"l"), "size": 3, "list": [1, "two"]}
        await self.storage.put_document("layers", "k", document)
        self.assertEqual(await self.storage.get_document("layers", "k"), document)
        await self.storage.put_document("layers", "k", [1, 2, 3])
        self.assertEqual(await self.storage.get_document("layers", "k"), [1, 2, 3])
        self.assertIsNone(await self.storage.get_document("manifests", "k"))
        self.assertIsNone(await self.storage.get_document("layers", "l"))

    async def test_document_names(self) -> None:
        """Namespaces and keys that could escape or collide are refused."""
        for namespace, key in (("tmp", "k"), ("../x", "k"), ("Layers", "k"), ("", "k"),
                               ("layers", ""), ("layers", "a/b"), ("layers", "../k"),
                               ("layers", "k" * 201), ("a/b", "k")):
            with self.assertRaises(ValueError):
                await self.storage.put_document(namespace, key, {})
            with self.assertRaises(ValueError):
                await self.storage.get_document(namespace, key)
        await self.storage.put_document("manifests", "A-b_c.1" * 10, {})

    async def test_record_reference(self) -> None:
        """A reference names a manifest; recording the same reference again repoints it."""
        first, second = digest_of(b"m1"), digest_of(b"m2")
        await self.storage.record_reference(
            "zlib/hello:latest", first, mediatypes.OCI_MANIFEST, 10)
        await self.storage.record_reference("v1", first, mediatypes.OCI_MANIFEST, 10)
        await self.storage.record_reference(
            "zlib/hello:latest", second, mediatypes.DOCKER_MANIFEST, 20)
        references = await self.recorded_references()
        self.assertEqual(set(references), {"zlib/hello:latest", "v1"})
        self.assertEqual(
            {k: references["zlib/hello:latest"][k] for k in ("mediaType", "digest", "size")},
            {"mediaType": mediatypes.DOCKER_MANIFEST, "digest": second, "size": 20})
        self.assertEqual(references["v1"]["digest"], first)

    async def test_invalid_reference(self) -> None:
        """A reference outside the image-spec grammar is refused."""
        for reference in ("", "-x", "a//b", "a b", "x/"):
            with self.assertRaises(ValueError):
                await self.storage.record_reference(
                    reference, digest_of(b"m"), mediatypes.OCI_MANIFEST, 1)

    async def test_list_blobs(self) -> None:
        """Every stored blob is listed with its size, a recent time and a version."""
        self.assertEqual(await self.storage.list_blobs(), [])
        before = time.time() - 60
        small, large = b"small", os.urandom(30000)
        await self.storage.store_blob_bytes(small, digest_of(small))
        await self.storage.store_blob_file(self.write_temporary(large), digest_of(large))
        listed = {blob.digest: blob for blob in await self.storage.list_blobs()}
        self.assertEqual({digest: blob.size for digest, blob in listed.items()},
                         {digest_of(small): 5, digest_of(large): 30000})
        for blob in listed.values():
            self.assertTrue(before < blob.modified < time.time() + 60, blob)
            self.assertTrue(blob.version)

    async def test_remove_blob(self) -> None:
        """A blob removed at its listed version is gone; removing it again says so."""
        data = b"to be removed"
        digest = digest_of(data)
        await self.storage.store_blob_bytes(data, digest)
        await self.storage.store_blob_bytes(b"kept", digest_of(b"kept"))
        [listed] = [b for b in await self.storage.list_blobs() if b.digest == digest]
        self.assertTrue(await self.storage.remove_blob(digest, listed.version))
        self.assertFalse(await self.storage.has_blob(digest))
        self.assertIsNone(await self.storage.read_small_blob(digest, 100))
        self.assertEqual([b.digest for b in await self.storage.list_blobs()],
                         [digest_of(b"kept")])
        self.assertFalse(await self.storage.remove_blob(digest, listed.version))
        self.assertTrue(await self.storage.has_blob(digest_of(b"kept")))

    async def test_blob_stored_again_is_not_removed(self) -> None:
        """A blob stored again after it was listed has a new version, and stays."""
        data = b"stored twice"
        digest = digest_of(data)
        await self.storage.store_blob_bytes(data, digest)
        [listed] = await self.storage.list_blobs()
        await self.storage.store_blob_bytes(data, digest)
        [again] = await self.storage.list_blobs()
        self.assertNotEqual(again.version, listed.version)
        self.assertGreaterEqual(again.modified, listed.modified)
        self.check_guarded_removal()
        self.assertFalse(await self.storage.remove_blob(digest, listed.version))
        self.assertEqual(await self.storage.read_small_blob(digest, 100), data)
        self.assertTrue(await self.storage.remove_blob(digest, again.version))

    async def test_refreshed_blob_is_not_removed(self) -> None:
        """
        A blob refreshed after it was listed (a build reusing it) has a new
        version and a time no earlier, and a removal guarded by the listed
        version leaves it; refreshing a missing blob says it is missing.
        """
        data = b"reused layer"
        digest = digest_of(data)
        self.assertFalse(await self.storage.refresh_blob(digest))
        self.assertFalse(await self.storage.has_blob(digest))
        await self.storage.store_blob_bytes(data, digest)
        [listed] = await self.storage.list_blobs()
        self.assertTrue(await self.storage.refresh_blob(digest))
        [again] = await self.storage.list_blobs()
        self.assertNotEqual(again.version, listed.version)
        self.assertGreaterEqual(again.modified, listed.modified)
        self.assertEqual(await self.storage.read_small_blob(digest, 100), data)
        self.check_guarded_removal()
        self.assertFalse(await self.storage.remove_blob(digest, listed.version))
        self.assertEqual(await self.storage.read_small_blob(digest, 100), data)
        self.assertTrue(await self.storage.remove_blob(digest, again.version))
        self.assertFalse(await self.storage.refresh_blob(digest))

    async def test_remove_blob_invalid_digest(self) -> None:
        """Removal refuses an invalid digest."""
        for digest in INVALID_DIGESTS:
            with self.assertRaises(DigestInvalid):
                await self.storage.remove_blob(digest, "1")

    async def test_list_and_remove_documents(self) -> None:
        """Documents are listed by namespace; a removal at the listed version takes one out."""
        self.assertEqual(await self.storage.list_documents("pulls"), [])
        await self.storage.put_document("pulls", "a", {"day": "2024-05-01"})
        await self.storage.put_document("pulls", "b.c-d_e", [1])
        await self.storage.put_document("layers", "a", {})
        listed = {d.key: d for d in await self.storage.list_documents("pulls")}
        self.assertEqual(set(listed), {"a", "b.c-d_e"})
        for document in listed.values():
            self.assertEqual(document.namespace, "pulls")
            self.assertGreater(document.size, 0)
            self.assertTrue(time.time() - 60 < document.modified < time.time() + 60)
        self.assertTrue(await self.storage.remove_document("pulls", "a", listed["a"].version))
        self.assertIsNone(await self.storage.get_document("pulls", "a"))
        self.assertFalse(await self.storage.remove_document("pulls", "a", listed["a"].version))
        self.assertEqual([d.key for d in await self.storage.list_documents("pulls")],
                         ["b.c-d_e"])
        self.assertEqual([d.key for d in await self.storage.list_documents("layers")], ["a"])

    async def test_document_written_again_is_not_removed(self) -> None:
        """A document rewritten after it was listed stays, with its new content."""
        await self.storage.put_document("pulls", "k", {"day": "2024-05-01"})
        [listed] = await self.storage.list_documents("pulls")
        await self.storage.put_document("pulls", "k", {"day": "2024-05-02"})
        [again] = await self.storage.list_documents("pulls")
        self.assertNotEqual(again.version, listed.version)
        self.check_guarded_removal()
        self.assertFalse(await self.storage.remove_document("pulls", "k", listed.version))
        self.assertEqual(await self.storage.get_document("pulls", "k"), {"day": "2024-05-02"})

    async def test_document_listing_names(self) -> None:
        """Listing and removal refuse namespaces and keys outside the grammar."""
        for namespace in ("tmp", "../x", "Layers", "", "a/b"):
            with self.assertRaises(ValueError):
                await self.storage.list_documents(namespace)
            with self.assertRaises(ValueError):
                await self.storage.remove_document(namespace, "k", "1")
        with self.assertRaises(ValueError):
            await self.storage.remove_document("layers", "../k", "1")

    async def test_list_and_prune_references(self) -> None:
        """The index lists what was recorded; pruning takes out the entries of given manifests."""
        first, second = digest_of(b"m1"), digest_of(b"m2")
        self.assertEqual(await self.storage.list_references(), [])
        await self.storage.record_reference("b:latest", first, mediatypes.OCI_MANIFEST, 10)
        await self.storage.record_reference("a:latest", second, mediatypes.OCI_MANIFEST, 20)
        await self.storage.record_reference("a:v1", first, mediatypes.OCI_MANIFEST, 10)
        listed = await self.storage.list_references()
        self.assertEqual([(m["annotations"][REF_NAME], m["digest"], m["size"]) for m in listed],
                         [("a:latest", second, 20), ("a:v1", first, 10),
                          ("b:latest", first, 10)])
        self.assertEqual(await self.storage.prune_references({first, digest_of(b"none")}), 2)
        self.assertEqual(set(await self.recorded_references()), {"a:latest"})
        self.assertEqual(await self.storage.prune_references([first]), 0)
        await self.storage.record_reference("c", first, mediatypes.OCI_MANIFEST, 10)
        self.assertEqual(set(await self.recorded_references()), {"a:latest", "c"})

    async def test_close(self) -> None:
        """``close`` fires, and a storage service closes its storage when it stops."""
        await self.storage.close()
        service = StorageService(self.storage)
        service.startService()
        await service.stopService()
        self.assertFalse(service.running)


def index_references(index: bytes) -> dict[str, dict[str, Any]]:
    """Reference → descriptor, from the bytes of an OCI ``index.json``."""
    return {m["annotations"][REF_NAME]: m for m in json.loads(index)["manifests"]}


class MemoryStorageContractTests(StorageContractMixin, TestCase):
    """The contract on the in-memory test double."""

    storage: MemoryStorage

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.storage = MemoryStorage(directory)

    async def fetch(self, blob: LocalBlob | RedirectBlob) -> bytes:
        assert isinstance(blob, RedirectBlob)
        self.assertEqual(blob.url, "https://blobs.invalid/" + blob.digest)
        return self.storage.blobs[blob.digest]

    async def recorded_references(self) -> dict[str, dict[str, Any]]:
        return self.storage.references

    async def damage(self, digest: str, data: bytes) -> None:
        self.storage.damage_blob(digest, data)

    def reopened(self) -> IStorage:
        return self.storage


class FilesystemStorageContractTests(StorageContractMixin, TestCase):
    """The contract on :class:`FilesystemStorage`."""

    storage: FilesystemStorage

    def setUp(self) -> None:
        self.storage = FilesystemStorage(os.path.abspath(self.mktemp()), InlineRunner())

    async def fetch(self, blob: LocalBlob | RedirectBlob) -> bytes:
        assert isinstance(blob, LocalBlob)
        with open(blob.path, "rb") as f:
            return f.read()

    async def recorded_references(self) -> dict[str, dict[str, Any]]:
        with open(os.path.join(self.storage.root, "index.json"), "rb") as f:
            return index_references(f.read())

    async def damage(self, digest: str, data: bytes) -> None:
        # Rewritten in place: same inode, same size, only the time changes
        # (a second later, as damage comes later than the write: the file
        # system's clock ticks more coarsely than a test runs).
        path = os.path.join(self.storage.root, "blobs", "sha256", digest.split(":")[1])
        written = os.stat(path).st_mtime_ns
        with open(path, "r+b") as f:
            f.write(data)
        os.utime(path, ns=(written + 10**9, written + 10**9))

    def reopened(self) -> IStorage:
        storage = FilesystemStorage(self.storage.root, InlineRunner())
        self.addCleanup(storage.close)
        return storage


class GCSStorageContractTests(EmulatorTestCase, StorageContractMixin):
    """The contract on :class:`~nixeryd.storage.gcs.storage.GCSStorage`, on the emulator."""

    guarded_removal_unchecked = (
        "the emulator ignores ifGenerationMatch and ifMetagenerationMatch on delete"
        " (test_gcs_client checks that they are sent and that a 412 is a refusal)")

    def started(self) -> None:
        self.storage = self.emulator_storage()

    async def fetch(self, blob: LocalBlob | RedirectBlob) -> bytes:
        assert isinstance(blob, RedirectBlob)
        response = await treq.get(blob.url, pool=HTTPConnectionPool(reactor, persistent=False))
        body: bytes = await response.content()
        self.assertEqual(response.code, 200)
        return body

    async def recorded_references(self) -> dict[str, dict[str, Any]]:
        index = await self.emulator.download("index.json")
        assert index is not None
        return index_references(index)

    async def damage(self, digest: str, data: bytes) -> None:
        await self.emulator.put("blobs/sha256/" + digest.split(":")[1], data)

    def reopened(self) -> IStorage:
        return self.emulator_storage()


class S3StorageContractTests(RcloneTestCase, StorageContractMixin):
    """
    The contract on :class:`~nixeryd.storage.s3.storage.S3Storage`, on
    ``rclone serve s3`` (which checks every signature, presigned URLs
    included).
    """

    def started(self) -> None:
        self.storage = s3_storage(self, self.runner, self.server)

    async def fetch(self, blob: LocalBlob | RedirectBlob) -> bytes:
        assert isinstance(blob, RedirectBlob)
        self.assertIn("X-Amz-Signature=", blob.url)
        response = await treq.get(blob.url, pool=HTTPConnectionPool(reactor, persistent=False))
        body: bytes = await response.content()
        self.assertEqual(response.code, 200, body)
        return body

    async def recorded_references(self) -> dict[str, dict[str, Any]]:
        with open(self.server.path("index.json"), "rb") as f:
            return index_references(f.read())

    async def damage(self, digest: str, data: bytes) -> None:
        with open(self.server.path("blobs/sha256/" + digest.split(":")[1]), "r+b") as f:
            f.write(data)

    def reopened(self) -> IStorage:
        return s3_storage(self, self.runner, self.server)


class MemoryStorageTests(TestCase):
    """What the test double adds to the contract."""

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.storage = MemoryStorage(directory)

    def write_temporary(self, data: bytes) -> str:
        """A file in the storage's temp directory holding ``data``."""
        path = os.path.join(self.storage.temp_directory(), "upload")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_every_answer_has_fired(self) -> None:
        """Every Deferred the double returns has already fired."""
        answers: list[Deferred[Any]] = [
            self.storage.has_blob(digest_of(b"x")), self.storage.get_document("layers", "k"),
            self.storage.close()]
        for answer in answers:
            self.assertTrue(answer.called)

    def test_refuses_mislabelled_blob(self) -> None:
        """A blob whose content does not match its digest is refused and not stored."""
        self.failureResultOf(self.storage.store_blob_bytes(b"a", digest_of(b"b")),
                             ValueError)
        self.assertFalse(self.successResultOf(self.storage.has_blob(digest_of(b"b"))))

    def test_counts_and_failures(self) -> None:
        """Calls are counted, and a configured failure fails the call after removing the file."""
        path = self.write_temporary(b"z")
        self.storage.failures["store_blob_file"] = OSError("full")
        self.failureResultOf(self.storage.store_blob_file(path, digest_of(b"z")), OSError)
        self.assertFalse(os.path.exists(path))
        self.assertEqual(self.storage.calls["store_blob_file"], 1)
        self.assertEqual(self.storage.stored, [])
        self.assertFalse(self.successResultOf(self.storage.has_blob(digest_of(b"z"))))

    def test_delete_blob(self) -> None:
        """A deleted blob is no longer present."""
        self.successResultOf(self.storage.store_blob_bytes(b"q", digest_of(b"q")))
        self.storage.delete_blob(digest_of(b"q"))
        self.failureResultOf(self.storage.blob(digest_of(b"q")), BlobUnknown)

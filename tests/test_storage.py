"""
Tests for the storage backends: one contract, run on
:class:`~nixeryd.storage.filesystem.FilesystemStorage` (with an inline
runner) and on :class:`~nixeryd.testing.storage.MemoryStorage`, plus what only the
filesystem layout promises, digest validation, and the runners of
:mod:`nixeryd.core.threads`.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from nixeryd.core import mediatypes
from nixeryd.core.digests import check_digest, is_valid_digest
from nixeryd.core.documents import LocalBlob, RedirectBlob
from nixeryd.core.errors import BlobUnknown, DigestInvalid
from nixeryd.testing.storage import MemoryStorage
from nixeryd.storage import filesystem
from nixeryd.storage.filesystem import FilesystemStorage
from nixeryd.storage.ociindex import REF_NAME
from nixeryd.storage.interface import IStorage
from nixeryd.core.threads import InlineRunner, ThreadPoolService

INVALID_DIGESTS = (
    "sha256:../../etc/passwd",
    "sha256:../../etc",
    "sha256:" + "A" * 64,
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "a" * 64 + "\n",
    "md5:" + "a" * 32,
    "sha512:" + "a" * 128,
    "a" * 64,
    "",
)


def digest_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


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


class StorageContractMixin:
    """
    The behaviour every :class:`IStorage` backend shares.  Subclasses
    provide :meth:`make_storage` and :meth:`recorded_references`.
    """

    def make_storage(self) -> Any:
        """A new, empty backend."""
        raise NotImplementedError()

    def recorded_references(self, storage: Any) -> dict[str, dict[str, Any]]:
        """Reference → index descriptor, as the backend stored them."""
        raise NotImplementedError()

    def setUp(self) -> None:
        self.storage = self.make_storage()

    def write_temporary(self, data: bytes) -> str:
        """A file in the storage's temp directory holding ``data``."""
        path = os.path.join(self.storage.temp_directory(),
                            "upload-%d" % (len(os.listdir(self.storage.temp_directory())),))
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_provides_interface(self) -> None:
        """The backend provides IStorage."""
        self.assertTrue(verifyObject(IStorage, self.storage))

    def test_bytes_round_trip(self) -> None:
        """A blob stored from bytes is then present and reads back whole."""
        data = b'{"config":1}'
        digest = digest_of(data)
        self.assertFalse(self.successResultOf(self.storage.has_blob(digest)))
        self.successResultOf(self.storage.store_blob_bytes(data, digest))
        self.assertTrue(self.successResultOf(self.storage.has_blob(digest)))
        self.assertEqual(self.successResultOf(self.storage.read_small_blob(digest, 100)),
                         data)

    def test_file_round_trip(self) -> None:
        """A blob stored from a file is present, described by ``blob``, and the file is gone."""
        data = os.urandom(5000)
        digest = digest_of(data)
        path = self.write_temporary(data)
        self.successResultOf(self.storage.store_blob_file(path, digest))
        self.assertFalse(os.path.exists(path))
        self.assertTrue(self.successResultOf(self.storage.has_blob(digest)))
        where = self.successResultOf(self.storage.blob(digest))
        self.assertEqual(where.digest, digest)
        if isinstance(where, LocalBlob):
            self.assertEqual(where.size, len(data))
            with open(where.path, "rb") as f:
                self.assertEqual(f.read(), data)
        else:
            self.assertIsInstance(where, RedirectBlob)
        self.assertEqual(self.successResultOf(self.storage.read_small_blob(digest, 5000)),
                         data)

    def test_store_file_failure_removes_file(self) -> None:
        """``store_blob_file`` removes the source file even when it fails."""
        path = self.write_temporary(b"data")
        self.failureResultOf(self.storage.store_blob_file(path, "md5:" + "0" * 32),
                             DigestInvalid)
        self.assertFalse(os.path.exists(path))

    def test_read_small_limit(self) -> None:
        """A blob larger than the limit reads as ``None``; one at the limit reads whole."""
        data = b"0123456789"
        digest = digest_of(data)
        self.successResultOf(self.storage.store_blob_bytes(data, digest))
        self.assertIsNone(self.successResultOf(self.storage.read_small_blob(digest, 9)))
        self.assertEqual(self.successResultOf(self.storage.read_small_blob(digest, 10)),
                         data)

    def test_missing_blob(self) -> None:
        """A missing blob is absent, unknown to ``blob`` and reads as ``None``."""
        digest = digest_of(b"never stored")
        self.assertFalse(self.successResultOf(self.storage.has_blob(digest)))
        failure = self.failureResultOf(self.storage.blob(digest), BlobUnknown)
        self.assertEqual(failure.value.code, "BLOB_UNKNOWN")
        self.assertIsNone(self.successResultOf(self.storage.read_small_blob(digest, 100)))

    def test_invalid_digests(self) -> None:
        """Every digest-taking method refuses an invalid digest with DigestInvalid."""
        for digest in INVALID_DIGESTS:
            self.failureResultOf(self.storage.has_blob(digest), DigestInvalid)
            self.failureResultOf(self.storage.blob(digest), DigestInvalid)
            self.failureResultOf(self.storage.read_small_blob(digest, 10), DigestInvalid)
            self.failureResultOf(self.storage.store_blob_bytes(b"x", digest),
                                 DigestInvalid)
            path = self.write_temporary(b"x")
            self.failureResultOf(self.storage.store_blob_file(path, digest),
                                 DigestInvalid)
            self.failureResultOf(self.storage.record_reference(
                "latest", digest, mediatypes.OCI_MANIFEST, 1), DigestInvalid)

    def test_documents_round_trip(self) -> None:
        """A document reads back equal, is replaced by a later put, and a missing one is ``None``."""
        self.assertIsNone(self.successResultOf(self.storage.get_document("layers", "k")))
        document = {"digest": digest_of(b"l"), "size": 3, "list": [1, "two"]}
        self.successResultOf(self.storage.put_document("layers", "k", document))
        self.assertEqual(self.successResultOf(self.storage.get_document("layers", "k")),
                         document)
        self.successResultOf(self.storage.put_document("layers", "k", {"new": True}))
        self.assertEqual(self.successResultOf(self.storage.get_document("layers", "k")),
                         {"new": True})
        self.assertIsNone(self.successResultOf(self.storage.get_document("manifests", "k")))

    def test_document_names(self) -> None:
        """Namespaces and keys that could escape or collide are refused."""
        for namespace, key in (("tmp", "k"), ("../x", "k"), ("Layers", "k"), ("", "k"),
                               ("layers", ""), ("layers", "a/b"), ("layers", "../k"),
                               ("layers", "k" * 201), ("a/b", "k")):
            self.failureResultOf(self.storage.put_document(namespace, key, {}), ValueError)
            self.failureResultOf(self.storage.get_document(namespace, key), ValueError)
        self.successResultOf(self.storage.put_document("manifests", "A-b_c.1" * 10, {}))

    def test_record_reference(self) -> None:
        """A reference names a manifest; recording the same reference again replaces it."""
        first, second = digest_of(b"m1"), digest_of(b"m2")
        self.successResultOf(self.storage.record_reference(
            "latest", first, mediatypes.OCI_MANIFEST, 10))
        self.successResultOf(self.storage.record_reference(
            "v1", first, mediatypes.OCI_MANIFEST, 10))
        self.successResultOf(self.storage.record_reference(
            "latest", second, mediatypes.DOCKER_MANIFEST, 20))
        references = self.recorded_references(self.storage)
        self.assertEqual(set(references), {"latest", "v1"})
        self.assertEqual(
            {k: references["latest"][k] for k in ("mediaType", "digest", "size")},
            {"mediaType": mediatypes.DOCKER_MANIFEST, "digest": second, "size": 20})
        self.assertEqual(references["v1"]["digest"], first)

    def test_invalid_reference(self) -> None:
        """A reference outside the image-spec grammar is refused."""
        for reference in ("", "-x", "a//b", "a b", "x/"):
            self.failureResultOf(self.storage.record_reference(
                reference, digest_of(b"m"), mediatypes.OCI_MANIFEST, 1), ValueError)


class FilesystemStorageTests(StorageContractMixin, SynchronousTestCase):
    """The contract and the OCI layout, on :class:`FilesystemStorage`."""

    def make_storage(self) -> FilesystemStorage:
        self.root = os.path.abspath(self.mktemp())
        return FilesystemStorage(self.root, InlineRunner())

    def recorded_references(self, storage: Any) -> dict[str, dict[str, Any]]:
        index = self.read_index()
        return {m["annotations"][REF_NAME]: m for m in index["manifests"]}

    def read_index(self) -> dict[str, Any]:
        """The parsed ``index.json``."""
        with open(os.path.join(self.root, "index.json"), "rb") as f:
            return json.loads(f.read())

    def blob_path(self, digest: str) -> str:
        """Where the layout keeps a blob."""
        return os.path.join(self.root, "blobs", "sha256", digest[len("sha256:"):])

    def temporaries(self) -> list[str]:
        """What is in the temporary directory."""
        return sorted(os.listdir(os.path.join(self.root, "nixeryd", "tmp")))

    def test_layout(self) -> None:
        """A new storage is an OCI layout: ``oci-layout``, an empty index, the blob directory."""
        with open(os.path.join(self.root, "oci-layout"), "rb") as f:
            self.assertEqual(json.loads(f.read()), {"imageLayoutVersion": "1.0.0"})
        self.assertEqual(self.read_index(), {"schemaVersion": 2,
                                             "mediaType": mediatypes.OCI_INDEX,
                                             "manifests": []})
        self.assertTrue(os.path.isdir(os.path.join(self.root, "blobs", "sha256")))
        self.assertEqual(self.storage.temp_directory(),
                         os.path.join(self.root, "nixeryd", "tmp"))

    def test_reopen_keeps_content(self) -> None:
        """Opening the same directory again keeps blobs, documents and the index."""
        data = b"blob"
        self.successResultOf(self.storage.store_blob_bytes(data, digest_of(data)))
        self.successResultOf(self.storage.put_document("layers", "k", {"a": 1}))
        self.successResultOf(self.storage.record_reference(
            "latest", digest_of(data), mediatypes.OCI_MANIFEST, 4))
        again = FilesystemStorage(self.root, InlineRunner())
        self.assertTrue(self.successResultOf(again.has_blob(digest_of(data))))
        self.assertEqual(self.successResultOf(again.get_document("layers", "k")), {"a": 1})
        self.assertEqual(set(self.recorded_references(again)), {"latest"})

    def test_blob_location(self) -> None:
        """Blobs live under ``blobs/sha256/<hex>``, readable by other users."""
        data = b"layout"
        self.successResultOf(self.storage.store_blob_bytes(data, digest_of(data)))
        path = self.write_temporary(b"file blob")
        self.successResultOf(self.storage.store_blob_file(path, digest_of(b"file blob")))
        for content in (data, b"file blob"):
            final = self.blob_path(digest_of(content))
            with open(final, "rb") as f:
                self.assertEqual(f.read(), content)
            self.assertEqual(stat.S_IMODE(os.stat(final).st_mode), 0o644)
        self.assertEqual(stat.S_IMODE(
            os.stat(os.path.join(self.root, "index.json")).st_mode), 0o644)
        where = self.successResultOf(self.storage.blob(digest_of(data)))
        self.assertEqual(where, LocalBlob(path=self.blob_path(digest_of(data)),
                                          size=len(data), digest=digest_of(data)))

    def test_index_is_valid(self) -> None:
        """``index.json`` stays an OCI index with one descriptor per reference, sorted."""
        for reference in ("v2", "latest", "v1"):
            self.successResultOf(self.storage.record_reference(
                reference, digest_of(reference.encode()), mediatypes.OCI_MANIFEST, 7))
        self.successResultOf(self.storage.record_reference(
            "v1", digest_of(b"again"), mediatypes.OCI_MANIFEST, 8))
        index = self.read_index()
        self.assertEqual((index["schemaVersion"], index["mediaType"]),
                         (2, mediatypes.OCI_INDEX))
        self.assertEqual([m["annotations"][REF_NAME] for m in index["manifests"]],
                         ["latest", "v1", "v2"])
        self.assertEqual(index["manifests"][1],
                         {"mediaType": mediatypes.OCI_MANIFEST, "digest": digest_of(b"again"),
                          "size": 8, "annotations": {REF_NAME: "v1"}})

    def test_index_keeps_unnamed_entries(self) -> None:
        """Descriptors without a reference name, written by other tools, survive a recording."""
        foreign = {"mediaType": mediatypes.OCI_MANIFEST, "digest": digest_of(b"f"),
                   "size": 1}
        with open(os.path.join(self.root, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [foreign]}, f)
        self.successResultOf(self.storage.record_reference(
            "latest", digest_of(b"m"), mediatypes.OCI_MANIFEST, 1))
        manifests = self.read_index()["manifests"]
        self.assertIn(foreign, manifests)
        self.assertEqual(len(manifests), 2)

    def test_invalid_digest_touches_nothing(self) -> None:
        """An invalid digest creates no file anywhere in the storage."""
        before = sorted(os.walk(self.root))
        for digest in INVALID_DIGESTS:
            self.failureResultOf(self.storage.store_blob_bytes(b"x", digest), DigestInvalid)
        self.assertEqual(sorted(os.walk(self.root)), before)
        self.assertFalse(os.path.exists(os.path.join(self.root, "etc")))

    def test_stale_temporaries_removed(self) -> None:
        """At start-up old temporary files are removed and fresh ones kept."""
        tmp = self.storage.temp_directory()
        old, fresh = os.path.join(tmp, "old"), os.path.join(tmp, "fresh")
        for path in (old, fresh):
            with open(path, "wb") as f:
                f.write(b"partial")
        long_ago = time.time() - filesystem.STALE_TEMPORARY_SECONDS - 60
        os.utime(old, (long_ago, long_ago))
        FilesystemStorage(self.root, InlineRunner())
        self.assertEqual(self.temporaries(), ["fresh"])

    def test_bytes_never_partially_visible(self) -> None:
        """When the final rename fails, neither the blob nor a temporary file remains."""
        data = b"x" * 10000
        digest = digest_of(data)

        def failing_replace(source: str, destination: str) -> None:
            raise OSError("disk trouble")

        self.patch(os, "replace", failing_replace)
        self.failureResultOf(self.storage.store_blob_bytes(data, digest), OSError)
        self.assertFalse(os.path.exists(self.blob_path(digest)))
        self.assertEqual(self.temporaries(), [])
        self.assertFalse(self.successResultOf(self.storage.has_blob(digest)))

    def test_file_never_partially_visible(self) -> None:
        """When moving a file into place fails, the blob is absent and the file removed."""
        data = b"y" * 10000
        digest = digest_of(data)
        path = self.write_temporary(data)

        def failing_replace(source: str, destination: str) -> None:
            raise OSError("disk trouble")

        self.patch(os, "replace", failing_replace)
        self.failureResultOf(self.storage.store_blob_file(path, digest), OSError)
        self.assertFalse(os.path.exists(self.blob_path(digest)))
        self.assertEqual(self.temporaries(), [])

    def test_document_location(self) -> None:
        """Documents are JSON files under ``nixeryd/<namespace>/<key>.json``."""
        self.successResultOf(self.storage.put_document("manifests", "abc", {"x": [1]}))
        with open(os.path.join(self.root, "nixeryd", "manifests", "abc.json"), "rb") as f:
            self.assertEqual(json.loads(f.read()), {"x": [1]})


class MemoryStorageTests(StorageContractMixin, SynchronousTestCase):
    """The contract, and what the test double adds, on :class:`MemoryStorage`."""

    def make_storage(self) -> MemoryStorage:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        return MemoryStorage(directory)

    def recorded_references(self, storage: Any) -> dict[str, dict[str, Any]]:
        return storage.references

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


class ThreadedFilesystemStorageTests(TestCase):
    """:class:`FilesystemStorage` on a real :class:`ThreadPoolService`."""

    def setUp(self) -> None:
        self.pool = ThreadPoolService(reactor, 2, name="storage-test")
        self.pool.startService()
        self.stopped = False
        self.addCleanup(self.stop)

    def stop(self) -> Any:
        """Stop the pool once."""
        if not self.stopped:
            self.stopped = True
            return self.pool.stopService()
        return None

    async def test_work_runs_off_the_reactor_thread(self) -> None:
        """Pool work runs on another thread and its result or error comes back."""
        self.assertNotEqual(await self.pool.run(threading.get_ident), threading.get_ident())
        with self.assertRaises(ZeroDivisionError):
            await self.pool.run(lambda: 1 // 0)

    async def test_round_trip(self) -> None:
        """Blobs and documents round-trip through the pool; invalid digests still fail."""
        storage = FilesystemStorage(os.path.abspath(self.mktemp()), self.pool)
        data = b"threaded"
        await storage.store_blob_bytes(data, digest_of(data))
        self.assertEqual(await storage.read_small_blob(digest_of(data), 100), data)
        await storage.put_document("layers", "k", {"v": 1})
        self.assertEqual(await storage.get_document("layers", "k"), {"v": 1})
        with self.assertRaises(DigestInvalid):
            await storage.has_blob("sha256:../../etc")

    async def test_concurrent_references(self) -> None:
        """References recorded from many threads at once all end up in the index."""
        storage = FilesystemStorage(os.path.abspath(self.mktemp()), self.pool)
        await gatherResults([
            storage.record_reference("v%d" % (i,), digest_of(b"%d" % (i,)),
                                     mediatypes.OCI_MANIFEST, i)
            for i in range(20)])
        with open(os.path.join(storage.root, "index.json"), "rb") as f:
            names = {m["annotations"][REF_NAME] for m in json.loads(f.read())["manifests"]}
        self.assertEqual(names, {"v%d" % (i,) for i in range(20)})

    async def test_stop_finishes_queued_work(self) -> None:
        """Stopping the pool lets the work already queued finish."""
        done: list[int] = []

        def slow(i: int) -> int:
            time.sleep(0.02)
            done.append(i)
            return i

        results = gatherResults([self.pool.run(slow, i) for i in range(6)])
        await self.stop()
        self.assertEqual(sorted(done), list(range(6)))
        self.assertEqual(sorted(await results), list(range(6)))


class InlineRunnerTests(SynchronousTestCase):
    """:class:`InlineRunner`."""

    def test_result_and_failure(self) -> None:
        """The work runs at once; its result or exception is in the returned Deferred."""
        runner = InlineRunner()
        self.assertEqual(self.successResultOf(runner.run(lambda a, b=0: a + b, 2, b=3)), 5)
        self.failureResultOf(runner.run(lambda: 1 // 0), ZeroDivisionError)

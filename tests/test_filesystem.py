"""
What only :class:`~nixeryd.storage.filesystem.FilesystemStorage` promises:
an OCI image layout that other tools read, files that are never visible
half-written, crash leftovers removed; and the backend on a real thread
pool, with the runners of :mod:`nixeryd.core.threads`.

The contract it shares with the other backends is in ``test_storage``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nixeryd.core import mediatypes
from nixeryd.core.documents import LocalBlob
from nixeryd.core.errors import DigestInvalid
from nixeryd.core.threads import InlineRunner, ThreadPoolService
from nixeryd.storage import tempdirs
from nixeryd.storage.filesystem import FilesystemStorage
from nixeryd.storage.integrity import BlobCorrupt
from nixeryd.storage.ociindex import REF_NAME, updated_index
from nixeryd.testing.runners import ManualRunner
from nixeryd.testing.storage import INVALID_DIGESTS, digest_of, write_temporary
from tests.tmpfs import fill, mount_tmpfs, remount


class FilesystemLayoutTests(SynchronousTestCase):
    """The OCI layout and the atomic writes of :class:`FilesystemStorage`."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.storage = FilesystemStorage(self.root, InlineRunner())

    def recorded_references(self) -> dict[str, dict[str, Any]]:
        """Reference → descriptor, from ``index.json``."""
        index = self.read_index()
        return {m["annotations"][REF_NAME]: m for m in index["manifests"]}

    def read_index(self) -> dict[str, Any]:
        """The parsed ``index.json``."""
        with open(os.path.join(self.root, "index.json"), "rb") as f:
            index: dict[str, Any] = json.loads(f.read())
        return index

    def blob_path(self, digest: str) -> str:
        """Where the layout keeps a blob."""
        return os.path.join(self.root, "blobs", "sha256", digest[len("sha256:"):])

    def temporaries(self) -> list[str]:
        """What is in the storage's temporary directory."""
        return sorted(os.listdir(self.storage.temp_directory()))

    def write_temporary(self, data: bytes) -> str:
        """A new file in the storage's temp directory holding ``data``."""
        return write_temporary(self.storage, data)

    def test_layout(self) -> None:
        """A new storage is an OCI layout: ``oci-layout``, an empty index, the blob directory."""
        with open(os.path.join(self.root, "oci-layout"), "rb") as f:
            self.assertEqual(json.loads(f.read()), {"imageLayoutVersion": "1.0.0"})
        self.assertEqual(self.read_index(), {"schemaVersion": 2,
                                             "mediaType": mediatypes.OCI_INDEX,
                                             "manifests": []})
        self.assertTrue(os.path.isdir(os.path.join(self.root, "blobs", "sha256")))

    def test_own_temporary_directory(self) -> None:
        """
        The temporary directory is the storage's own, under
        ``nixeryd/tmp``, named with the pid, with a lock file next to it
        that this storage holds.
        """
        tmp = self.storage.temp_directory()
        self.assertEqual(os.path.dirname(tmp), os.path.join(self.root, "nixeryd", "tmp"))
        self.assertTrue(os.path.basename(tmp).startswith("writer-%d-" % (os.getpid(),)))
        self.assertEqual(self.temporaries(), [])
        with open(tmp + ".lock", "rb") as lock:
            with self.assertRaises(BlockingIOError):
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.successResultOf(self.storage.close())
        self.assertFalse(os.path.exists(tmp))
        self.assertFalse(os.path.exists(tmp + ".lock"))

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
        self.assertEqual(set(self.recorded_references()), {"latest"})

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

    def test_earlier_layout_leftovers_removed_when_old(self) -> None:
        """
        Entries written straight into ``nixeryd/tmp`` (by an earlier
        nixeryd, which may still run) are removed once old, kept while
        fresh; so are staging lock files, with their own shorter age.
        """
        tmp = os.path.join(self.root, "nixeryd", "tmp")
        entries = {"old.layer.tmp": tempdirs.STALE_LEGACY_SECONDS,
                   "fresh.layer.tmp": 0,
                   ".new-old": tempdirs.STALE_STAGING_SECONDS,
                   ".new-fresh": 0}
        for name, age in entries.items():
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(b"partial")
            then = time.time() - age - 60 if age else time.time()
            os.utime(path, (then, then))
        old_roots = os.path.join(tmp, "tmpabc.gcroots")
        os.mkdir(old_roots)
        os.symlink("/nix/store/x", os.path.join(old_roots, "result"))
        long_ago = time.time() - tempdirs.STALE_LEGACY_SECONDS - 60
        os.utime(old_roots, (long_ago, long_ago))
        again = FilesystemStorage(self.root, InlineRunner())
        left = sorted(name for name in os.listdir(tmp) if not name.startswith("writer-"))
        self.assertEqual(left, [".new-fresh", "fresh.layer.tmp"])
        self.successResultOf(again.close())

    def test_storages_sharing_a_directory(self) -> None:
        """
        A second storage on the same directory keeps the first one's files;
        a storage closed with files left keeps no lock, and the next
        storage to open removes them.
        """
        partial = os.path.join(self.storage.temp_directory(), "x.layer.tmp")
        with open(partial, "wb") as f:
            f.write(b"being written")
        second = FilesystemStorage(self.root, InlineRunner())
        self.assertNotEqual(second.temp_directory(), self.storage.temp_directory())
        self.assertTrue(os.path.exists(partial))
        self.successResultOf(self.storage.close())
        self.assertTrue(os.path.exists(partial))
        third = FilesystemStorage(self.root, InlineRunner())
        self.assertFalse(os.path.exists(self.storage.temp_directory()))
        self.assertTrue(os.path.isdir(second.temp_directory()))
        for storage in (second, third):
            self.successResultOf(storage.close())
        self.assertEqual(os.listdir(os.path.join(self.root, "nixeryd", "tmp")), [])

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


class IndexUpdateTests(SynchronousTestCase):
    """How the index is updated: gathered, reused from memory, and shared safely."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())

    def names(self) -> list[str]:
        """The references of ``index.json``, in its order."""
        with open(os.path.join(self.root, "index.json"), "rb") as f:
            return [m["annotations"].get(REF_NAME, "")
                    for m in json.loads(f.read())["manifests"]]

    def test_updates_during_a_write_are_gathered(self) -> None:
        """References recorded while the index is being written are written together next."""
        runner = ManualRunner()
        storage = FilesystemStorage(self.root, runner)
        recorded = [storage.record_reference(name, digest_of(name.encode()),
                                             mediatypes.OCI_MANIFEST, 1)
                    for name in ("c", "a", "b", "a")]
        self.assertEqual(len(runner.pending), 1)
        for done in recorded:
            self.assertNoResult(done)
        self.assertEqual(runner.run_pending(), 2)
        for done in recorded:
            self.successResultOf(done)
        self.assertEqual(self.names(), ["a", "b", "c"])

    def test_failed_write_fails_its_batch(self) -> None:
        """Every update of a batch whose write fails fails; the next batch is written."""
        runner = ManualRunner()
        storage = FilesystemStorage(self.root, runner)
        first = storage.record_reference("a", digest_of(b"a"), mediatypes.OCI_MANIFEST, 1)
        second = storage.record_reference("b", digest_of(b"b"), mediatypes.OCI_MANIFEST, 1)
        function, args, kwargs, done = runner.pending.pop(0)
        done.errback(OSError(errno.ENOSPC, "No space left on device"))
        self.failureResultOf(first, OSError)
        runner.run_pending()
        self.successResultOf(second)
        self.assertEqual(self.names(), ["b"])

    def test_other_writers_noticed(self) -> None:
        """An index rewritten by another storage (another process) is read again, not overwritten."""
        mine = FilesystemStorage(self.root, InlineRunner())
        theirs = FilesystemStorage(self.root, InlineRunner())
        self.successResultOf(mine.record_reference("a", digest_of(b"a"),
                                                   mediatypes.OCI_MANIFEST, 1))
        self.successResultOf(theirs.record_reference("b", digest_of(b"b"),
                                                     mediatypes.OCI_MANIFEST, 1))
        self.successResultOf(mine.record_reference("c", digest_of(b"c"),
                                                   mediatypes.OCI_MANIFEST, 1))
        self.assertEqual(self.successResultOf(theirs.prune_references([digest_of(b"a")])), 1)
        self.successResultOf(mine.record_reference("d", digest_of(b"d"),
                                                   mediatypes.OCI_MANIFEST, 1))
        self.assertEqual(self.names(), ["b", "c", "d"])

    def test_same_bytes_as_a_full_rewrite(self) -> None:
        """Updates from memory write exactly what parsing and serialising the whole index would."""
        storage = FilesystemStorage(self.root, InlineRunner())
        index = os.path.join(self.root, "index.json")
        current = None
        for i in (5, 3, 9, 3, 1):
            name, digest = "n%d" % (i,), digest_of(b"%d" % (i,))
            self.successResultOf(storage.record_reference(
                name, digest, mediatypes.OCI_MANIFEST, i))
            current = updated_index(current, name, digest, mediatypes.OCI_MANIFEST, i)
            with open(index, "rb") as f:
                self.assertEqual(f.read(), current)

    def test_lock_shared_across_processes(self) -> None:
        """An update waits while another process holds the index lock."""
        storage = FilesystemStorage(self.root, InlineRunner())
        lock = os.path.join(self.root, "nixeryd", "index.lock")
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import fcntl, os, sys, time\n"
             "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX)\n"
             "print('locked', flush=True)\n"
             "time.sleep(0.5)\n", lock], stdout=subprocess.PIPE)
        self.addCleanup(holder.wait)
        assert holder.stdout is not None
        self.assertEqual(holder.stdout.readline(), b"locked\n")
        started = time.monotonic()
        self.successResultOf(storage.record_reference("a", digest_of(b"a"),
                                                      mediatypes.OCI_MANIFEST, 1))
        self.assertGreater(time.monotonic() - started, 0.2)
        holder.stdout.close()

    def test_listing_skips_other_names(self) -> None:
        """Files that are not blobs or documents are not listed (nor removable by name)."""
        storage = FilesystemStorage(self.root, InlineRunner())
        self.successResultOf(storage.store_blob_bytes(b"x", digest_of(b"x")))
        self.successResultOf(storage.put_document("pulls", "k", {}))
        for stray in (os.path.join("blobs", "sha256", "not-a-digest"),
                      os.path.join("nixeryd", "pulls", "k.json.orig"),
                      os.path.join("nixeryd", "pulls", "bad key.json")):
            with open(os.path.join(self.root, stray), "wb") as f:
                f.write(b"{}")
        self.assertEqual([b.digest for b in self.successResultOf(storage.list_blobs())],
                         [digest_of(b"x")])
        self.assertEqual([d.key for d in self.successResultOf(storage.list_documents("pulls"))],
                         ["k"])

    def test_removal_leaves_nothing_aside(self) -> None:
        """A removal, refused or not, leaves nothing in the temporary directory."""
        storage = FilesystemStorage(self.root, InlineRunner())
        self.successResultOf(storage.put_document("pulls", "k", {"day": 1}))
        [listed] = self.successResultOf(storage.list_documents("pulls"))
        self.successResultOf(storage.put_document("pulls", "k", {"day": 2}))
        self.assertFalse(self.successResultOf(
            storage.remove_document("pulls", "k", listed.version)))
        self.assertEqual(self.successResultOf(storage.get_document("pulls", "k")), {"day": 2})
        self.assertEqual(os.listdir(storage.temp_directory()), [])


class ThreadedFilesystemStorageTests(TestCase):
    """:class:`FilesystemStorage` on a real :class:`ThreadPoolService`."""

    def setUp(self) -> None:
        self.pool = ThreadPoolService(IReactorThreads(reactor), 2, name="storage-test")
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

        def add(a: int, b: int = 0) -> int:
            return a + b

        self.assertEqual(self.successResultOf(runner.run(add, 2, b=3)), 5)
        self.failureResultOf(runner.run(lambda: 1 // 0), ZeroDivisionError)


#: A process writing to a storage: its temporary directory gets a layer
#: file being written and a folder of GC roots, as a build's would; it says
#: the directory on stdout, then waits to be killed.
_WRITER = """
import os, sys, time
from nixeryd.core.threads import InlineRunner
from nixeryd.storage.filesystem import FilesystemStorage
storage = FilesystemStorage(sys.argv[1], InlineRunner())
tmp = storage.temp_directory()
with open(os.path.join(tmp, "tmpabcd.layer.tmp"), "wb") as f:
    f.write(b"x" * int(sys.argv[2]))
roots = os.path.join(tmp, "tmpefgh.gcroots")
os.mkdir(roots)
os.symlink("/nix/store/0000-x", os.path.join(roots, "result"))
print(tmp, flush=True)
time.sleep(60)
"""


class CrashLeftoverTests(SynchronousTestCase):
    """Temporary files of processes killed mid-write, and of live ones."""

    def writer(self, root: str, size: int) -> tuple[subprocess.Popen[str], str]:
        """A live writer process and its temporary directory."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        process = subprocess.Popen([sys.executable, "-c", _WRITER, root, str(size)],
                                   stdout=subprocess.PIPE, text=True, env=env)
        self.addCleanup(process.wait)
        self.addCleanup(process.kill)
        assert process.stdout is not None
        self.addCleanup(process.stdout.close)
        # It says its directory once it has written everything.
        tmp = process.stdout.readline().strip()
        self.assertTrue(os.path.isdir(tmp), tmp)
        return process, tmp

    def test_dead_writer_leftovers_removed(self) -> None:
        """
        A storage that opens removes at once what a writer killed with
        SIGKILL left (its layer file and GC roots, with its lock file), and
        keeps what a live writer is writing.
        """
        root = os.path.abspath(self.mktemp())
        killed, killed_tmp = self.writer(root, 3 * 1024 * 1024)
        alive, alive_tmp = self.writer(root, 1024)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        self.assertEqual(sorted(os.listdir(killed_tmp)),
                         ["tmpabcd.layer.tmp", "tmpefgh.gcroots"])
        with capturedLogs() as events:
            storage = FilesystemStorage(root, InlineRunner())
        self.assertFalse(os.path.exists(killed_tmp))
        self.assertFalse(os.path.exists(killed_tmp + tempdirs.LOCK_SUFFIX))
        self.assertEqual(sorted(os.listdir(alive_tmp)),
                         ["tmpabcd.layer.tmp", "tmpefgh.gcroots"])
        self.assertTrue(os.path.exists(alive_tmp + tempdirs.LOCK_SUFFIX))
        [removal] = [e for e in events if "entries" in e]
        self.assertEqual(removal["entries"], [os.path.basename(killed_tmp)])
        self.assertEqual(removal["bytes"], 3 * 1024 * 1024)
        self.assertEqual(removal["live"], 1)
        self.assertIsNone(alive.poll())
        self.successResultOf(storage.close())


class FullOrReadOnlyStorageTests(SynchronousTestCase):
    """A storage on a real, small tmpfs that fills up or turns read-only."""

    def setUp(self) -> None:
        self.mount = mount_tmpfs(self, "2m")
        self.storage = FilesystemStorage(os.path.join(self.mount, "storage"), InlineRunner())
        self.stored = b"stored before"
        self.successResultOf(self.storage.store_blob_bytes(self.stored, digest_of(self.stored)))

    def assert_nothing_partial(self, digest: str) -> None:
        """No blob under ``digest``, and no temporary file left."""
        self.assertFalse(self.successResultOf(self.storage.has_blob(digest)))
        self.assertEqual(os.listdir(self.storage.temp_directory()), [])

    def assert_still_served(self) -> None:
        """What was stored before can still be read."""
        self.assertEqual(self.successResultOf(self.storage.read_small_blob(
            digest_of(self.stored), 100)), self.stored)

    def test_full(self) -> None:
        """
        On a full disk, blobs, files and documents fail with ENOSPC and
        leave nothing; what was stored is still read; once space is freed,
        writes succeed again.
        """
        filler = fill(self.mount)
        data = os.urandom(256 * 1024)
        failure = self.failureResultOf(
            self.storage.store_blob_bytes(data, digest_of(data)), OSError)
        self.assertEqual(failure.value.errno, errno.ENOSPC)
        self.assert_nothing_partial(digest_of(data))
        failure = self.failureResultOf(
            self.storage.put_document("layers", "k", {"x": "y" * 100_000}), OSError)
        self.assertEqual(failure.value.errno, errno.ENOSPC)
        self.assertIsNone(self.successResultOf(self.storage.get_document("layers", "k")))
        self.assertEqual(os.listdir(self.storage.temp_directory()), [])
        self.assert_still_served()
        os.unlink(filler)
        self.successResultOf(self.storage.store_blob_bytes(data, digest_of(data)))
        self.assertTrue(self.successResultOf(self.storage.has_blob(digest_of(data))))

    def test_read_only(self) -> None:
        """
        On a read-only remount, writes fail with EROFS and leave nothing;
        reads go on; once writable again, writes succeed.
        """
        data = b"after the remount"
        remount(self.mount, "ro")
        self.addCleanup(remount, self.mount, "rw")
        failure = self.failureResultOf(
            self.storage.store_blob_bytes(data, digest_of(data)), OSError)
        self.assertEqual(failure.value.errno, errno.EROFS)
        failure = self.failureResultOf(
            self.storage.put_document("layers", "k", {"a": 1}), OSError)
        self.assertEqual(failure.value.errno, errno.EROFS)
        self.assert_nothing_partial(digest_of(data))
        self.assert_still_served()
        remount(self.mount, "rw")
        self.successResultOf(self.storage.store_blob_bytes(data, digest_of(data)))


class BlobHashingCostTests(TestCase):
    """
    A blob's file is hashed at most once per process and file version:
    never for a file this process wrote or touched, once after a restart,
    again only when the file changed.
    """

    def setUp(self) -> None:
        from nixeryd.storage import filesystem

        self.root = os.path.abspath(self.mktemp())
        self.hashed: list[str] = []
        original = filesystem._hash_file

        def counting(path: str) -> Any:
            self.hashed.append(path)
            return original(path)

        self.patch(filesystem, "_hash_file", counting)

    async def test_hashed_once_per_version(self) -> None:
        """
        Warm requests never hash; a restarted storage hashes once; a touch
        (a reused layer) keeps the version checked; a rewrite is hashed
        again and found.
        """
        storage = FilesystemStorage(self.root, InlineRunner())
        data = os.urandom(100_000)
        digest = digest_of(data)
        await storage.store_blob_file(write_temporary(storage, data), digest)
        for _ in range(3):
            await storage.blob(digest)
            await storage.check_blob(digest)
        self.assertEqual(self.hashed, [])
        restarted = FilesystemStorage(self.root, InlineRunner())
        for _ in range(3):
            await restarted.blob(digest)
        self.assertEqual(len(self.hashed), 1)
        self.assertTrue(await restarted.refresh_blob(digest))
        await restarted.blob(digest)
        self.assertEqual(len(self.hashed), 1)
        path = self.hashed[0]
        written = os.stat(path).st_mtime_ns
        with open(path, "r+b") as f:
            f.write(b"\0")
        os.utime(path, ns=(written + 10**9, written + 10**9))
        with self.assertRaises(BlobCorrupt):
            await restarted.blob(digest)
        self.assertEqual(len(self.hashed), 2)
        storage.close()
        restarted.close()

"""
Resumable uploads that resume, through the fault proxy in front of a real
emulator: a chunk cut short or answered 5xx is followed by a status query
and the upload goes on from the offset the session holds, from the spooled
file; only a session that is gone starts over.  A layer is never sent
twice in full.

gcp-storage-emulator answers the status query itself (it keeps the bytes
of a chunk cut short, as Cloud Storage may).  fake-gcs-server cannot: it
completes the object on ``Content-Range: bytes */N``; there the proxy is
the judge and answers the query from the last 308 it relayed.
"""

from __future__ import annotations

import hashlib
import os

from twisted.logger import Logger, capturedLogs

from nixeryd.storage.gcs import GCSStorage
from nixeryd.storage.gcs.objects import blob_object_name
from tests.faultproxy import Answer, CutRequest, DropResponse, chunk_at, status_queries
from tests.gcsemulator import FAKE_GCS_MISSING_REASON
from tests.gcssupport import ProxiedEmulatorTestCase

MiB = 1024 * 1024
CHUNK = MiB
_log = Logger()


def write_random(path: str, size: int) -> str:
    """Fill ``path`` with ``size`` random bytes; their digest."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, MiB))
            digest.update(piece)
            f.write(piece)
            left -= len(piece)
    return "sha256:" + digest.hexdigest()


class ResumeTests(ProxiedEmulatorTestCase):
    """Chunks lost on the way, on gcp-storage-emulator (its own status query)."""

    size = 5 * MiB + 12345

    def storage(self) -> GCSStorage:
        return self.proxied_storage(chunk_size=CHUNK, simple_upload_limit=MiB)

    async def store(self, storage: GCSStorage, size: int, name: str = "layer") -> tuple[str, str]:
        """Spool a random file and store it as a blob: its path and digest."""
        path = os.path.join(storage.temp_directory(), name)
        digest = await self.runner.run(write_random, path, size)
        copy = path + ".kept"
        await self.runner.run(os.link, path, copy)
        self.addCleanup(os.unlink, copy)
        await storage.store_blob_file(path, digest)
        return copy, digest

    async def assert_stored(self, kept: str, digest: str) -> None:
        """The object holds exactly the file's bytes."""
        stored = await self.emulator.download(blob_object_name(digest))
        with open(kept, "rb") as f:
            expected = f.read()
        self.assertEqual((len(stored or b""), stored == expected), (len(expected), True))

    async def test_cut_mid_chunk_resumes(self) -> None:
        """A connection cut in the third chunk: the rest follows from the held offset."""
        self.proxy.add(chunk_at(2 * CHUNK), CutRequest(after=CHUNK // 2 + 1000))
        with capturedLogs() as events:
            kept, digest = await self.store(self.storage(), self.size)
        await self.assert_stored(kept, digest)
        self.assertEqual(self.proxy.cuts, 1)
        resumed = [e for e in events if e.get("event") == "gcs-upload-resumed"]
        self.assertEqual(len(resumed), 1)
        self.assertGreater(resumed[0]["offset"], 2 * CHUNK - 1)
        # Sent: everything once, and at most the part of one chunk again.
        self.assertLess(self.proxy.upload_bytes, self.size + CHUNK)

    async def test_server_error_on_chunk_resumes(self) -> None:
        """A 503 for a chunk: the session is asked, the chunk sent again, nothing else."""
        self.proxy.add(chunk_at(3 * CHUNK), Answer(503))
        kept, digest = await self.store(self.storage(), self.size)
        await self.assert_stored(kept, digest)
        self.assertLessEqual(self.proxy.upload_bytes, self.size + CHUNK)
        self.assertEqual(len([r for r in self.proxy.requests if r.is_status_query]), 1)

    async def test_final_answer_lost(self) -> None:
        """
        The answer to the last chunk is lost: the object is complete, so
        the upload ends without sending it all again.
        """
        last = (self.size // CHUNK) * CHUNK
        self.proxy.add(chunk_at(last), DropResponse())
        kept, digest = await self.store(self.storage(), self.size)
        await self.assert_stored(kept, digest)
        self.assertEqual(self.proxy.cuts, 1)
        self.assertLess(self.proxy.upload_bytes, self.size + CHUNK)

    async def test_session_gone_starts_over(self) -> None:
        """A session that answers 404 after a cut: a new session from byte 0, stored whole."""
        self.proxy.add(chunk_at(2 * CHUNK), CutRequest(after=1000))
        self.proxy.add(status_queries, Answer(404))
        with capturedLogs() as events:
            kept, digest = await self.store(self.storage(), self.size)
        await self.assert_stored(kept, digest)
        self.assertEqual(len([e for e in events if e.get("event") == "gcs-upload-restarted"]), 1)
        self.assertGreaterEqual(self.proxy.upload_bytes, self.size + 2 * CHUNK)

    async def test_cut_100mb_layer_is_not_sent_twice(self) -> None:
        """
        A 100 MB layer in 16 MiB chunks cut at 50 MB: what the upload
        costs in all, counting a second store of the layer (the next pull's)
        if the first one failed, stays below twice its size.
        """
        size = 100 * 1000 * 1000
        chunk = 16 * MiB
        storage = self.proxied_storage(chunk_size=chunk)
        start = (50 * 1000 * 1000 // chunk) * chunk
        self.proxy.add(chunk_at(start), CutRequest(after=50 * 1000 * 1000 - start))
        stores = 1
        try:
            kept, digest = await self.store(storage, size)
        except Exception as e:
            _log.info("The first store failed: {error!r}; storing again", error=e)
            stores = 2
            kept, digest = await self.store(storage, size, "again")
        _log.info("Upload bytes sent for a cut {size}-byte layer: {sent} in {stores} stores",
                  size=size, sent=self.proxy.upload_bytes, stores=stores)
        await self.assert_stored(kept, digest)
        self.assertEqual((stores, self.proxy.cuts), (1, 1))
        self.assertLess(self.proxy.upload_bytes, size + chunk,
                        "%d bytes sent for a %d-byte layer" % (self.proxy.upload_bytes, size))


class FakeGCSResumeTests(ResumeTests):
    """The same on fake-gcs-server, the proxy judging the status queries."""

    skip = FAKE_GCS_MISSING_REASON
    fake_gcs = True
    judge_status = True

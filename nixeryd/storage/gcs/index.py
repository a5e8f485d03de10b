"""
The image index of a bucket, ``gs://<bucket>/index.json``, shared by every
daemon using the bucket.

It is updated by read-modify-write guarded with ``ifGenerationMatch``, so
concurrent daemons sharing the bucket retry instead of overwriting each
other's references (emulators that ignore preconditions make this
last-writer-wins).  Updates asked for while one is being made are made
together in the next (:class:`~nixeryd.storage.indexqueue.IndexQueue`).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from nixeryd.core.httpbody import BodyTooLarge
from nixeryd.core.threads import Runner
from nixeryd.storage.gcs.bucket import BucketClient
from nixeryd.storage.gcs.http import GCSError, PreconditionFailed
from nixeryd.storage.gcs.objects import md5_base64
from nixeryd.storage.objectnames import INDEX_OBJECT
from nixeryd.storage.indexqueue import IndexQueue
from nixeryd.storage.ociindex import (Descriptor, index_entries, with_references,
                                      without_manifests)

#: The largest index read.
INDEX_LIMIT = 64 * 1024 * 1024
#: How many times an update is tried again after a concurrent one.
INDEX_ATTEMPTS = 8


class BucketIndex:
    """
    The index object of ``client``'s bucket.

    :param runner: where the index is parsed, serialised and hashed (it
        may be tens of megabytes).
    """

    log = Logger()

    def __init__(self, runner: Runner, client: BucketClient) -> None:
        self._runner = runner
        self._client = client
        self._lock = DeferredLock()
        self._queue = IndexQueue(
            lambda batch: Deferred.fromCoroutine(self._change(
                lambda current: with_references(current, batch),
                "naming %s" % (", ".join(sorted(batch)),))))

    def record(self, reference: str, entry: Descriptor) -> Deferred[None]:
        """Have ``reference`` name ``entry`` (gathered with concurrent updates)."""
        return self._queue.record(reference, entry)

    async def _change(self, change: Callable[[bytes | None], bytes], what: str) -> None:
        """Apply ``change`` to the index, retrying after concurrent updates."""
        async with self._lock:
            for _ in range(INDEX_ATTEMPTS):
                try:
                    await self._update_once(change)
                    return
                except PreconditionFailed:
                    self.log.info("gs://{bucket}/{name} changed meanwhile; retrying",
                                  bucket=self._client.bucket, name=INDEX_OBJECT)
        raise GCSError("gs://%s/%s kept changing; gave up %s"
                       % (self._client.bucket, INDEX_OBJECT, what))

    async def _read(self, generation: str | None = None) -> bytes | None:
        try:
            return await self._client.download(INDEX_OBJECT, INDEX_LIMIT, generation)
        except BodyTooLarge:
            raise GCSError("gs://%s/%s is larger than %d bytes"
                           % (self._client.bucket, INDEX_OBJECT, INDEX_LIMIT)) from None

    async def _update_once(self, change: Callable[[bytes | None], bytes]) -> None:
        """
        One read-modify-write of the index, guarded by its generation: the
        write fails with :class:`PreconditionFailed` if another writer got
        in between (Cloud Storage checks ``ifGenerationMatch``).
        """
        metadata = await self._client.metadata(INDEX_OBJECT)
        generation = "0" if metadata is None else str(metadata.get("generation", "0"))
        current = None
        if metadata is not None:
            current = await self._read(generation)
            if current is None:
                raise PreconditionFailed()
        updated, md5 = await self._runner.run(_changed_with_md5, change, current)
        await self._client.upload_bytes(INDEX_OBJECT, updated, md5,
                                        generation, content_type="application/json")

    async def prune(self, digests: frozenset[str]) -> int:
        """Remove the entries naming one of ``digests``; how many there were."""
        removed = 0

        def change(current: bytes | None) -> bytes:
            nonlocal removed
            updated, removed = without_manifests(current, digests)
            return updated

        await self._change(change, "pruning the index")
        return removed

    async def entries(self) -> list[Descriptor]:
        """Every entry of the index (none when there is no index yet)."""
        current = await self._read()
        return await self._runner.run(index_entries, current)


def _changed_with_md5(change: Callable[[bytes | None], bytes],
                      current: bytes | None) -> tuple[bytes, str]:
    """The index changed, and the MD5 its upload is guarded by (in the runner)."""
    updated = change(current)
    return updated, md5_base64(updated)

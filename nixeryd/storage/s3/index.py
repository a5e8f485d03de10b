"""
The image index of a bucket, ``s3://<bucket>/index.json``, shared by
every daemon using the bucket.

It is updated by read-modify-write guarded with ``If-Match`` (the ETag
read) or ``If-None-Match: *`` (while there is none), which S3 answers with
412 when another writer got in between; the update is then made again.
Servers that ignore these conditions make it last-writer-wins.  Updates
asked for while one is being made are made together in the next
(:class:`~nixeryd.storage.indexqueue.IndexQueue`).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from nixeryd.core.httpbody import BodyTooLarge
from nixeryd.core.threads import Runner
from nixeryd.storage.gcs.objects import INDEX_OBJECT
from nixeryd.storage.indexqueue import IndexQueue
from nixeryd.storage.ociindex import (Descriptor, index_entries, with_references,
                                      without_manifests)
from nixeryd.storage.s3.bucket import S3Client
from nixeryd.storage.s3.http import PreconditionFailed, S3Error

#: The largest index read.
INDEX_LIMIT = 64 * 1024 * 1024
#: How many times an update is tried again after a concurrent one.
INDEX_ATTEMPTS = 8


class S3Index:
    """
    The index object of ``client``'s bucket.

    :param runner: where the index is parsed and serialised (it may be
        tens of megabytes).
    """

    log = Logger()

    def __init__(self, runner: Runner, client: S3Client) -> None:
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

    async def _read(self) -> tuple[bytes, str] | None:
        try:
            return await self._client.get(INDEX_OBJECT, INDEX_LIMIT)
        except BodyTooLarge:
            raise S3Error("s3://%s/%s is larger than %d bytes"
                          % (self._client.bucket, INDEX_OBJECT, INDEX_LIMIT)) from None

    async def _change(self, change: Callable[[bytes | None], bytes], what: str) -> None:
        """Apply ``change`` to the index, again after concurrent updates."""
        async with self._lock:
            for _ in range(INDEX_ATTEMPTS):
                current = await self._read()
                updated = await self._runner.run(
                    change, None if current is None else current[0])
                try:
                    await self._client.put_bytes(
                        INDEX_OBJECT, updated, content_type="application/json",
                        if_match=None if current is None else current[1],
                        if_none_match=current is None)
                    return
                except PreconditionFailed:
                    self.log.info("s3://{bucket}/{name} changed meanwhile; retrying",
                                  bucket=self._client.bucket, name=INDEX_OBJECT)
        raise S3Error("s3://%s/%s kept changing; gave up %s"
                      % (self._client.bucket, INDEX_OBJECT, what))

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
        return await self._runner.run(index_entries, None if current is None else current[0])

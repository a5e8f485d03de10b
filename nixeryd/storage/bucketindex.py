"""
What the image indexes of the bucket backends share
(:class:`~nixeryd.storage.gcs.index.BucketIndex`,
:class:`~nixeryd.storage.s3.index.S3Index`): :class:`GuardedIndex`.

Both keep the index in one object, ``index.json``, shared by every daemon
using the bucket, and update it by read-modify-write guarded by a
precondition the service checks; an update that finds another writer got
in between is made again, a few times at most.  Updates asked for while
one is being made are made together in the next
(:class:`~nixeryd.storage.indexqueue.IndexQueue`).  Each backend says how
one guarded update is made and how the index is read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from nixeryd.core.threads import Runner
from nixeryd.storage.errors import StorageServiceError
from nixeryd.storage.indexqueue import IndexQueue
from nixeryd.storage.objectnames import INDEX_OBJECT
from nixeryd.storage.ociindex import (Descriptor, index_entries, with_references,
                                      without_manifests)

#: The largest index read.
INDEX_LIMIT = 64 * 1024 * 1024
#: How many times an update is tried again after a concurrent one.
INDEX_ATTEMPTS = 8

#: A change of the index: its bytes (``None`` when there is none yet) to
#: the bytes to write.
Change = Callable[[bytes | None], bytes]


class GuardedIndex(ABC):
    """
    The index object of one bucket, updated by guarded read-modify-write.

    :param runner: where the index is parsed, serialised and hashed (it
        may be tens of megabytes).
    :param bucket: the bucket's name, for messages.
    :param url_scheme: ``gs`` or ``s3``, for messages.
    :param conflict: what :meth:`_update_once` raises when another writer
        got in between.
    :param error: what is raised when the index cannot be updated.
    """

    log = Logger()

    def __init__(self, runner: Runner, bucket: str, *, url_scheme: str,
                 conflict: type[Exception],
                 error: type[StorageServiceError]) -> None:
        self._runner = runner
        self._bucket = bucket
        self._url_scheme = url_scheme
        self._conflict = conflict
        self._error = error
        self._lock = DeferredLock()
        self._queue = IndexQueue(
            lambda batch: Deferred.fromCoroutine(self._change(
                lambda current: with_references(current, batch),
                "naming %s" % (", ".join(sorted(batch)),))))

    def _url(self) -> str:
        return "%s://%s/%s" % (self._url_scheme, self._bucket, INDEX_OBJECT)

    def _too_large(self) -> StorageServiceError:
        """The error of an index larger than :data:`INDEX_LIMIT`."""
        return self._error("%s is larger than %d bytes" % (self._url(), INDEX_LIMIT))

    @abstractmethod
    async def _read_index(self) -> bytes | None:
        """The index's bytes, ``None`` when there is none yet."""

    @abstractmethod
    async def _update_once(self, change: Change) -> None:
        """
        One read-modify-write of the index, ``change`` applied in the
        runner; fails with the ``conflict`` error when another writer got
        in between.
        """

    def record(self, reference: str, entry: Descriptor) -> Deferred[None]:
        """Have ``reference`` name ``entry`` (gathered with concurrent updates)."""
        return self._queue.record(reference, entry)

    def record_reference(self, reference: str, manifest_digest: str,
                         media_type: str, size: int) -> Deferred[None]:
        """:meth:`IndexQueue.record_reference`, in this index."""
        return self._queue.record_reference(reference, manifest_digest, media_type, size)

    async def _change(self, change: Change, what: str) -> None:
        """Apply ``change`` to the index, again after concurrent updates."""
        async with self._lock:
            for _ in range(INDEX_ATTEMPTS):
                try:
                    await self._update_once(change)
                    return
                except self._conflict:
                    self.log.info("{url} changed meanwhile; retrying", url=self._url(),
                                  bucket=self._bucket, name=INDEX_OBJECT)
        raise self._error("%s kept changing; gave up %s" % (self._url(), what))

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
        current = await self._read_index()
        return await self._runner.run(index_entries, current)

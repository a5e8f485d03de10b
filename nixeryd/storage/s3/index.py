"""
The image index of a bucket, ``s3://<bucket>/index.json``, shared by
every daemon using the bucket.

It is updated by read-modify-write guarded with ``If-Match`` (the ETag
read) or ``If-None-Match: *`` (while there is none), which S3 answers with
412 when another writer got in between; the update is then made again
(:class:`~nixeryd.storage.bucketindex.GuardedIndex`, which also batches
concurrent updates).  Servers that ignore these conditions make it
last-writer-wins.
"""

from __future__ import annotations

from nixeryd.core.httpbody import BodyTooLarge
from nixeryd.core.threads import Runner
from nixeryd.storage.bucketindex import INDEX_LIMIT, Change, GuardedIndex
from nixeryd.storage.objectnames import INDEX_OBJECT
from nixeryd.storage.s3.bucket import S3Client
from nixeryd.storage.s3.http import PreconditionFailed, S3Error


class S3Index(GuardedIndex):
    """
    The index object of ``client``'s bucket.

    :param runner: where the index is parsed and serialised (it may be
        tens of megabytes).
    """

    def __init__(self, runner: Runner, client: S3Client) -> None:
        super().__init__(runner, client.bucket, url_scheme="s3",
                         conflict=PreconditionFailed, error=S3Error)
        self._client = client

    async def _read(self) -> tuple[bytes, str] | None:
        """The index's bytes and ETag."""
        try:
            return await self._client.get(INDEX_OBJECT, INDEX_LIMIT)
        except BodyTooLarge:
            raise self._too_large() from None

    async def _read_index(self) -> bytes | None:
        current = await self._read()
        return None if current is None else current[0]

    async def _update_once(self, change: Change) -> None:
        """
        One read-modify-write of the index, guarded by the ETag read (or by
        there being none): the write fails with :class:`PreconditionFailed`
        if another writer got in between.
        """
        current = await self._read()
        updated = await self._runner.run(change, None if current is None else current[0])
        await self._client.put_bytes(
            INDEX_OBJECT, updated, content_type="application/json",
            if_match=None if current is None else current[1],
            if_none_match=current is None)

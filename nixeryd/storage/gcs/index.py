"""
The image index of a bucket, ``gs://<bucket>/index.json``, shared by every
daemon using the bucket.

It is updated by read-modify-write guarded with ``ifGenerationMatch``, so
concurrent daemons sharing the bucket retry instead of overwriting each
other's references (emulators that ignore preconditions make this
last-writer-wins); the retries, and the batching of concurrent updates,
are :class:`~nixeryd.storage.bucketindex.GuardedIndex`'s.
"""

from __future__ import annotations

from nixeryd.core.httpbody import BodyTooLarge
from nixeryd.core.threads import Runner
from nixeryd.storage.bucketindex import INDEX_LIMIT, Change, GuardedIndex
from nixeryd.storage.gcs.bucket import BucketClient
from nixeryd.storage.gcs.http import GCSError, PreconditionFailed
from nixeryd.storage.gcs.objects import md5_base64
from nixeryd.storage.objectnames import INDEX_OBJECT


class BucketIndex(GuardedIndex):
    """
    The index object of ``client``'s bucket.

    :param runner: where the index is parsed, serialised and hashed (it
        may be tens of megabytes).
    """

    def __init__(self, runner: Runner, client: BucketClient) -> None:
        super().__init__(runner, client.bucket, url_scheme="gs",
                         conflict=PreconditionFailed, error=GCSError)
        self._client = client

    async def _read(self, generation: str | None = None) -> bytes | None:
        try:
            return await self._client.download(INDEX_OBJECT, INDEX_LIMIT, generation)
        except BodyTooLarge:
            raise self._too_large() from None

    async def _read_index(self) -> bytes | None:
        return await self._read()

    async def _update_once(self, change: Change) -> None:
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


def _changed_with_md5(change: Change, current: bytes | None) -> tuple[bytes, str]:
    """The index changed, and the MD5 its upload is guarded by (in the runner)."""
    updated = change(current)
    return updated, md5_base64(updated)

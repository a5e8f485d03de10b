"""
What the bucket backends share (:class:`~nixeryd.storage.gcs.storage.GCSStorage`,
:class:`~nixeryd.storage.s3.storage.S3Storage`): :class:`BucketStorage`.

Both work on the reactor with coroutines over their bucket's HTTP API,
keep layer files waiting for their upload in a spool directory of their
own (:mod:`nixeryd.storage.tempdirs`), and keep the image index in the
bucket (:class:`~nixeryd.storage.bucketindex.GuardedIndex`).  This class
makes :class:`~nixeryd.storage.interface.IStorage` of that: each method
checks the names it is given (an invalid one fails the Deferred at once)
and runs the backend's coroutine; a backend defines only the coroutines.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from typing import Any, Collection, Generic, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from nixeryd.core.documents import LocalBlob, RedirectBlob
from nixeryd.core.threads import Runner
from nixeryd.storage.bucketclient import PooledBucketClient
from nixeryd.storage.bucketindex import GuardedIndex
from nixeryd.storage.checksums import ObjectChecksums
from nixeryd.storage.integrity import BlobCheck
from nixeryd.storage.interface import IStorage
from nixeryd.storage.listing import StoredBlob, StoredDocument
from nixeryd.storage.objectnames import blob_object_name, document_object_name
from nixeryd.storage.ociindex import Descriptor
from nixeryd.storage.tempdirs import WriterDirectory, claim_swept, log_swept, release


ClientT = TypeVar("ClientT", bound=PooledBucketClient)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@implementer(IStorage)
class BucketStorage(ABC, Generic[ClientT]):
    """
    Blobs and documents in one bucket, through ``client``.

    :param clock: the time of the backend's signatures and refreshes.
    :param runner: runs blocking work (hashing, file reads, signing).
    :param client: the API on the bucket.
    :param spool_directory: where layer files wait for their upload, in
        a directory of this storage's own; by default
        ``$TMPDIR/nixeryd-spool``, shared with other users (sticky, like
        ``/tmp``), each sweeping only its own leftovers.

    Making one blocks (it claims its spool directory and sweeps what dead
    processes left): do it in a thread, or before the reactor runs.
    A backend sets ``_index`` and ``_checksums`` in its constructor.
    """

    log = Logger()

    _index: GuardedIndex
    _checksums: ObjectChecksums

    def __init__(self, clock: IReactorTime, runner: Runner, client: ClientT,
                 spool_directory: str | None) -> None:
        self._clock = clock
        self._runner = runner
        self.client = client
        self.bucket = client.bucket
        #: Where every writer's directory is.
        self.spool_root = os.path.abspath(spool_directory or os.path.join(
            tempfile.gettempdir(), "nixeryd-spool"))
        self._writer: WriterDirectory | None
        self._writer, swept = claim_swept(self.spool_root, spool_directory is None)
        log_swept(self.log, swept, self.spool_root, "spool")
        self._spool = self._writer.path

    async def _unspool(self, path: str) -> None:
        """Remove a spooled file (in the runner), if it is still there."""
        await self._runner.run(_remove_quietly, path)

    # -- what each backend does -------------------------------------------

    @abstractmethod
    async def _has_blob(self, digest: str) -> bool:
        """Whether the blob's object exists."""

    @abstractmethod
    async def _refresh_blob(self, digest: str) -> bool:
        """Give the blob's object a new time; whether it exists."""

    @abstractmethod
    async def _check_blob(self, digest: str, checksum: str | None) -> BlobCheck:
        """The blob's object's checksum against ``checksum`` or the one known."""

    @abstractmethod
    async def _store_file(self, path: str, digest: str) -> None:
        """Upload the file (which is then removed) as the blob."""

    @abstractmethod
    async def _store_bytes(self, data: bytes, digest: str) -> None:
        """Upload ``data`` as the blob."""

    @abstractmethod
    async def _blob(self, digest: str) -> LocalBlob | RedirectBlob:
        """Where clients download the blob from."""

    @abstractmethod
    async def _read_small(self, digest: str, limit: int) -> bytes | None:
        """The blob's bytes, ``None`` when larger than ``limit``."""

    @abstractmethod
    async def _get_document(self, namespace: str, key: str) -> Any:
        """The document, parsed; ``None`` when there is none."""

    @abstractmethod
    async def _put_document(self, namespace: str, key: str, document: object) -> None:
        """Write the document as JSON."""

    @abstractmethod
    async def _list_blobs(self) -> list[StoredBlob]:
        """Every blob's object."""

    @abstractmethod
    async def _list_documents(self, namespace: str) -> list[StoredDocument]:
        """Every document of ``namespace``."""

    @abstractmethod
    async def _remove(self, name: str, version: str) -> bool:
        """Delete the object if it is still ``version``; whether it was."""

    @abstractmethod
    async def _check_bucket(self) -> None:
        """What :meth:`check_bucket` checks."""

    # -- public -----------------------------------------------------------

    def check_bucket(self) -> Deferred[None]:
        """
        Make sure the bucket exists and the credentials may use it (and
        what else the backend checks at start-up); fails with the
        backend's error and an explanation otherwise.
        """
        return Deferred.fromCoroutine(self._check_bucket())

    # -- IStorage ---------------------------------------------------------

    def temp_directory(self) -> str:
        return self._spool

    def has_blob(self, digest: str) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._has_blob(digest))

    def refresh_blob(self, digest: str) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._refresh_blob(digest))

    def check_blob(self, digest: str, checksum: str | None = None) -> Deferred[BlobCheck]:
        return Deferred.fromCoroutine(self._check_blob(digest, checksum))

    def store_blob_file(self, path: str, digest: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._store_file(path, digest))

    def store_blob_bytes(self, data: bytes, digest: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._store_bytes(data, digest))

    def blob(self, digest: str) -> Deferred[LocalBlob | RedirectBlob]:
        return Deferred.fromCoroutine(self._blob(digest))

    def read_small_blob(self, digest: str, limit: int) -> Deferred[bytes | None]:
        return Deferred.fromCoroutine(self._read_small(digest, limit))

    def get_document(self, namespace: str, key: str) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._get_document(namespace, key))

    def put_document(self, namespace: str, key: str, document: object) -> Deferred[None]:
        return Deferred.fromCoroutine(self._put_document(namespace, key, document))

    def record_reference(self, reference: str, manifest_digest: str,
                         media_type: str, size: int) -> Deferred[None]:
        return self._index.record_reference(reference, manifest_digest, media_type, size)

    def list_references(self) -> Deferred[list[Descriptor]]:
        return Deferred.fromCoroutine(self._index.entries())

    def prune_references(self, manifest_digests: Collection[str]) -> Deferred[int]:
        return Deferred.fromCoroutine(self._index.prune(frozenset(manifest_digests)))

    def list_blobs(self) -> Deferred[list[StoredBlob]]:
        return Deferred.fromCoroutine(self._list_blobs())

    def remove_blob(self, digest: str, version: str) -> Deferred[bool]:
        try:
            name = blob_object_name(digest)
        except Exception:
            return fail()
        return Deferred.fromCoroutine(self._remove(name, version))

    def list_documents(self, namespace: str) -> Deferred[list[StoredDocument]]:
        return Deferred.fromCoroutine(self._list_documents(namespace))

    def remove_document(self, namespace: str, key: str, version: str) -> Deferred[bool]:
        try:
            name = document_object_name(namespace, key)
        except Exception:
            return fail()
        return Deferred.fromCoroutine(self._remove(name, version))

    def close(self) -> Deferred[None]:
        """
        Give up the spool directory (a few system calls) and close idle
        connections (when the daemon stops, and at the end of tests).
        """
        if self._writer is not None:
            writer, self._writer = self._writer, None
            release(writer)
        return self.client.close()

"""
The contract every storage backend meets.
"""

from __future__ import annotations

from typing import Any, Collection

from twisted.internet.defer import Deferred
from zope.interface import Interface

from nixeryd.core.documents import LocalBlob, RedirectBlob
from nixeryd.storage.integrity import BlobCheck
from nixeryd.storage.listing import StoredBlob, StoredDocument


class IStorage(Interface):
    """
    Content-addressed blobs plus small JSON documents.

    Every method that may block returns a Deferred.  Digests are
    ``sha256:<64 lowercase hex>`` and are validated by the backend before
    they are turned into a path or an object name.

    The listing and removal methods serve garbage collection
    (:mod:`nixeryd.gc`): a removal names the version it saw listed and
    does nothing if the entry was written again since, so that a daemon
    storing the same blob or rewriting a document meanwhile keeps it.
    """

    def temp_directory() -> str:
        """
        A local directory where callers write blob files before handing
        them to :meth:`store_blob_file` (same filesystem as the blobs for
        the filesystem backend, so that storing is a rename).
        """

    def has_blob(digest: str) -> Deferred[bool]:
        """Deferred firing with whether a complete blob with ``digest`` is stored."""

    def refresh_blob(digest: str) -> Deferred[bool]:
        """
        Mark a stored blob as written now, as storing it again would, and
        fire with whether it is stored.  A caller that reuses a blob it
        did not write calls this rather than :meth:`has_blob`: the blob
        then has a new time (within the collector's grace period) and a
        new version, so a garbage-collection pass that listed it before
        does not remove it; ``False`` means it was removed already, and
        must be written again.
        """

    def check_blob(digest: str, checksum: str | None = None) -> Deferred[BlobCheck]:
        """
        Whether the blob stored under ``digest`` still holds its bytes
        (:mod:`nixeryd.storage.integrity`), before a cache trusts it.

        :param checksum: what an earlier check (or this process's own
            write) gave as the blob's checksum, recorded beside its digest
            in a cache document; ``None`` when none was recorded.
        :returns: a Deferred firing with the
            :class:`~nixeryd.storage.integrity.BlobCheck`; an intact one
            carries the checksum to record.  Cheap enough for every reuse:
            the answer is remembered for the process (one metadata request
            or one hash of the file per blob), and storing the blob again
            replaces what was remembered.
        """

    def store_blob_file(path: str, digest: str) -> Deferred[None]:
        """
        Take ownership of the complete file at ``path`` whose content has
        ``digest`` and make it visible atomically.  The file is gone from
        ``path`` afterwards, whether or not the call succeeds.
        """

    def store_blob_bytes(data: bytes, digest: str) -> Deferred[None]:
        """Store a small blob given in memory (configs, manifests)."""

    def blob(digest: str) -> Deferred[LocalBlob | RedirectBlob]:
        """
        Deferred firing with a :class:`~nixeryd.core.documents.LocalBlob` or
        :class:`~nixeryd.core.documents.RedirectBlob`; fails with
        :class:`~nixeryd.core.errors.BlobUnknown` when there is none, and
        with :class:`~nixeryd.storage.integrity.BlobCorrupt` when what is
        stored is found not to be the blob (it is never answered).
        """

    def read_small_blob(digest: str, limit: int) -> Deferred[bytes | None]:
        """
        Deferred firing with the bytes of a blob of at most ``limit`` bytes,
        or ``None`` when it is missing or larger.
        """

    def get_document(namespace: str, key: str) -> Deferred[Any]:
        """
        Deferred firing with the JSON document stored under the key (as
        :func:`json.loads` gives it: its shape is the caller's to know), or
        ``None``.
        """

    def put_document(namespace: str, key: str, document: object) -> Deferred[None]:
        """Store a JSON document under the key, replacing any earlier one."""

    def record_reference(reference: str, manifest_digest: str, media_type: str,
                         size: int) -> Deferred[None]:
        """
        Name a stored manifest in the storage's image index, so that image
        tools reading the storage directly can find it by ``reference``.
        """

    def list_references() -> Deferred[list[dict[str, Any]]]:
        """
        Deferred firing with every descriptor of the storage's image index
        (``mediaType``, ``digest``, ``size``, and ``annotations`` naming
        the reference when there is one), in the index's order.
        """

    def prune_references(manifest_digests: Collection[str]) -> Deferred[int]:
        """
        Remove from the image index every entry naming one of the
        manifests (named or not); Deferred firing with how many were
        removed.
        """

    def list_blobs() -> Deferred[list[StoredBlob]]:
        """Deferred firing with every stored blob, in no particular order."""

    def remove_blob(digest: str, version: str) -> Deferred[bool]:
        """
        Remove the blob if it is still the ``version`` listed; Deferred
        firing with whether it was removed (``False`` when it is gone or
        was written again since).
        """

    def list_documents(namespace: str) -> Deferred[list[StoredDocument]]:
        """Deferred firing with every document of ``namespace``."""

    def remove_document(namespace: str, key: str, version: str) -> Deferred[bool]:
        """
        Remove the document if it is still the ``version`` listed; Deferred
        firing with whether it was removed.
        """

    def close() -> Deferred[None]:
        """
        Release what the backend holds open (network connections), once no
        call is in flight any more; the storage is not used afterwards.
        Fires when done.  The daemon calls it when it stops
        (:class:`~nixeryd.storage.service.StorageService`).
        """

"""
The contract every storage backend meets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

from nixeryd.core.documents import LocalBlob, RedirectBlob


class IStorage(Interface):
    """
    Content-addressed blobs plus small JSON documents.

    Every method that may block returns a Deferred.  Digests are
    ``sha256:<64 lowercase hex>`` and are validated by the backend before
    they are turned into a path or an object name.
    """

    def temp_directory() -> str:
        """
        A local directory where callers write blob files before handing
        them to :meth:`store_blob_file` (same filesystem as the blobs for
        the filesystem backend, so that storing is a rename).
        """

    def has_blob(digest: str) -> Deferred[bool]:
        """Deferred firing with whether a complete blob with ``digest`` is stored."""

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
        :class:`~nixeryd.core.errors.BlobUnknown` when there is none.
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

    def close() -> Deferred[None]:
        """
        Release what the backend holds open (network connections), once no
        call is in flight any more; the storage is not used afterwards.
        Fires when done.  The daemon calls it when it stops
        (:class:`~nixeryd.storage.service.StorageService`).
        """

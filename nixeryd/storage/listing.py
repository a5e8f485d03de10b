"""
What a storage lists for garbage collection: every blob and every document
of a namespace, with its size, when it was last written and a version
token, so that a removal can be made conditional on nothing having
rewritten the entry since it was listed.
"""

from __future__ import annotations

from attrs import frozen


@frozen
class StoredBlob:
    """
    A blob as listed by :meth:`~nixeryd.storage.interface.IStorage.list_blobs`.

    :ivar digest: ``sha256:<hex>``.
    :ivar size: its length in bytes.
    :ivar modified: when it was last written (stored again, or refreshed
        by a store of the same content), in seconds since the epoch.
    :ivar version: opaque; changes whenever the blob is written again.
    """

    digest: str
    size: int
    modified: float
    version: str


@frozen
class StoredDocument:
    """
    A document as listed by
    :meth:`~nixeryd.storage.interface.IStorage.list_documents`.

    :ivar namespace: its namespace.
    :ivar key: its key.
    :ivar size: the length of its JSON text in bytes.
    :ivar modified: when it was last written, in seconds since the epoch.
    :ivar version: opaque; changes whenever the document is written again.
    """

    namespace: str
    key: str
    size: int
    modified: float
    version: str

"""
The objects of a bucket, as both cloud backends (Cloud Storage and S3)
name them, so that either bucket holds the same layout::

    blobs/sha256/<hex>                layers, configs, manifests
    nixeryd/<namespace>/<key>.json    cache documents
    index.json                        manifests named by reference

Names are validated before they become object names.
"""

from __future__ import annotations

from nixeryd.core.digests import check_digest, is_valid_digest
from nixeryd.storage.naming import check_document_name, check_namespace, is_document_key

#: The image index, shared by every daemon using the bucket.
INDEX_OBJECT = "index.json"
#: The prefix of every blob's object name.
BLOB_PREFIX = "blobs/sha256/"


def blob_object_name(digest: str) -> str:
    """The object that holds the blob with ``digest`` (validated)."""
    return BLOB_PREFIX + check_digest(digest)


def blob_digest(name: str) -> str | None:
    """The digest of the blob an object name holds, or ``None`` for another name."""
    digest = "sha256:" + name[len(BLOB_PREFIX):]
    return digest if name.startswith(BLOB_PREFIX) and is_valid_digest(digest) else None


def document_prefix(namespace: str) -> str:
    """
    The prefix of the objects of a document namespace.

    :raises ValueError: for a namespace outside the allowed grammar.
    """
    check_namespace(namespace)
    return "nixeryd/%s/" % (namespace,)


def document_key(namespace: str, name: str) -> str | None:
    """The key of the document an object name holds, or ``None`` for another name."""
    prefix = document_prefix(namespace)
    if not name.startswith(prefix) or not name.endswith(".json"):
        return None
    key = name[len(prefix):-len(".json")]
    return key if is_document_key(key) else None


def document_object_name(namespace: str, key: str) -> str:
    """
    The object that holds a cache document.

    :raises ValueError: for a namespace or key outside the allowed grammar.
    """
    check_document_name(namespace, key)
    return "nixeryd/%s/%s.json" % (namespace, key)

"""
The objects of the bucket and the checksums they are uploaded with.

::

    gs://<bucket>/blobs/sha256/<hex>                layers, configs, manifests
    gs://<bucket>/nixeryd/<namespace>/<key>.json    cache documents
    gs://<bucket>/index.json                        manifests named by reference

Names are validated before they become object names.  Uploads carry the
content's MD5 in their metadata (as Cloud Storage writes it in
``md5Hash``), so Cloud Storage refuses a body that arrived damaged instead
of storing it under its content address.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone

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


def parse_time(text: str) -> float:
    """
    Seconds since the epoch of an RFC 3339 time as Cloud Storage writes
    it (``2024-05-01T12:00:00.123Z``).

    :raises ValueError: for anything else.
    """
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def format_time(seconds: float) -> str:
    """An RFC 3339 UTC time, as ``customTime`` is written."""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def document_object_name(namespace: str, key: str) -> str:
    """
    The object that holds a cache document.

    :raises ValueError: for a namespace or key outside the allowed grammar.
    """
    check_document_name(namespace, key)
    return "nixeryd/%s/%s.json" % (namespace, key)


def md5_base64(data: bytes) -> str:
    """The MD5 of ``data`` as Cloud Storage writes it (``md5Hash``)."""
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def file_size_and_md5(path: str, read_size: int = 1024 * 1024) -> tuple[int, str]:
    """Size and base64 MD5 of a file, read a piece at a time (blocking)."""
    digest = hashlib.md5()
    size = 0
    with open(path, "rb") as f:
        while piece := f.read(read_size):
            digest.update(piece)
            size += len(piece)
    return size, base64.b64encode(digest.digest()).decode("ascii")

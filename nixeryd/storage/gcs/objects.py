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

from nixeryd.core.digests import check_digest
from nixeryd.storage.naming import check_document_name

#: The image index, shared by every daemon using the bucket.
INDEX_OBJECT = "index.json"


def blob_object_name(digest: str) -> str:
    """The object that holds the blob with ``digest`` (validated)."""
    return "blobs/sha256/" + check_digest(digest)


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

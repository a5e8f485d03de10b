"""
Whether a stored blob still holds the bytes its digest names.

A blob is written once under its content address and reused for as long
as storage keeps it: by the layer cache (a new image sharing a layer), by
the manifest cache (an image served after a restart, or by another
daemon on the same storage), and by every pull of an image held in
memory.  Bytes replaced under a blob's name (a damaged disk, a hand-made
copy, another program writing the bucket) would be handed to clients on
each of these paths, and only the client would notice ("digest did not
match").  So each backend can check a blob
(:meth:`~nixeryd.storage.interface.IStorage.check_blob`), cheaply enough
to do it every time a blob is reused:

* Cloud Storage computes each object's MD5 itself (``md5Hash``); the
  backend compares it with the MD5 the blob was uploaded with, which the
  caller keeps beside the digest in its cache documents (the *checksum*
  of a :class:`BlobCheck`, ``md5:<base64>``).  One metadata request per
  blob and process; blob requests compare the metadata they fetch anyway.
  MD5 rather than CRC32C: it is what every upload already sends for Cloud
  Storage to check, it is present on every object this registry writes
  (composite objects, which lack it, are never made), and 128 bits cannot
  be matched by accident nor, unlike a CRC, on purpose with a few bytes.
* The filesystem hashes the file (SHA-256, in the thread pool) once per
  process and file version (inode, size, modification time); it needs no
  recorded checksum, the digest is one.

A damaged blob is never served: ``blob`` fails with :class:`BlobCorrupt`
and the image service builds again what uses it, which overwrites it.
"""

from __future__ import annotations

import enum
from typing import Any, Mapping

from attrs import frozen

from nixeryd.core.errors import BlobUnknown

#: The field of a layer cache document that holds its blob's checksum.
CHECKSUM_FIELD = "checksum"
#: The field of a manifest cache document mapping each blob the image
#: names (config and layers) to its checksum.
CHECKSUMS_FIELD = "checksums"


class BlobState(enum.Enum):
    """What a check found under a blob's name."""

    #: The stored bytes are the blob's, as far as the backend can tell.
    INTACT = "intact"
    #: Nothing is stored under the digest.
    MISSING = "missing"
    #: Something else is stored under the digest.
    CORRUPT = "corrupt"


@frozen
class BlobCheck:
    """
    The outcome of one check.

    :ivar state: what was found.
    :ivar checksum: for an intact blob, what to record beside its digest
        and pass to the next check (``None`` for a backend that checks
        the content against the digest itself); for a damaged one, what
        the bytes should have had.
    :ivar compared: whether the bytes were compared with something that
        vouches for them (the digest, a recorded checksum); ``False`` when
        nothing was recorded and what is stored was taken as it is (its
        checksum is recorded from then on).
    """

    state: BlobState
    checksum: str | None = None
    compared: bool = True

    @property
    def intact(self) -> bool:
        """Whether the blob may be used."""
        return self.state is BlobState.INTACT


MISSING = BlobCheck(BlobState.MISSING)


class BlobCorrupt(BlobUnknown):
    """
    The bytes stored under a digest are not the blob's: never served.  A
    404 ``BLOB_UNKNOWN`` for a client when it cannot be made again.
    """


def recorded_checksum(document: Mapping[str, Any] | None, digest: str) -> str | None:
    """
    The checksum a manifest cache document records for ``digest``, or
    ``None`` (documents written before checksums were kept have none).
    """
    if not isinstance(document, Mapping):
        return None
    checksums = document.get(CHECKSUMS_FIELD)
    if not isinstance(checksums, Mapping):
        return None
    value = checksums.get(digest)
    return value if isinstance(value, str) else None

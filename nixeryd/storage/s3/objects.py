"""
What an upload to S3 sends: the checksums of a file, whole or part by
part, computed in one read before the first byte goes out.

The object names are those of the Cloud Storage backend
(:mod:`nixeryd.storage.gcs.objects`: ``blobs/sha256/<hex>``,
``nixeryd/<namespace>/<key>.json``, ``index.json``), so both buckets hold
the same layout.

Every request body is signed with its SHA-256 (``x-amz-content-sha256``)
and carries its MD5 (``Content-MD5``), so S3 refuses a body that arrived
damaged (``BadDigest``) instead of storing it under its content address.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone

from attrs import frozen

#: How much of a file is read at a time while hashing it.
HASH_READ_SIZE = 1024 * 1024


@frozen
class Part:
    """
    One request's worth of a file: a single PUT's whole body, or one part
    of a multipart upload.

    :ivar number: the part number, from 1.
    :ivar offset: where it starts in the file.
    :ivar length: its size in bytes.
    :ivar md5: its base64 MD5, for ``Content-MD5``.
    :ivar sha256: its hexadecimal SHA-256, for the signature.
    """

    number: int
    offset: int
    length: int
    md5: str
    sha256: str


@frozen
class UploadPlan:
    """
    How a file is uploaded: in one request (one part) or in several.

    :ivar size: the file's size.
    :ivar md5: the whole file's hexadecimal MD5: the ETag of an object
        stored in one request.
    :ivar parts: the requests' bodies, in order.
    """

    size: int
    md5: str
    parts: tuple[Part, ...]

    @property
    def multipart(self) -> bool:
        """Whether it goes up as a multipart upload."""
        return len(self.parts) > 1

    def etags(self) -> frozenset[str]:
        """
        The ETags S3 may give the object once stored: the MD5 of its
        content, or, from a multipart upload, the MD5 of the parts' MD5s
        followed by ``-<parts>``.
        """
        digests = b"".join(base64.b64decode(part.md5) for part in self.parts)
        combined = "%s-%d" % (hashlib.md5(digests).hexdigest(), len(self.parts))
        return frozenset({self.md5, combined})


def plan_upload(path: str, multipart_threshold: int, part_size: int,
                read_size: int = HASH_READ_SIZE) -> UploadPlan:
    """
    Hash a file for its upload (blocking: run it in the thread pool): in
    one part when it is at most ``multipart_threshold`` bytes, else in
    parts of ``part_size`` bytes (the last one shorter).
    """
    whole = hashlib.md5()
    parts: list[Part] = []
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        length = size if size <= multipart_threshold else part_size
        offset = 0
        while offset < size or not parts:
            wanted = min(length, size - offset)
            md5, sha256 = hashlib.md5(), hashlib.sha256()
            left = wanted
            while left > 0:
                piece = f.read(min(read_size, left))
                if not piece:
                    raise OSError("%s ended at byte %d while hashing it" % (path, offset))
                md5.update(piece)
                sha256.update(piece)
                whole.update(piece)
                left -= len(piece)
            parts.append(Part(len(parts) + 1, offset, wanted,
                              base64.b64encode(md5.digest()).decode("ascii"),
                              sha256.hexdigest()))
            offset += wanted
    return UploadPlan(size, whole.hexdigest(), tuple(parts))


def bytes_checksums(data: bytes) -> tuple[str, str]:
    """The base64 MD5 and hexadecimal SHA-256 of a body in memory."""
    return (base64.b64encode(hashlib.md5(data).digest()).decode("ascii"),
            hashlib.sha256(data).hexdigest())


def parse_last_modified(text: str) -> float:
    """
    Seconds since the epoch of a ``LastModified`` of a listing
    (``2024-05-01T12:00:00.123Z``).

    :raises ValueError: for anything else.
    """
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def format_mtime(seconds: float) -> str:
    """
    A time as ``x-amz-meta-mtime`` holds it (seconds since the epoch with
    a fraction): servers backed by rclone take an object's time from it.
    """
    return "%.9f" % (seconds,)


def utc_now(seconds: float) -> datetime:
    """A signing time for ``seconds`` since the epoch."""
    return datetime.fromtimestamp(seconds, timezone.utc)

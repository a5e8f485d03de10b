"""
What Cloud Storage's objects carry besides their names (those are
:mod:`nixeryd.storage.objectnames`): the checksums uploads are sent with,
and the times of ``customTime`` and listings.

Uploads carry the content's MD5 in their metadata (as Cloud Storage writes
it in ``md5Hash``), so Cloud Storage refuses a body that arrived damaged
instead of storing it under its content address.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone


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

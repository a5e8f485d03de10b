"""
Conditional and partial blob requests: ``Range`` parsing
(:func:`parse_range`) and ``If-None-Match`` matching (:func:`etag_matches`).

Pure functions of header bytes and the blob's size; what the response
then looks like is decided in :mod:`nixeryd.registry.blobs`.  A position
of any length is read without converting more than 18 digits: anything
larger is past the end of every blob.
"""

from __future__ import annotations

import re
from typing import Optional

from attrs import frozen


@frozen
class ByteRange:
    """
    One satisfiable byte range of a blob.

    :ivar start: the first byte served.
    :ivar end: the last byte served (inclusive, as in ``Content-Range``).
    """

    start: int
    end: int

    @property
    def length(self) -> int:
        """How many bytes the range holds."""
        return self.end - self.start + 1


class RangeNotSatisfiable(Exception):
    """A well-formed ``Range`` that selects no byte of the blob."""


_RANGE = re.compile(rb"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*\Z", re.IGNORECASE)

#: A byte position past the end of any blob.
BEYOND_ANY_BLOB = 10 ** 18


def _position(digits: bytes) -> int:
    """
    ASCII digits as a number, at most :data:`BEYOND_ANY_BLOB`: leading
    zeros are dropped and longer numbers are not converted at all.
    """
    significant = digits.lstrip(b"0")
    if len(significant) > 18:
        return BEYOND_ANY_BLOB
    return min(int(significant or b"0"), BEYOND_ANY_BLOB)


def parse_range(header: bytes, size: int) -> Optional[ByteRange]:
    """
    The byte range that a ``Range`` header selects in a blob of ``size``.

    Single ranges are supported: ``bytes=a-b``, ``bytes=a-`` and
    ``bytes=-n``.  Headers that are malformed, use another unit or ask for
    several ranges return ``None``, meaning "serve everything", which
    RFC 9110 allows.

    :raises RangeNotSatisfiable: when the range starts past the end of the
        blob, or is an empty suffix.
    """
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if first:
        start = _position(first)
        if last:
            end = _position(last)
            if end < start:
                return None
        else:
            end = size - 1
        if start >= size:
            raise RangeNotSatisfiable()
        return ByteRange(start, min(end, size - 1))
    if not last:
        return None
    suffix = _position(last)
    if suffix == 0 or size == 0:
        raise RangeNotSatisfiable()
    return ByteRange(max(0, size - suffix), size - 1)


def etag_matches(header: bytes, etag: bytes) -> bool:
    """Whether an ``If-None-Match`` value names ``etag`` (or is ``*``)."""
    for candidate in header.split(b","):
        candidate = candidate.strip()
        if candidate.startswith(b"W/"):
            candidate = candidate[2:]
        if candidate == etag or candidate == b"*":
            return True
    return False

"""
Reading HTTP response bodies with a size limit.

Bodies from other servers (Cloud Storage, a popularity URL) are read into
memory only when they are small documents; a body past its limit stops the
read at once instead of being buffered whole.
"""

from __future__ import annotations

import treq
from twisted.web.iweb import IResponse


class BodyTooLarge(Exception):
    """A response body went over its size limit."""


async def read_limited(response: IResponse, limit: int) -> bytes:
    """
    The whole body of ``response``.

    :raises BodyTooLarge: as soon as it exceeds ``limit`` bytes (the
        connection is then dropped rather than drained).
    """
    pieces: list[bytes] = []
    received = 0

    def keep(data: bytes) -> None:
        nonlocal received
        received += len(data)
        if received > limit:
            raise BodyTooLarge("the body is larger than %d bytes" % (limit,))
        pieces.append(data)

    await treq.collect(response, keep)
    return b"".join(pieces)

"""
Validation of content digests, before they become paths or object names.
"""

from __future__ import annotations

import re

from nixeryd.core.errors import DigestInvalid

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}\Z")


def is_valid_digest(digest: str) -> bool:
    """Whether ``digest`` is ``sha256:`` followed by 64 lowercase hex digits."""
    return bool(_SHA256.match(digest))


def check_digest(digest: str) -> str:
    """
    Return the hex part of a valid digest.

    :raises DigestInvalid: for anything but ``sha256:<64 lowercase hex>``.
    """
    if not is_valid_digest(digest):
        raise DigestInvalid("invalid digest %r: expected sha256:<64 lowercase hex>"
                            % (digest[:80],), {"digest": digest[:200]})
    return digest[len("sha256:"):]

"""
Numbers and times as people read them on the pages: sizes in kB and MB,
durations in seconds or minutes, moments in UTC.

Pure functions of their arguments, so the server-rendered page and the
live updates sent to its script say the same thing the same way.
"""

from __future__ import annotations

import time

from nixeryd.core.text import human_size


def size(n: int) -> str:
    """``n`` bytes as everything else shows them (:func:`~nixeryd.core.text.human_size`)."""
    return human_size(n)


def seconds(s: float) -> str:
    """A duration: ``0.4 s``, ``12.0 s``, ``3 min 05 s``, ``2 h 01 min``."""
    if s < 60:
        return "%.1f s" % (max(0.0, s),)
    whole = int(s)
    if whole < 3600:
        return "%d min %02d s" % divmod(whole, 60)
    return "%d h %02d min" % (whole // 3600, (whole % 3600) // 60)


def moment(t: float) -> str:
    """A moment in reactor seconds (the epoch), in UTC to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def short_digest(digest: str) -> str:
    """``sha256:`` and the first 12 hex digits: enough to tell layers apart."""
    algorithm, _, value = digest.partition(":")
    return "%s:%s" % (algorithm, value[:12]) if value else digest

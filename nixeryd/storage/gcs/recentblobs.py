"""
Blobs seen intact in the bucket a moment ago: :class:`RecentBlobs`.

A blob request on Cloud Storage is answered with a redirect to a signed
URL, after a metadata request that shows the object exists and still has
the blob's MD5 (:mod:`nixeryd.storage.checksums`).  That request costs a
round trip to the bucket per blob request, which limits redirects to a few
hundred a second; the signed URL itself is reused
(:class:`~nixeryd.storage.gcs.signers.SignedUrls`).  So a blob whose
object was seen intact within the last ``window`` seconds is answered
again without asking: an object removed or damaged behind the registry's
back is noticed by the first request after the window, at most ``window``
seconds late (the daemon's window is half a signed URL's lifetime).  The
garbage collector removes a blob only hours after the last manifest that
named it, and removing it through the storage forgets it here at once.

Bounded (the least recently used entries go first); pure bookkeeping on
the reactor thread.
"""

from __future__ import annotations

from typing import Callable

from nixeryd.service.lru import LRU

#: Blobs remembered at most.
DEFAULT_ENTRIES = 10000


class RecentBlobs:
    """
    When each blob object was last seen intact.

    :param now: the current time in seconds (the reactor's ``seconds``).
    :param window: seconds a sighting is trusted.
    :param entries: how many objects are remembered at most.
    """

    def __init__(self, now: Callable[[], float], window: float,
                 entries: int = DEFAULT_ENTRIES) -> None:
        self._now = now
        self._window = window
        self._seen: LRU[str, float] = LRU(entries)

    def fresh(self, name: str) -> bool:
        """Whether ``name`` was seen intact within the window."""
        seen = self._seen.get_recent(name)
        if seen is None:
            return False
        if self._now() - seen >= self._window:
            del self._seen[name]
            return False
        return True

    def saw(self, name: str) -> None:
        """``name`` was just seen intact."""
        self._seen.put(name, self._now())

    def forget(self, name: str) -> None:
        """``name`` is being removed, or was found missing or damaged."""
        self._seen.pop(name, None)

"""
Blobs seen intact in the bucket a moment ago: :class:`RecentBlobs`.

A blob request on Cloud Storage is answered with a redirect to a signed
URL, after a metadata request that shows the object exists and still has
the blob's MD5 (:mod:`nixeryd.storage.checksums`), so that a damaged
object is not handed to a client.  That request costs a round trip to the
bucket; requests for one blob at once share the one on its way, but a
busy blob still costs a request per round trip and its requests wait for
it.  Many clients pulling one image ask for the same blobs within moments
of each other, so a blob whose object was seen intact within the last
:data:`WINDOW` seconds is answered again without asking: a busy blob costs
at most ``1 / WINDOW`` metadata requests a second, and an object damaged
or removed behind the registry's back is noticed at most :data:`WINDOW`
seconds late.  A second is short beside the minutes a signed URL is valid
for, and a client that downloads a damaged object in that second refuses
it by its digest, as it would anyway.  Removing a blob through the storage
forgets it at once, and again once the removal is done; a lookup that
was on its way while a blob was forgotten is not remembered
(:meth:`RecentBlobs.lookup_started`), so its answer from before the
removal is not trusted after it.

Bounded (the least recently used entries go first); pure bookkeeping on
the reactor thread.
"""

from __future__ import annotations

from typing import Callable

from nixeryd.service.lru import LRU

#: Blobs remembered at most.
DEFAULT_ENTRIES = 10000

#: Seconds a sighting of an intact object is trusted.
WINDOW = 1.0


class RecentBlobs:
    """
    When each blob object was last seen intact, and its size.

    :param now: the current time in seconds (the reactor's ``seconds``).
    :param window: seconds a sighting is trusted.
    :param entries: how many objects are remembered at most.
    """

    def __init__(self, now: Callable[[], float], window: float = WINDOW,
                 entries: int = DEFAULT_ENTRIES) -> None:
        self._now = now
        self._window = window
        self._seen: LRU[str, tuple[float, int]] = LRU(entries)
        #: How many times a blob was forgotten: a lookup that began before
        #: the latest forgetting may have seen what is now gone.
        self._forgotten = 0

    def size(self, name: str) -> int | None:
        """The size of ``name`` if it was seen intact within the window, else ``None``."""
        seen = self._seen.get_recent(name)
        if seen is None:
            return None
        if self._now() - seen[0] >= self._window:
            del self._seen[name]
            return None
        return seen[1]

    def lookup_started(self) -> int:
        """A token to give :meth:`saw` for a lookup that starts now."""
        return self._forgotten

    def saw(self, name: str, size: int, started: int | None = None) -> None:
        """
        ``name`` was just seen intact, ``size`` bytes long, by a lookup
        that began when :meth:`lookup_started` gave ``started``; ignored
        if some blob was forgotten since (forgetting is rare: removals and
        damage).
        """
        if started is not None and started != self._forgotten:
            return
        self._seen.put(name, (self._now(), size))

    def forget(self, name: str) -> None:
        """``name`` is being removed, or was found missing or damaged."""
        self._forgotten += 1
        self._seen.pop(name, None)

"""
Blob redirect URLs kept for reuse: :class:`RedirectCache`.

A blob request on Cloud Storage is answered with a redirect to a signed
URL, valid for minutes.  Checking that the object exists (a metadata
request) and signing (RSA in the thread pool) for every request would
limit redirects to a few hundred a second and keep a thread busy for
each; a URL signed a moment ago is as good for the next client.  So the
URL of a blob known to exist is kept and handed out again while at least
half of its lifetime remains: every client still gets a URL valid for at
least ``lifetime / 2`` seconds, the URL changes at most every
``lifetime / 2`` seconds, and a cache hit costs a dictionary lookup on
the reactor.

An entry also stands for "the object exists", for as long as it is
reused.  A blob is only removed by the garbage collector hours after the
last manifest that named it, so no client asks for it by then; a client
that did would get the storage's 404 for the object instead of the
registry's.

The cache is bounded (least recently used entries go first) and keyed by
object name; the URLs are for ``GET``.
"""

from __future__ import annotations

from typing import Callable

from nixeryd.service.lru import LRU

#: Signed URLs kept at most.
DEFAULT_ENTRIES = 10000


class RedirectCache:
    """
    Signed URLs with the time until which they may be handed out.

    :param now: the current time in seconds (the reactor's ``seconds``).
    :param lifetime: seconds a signed URL is valid from its signing.
    :param entries: how many URLs are kept at most.
    """

    def __init__(self, now: Callable[[], float], lifetime: float,
                 entries: int = DEFAULT_ENTRIES) -> None:
        self._now = now
        self._reuse_for = lifetime / 2
        self._urls: LRU[str, tuple[str, float]] = LRU(entries)

    def get(self, name: str) -> str | None:
        """A URL for ``name`` still valid for half its lifetime, or ``None``."""
        entry = self._urls.get_recent(name)
        if entry is None:
            return None
        url, reuse_until = entry
        if self._now() >= reuse_until:
            del self._urls[name]
            return None
        return url

    def put(self, name: str, url: str, signed_at: float) -> None:
        """Keep ``url``, signed at ``signed_at`` or later, for an object known to exist."""
        self._urls.put(name, (url, signed_at + self._reuse_for))

    def forget(self, name: str) -> None:
        """Drop the URL of ``name`` (the object is being removed)."""
        self._urls.pop(name, None)

"""
Verdicts on credentials, remembered briefly: :class:`Verdicts`.

bcrypt takes tens of milliseconds by design, and a pull asks for a
manifest and every blob with the same credentials: a pull of 50 blobs
would run it 50 times.  A verdict (the user it proved, or that it proved
nothing) is kept for :data:`TTL` seconds under a keyed hash of the
credentials and of what they were checked against, so that a password
changed in the htpasswd file is checked again at once.  The key is an
HMAC with a random key of this process: memory holds no unsalted fast
hash of a password.  At most :data:`SIZE` verdicts are kept, the least
recently used forgotten first; concurrent checks of the same credentials
share one run.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Callable, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from nixeryd.core.sharedwork import SharedWork
from nixeryd.service.lru import LRU

V = TypeVar("V")

#: Seconds a verdict is kept.
TTL = 60.0
#: Verdicts kept at most.
SIZE = 4096


class Verdicts(Generic[V]):
    """
    Verdicts of type ``V`` (``None`` is a verdict too: "proves nothing")
    by a keyed hash of the parts that decide them.

    :param ttl: seconds a verdict is kept; a verdict may say it lasts less
        (a token's expiry) through ``expires``.
    """

    def __init__(self, clock: IReactorTime, ttl: float = TTL, size: int = SIZE) -> None:
        self._clock = clock
        self._ttl = ttl
        self._key = os.urandom(32)
        self._kept: LRU[bytes, tuple[V, float]] = LRU(size)
        self._running: SharedWork[bytes, tuple[V, float]] = SharedWork()

    def key(self, *parts: str) -> bytes:
        """The cache key of ``parts``: an HMAC, never the parts themselves."""
        digest = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in parts:
            digest.update(part.encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
        return digest.digest()

    def known(self, key: bytes) -> tuple[V] | None:
        """The verdict kept under ``key``, in a 1-tuple, or ``None`` if none is current."""
        entry = self._kept.get_recent(key)
        if entry is None:
            return None
        verdict, expires = entry
        if expires <= self._clock.seconds():
            self._kept.pop(key, None)
            return None
        return (verdict,)

    async def decide(self, key: bytes,
                     work: Callable[[], Deferred[tuple[V, float | None]]]) -> V:
        """
        The verdict under ``key``: kept, else from ``work`` (shared by
        concurrent callers), which gives the verdict and when it stops
        holding (``None``: after the TTL).
        """
        known = self.known(key)
        if known is not None:
            return known[0]

        def start() -> Deferred[tuple[V, float]]:
            def keep(outcome: tuple[V, float | None]) -> tuple[V, float]:
                verdict, until = outcome
                expires = self._clock.seconds() + self._ttl
                if until is not None:
                    expires = min(expires, until)
                self._kept.put(key, (verdict, expires))
                return (verdict, expires)
            return work().addCallback(keep)

        verdict, _ = await self._running.wait(key, start)
        return verdict

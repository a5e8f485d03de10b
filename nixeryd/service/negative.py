"""
Permanent failures remembered for a while: :class:`FailureMemory`.

A name that is no package, a package that throws, a builder that fails:
asked again, Nix gives the same answer for the same package set, after
the same seconds of evaluation or building.  The image service remembers
such failures (the 404s of :func:`is_permanent`) under the same key as a
served image, so that a repeat is answered at once, with the same message
and the same build page, and costs no Nix call:

- for a pinned revision (a channel, a git commit given as the tag) for
  ``ttl`` seconds;
- for a moving source (a branch, a local path) for the same window a
  served image of that source is kept (``moving_ttl``), when that is
  shorter, since the next revision may differ.

Timeouts and transient failures (503) are never remembered: the same
request may well succeed a moment later.  At most ``size`` failures are
kept, the least recently asked for forgotten first.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from nixeryd.core.errors import BuildTimedOut, RegistryError
from nixeryd.service.lru import LRU

#: How many failures are remembered at most.
MEMORY_FAILURES = 10_000


def is_permanent(error: BaseException) -> bool:
    """
    Whether ``error`` is a permanent failure of the image asked for: a 404
    (unknown packages or tag, a package that cannot be evaluated, a failed
    build), but not a timeout, which a quieter host may beat.
    """
    return (isinstance(error, RegistryError) and error.status == 404
            and not isinstance(error, BuildTimedOut))


class FailureMemory:
    """
    Permanent failures by key, each until it expires.

    :param clock: tells the time.
    :param ttl: seconds a failure is kept (0: nothing is kept).
    :param moving_ttl: the most seconds a moving source's failure is kept.
    :param size: how many failures are kept at most.
    """

    def __init__(self, clock: IReactorTime, ttl: float, moving_ttl: float,
                 size: int = MEMORY_FAILURES) -> None:
        self._clock = clock
        self._ttl = ttl
        self._moving_ttl = moving_ttl
        self._failures: LRU[object, tuple[RegistryError, float]] = LRU(size)

    def __len__(self) -> int:
        """How many failures are kept (expired ones included until asked for)."""
        return len(self._failures)

    def remember(self, key: object, error: BaseException, *, moving: bool) -> None:
        """
        Keep ``error`` for ``key`` if it is permanent (:func:`is_permanent`).

        :param moving: whether the package set came from a moving source
            (or is not known).
        """
        if not isinstance(error, RegistryError) or not is_permanent(error):
            return
        lifetime = min(self._ttl, self._moving_ttl) if moving else self._ttl
        if lifetime <= 0:
            return
        self._failures.put(key, (error, self._clock.seconds() + lifetime))

    def recall(self, key: object) -> RegistryError | None:
        """
        The failure kept for ``key``, ready to be raised again (its old
        traceback dropped), or ``None`` when there is none or it expired.
        """
        entry = self._failures.get_recent(key)
        if entry is None:
            return None
        error, expires = entry
        if expires <= self._clock.seconds():
            del self._failures[key]
            return None
        return error.with_traceback(None)

    def forget(self, key: object) -> None:
        """Drop the failure kept for ``key``, if any."""
        self._failures.pop(key, None)

"""
One piece of work, many cancellable waiters.

Several callers often want the result of the same work at once: the same
image requested by many clients, the same layer needed by two images, the
same access token needed by every upload.  :class:`SharedWork` starts the
work for the first caller of a key and hands every caller, the first
included, a Deferred of its own.  Cancelling a caller's Deferred (a client
that went away) removes that caller only; the work goes on for the others
and its result is still delivered to them.  When the last caller of a key
goes, an optional ``on_abandoned`` hook decides what becomes of the work
(the image service cancels work nobody waits for).
"""

from __future__ import annotations

from typing import Callable, Generic, Hashable, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_log = Logger()


def follow(work: Deferred[V]) -> Deferred[None]:
    """
    A Deferred of the caller's own that fires with ``None`` when ``work``
    ends, however it ends: waiting on it neither takes ``work``'s result
    from its other callbacks nor, when cancelled, cancels ``work``.
    """
    follower: Deferred[None] = Deferred()

    def ended(outcome: object) -> object:
        follower.callback(None)
        return outcome

    work.addBoth(ended)
    return follower


class SharedWork(Generic[K, V]):
    """
    Work in flight, by key, with its waiters.

    :param on_done: called with the key and the outcome (a value or a
        :class:`~twisted.python.failure.Failure`) once the work of a key has
        ended, before its waiters are told; for logging or remembering the
        result.  An exception it raises is logged and does not reach the
        waiters.
    :param on_abandoned: called with the key and the work's Deferred when
        the last waiter of a key has cancelled its wait while the work
        runs.  It returns whether it cancelled the work: then the work is
        no longer shared (a caller from now on starts it anew rather than
        join a run that is ending, whose outcome goes to nobody); else the
        work goes on and later callers join it.  Without the hook, or when
        it raises (which is logged), the work goes on.
    """

    def __init__(self, on_done: Callable[[K, V | Failure], None] | None = None,
                 on_abandoned: Callable[[K, Deferred[V]], bool] | None = None) -> None:
        self._on_done = on_done
        self._on_abandoned = on_abandoned
        self._waiters: dict[K, list[Deferred[V]]] = {}
        self._work: dict[K, Deferred[V]] = {}

    def __contains__(self, key: K) -> bool:
        """Whether work for ``key`` is running."""
        return key in self._work

    def __len__(self) -> int:
        """How many keys have work running."""
        return len(self._work)

    def waiters(self, key: K) -> int:
        """How many callers still wait for the work of ``key``."""
        return len(self._waiters.get(key, ()))

    def wait(self, key: K, start: Callable[[], Deferred[V]]) -> Deferred[V]:
        """
        A new Deferred for the result of the work of ``key``, calling
        ``start`` to begin that work if none is running.

        ``start`` is called at most once per run of the work; if it raises,
        the caller's Deferred fails with that error.
        """
        waiter: Deferred[V] = Deferred(lambda d: self._forget(key, d))
        if key in self._work:
            self._waiters[key].append(waiter)
            return waiter
        self._waiters[key] = [waiter]
        try:
            work = start()
        except BaseException:
            failure = Failure()  # type: ignore[no-untyped-call]
            del self._waiters[key]
            waiter.errback(failure)
            return waiter
        self._work[key] = work
        work.addBoth(lambda outcome: self._deliver(key, work, outcome))
        work.addErrback(lambda f: _log.failure("Delivering shared work failed", f))
        return waiter

    def cancel_all(self) -> None:
        """Cancel every piece of work in flight (when a service stops)."""
        for work in list(self._work.values()):
            work.cancel()

    def _forget(self, key: K, waiter: Deferred[V]) -> None:
        remaining = self._waiters.get(key)
        if remaining is not None and waiter in remaining:
            remaining.remove(waiter)
            work = self._work.get(key)
            if not remaining and work is not None and self._on_abandoned is not None:
                try:
                    cancelled = self._on_abandoned(key, work)
                except Exception:
                    _log.failure("Shared work's abandonment hook failed")
                    return
                if cancelled:
                    self._detach(key, work)

    def _detach(self, key: K, work: Deferred[V]) -> None:
        """Stop sharing ``work``: it stays in flight, but not under ``key``."""
        if self._work.get(key) is work:
            del self._work[key]
            self._waiters.pop(key, None)

    def _deliver(self, key: K, work: Deferred[V], outcome: V | Failure) -> None:
        waiters: list[Deferred[V]] = []
        if self._work.get(key) is work:
            del self._work[key]
            waiters = self._waiters.pop(key, [])
        if self._on_done is not None:
            try:
                self._on_done(key, outcome)
            except Exception:
                _log.failure("Shared work's completion hook failed")
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

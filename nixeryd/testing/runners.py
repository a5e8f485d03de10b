"""
A runner whose work waits for the test: :class:`ManualRunner` queues
each call until :meth:`ManualRunner.run_pending`, so that concurrent
callers can be interleaved deterministically.
"""

from __future__ import annotations

from typing import Any, Callable, ParamSpec, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")
P = ParamSpec("P")


class ManualRunner:
    """
    A :class:`~nixeryd.core.threads.Runner` that queues the work until
    the test calls :meth:`run_pending`, so that concurrent callers can be
    interleaved deterministically.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...],
                                 dict[str, Any], Deferred[Any]]] = []

    def run(self, function: Callable[P, T], /,
            *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """Queue ``function(*args, **kwargs)``; the Deferred fires when it ran."""
        d: Deferred[T] = Deferred()
        self.pending.append((function, args, kwargs, d))
        return d

    def run_pending(self) -> int:
        """
        Run queued work, including work queued while doing so, until none
        is left.

        :returns: how many calls ran.
        """
        count = 0
        while self.pending:
            function, args, kwargs, d = self.pending.pop(0)
            count += 1
            try:
                result = function(*args, **kwargs)
            except BaseException:
                d.errback()
            else:
                d.callback(result)
        return count

"""
The thread pool that runs blocking work (tar, gzip, hashing, file I/O).

The reactor thread only routes; everything that could take more than a
moment goes through :meth:`ThreadPoolService.run`.  Tests and the build
command can use :class:`InlineRunner`, which runs the work at once on the
calling thread.
"""

from __future__ import annotations

from typing import Callable, ParamSpec, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")
P = ParamSpec("P")


class Runner(Protocol):
    """
    Runs blocking work somewhere other than the reactor thread.

    Every component that tars, hashes or touches files takes one:
    :class:`ThreadPoolService` in the daemon, :class:`InlineRunner` where
    there is no reactor to keep responsive, and
    :class:`~nixeryd.testing.runners.ManualRunner` in tests.
    """

    def run(self, function: Callable[P, T], /,
            *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """Call ``function(*args, **kwargs)``; its result or failure as a Deferred."""


class ThreadPoolService(Service):
    """
    A named thread pool tied to the service lifecycle: started with the
    service, stopped (after the queued work finishes) when it stops.
    """

    def __init__(self, reactor: IReactorThreads, size: int, name: str = "nixeryd") -> None:
        self._reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=size, name=name)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.pool.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        # ThreadPool.stop joins the workers: do it off the reactor thread.
        from twisted.internet.threads import deferToThread
        return deferToThread(self.pool.stop)

    @property
    def size(self) -> int:
        """The most threads the pool runs at once."""
        return self.pool.max

    def run(self, function: Callable[P, T], /,
            *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """Run ``function(*args, **kwargs)`` in the pool."""
        return deferToThreadPool(self._reactor, self.pool, function, *args, **kwargs)


class InlineRunner:
    """
    Runs work immediately on the calling thread.  For tests and for the
    one-shot build command, where there is no reactor to keep responsive.
    """

    def run(self, function: Callable[P, T], /,
            *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """Call ``function`` now; return its result or failure as a Deferred."""
        try:
            return succeed(function(*args, **kwargs))
        except BaseException:
            return fail()

"""
The thread pool that runs blocking work (tar, gzip, hashing, file I/O).

The reactor thread only routes; everything that could take more than a
moment goes through :meth:`ThreadPoolService.run`.  Tests and the build
command can use :class:`InlineRunner`, which runs the work at once on the
calling thread.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class ThreadPoolService(Service):
    """
    A named thread pool tied to the service lifecycle: started with the
    service, stopped (after the queued work finishes) when it stops.
    """

    def __init__(self, reactor: Any, size: int, name: str = "nixeryd") -> None:
        self._reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=size, name=name)

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        # ThreadPool.stop joins the workers: do it off the reactor thread.
        from twisted.internet.threads import deferToThread
        return deferToThread(self.pool.stop)

    @property
    def size(self) -> int:
        """The most threads the pool runs at once."""
        return self.pool.max

    def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Run ``function(*args, **kwargs)`` in the pool."""
        return deferToThreadPool(self._reactor, self.pool, function, *args, **kwargs)


class InlineRunner:
    """
    Runs work immediately on the calling thread.  For tests and for the
    one-shot build command, where there is no reactor to keep responsive.
    """

    def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Call ``function`` now; return its result or failure as a Deferred."""
        try:
            return succeed(function(*args, **kwargs))
        except BaseException:
            return fail()

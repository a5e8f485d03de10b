"""
Many storage calls, a few at a time: :func:`each`.

Listing a bucket's documents gives one object per image or layer; reading
or removing each is a request.  :func:`each` runs the calls for a sequence
of items with a bounded number in flight, as the filesystem's thread pool
or Cloud Storage's latency make worthwhile, and stops starting new ones
once one has failed.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Iterable, TypeVar

from twisted.internet.defer import Deferred, FirstError, gatherResults

T = TypeVar("T")


async def each(items: Iterable[T], work: Callable[[T], Awaitable[object]],
               limit: int) -> None:
    """
    Await ``work(item)`` for every item, at most ``limit`` at once.

    :raises: the first failure's own exception, once the calls in flight
        have ended; no call starts after a failure.
    """
    remaining = iter(items)
    failed = False

    async def worker() -> None:
        nonlocal failed
        for item in remaining:
            if failed:
                return
            try:
                await work(item)
            except BaseException:
                failed = True
                raise

    workers = [Deferred.fromCoroutine(worker()) for _ in range(max(1, limit))]
    try:
        await gatherResults(workers, consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()

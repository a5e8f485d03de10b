"""
When images were last pulled: :class:`PullRecorder`.

The garbage collector (:mod:`nixeryd.gc`) keeps the images pulled within
a number of days, so every manifest served, by tag or by digest, marks its
manifest as pulled.  Marking is one insertion into a set, on the reactor
thread: the warm path stays as fast as it was.  Every
:data:`~nixeryd.core.defaults.PULL_RECORD_INTERVAL` seconds, and when the
daemon stops, the marks are written through the storage (its thread pool,
for the filesystem): one small document per manifest whose recorded day
changed, ``pulls/<hex of the digest>``::

    {"digest": "sha256:…", "day": "2024-05-01"}

A day (UTC) is all retention in days needs: the day written is the day of
the write, at most an interval after the pull.  Each manifest is written
at most once a day by each daemon; daemons sharing a storage each read the
document first and never replace a later day, so the newest day stands.
A write that fails is tried again at the next interval.

The recorder also lets the image service forget what nobody pulled for
:data:`~nixeryd.core.defaults.MEMORY_SWEEP_INTERVAL` seconds (see
:meth:`PullRecorder.on_sweep`): an image in memory is answered without
looking at storage, where the garbage collector may have removed it, so
the daemon keeps in memory only images pulled recently, which the
collector keeps.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Callable, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from nixeryd.core import defaults
from nixeryd.core.digests import check_digest
from nixeryd.service.lru import LRU
from nixeryd.storage.interface import IStorage
from nixeryd.storage.parallel import each

#: Namespace of pull documents in storage.
PULL_NAMESPACE = "pulls"
#: Seconds in a day.
DAY = 86400
#: How many manifests' last written day each daemon remembers.
MEMORY_PULLS = 100_000
#: How many pull documents are read or written at once.
CONCURRENT_WRITES = 4

_EPOCH = date(1970, 1, 1)


def day_of(seconds: float) -> int:
    """The UTC day (days since the epoch) of a time in seconds since the epoch."""
    return int(seconds // DAY)


def day_text(day: int) -> str:
    """A day as ``YYYY-MM-DD``."""
    return (_EPOCH + timedelta(days=day)).isoformat()


def pull_key(digest: str) -> str:
    """The key of a manifest's pull document: its digest's hex."""
    return check_digest(digest)


def pull_document(digest: str, day: int) -> dict[str, str]:
    """The pull document saying that ``digest`` was pulled on ``day``."""
    return {"digest": digest, "day": day_text(day)}


def pulled_day(document: object) -> int | None:
    """The day a pull document records, or ``None`` when it is not one."""
    text = document.get("day") if isinstance(document, dict) else None
    if not isinstance(text, str):
        return None
    try:
        return (date.fromisoformat(text) - _EPOCH).days
    except ValueError:
        return None


class Pulls(Protocol):
    """What the image service tells of every manifest it serves."""

    def pulled(self, digest: str) -> None:
        """The manifest with ``digest`` was just served."""


class NotRecorded:
    """:class:`Pulls` that records nothing (``nixeryd build``, tests)."""

    def pulled(self, digest: str) -> None:
        """Nothing."""


class PullRecorder(Service):
    """
    Marks pulls in memory and writes them to ``storage`` in the background.

    :param clock: the interval's timer and the day of the writes.
    :param interval: seconds between writes.
    :param sweep_interval: seconds between two calls of the function given
        to :meth:`on_sweep`.

    Stop it while the storage (and its thread pool) can still be used: it
    writes what is marked when it stops.
    """

    log = Logger()

    def __init__(self, storage: IStorage, clock: IReactorTime, *,
                 interval: float = defaults.PULL_RECORD_INTERVAL,
                 sweep_interval: float = defaults.MEMORY_SWEEP_INTERVAL) -> None:
        self._storage = storage
        self._clock = clock
        self._interval = interval
        self._sweep_interval = sweep_interval
        #: Manifests served since the last write.
        self._pending: set[str] = set()
        #: Manifests served since the last sweep (and written).
        self._used: set[str] = set()
        #: Digest → the day last written (or found written) for it.
        self._written: LRU[str, int] = LRU(MEMORY_PULLS)
        self._sweepers: list[Callable[[set[str]], object]] = []
        self._lock = DeferredLock()
        self._loop: LoopingCall | None = None
        self._last_sweep = 0.0

    def pulled(self, digest: str) -> None:
        """Mark the manifest with ``digest`` as pulled now (a set insertion)."""
        self._pending.add(digest)

    def on_sweep(self, sweep: Callable[[set[str]], object]) -> None:
        """
        Call ``sweep`` every sweep interval with the digests of the
        manifests served since the previous call.
        """
        self._sweepers.append(sweep)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._last_sweep = self._clock.seconds()
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self._tick()))
        self._loop.clock = self._clock
        started = self._loop.start(self._interval, now=False)
        started.addErrback(lambda f: self.log.failure("Recording pulls stopped", f))

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return self.flush()

    def flush(self) -> Deferred[None]:
        """Write what is marked now (after a write in progress); never fails."""
        return Deferred.fromCoroutine(self._flush())

    async def _tick(self) -> None:
        await self._flush()
        if self._clock.seconds() - self._last_sweep >= self._sweep_interval:
            self._sweep()

    def _sweep(self) -> None:
        self._last_sweep = self._clock.seconds()
        used, self._used = self._used | self._pending, set()
        for sweep in self._sweepers:
            try:
                sweep(used)
            except Exception:
                self.log.failure("Forgetting the images nobody pulled failed")

    async def _flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, set()
            self._used |= batch
            day = day_of(self._clock.seconds())
            todo = sorted(digest for digest in batch if self._written.get(digest) != day)
            failed: list[str] = []
            errors: list[str] = []

            async def record(digest: str) -> None:
                try:
                    await self._record(digest, day)
                except Exception as e:
                    failed.append(digest)
                    errors.append(str(e) or type(e).__name__)

            await each(todo, record, CONCURRENT_WRITES)
            if failed:
                self._pending.update(failed)
                self.log.warn(
                    "Could not record the pulls of {count} manifests ({error});"
                    " trying again in {interval} s", count=len(failed), error=errors[0],
                    interval=self._interval, event="pulls-not-recorded")

    async def _record(self, digest: str, day: int) -> None:
        """Write that ``digest`` was pulled on ``day`` unless a later day is there."""
        key = pull_key(digest)
        recorded = pulled_day(await self._storage.get_document(PULL_NAMESPACE, key))
        if recorded is None or recorded < day:
            await self._storage.put_document(PULL_NAMESPACE, key, pull_document(digest, day))
            recorded = day
        self._written.put(digest, recorded)

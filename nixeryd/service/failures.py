"""
Failures of storage calls, as the transient errors clients get, and as
few lines in the log as an incident needs.

Storage that cannot be reached or that fails (a Cloud Storage error, a
full disk, a read-only or unwritable directory, a quota, a dropped
connection) says nothing about the image asked for: the same request may
well succeed a moment later.  The image service turns such exceptions into
:class:`StorageUnavailable` (503 ``UNAVAILABLE`` with ``Retry-After``,
never remembered) with :func:`storage_unavailable`, so that they never
reach the web layer as unexpected errors (500).

A full disk fails every cold pull until space is freed, and the log may
well be on that disk: :class:`StorageIncidents` writes one warning when a
kind of failure starts and then at most one a minute while it goes on,
with the count of failures in between; each failure itself is a DEBUG
event, and the build it ends says so at INFO.
"""

from __future__ import annotations

import errno
import time
from typing import Callable

from twisted.internet.error import ConnectError, ConnectionLost
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.logger import Logger
from twisted.web.client import (
    RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived)

from nixeryd.core.errors import Unavailable
from nixeryd.storage.gcs.circuit import CircuitOpen
from nixeryd.storage.gcs.http import GCSError
from nixeryd.storage.s3.http import S3Error

#: Exceptions that mean the storage cannot be used now: Cloud Storage's
#: and S3's errors, the network below them, and the filesystem's.
STORAGE_FAILURES: tuple[type[BaseException], ...] = (
    GCSError, S3Error, OSError, ConnectError, ConnectionLost, ConnectTimeout,
    ResponseFailed, ResponseNeverReceived, RequestTransmissionFailed)

#: Shortest time between two warnings about one kind of storage failure,
#: in seconds.
WARNING_INTERVAL = 60.0

_log = Logger()


class StorageUnavailable(Unavailable):
    """
    The storage failed: :class:`StorageIncidents` reports it, so the
    build it ends says so without a warning of its own.
    """


def storage_unavailable(error: BaseException) -> StorageUnavailable | None:
    """
    The transient error for a storage failure, or ``None`` when ``error``
    is not one (the message leaves out the storage's own words, which name
    buckets and paths; the service log has them).
    """
    if isinstance(error, OSError) and not isinstance(error, ConnectionError):
        # The system's words (ENOSPC: "No space left on device"), which
        # hold no path.
        reason = error.strerror or type(error).__name__
        return StorageUnavailable(
            "the registry cannot store images now (%s); try again later" % (reason,))
    if isinstance(error, CircuitOpen):
        unavailable = StorageUnavailable(
            "the registry's storage is unavailable; try again in %d seconds"
            % (error.retry_after,))
        unavailable.retry_after = error.retry_after
        return unavailable
    if isinstance(error, STORAGE_FAILURES):
        return StorageUnavailable("the registry's storage is unavailable; try again later")
    return None


def failure_kind(error: BaseException) -> str:
    """
    What kind of storage failure ``error`` is, for the log: the errno's
    name (``ENOSPC``, ``EROFS``, ``EDQUOT``, ``EACCES``...) or the
    exception's type.
    """
    if isinstance(error, OSError) and error.errno is not None:
        return errno.errorcode.get(error.errno, "errno %d" % (error.errno,))
    return type(error).__name__


class StorageIncidents:
    """
    Reports storage failures in few lines: for each kind of failure
    (:func:`failure_kind`), one warning when it first happens, then at most
    one every ``interval`` seconds, saying how many failures of that kind
    there were since the last one; every failure is a DEBUG event too.

    :param interval: seconds between two warnings of one kind.
    :param clock: the time in seconds (monotonic).
    """

    def __init__(self, interval: float = WARNING_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        #: Kind → (when it was last warned of, failures since).
        self._warned: dict[str, tuple[float, int]] = {}

    def report(self, error: BaseException, what: str, log: Logger = _log) -> None:
        """Tell ``log`` that the storage failed with ``error`` while ``what``."""
        kind = failure_kind(error)
        cause = str(error) or repr(error)
        now = self._clock()
        log.debug("Storage failed ({kind}) while {what}: {cause}", kind=kind,
                  what=what, cause=cause)
        last = self._warned.get(kind)
        if last is not None and now - last[0] < self._interval:
            self._warned[kind] = (last[0], last[1] + 1)
            return
        self._warned[kind] = (now, 0)
        if last is None:
            log.warn("Storage failing ({kind}) while {what}: {cause}; the next "
                     "failures of this kind are counted, and reported at most "
                     "once every {interval:.0f} s", kind=kind, what=what,
                     cause=cause, interval=self._interval, failures=1,
                     event="storage-failing")
        else:
            log.warn("Storage failing ({kind}) while {what}: {cause}; {count} more "
                     "such failures since the last report, {seconds:.0f} s ago",
                     kind=kind, what=what, cause=cause, count=last[1],
                     seconds=now - last[0], failures=last[1] + 1,
                     event="storage-failing")


#: The daemon's account of storage failures.
STORAGE_INCIDENTS = StorageIncidents()


def report_storage_failure(error: BaseException, what: str, log: Logger = _log,
                           incidents: StorageIncidents = STORAGE_INCIDENTS
                           ) -> StorageUnavailable:
    """
    The transient error for a storage failure, reported to ``incidents``.

    :raises TypeError: when ``error`` is not a storage failure.
    """
    unavailable = storage_unavailable(error)
    if unavailable is None:
        raise TypeError("not a storage failure: %r" % (error,))
    incidents.report(error, what, log)
    return unavailable

"""
Failures of storage calls, as the transient errors clients get.

Storage that cannot be reached or that fails (a Cloud Storage error, a
full or unwritable disk, a dropped connection) says nothing about the
image asked for: the same request may well succeed a moment later.  The
image service turns such exceptions into
:class:`~nixeryd.core.errors.Unavailable` (503 with ``Retry-After``,
never remembered) with :func:`storage_unavailable`, so that they never
reach the web layer as unexpected errors (500).
"""

from __future__ import annotations

from twisted.internet.error import ConnectError, ConnectionLost
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from nixeryd.core.errors import Unavailable
from nixeryd.storage.gcs.http import GCSError

#: Exceptions that mean the storage cannot be used now: Cloud Storage's
#: errors, the network below it, and the filesystem's.
STORAGE_FAILURES: tuple[type[BaseException], ...] = (
    GCSError, OSError, ConnectError, ConnectionLost, ConnectTimeout,
    ResponseFailed, ResponseNeverReceived)


def storage_unavailable(error: BaseException) -> Unavailable | None:
    """
    The transient error for a storage failure, or ``None`` when ``error``
    is not one (the message leaves out the storage's own words, which name
    buckets and paths; the service log has them).
    """
    if isinstance(error, OSError) and not isinstance(error, ConnectionError):
        # The system's words (ENOSPC: "No space left on device"), which
        # hold no path.
        reason = error.strerror or type(error).__name__
        return Unavailable("the registry cannot store images now (%s); try again later"
                           % (reason,))
    if isinstance(error, STORAGE_FAILURES):
        return Unavailable("the registry's storage is unavailable; try again later")
    return None

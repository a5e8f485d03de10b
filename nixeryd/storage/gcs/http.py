"""
What every request to Cloud Storage (or to its token endpoint) shares
beyond the generic plumbing (:mod:`nixeryd.storage.httpcalls`): the error
raised for an unexpected answer, and the generation precondition.

Only a 404 means "missing" to the callers; any other unexpected status
(403 for missing permissions, 5xx, ...) becomes a :class:`GCSError`, so
that a misconfigured bucket never looks empty.
"""

from __future__ import annotations

from twisted.web.iweb import IResponse

from nixeryd.core.httpbody import BodyTooLarge
from nixeryd.storage.errors import StorageServiceError
from nixeryd.storage.httpcalls import drain

#: The backend's name, as in the configuration, the retry log lines and
#: the metrics.
BACKEND = "gcs"


class GCSError(StorageServiceError):
    """Cloud Storage (or its token endpoint) answered something unexpected."""


class PreconditionFailed(Exception):
    """A generation precondition did not hold (HTTP 412)."""


async def error_for(response: IResponse, what: str) -> GCSError:
    """A :class:`GCSError` describing an unexpected answer (body drained)."""
    try:
        detail = (await drain(response)).decode("utf-8", "replace").strip()
    except BodyTooLarge:
        detail = "(long body)"
    message = "%s: Cloud Storage answered HTTP %d" % (what, response.code)
    if detail:
        message += ": " + detail[:500]
    return GCSError(message, response.code)

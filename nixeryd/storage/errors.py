"""
The base of every error a cloud storage service (Cloud Storage, S3, or
their credential endpoints) fails a request with.

Each backend raises its own subclass (:class:`~nixeryd.storage.gcs.http.GCSError`,
:class:`~nixeryd.storage.s3.http.S3Error`); what both share raises this
one (:class:`~nixeryd.storage.httpcalls.RequestTimedOut`,
:class:`~nixeryd.storage.circuit.CircuitOpen`, a file cut short under an
upload).  The image service answers any of them as a transient failure
(:mod:`nixeryd.service.failures`).
"""

from __future__ import annotations


class StorageServiceError(Exception):
    """
    A cloud storage service answered something unexpected, or no answer
    came.

    :ivar status: the HTTP status, or ``None`` for a failure without one.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

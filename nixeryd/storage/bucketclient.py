"""
What the API clients of the bucket backends share
(:class:`~nixeryd.storage.gcs.bucket.BucketClient`,
:class:`~nixeryd.storage.s3.bucket.S3Client`): :class:`PooledBucketClient`,
the bucket's name, the treq client on its own connection pool (closed by
:meth:`PooledBucketClient.close`), the request timeout, the read size of
file uploads and the retrier of safe requests.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import HTTPConnectionPool

from treq.client import HTTPClient

from nixeryd.core.threads import Runner
from nixeryd.storage.retry import Retrier

#: Bytes read from disk at a time while a file is uploaded.
DEFAULT_READ_SIZE = 256 * 1024


class PooledBucketClient:
    """
    Requests on the objects of one bucket.

    :param clock: the time of request timeouts (and of signatures).
    :param runner: reads files in the thread pool while they are uploaded.
    :param http: the treq client, on ``pool``.
    :param pool: its connection pool, closed by :meth:`close`.
    :param bucket: the bucket name.
    :param backend: the backend's name in retry events.
    :param read_size: bytes read from disk at a time while uploading.
    :param request_timeout: seconds a request may take until its answer
        begins.
    :param retrier: retries safe requests; by default with the default
        policy on ``clock``.
    """

    def __init__(self, clock: IReactorTime, runner: Runner, http: HTTPClient,
                 pool: HTTPConnectionPool, bucket: str, *, backend: str,
                 read_size: int, request_timeout: float,
                 retrier: Retrier | None) -> None:
        self._clock = clock
        self._runner = runner
        self._http = http
        self._pool = pool
        self.bucket = bucket
        self._read_size = read_size
        self._timeout = request_timeout
        self._retrier = retrier if retrier is not None else Retrier(clock, backend=backend)

    def close(self) -> Deferred[None]:
        """Close idle connections (at shutdown, and at the end of tests)."""
        closed: Deferred[None] = (
            self._pool.closeCachedConnections())  # type: ignore[no-untyped-call]
        return closed

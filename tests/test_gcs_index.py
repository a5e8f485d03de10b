"""
:class:`~nixeryd.storage.gcs.index.BucketIndex`: the index serialised and
hashed off the reactor.
"""

from __future__ import annotations

import json
from typing import Any, Callable, ParamSpec, TypeVar, cast

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.core import mediatypes
from nixeryd.storage.gcs import index
from nixeryd.storage.gcs.bucket import BucketClient
from nixeryd.storage.gcs.objects import md5_base64
from nixeryd.storage.objectnames import INDEX_OBJECT
from nixeryd.storage.ociindex import descriptor

T = TypeVar("T")
P = ParamSpec("P")


class TrackingRunner:
    """Runs work at once, telling whether a call is under way."""

    def __init__(self) -> None:
        self.running = False

    def run(self, function: Callable[P, T], /, *args: P.args,
            **kwargs: P.kwargs) -> Deferred[T]:
        self.running = True
        try:
            return succeed(function(*args, **kwargs))
        finally:
            self.running = False


class EmptyBucket:
    """The calls :class:`BucketIndex` makes, on a bucket without an index."""

    bucket = "bucket"

    def __init__(self) -> None:
        self.uploads: list[tuple[str, bytes, str]] = []

    async def metadata(self, name: str) -> None:
        return None

    async def upload_bytes(self, name: str, data: bytes, md5: str, generation: str,
                           content_type: str = "") -> None:
        self.uploads.append((name, data, md5))


class BucketIndexTests(SynchronousTestCase):
    """Updates of the index."""

    def test_md5_in_runner(self) -> None:
        """The index's MD5 is computed in the runner, with its serialisation."""
        runner = TrackingRunner()
        hashed_in_runner: list[bool] = []

        def md5(data: bytes) -> str:
            hashed_in_runner.append(runner.running)
            return md5_base64(data)

        self.patch(index, "md5_base64", md5)
        bucket = EmptyBucket()
        bucket_index = index.BucketIndex(runner, cast(BucketClient, bucket))
        digest = "sha256:" + "a" * 64
        self.successResultOf(bucket_index.record(
            "a:latest", descriptor("a:latest", digest, mediatypes.OCI_MANIFEST, 1)))
        self.assertEqual(hashed_in_runner, [True])
        [(name, data, sent)] = bucket.uploads
        self.assertEqual(name, INDEX_OBJECT)
        self.assertEqual(sent, md5_base64(data))
        manifests: list[dict[str, Any]] = json.loads(data)["manifests"]
        self.assertEqual([m["digest"] for m in manifests], [digest])

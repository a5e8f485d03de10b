"""
Garbage collection of an S3 bucket on ``rclone serve s3``: the passes of
``test_gc_gcs`` (a collector pass, ``nixeryd gc`` with the daemon's
variables), on the S3 backend.
"""

from __future__ import annotations

import os

from tests.rclones3 import ACCESS_KEY, SECRET_KEY, RcloneTestCase, s3_storage
from tests.test_gc_gcs import BucketCollectionCases


class S3CollectionTests(RcloneTestCase, BucketCollectionCases):
    """A pass over rclone's bucket, whose objects are files in its directory."""

    def started(self) -> None:
        self.storage = s3_storage(self, self.runner, self.server)

    async def object_names(self) -> list[str]:
        top = os.path.join(self.server.root, self.server.bucket)
        return sorted(os.path.relpath(os.path.join(directory, name), top)
                      for directory, _, names in os.walk(top) for name in names)

    async def download(self, name: str) -> bytes | None:
        try:
            with open(self.server.path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def bucket_environment(self) -> dict[str, str]:
        return {"NIXERY_STORAGE_BACKEND": "s3", "S3_BUCKET": self.server.bucket,
                "S3_ENDPOINT": self.server.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_EC2_METADATA_DISABLED": "true"}

"""
Storage in an S3 bucket (AWS S3 or an S3-compatible server).

- :mod:`~nixeryd.storage.s3.storage`: :class:`S3Storage`, the
  :class:`~nixeryd.storage.interface.IStorage` backend, and
  :func:`build_s3_storage`, which assembles it from settings;
- :mod:`~nixeryd.storage.s3.bucket`: the S3 API on one bucket, and how the
  bucket is addressed (path or virtual-hosted style);
- :mod:`~nixeryd.storage.s3.index`: the image index shared by the daemons
  using the bucket;
- :mod:`~nixeryd.storage.s3.objects`: upload plans (checksums, parts);
- :mod:`~nixeryd.storage.s3.credentials`: credentials from the
  environment, the shared files, a container or instance metadata;
- :mod:`~nixeryd.storage.s3.signing`: SigV4 headers and presigned URLs
  (pure computation);
- :mod:`~nixeryd.storage.s3.http`: :class:`S3Error` and S3's XML answers.
"""

from __future__ import annotations

from nixeryd.storage.s3.credentials import NoCredentials
from nixeryd.storage.s3.http import CREDENTIAL_ERRORS, S3Error
from nixeryd.storage.s3.storage import S3Storage, build_s3_storage

__all__ = ["CREDENTIAL_ERRORS", "NoCredentials", "S3Error", "S3Storage", "build_s3_storage"]

"""
Storage in a Google Cloud Storage bucket.

- :mod:`~nixeryd.storage.gcs.storage`: :class:`GCSStorage`, the
  :class:`~nixeryd.storage.interface.IStorage` backend, and
  :func:`build_gcs_storage`, which assembles it from settings;
- :mod:`~nixeryd.storage.gcs.bucket`: the JSON API on one bucket;
- :mod:`~nixeryd.storage.gcs.index`: the image index shared by the
  daemons using the bucket;
- :mod:`~nixeryd.storage.gcs.objects`: object names and upload checksums;
- :mod:`~nixeryd.storage.gcs.filebody`: upload bodies streamed from disk;
- :mod:`~nixeryd.storage.gcs.auth`: the service-account key and access
  tokens;
- :mod:`~nixeryd.storage.gcs.metadata`: tokens and the account from the
  metadata server, without a key file;
- :mod:`~nixeryd.storage.gcs.signers`: who signs blob URLs (a key, IAM
  ``signBlob``) and signed URLs reused for part of their lifetime;
- :mod:`~nixeryd.storage.gcs.signing`: V4 signed URLs and JWT assertions
  (pure computation);
- :mod:`~nixeryd.storage.gcs.http`: :class:`GCSError` and what every
  request shares;
- :mod:`~nixeryd.storage.gcs.retry`: requests sent again after transient
  failures, with backoff and a deadline;
- :mod:`~nixeryd.storage.gcs.circuit`: the outage circuit, which fails
  requests at once during a sustained outage.
"""

from __future__ import annotations

from nixeryd.storage.gcs.auth import load_service_account_key
from nixeryd.storage.gcs.http import GCSError
from nixeryd.storage.gcs.storage import GCSStorage, build_gcs_storage

__all__ = ["GCSError", "GCSStorage", "build_gcs_storage", "load_service_account_key"]

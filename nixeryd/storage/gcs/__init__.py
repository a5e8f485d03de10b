"""
Storage in a Google Cloud Storage bucket.

- :mod:`~nixeryd.storage.gcs.storage`: :class:`GCSStorage`, the
  :class:`~nixeryd.storage.interface.IStorage` backend, and
  :func:`build_gcs_storage`, which assembles it from settings;
- :mod:`~nixeryd.storage.gcs.bucket`: the JSON API on one bucket;
- :mod:`~nixeryd.storage.gcs.index`: the image index shared by the
  daemons using the bucket;
- :mod:`~nixeryd.storage.gcs.objects`: upload checksums and object times
  (the names are :mod:`nixeryd.storage.objectnames`);
- :mod:`~nixeryd.storage.gcs.auth`: the service-account key and access
  tokens;
- :mod:`~nixeryd.storage.gcs.metadata`: tokens and the account from the
  metadata server, without a key file;
- :mod:`~nixeryd.storage.gcs.signers`: who signs blob URLs (a key, IAM
  ``signBlob``) and signed URLs reused for part of their lifetime;
- :mod:`~nixeryd.storage.gcs.signing`: V4 signed URLs and JWT assertions
  (pure computation);
- :mod:`~nixeryd.storage.gcs.http`: :class:`GCSError` and the answers
  of Cloud Storage.

What both cloud backends share is in :mod:`nixeryd.storage`: the retries
(:mod:`~nixeryd.storage.retry`), the outage circuit
(:mod:`~nixeryd.storage.circuit`), timeouts and bodies
(:mod:`~nixeryd.storage.httpcalls`), upload bodies streamed from disk
(:mod:`~nixeryd.storage.filebody`) and object names
(:mod:`~nixeryd.storage.objectnames`).
"""

from __future__ import annotations

from nixeryd.storage.gcs.auth import load_service_account_key
from nixeryd.storage.gcs.http import GCSError
from nixeryd.storage.gcs.storage import GCSStorage, build_gcs_storage

__all__ = ["GCSError", "GCSStorage", "build_gcs_storage", "load_service_account_key"]

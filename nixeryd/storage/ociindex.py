"""
The ``index.json`` of an OCI image layout, as both storage backends keep
it: one entry per named image, found by ``org.opencontainers.image.ref.name``.
Pure: the backends read and write the bytes.
"""

from __future__ import annotations

import json
from typing import Any

from nixeryd.core.mediatypes import OCI_INDEX

REF_NAME = "org.opencontainers.image.ref.name"


def index_bytes(manifests: list[dict[str, Any]]) -> bytes:
    """An image index holding ``manifests``, as compact JSON."""
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": manifests}, separators=(",", ":")).encode()


def updated_index(current: bytes | None, reference: str, digest: str,
                  media_type: str, size: int) -> bytes:
    """
    The index ``current`` (or an empty one) with ``reference`` (re)pointed
    at the manifest.  Entries are sorted by reference; entries other tools
    wrote without one (``skopeo copy`` to an untagged layout) are kept and
    sort first.
    """
    manifests = json.loads(current).get("manifests", []) if current else []
    kept = [m for m in manifests
            if m.get("annotations", {}).get(REF_NAME) != reference]
    kept.append({"mediaType": media_type, "digest": digest, "size": size,
                 "annotations": {REF_NAME: reference}})
    kept.sort(key=lambda m: m.get("annotations", {}).get(REF_NAME, ""))
    return index_bytes(kept)

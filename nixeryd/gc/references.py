"""
What a manifest, or an image index, names: the blobs the garbage collector
keeps for it.  Pure.

Images built here are a Docker and an OCI manifest naming one config and
the same layers; the layout may also hold what other tools wrote (an image
index naming manifests, an artifact naming blobs), which is followed the
same way.
"""

from __future__ import annotations

import json
from typing import Any

from nixeryd.core.digests import is_valid_digest

#: The kinds of blobs, as the report counts them.
MANIFEST = "manifest"
CONFIG = "config"
LAYER = "layer"
OTHER = "other"

#: The fields naming other blobs, and the kind of what they name.
_FIELDS = (("config", CONFIG), ("layers", LAYER), ("blobs", LAYER),
           ("manifests", MANIFEST), ("subject", MANIFEST))


def _digests(value: Any) -> list[str]:
    """The valid digests of one descriptor or a list of them."""
    descriptors = value if isinstance(value, list) else [value]
    return [d["digest"] for d in descriptors
            if isinstance(d, dict) and isinstance(d.get("digest"), str)
            and is_valid_digest(d["digest"])]


def referenced(body: bytes) -> list[tuple[str, str]] | None:
    """
    ``(digest, kind)`` of every blob the manifest or index ``body`` names,
    or ``None`` when ``body`` is neither (a layer, a config, anything else).
    """
    if not body.startswith(b"{"):
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if (not isinstance(document, dict) or not isinstance(document.get("schemaVersion"), int)
            or not any(field in document for field, _ in _FIELDS)):
        return None
    return [(digest, kind) for field, kind in _FIELDS
            for digest in _digests(document.get(field))]

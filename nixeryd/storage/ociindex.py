"""
The ``index.json`` of an OCI image layout, as both storage backends keep
it: one entry per named image, found by ``org.opencontainers.image.ref.name``.
Pure: the backends read and write the bytes.
"""

from __future__ import annotations

import json
from typing import Any, Collection, Mapping

from nixeryd.core.mediatypes import OCI_INDEX

REF_NAME = "org.opencontainers.image.ref.name"

#: A descriptor of the index, as JSON gives it.
Descriptor = dict[str, Any]


def index_bytes(manifests: list[Descriptor]) -> bytes:
    """An image index holding ``manifests``, as compact JSON."""
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": manifests}, separators=(",", ":")).encode()


def descriptor(reference: str, digest: str, media_type: str, size: int) -> Descriptor:
    """The index entry naming a manifest ``reference``."""
    return {"mediaType": media_type, "digest": digest, "size": size,
            "annotations": {REF_NAME: reference}}


def reference_of(entry: Descriptor) -> str:
    """The reference an entry names, or ``""`` for an unnamed one."""
    annotations = entry.get("annotations")
    name = annotations.get(REF_NAME, "") if isinstance(annotations, dict) else ""
    return name if isinstance(name, str) else ""


def index_entries(current: bytes | None) -> list[Descriptor]:
    """The entries of an index (none for ``None`` or an index without any)."""
    if not current:
        return []
    manifests = json.loads(current).get("manifests", [])
    return [m for m in manifests if isinstance(m, dict)]


def with_references(current: bytes | None, updates: Mapping[str, Descriptor]) -> bytes:
    """
    The index ``current`` (or an empty one) with each reference of
    ``updates`` (re)pointed at its descriptor.  Entries are sorted by
    reference; entries other tools wrote without one (``skopeo copy`` to
    an untagged layout) are kept and sort first.
    """
    kept = [m for m in index_entries(current) if reference_of(m) not in updates]
    kept.extend(updates[reference] for reference in sorted(updates))
    kept.sort(key=reference_of)
    return index_bytes(kept)


def updated_index(current: bytes | None, reference: str, digest: str,
                  media_type: str, size: int) -> bytes:
    """The index ``current`` with ``reference`` (re)pointed at the manifest."""
    return with_references(current, {reference: descriptor(reference, digest,
                                                           media_type, size)})


def without_manifests(current: bytes | None,
                      digests: Collection[str]) -> tuple[bytes, int]:
    """
    The index ``current`` without the entries naming one of ``digests``,
    and how many were taken out.
    """
    entries = index_entries(current)
    kept = [m for m in entries if m.get("digest") not in digests]
    return index_bytes(kept), len(entries) - len(kept)

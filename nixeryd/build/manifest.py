"""
Image configs and manifests, as canonical JSON bytes.

The same layers are described twice: once as a Docker schema 2 manifest
and once as an OCI image manifest; both point at one config blob.  Output
is compact JSON with a fixed key order, so the same inputs always give the
same bytes and therefore the same digests.  Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

from attrs import frozen

from nixeryd.build.platforms import Architecture
from nixeryd.core import mediatypes
from nixeryd.core.documents import Image, ImageIndex, ManifestDocument

#: The image creation time written in every config: fixed, so that builds
#: are reproducible (the same choice Nix makes for store mtimes).
CREATED = "1970-01-01T00:00:01Z"


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(document: object) -> bytes:
    """Compact UTF-8 JSON; key order is the insertion order of the dicts."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@frozen
class LayerDescriptor:
    """
    One compressed layer of an image.

    :ivar digest: ``sha256:<hex>`` of the gzip stream.
    :ivar diff_id: ``sha256:<hex>`` of the uncompressed tar.
    :ivar size: length of the gzip stream in bytes.
    :ivar comment: a short human description, shown by ``docker history``.
    """

    digest: str
    diff_id: str
    size: int
    comment: str = ""


@frozen
class RuntimeSettings:
    """
    What the image config says about running a container.

    :ivar env: ``NAME=value`` strings.
    :ivar cmd: the default command, or empty for none.
    """

    env: tuple[str, ...]
    cmd: tuple[str, ...] = ()


@frozen
class BuiltDocuments:
    """
    The config blob and both manifests of one image.

    :ivar config: the config JSON bytes (a blob of its own).
    :ivar config_digest: its digest.
    :ivar image: the Docker and OCI manifests.
    """

    config: bytes
    config_digest: str
    image: Image


def image_config(arch: str, layers: Sequence[LayerDescriptor],
                 runtime: RuntimeSettings, variant: str = "") -> bytes:
    """
    The image config: architecture (and its variant, if any), OS, runtime
    settings, the layers' diff_ids and one history entry per layer.
    """
    container_config: dict[str, object] = {"Env": list(runtime.env)}
    if runtime.cmd:
        container_config["Cmd"] = list(runtime.cmd)
    history = []
    for layer in layers:
        entry = {"created": CREATED, "created_by": "nixeryd"}
        if layer.comment:
            entry["comment"] = layer.comment
        history.append(entry)
    platform: dict[str, object] = {"architecture": arch, "os": "linux"}
    if variant:
        platform["variant"] = variant
    return canonical_json({
        **platform,
        "created": CREATED,
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]},
        "history": history,
    })


def _manifest(media_type: str, config_type: str, layer_type: str,
              config: bytes, config_digest: str,
              layers: Sequence[LayerDescriptor]) -> ManifestDocument:
    body = canonical_json({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "size": len(config),
                   "digest": config_digest},
        "layers": [{"mediaType": layer_type, "size": l.size, "digest": l.digest}
                   for l in layers],
    })
    return ManifestDocument(media_type=media_type, body=body,
                            digest=sha256_digest(body))


def build_documents(arch: str, layers: Sequence[LayerDescriptor],
                    runtime: RuntimeSettings, variant: str = "") -> BuiltDocuments:
    """
    Build the config and both manifests for ``layers`` (base layer first).
    """
    config = image_config(arch, layers, runtime, variant)
    config_digest = sha256_digest(config)
    docker = _manifest(mediatypes.DOCKER_MANIFEST, mediatypes.DOCKER_CONFIG,
                       mediatypes.DOCKER_LAYER, config, config_digest, layers)
    oci = _manifest(mediatypes.OCI_MANIFEST, mediatypes.OCI_CONFIG,
                    mediatypes.OCI_LAYER, config, config_digest, layers)
    return BuiltDocuments(config=config, config_digest=config_digest,
                          image=Image(docker=docker, oci=oci))


def _index(media_type: str, entries: Sequence[tuple[Architecture, ManifestDocument]]
           ) -> ManifestDocument:
    body = canonical_json({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [{"mediaType": document.media_type, "size": len(document.body),
                       "digest": document.digest, "platform": architecture.platform()}
                      for architecture, document in entries],
    })
    return ManifestDocument(media_type=media_type, body=body, digest=sha256_digest(body))


def build_index(images: Sequence[tuple[Architecture, Image]]) -> ImageIndex:
    """
    The Docker manifest list and the OCI image index naming the image of
    each platform, with its ``platform`` object.  Entries are sorted by
    platform, so the same images give the same bytes whatever order the
    platforms were configured or built in.
    """
    ordered = sorted(images, key=lambda entry: entry[0].sort_key())
    return ImageIndex(
        docker=_index(mediatypes.DOCKER_LIST,
                      [(architecture, image.docker) for architecture, image in ordered]),
        oci=_index(mediatypes.OCI_INDEX,
                   [(architecture, image.oci) for architecture, image in ordered]),
        images=tuple(image for _, image in ordered))


def manifest_from_bytes(body: bytes) -> ManifestDocument | None:
    """
    Recognise stored bytes as one of our manifests or image indexes.

    :returns: the document, or ``None`` when ``body`` is not a JSON object
        whose ``mediaType`` is a manifest or index type (a layer or a
        config blob).
    """
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    media_type = parsed.get("mediaType")
    if media_type not in mediatypes.SERVED_TYPES:
        return None
    return ManifestDocument(media_type=media_type, body=body,
                            digest=sha256_digest(body))

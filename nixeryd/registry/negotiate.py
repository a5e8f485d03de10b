"""
Choice between the Docker schema 2 and the OCI manifest of an image.

Every image is served in both formats; which one a client gets depends on
its ``Accept`` header.  Clients send that header in different shapes:
containers/image (skopeo, podman, buildah) sends one media type per header
line, containerd sends one comma-separated line, and simple clients send
none.  The rule, applied to all lines together:

* Docker schema 2 when the client accepts it (whether or not it also
  accepts OCI), sends no ``Accept`` at all, or accepts only wildcards or
  types we cannot serve: it is what every client understands.
* OCI when the client accepts the OCI manifest type but not the Docker
  one.

Parameters (including ``q``) are ignored.  This module is pure.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from nixeryd.core.documents import Image, ManifestDocument
from nixeryd.core.mediatypes import DOCKER_MANIFEST, OCI_MANIFEST

_DOCKER = DOCKER_MANIFEST.encode("ascii")
_OCI = OCI_MANIFEST.encode("ascii")

_CACHE_LIMIT = 256
_wants_oci_cache: dict[tuple[bytes, ...], bool] = {}


def accepted_types(accept_lines: Iterable[bytes]) -> set[bytes]:
    """
    The media types named by some ``Accept`` header lines.

    Each line is split on commas; parameters after ``;`` and surrounding
    whitespace are dropped and the types are lower-cased.
    """
    types = set()
    for line in accept_lines:
        for item in line.split(b","):
            media_type = item.split(b";", 1)[0].strip().lower()
            if media_type:
                types.add(media_type)
    return types


def _compute_wants_oci(accept_lines: Iterable[bytes]) -> bool:
    types = accepted_types(accept_lines)
    return _OCI in types and _DOCKER not in types


def wants_oci(accept_lines: Optional[Sequence[bytes]]) -> bool:
    """
    Whether the OCI manifest should be served for these ``Accept`` lines.

    :param accept_lines: every raw ``Accept`` header value of the request,
        or ``None`` when there are none.

    Clients send the same few header sets over and over, so answers are
    remembered (for a bounded number of distinct header sets).
    """
    if not accept_lines:
        return False
    key = tuple(accept_lines)
    answer = _wants_oci_cache.get(key)
    if answer is None:
        answer = _compute_wants_oci(key)
        if len(_wants_oci_cache) >= _CACHE_LIMIT:
            _wants_oci_cache.clear()
        _wants_oci_cache[key] = answer
    return answer


def choose_manifest(image: Image,
                    accept_lines: Optional[Sequence[bytes]]) -> ManifestDocument:
    """
    The manifest of ``image`` to serve for these ``Accept`` lines.

    :param image: the image, in both formats.
    :param accept_lines: as for :func:`wants_oci`.
    """
    return image.oci if wants_oci(accept_lines) else image.docker

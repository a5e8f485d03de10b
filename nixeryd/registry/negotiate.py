"""
Which document of an image to serve, by the client's ``Accept``.

Every image is served as a Docker schema 2 and an OCI manifest; a
reference naming several platforms also has a Docker manifest list and an
OCI image index.  Clients send ``Accept`` in different shapes:
containers/image (skopeo, podman, buildah) sends one media type per header
line, containerd sends one comma-separated line, and simple clients send
none.  The rule, applied to all lines together:

* For a reference with several platforms, the Docker manifest list when
  the client accepts it (and the Docker manifest, or not the OCI one),
  else the OCI image index when it accepts that: the client then picks
  its own platform's manifest.  A client accepting neither gets the
  default platform's manifest, by the rules below.
* Docker schema 2 when the client accepts it (whether or not it also
  accepts OCI), sends no ``Accept`` at all, or accepts only wildcards or
  types we cannot serve: it is what every client understands.
* OCI when the client accepts the OCI manifest type but not the Docker
  one.

Docker formats win where a client accepts both, as they always have here,
so the manifests an index names are in the format of the index.
Parameters are ignored, but for a weight of zero (``q=0``), which says
the client does not accept that type.  This module is pure.
"""

from __future__ import annotations

import enum
import re
from typing import Iterable, Optional, Sequence

from nixeryd.core.documents import Image, ManifestDocument
from nixeryd.core.mediatypes import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

_DOCKER = DOCKER_MANIFEST.encode("ascii")
_OCI = OCI_MANIFEST.encode("ascii")
_DOCKER_LIST = DOCKER_LIST.encode("ascii")
_OCI_INDEX = OCI_INDEX.encode("ascii")

_CACHE_LIMIT = 256
#: HTTP's weight of zero: ``0``, ``0.`` and up to three zero decimals.
_ZERO_WEIGHT = re.compile(rb"0(?:\.0{0,3})?")


class Preference(enum.Enum):
    """What a set of ``Accept`` lines asks for, best first."""

    #: Docker manifest list, else Docker manifest.
    DOCKER_LIST = "docker-list"
    #: OCI image index, else Docker manifest.
    OCI_INDEX_DOCKER = "oci-index-docker"
    #: OCI image index, else OCI manifest.
    OCI_INDEX = "oci-index"
    #: Docker manifest only.
    DOCKER = "docker"
    #: OCI manifest only.
    OCI = "oci"


_preference_cache: dict[tuple[bytes, ...], Preference] = {}


def accepted_types(accept_lines: Iterable[bytes]) -> set[bytes]:
    """
    The media types named by some ``Accept`` header lines.

    Each line is split on commas; parameters after ``;`` and surrounding
    whitespace are dropped and the types are lower-cased.  A type with
    ``q=0`` is left out: HTTP makes it "not acceptable".
    """
    types = set()
    for line in accept_lines:
        for item in line.split(b","):
            media_type, *parameters = item.split(b";")
            media_type = media_type.strip().lower()
            if media_type and not any(_refused(parameter) for parameter in parameters):
                types.add(media_type)
    return types


def _refused(parameter: bytes) -> bool:
    """Whether an ``Accept`` parameter is a weight of zero (``q=0``, ``q=0.000``)."""
    name, _, value = parameter.partition(b"=")
    return name.strip().lower() == b"q" and _ZERO_WEIGHT.fullmatch(value.strip()) is not None


def _compute_preference(accept_lines: Iterable[bytes]) -> Preference:
    types = accepted_types(accept_lines)
    if _OCI in types and _DOCKER not in types:
        return Preference.OCI_INDEX if _OCI_INDEX in types else Preference.OCI
    if _DOCKER_LIST in types:
        return Preference.DOCKER_LIST
    if _OCI_INDEX in types:
        return Preference.OCI_INDEX_DOCKER
    return Preference.DOCKER


def preference(accept_lines: Optional[Sequence[bytes]]) -> Preference:
    """
    What these ``Accept`` lines ask for.

    :param accept_lines: every raw ``Accept`` header value of the request,
        or ``None`` when there are none.

    Clients send the same few header sets over and over, so answers are
    remembered (for a bounded number of distinct header sets).
    """
    if not accept_lines:
        return Preference.DOCKER
    key = tuple(accept_lines)
    answer = _preference_cache.get(key)
    if answer is None:
        answer = _compute_preference(key)
        if len(_preference_cache) >= _CACHE_LIMIT:
            _preference_cache.clear()
        _preference_cache[key] = answer
    return answer


def accepts_index(accept_lines: Optional[Sequence[bytes]]) -> bool:
    """
    Whether these ``Accept`` lines take a Docker manifest list or an OCI
    image index: otherwise a reference of several platforms is answered
    with the default platform's manifest, and only that image is needed.
    """
    return preference(accept_lines) in (Preference.DOCKER_LIST, Preference.OCI_INDEX,
                                        Preference.OCI_INDEX_DOCKER)


def wants_oci(accept_lines: Optional[Sequence[bytes]]) -> bool:
    """Whether the OCI manifest, not the Docker one, should be served."""
    return preference(accept_lines) in (Preference.OCI, Preference.OCI_INDEX)


def choose_manifest(image: Image,
                    accept_lines: Optional[Sequence[bytes]]) -> ManifestDocument:
    """
    The document of ``image`` to serve for these ``Accept`` lines: its
    index (for several platforms) or one of its manifests.

    :param image: the image, in both formats, with its index if any.
    :param accept_lines: as for :func:`preference`.
    """
    wanted = preference(accept_lines)
    if image.index is not None:
        if wanted is Preference.DOCKER_LIST:
            return image.index.docker
        if wanted in (Preference.OCI_INDEX, Preference.OCI_INDEX_DOCKER):
            return image.index.oci
    return image.oci if wanted in (Preference.OCI, Preference.OCI_INDEX) else image.docker

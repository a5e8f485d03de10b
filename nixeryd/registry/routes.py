"""
Parsing of request paths under ``/v2``.

Registry names contain ``/``, so a path is read from the right: the last
two segments say what is asked for (``manifests``/reference,
``blobs``/digest, ``tags``/``list``, ``referrers``/digest) and everything
before them is the image name.  Names, tags and digests are checked
against the distribution spec's grammar here, before anything is looked
up, so that storage and the image builder only ever see well-formed input.

This module is pure: it takes the already split and percent-decoded path
segments that Twisted gives a resource (``request.postpath``) and returns
a route value or raises a :class:`~nixeryd.core.errors.RegistryError`.
"""

from __future__ import annotations

from typing import Sequence, Union

from attrs import frozen

from nixeryd.core.digests import check_digest
from nixeryd.core.errors import ManifestUnknown, NameInvalid, Unsupported
from nixeryd.build.names import (MAX_NAME_LENGTH, is_referrers_tag, is_valid_component,
                                 is_valid_tag)


class RouteUnknown(Unsupported):
    """
    A path under ``/v2`` that names no operation of this registry.

    It is reported as ``UNSUPPORTED`` rather than ``NAME_UNKNOWN``: the
    path is not about an unknown repository (``/v2/_catalog`` or a push
    URL name no repository at all), it asks for something this read-only
    registry does not offer.  The status is 404 because nothing lives at
    that URL.
    """

    status = 404


@frozen
class Ping:
    """``/v2/``: the API version check."""


@frozen
class ManifestByTag:
    """
    ``/v2/<name>/manifests/<tag>``: an image, built on demand.

    :ivar name: the image name, e.g. ``shell/git``.
    :ivar tag: the tag, already checked against the tag grammar.
    """

    name: str
    tag: str


@frozen
class ManifestByDigest:
    """
    ``/v2/<name>/manifests/sha256:<hex>``: a manifest served before.

    :ivar name: the image name (checked, but manifests are content-addressed
        and looked up by digest alone).
    :ivar digest: ``sha256:`` and 64 lowercase hex characters.
    """

    name: str
    digest: str


@frozen
class Blob:
    """
    ``/v2/<name>/blobs/sha256:<hex>``: a layer or config blob.

    :ivar name: the image name (checked, not used for the lookup).
    :ivar digest: ``sha256:`` and 64 lowercase hex characters.
    """

    name: str
    digest: str


@frozen
class TagsList:
    """
    ``/v2/<name>/tags/list``: the tags of an image name.

    :ivar name: the image name.
    """

    name: str


@frozen
class Referrers:
    """
    ``/v2/<name>/referrers/sha256:<hex>``: the manifests whose ``subject``
    is this digest (none: nothing can be pushed here).

    :ivar name: the image name.
    :ivar digest: the subject's digest, checked.
    """

    name: str
    digest: str


Route = Union[Ping, ManifestByTag, ManifestByDigest, Blob, TagsList, Referrers]


def is_tag(reference: str) -> bool:
    """Whether ``reference`` matches the spec's tag grammar."""
    return is_valid_tag(reference)


def check_name(segments: Sequence[str]) -> str:
    """
    Join name segments with ``/`` after checking each against the grammar.

    Each segment is checked on its own, so that a percent-encoded slash
    (``a%2Fb``, decoded into one segment ``a/b``) cannot pass as two
    components, and ``.``/``..`` segments never reach the grammar check as
    anything but invalid components.

    :raises NameInvalid: if a segment breaks the grammar, there are no
        segments, or the name is longer than :data:`MAX_NAME_LENGTH`.
    """
    if not segments:
        raise NameInvalid("missing image name", None)
    name = "/".join(segments)
    if len(name) > MAX_NAME_LENGTH:
        raise NameInvalid(
            "image name is longer than %d characters" % (MAX_NAME_LENGTH,),
            {"length": len(name)},
        )
    for segment in segments:
        if not is_valid_component(segment):
            raise NameInvalid(
                "invalid image name: each /-separated component must be"
                " lowercase letters and digits, separated by '.', '_', '__'"
                " or dashes",
                {"name": name},
            )
    return name


def _manifest_route(name: str, reference: str) -> Route:
    """
    Classify a manifest reference as a tag or a digest.

    A reference that contains ``:`` can only be meant as a digest (tags
    cannot contain it), so a malformed one is ``DIGEST_INVALID``; anything
    else that is not a valid tag names a tag that can never exist, which
    is ``MANIFEST_UNKNOWN``.  So is a tag of the referrers tag schema
    (``sha256-<hex>``): it names the referrers of a manifest, never an
    image, and this registry has the referrers API instead, so such a tag
    never starts a build.
    """
    if is_referrers_tag(reference):
        raise ManifestUnknown(
            "%s is a referrers tag, not an image: this registry has no such tag;"
            " its referrers are listed by /v2/%s/referrers/<digest>" % (reference, name),
            {"tag": reference})
    if is_tag(reference):
        return ManifestByTag(name, reference)
    if ":" in reference:
        check_digest(reference)
        return ManifestByDigest(name, reference)
    raise ManifestUnknown(
        "invalid tag: tags are 1 to 128 characters of letters, digits,"
        " '_', '.' and '-', not starting with '.' or '-'",
        {"tag": reference[:200]},
    )


def parse_v2_path(segments: Sequence[bytes]) -> Route:
    """
    Parse the percent-decoded path segments that follow ``/v2``.

    ``[]`` (``/v2``) and ``[b""]`` (``/v2/``) are the ping.  Otherwise the
    last two segments select the operation and the rest is the name.

    :raises RouteUnknown: for paths that name no operation.
    :raises NameInvalid: for a malformed name.
    :raises DigestInvalid: for a malformed digest.
    :raises ManifestUnknown: for a manifest reference that is no valid tag.
    """
    count = len(segments)
    if count == 0 or (count == 1 and segments[0] == b""):
        return Ping()
    if count < 3:
        raise RouteUnknown("unknown registry API path", None)
    try:
        texts = [segment.decode("utf-8") for segment in segments]
    except UnicodeDecodeError:
        raise NameInvalid("path is not valid UTF-8", None) from None
    kind = texts[-2]
    last = texts[-1]
    if kind == "manifests":
        return _manifest_route(check_name(texts[:-2]), last)
    if kind == "blobs":
        name = check_name(texts[:-2])
        check_digest(last)
        return Blob(name, last)
    if kind == "tags" and last == "list":
        return TagsList(check_name(texts[:-2]))
    if kind == "referrers":
        name = check_name(texts[:-2])
        check_digest(last)
        return Referrers(name, last)
    raise RouteUnknown("unknown registry API path", None)

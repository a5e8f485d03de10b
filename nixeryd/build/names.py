"""
Image names: from ``shell/git/htop`` to the packages Nix must look up.

Every path component of an image name names one package; a few components
are meta-packages (``shell`` adds an interactive shell and core tools,
``arm64`` builds for aarch64).  The result is sorted and de-duplicated, so
``a/b`` and ``b/a`` are the same image.  Names are validated here, before
anything reaches Nix or the disk.  Pure: no I/O.
"""

from __future__ import annotations

import re

from attrs import frozen

# Re-exported: the platforms are named here since before build.platforms.
from nixeryd.build.platforms import AMD64 as AMD64
from nixeryd.build.platforms import ARM64 as ARM64
from nixeryd.build.platforms import Architecture as Architecture
from nixeryd.core.errors import ManifestUnknown, NameInvalid

#: The distribution spec's repository name grammar, one path component.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*\Z")
#: The distribution spec's tag grammar.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")

#: The referrers tag schema of the distribution spec: a digest's algorithm,
#: ``-`` and its encoded part (64 characters).  Clients that find no
#: referrers API look for such tags; they never name an image to build.
_REFERRERS_TAG = re.compile(r"(?:sha256|sha384|sha512|blake3)-[0-9a-f]{64}\Z")

#: Clients cap ``host/name`` at 255 characters; we cap the name alone.
MAX_NAME_LENGTH = 255

#: Packages the ``shell`` meta-package adds.
SHELL_PACKAGES = ("bashInteractive", "coreutils", "moreutils", "nano")

#: Packages added to every image when the package set has them.
OPTIONAL_PACKAGES = ("cacert", "iana-etc")


#: Meta-package components that select an architecture.
_ARCH_META = {"arm64": ARM64}


@frozen
class ImageRequest:
    """
    What an image name asks for.

    :ivar name: the image name exactly as requested.
    :ivar packages: the attribute names to look up in the package set,
        sorted and without duplicates; meta-packages are expanded.
    :ivar arch: the target architecture.
    :ivar shell: whether the ``shell`` meta-package was requested (the
        image then runs ``bash`` by default).
    :ivar arch_selected: whether a meta-package (``arm64``) chose ``arch``;
        otherwise it is the default platform, and a registry serving
        several platforms answers with an image index.
    """

    name: str
    packages: tuple[str, ...]
    arch: Architecture
    shell: bool
    arch_selected: bool = False

    def key(self) -> str:
        """
        A string that identifies what the request builds, independent of
        the order and spelling of its components: architecture and sorted
        packages, with separators that cannot occur in either.
        """
        return self.arch.nix_system + "|" + ",".join(self.packages)


def is_valid_component(component: str) -> bool:
    """Whether one ``/``-separated component matches the registry grammar."""
    return _COMPONENT.match(component) is not None


def is_valid_tag(tag: str) -> bool:
    """Whether ``tag`` matches the distribution spec's tag grammar."""
    return _TAG.match(tag) is not None


def is_referrers_tag(tag: str) -> bool:
    """
    Whether ``tag`` follows the referrers tag schema (``sha256-<hex>``),
    which names an index of the referrers of a manifest, never an image.
    """
    return _REFERRERS_TAG.match(tag) is not None


def validate_name(name: str) -> list[str]:
    """
    Check ``name`` against the registry grammar and return its components.

    :raises NameInvalid: for an empty or over-long name, an empty
        component, ``..``, or any character outside the grammar.
    """
    if not name:
        raise NameInvalid("the image name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise NameInvalid(
            "the image name is longer than %d characters" % (MAX_NAME_LENGTH,),
            {"length": len(name)})
    components = name.split("/")
    for component in components:
        if not component:
            raise NameInvalid("the image name %r has an empty component" % (name,))
        if not is_valid_component(component):
            raise NameInvalid(
                "invalid image name component %r: components are lowercase "
                "letters and digits, separated by '.', '_', '__' or '-'" % (component,),
                {"component": component})
    return components


def validate_tag(tag: str) -> str:
    """
    Check a tag against the distribution spec's grammar.

    A string that cannot be a tag cannot name a manifest, so it is answered
    as an unknown manifest.

    :raises ManifestUnknown: when ``tag`` is not a valid tag.
    """
    if not is_valid_tag(tag):
        raise ManifestUnknown("invalid tag %r" % (tag,), {"tag": tag})
    return tag


def parse_image_name(name: str, default: Architecture = AMD64) -> ImageRequest:
    """
    Turn an image name into an :class:`ImageRequest`.

    Meta-packages are recognised in any position (Nixery only knows them
    at the start).  A name made only of meta-packages is valid.

    :param default: the architecture when no meta-package selects one.

    :raises NameInvalid: when the name breaks the grammar.
    """
    components = validate_name(name)
    arch = default
    selected = False
    shell = False
    packages: set[str] = set()
    for component in components:
        if component in _ARCH_META:
            arch = _ARCH_META[component]
            selected = True
        elif component == "shell":
            shell = True
            packages.update(SHELL_PACKAGES)
        else:
            packages.add(component)
    return ImageRequest(
        name=name, packages=tuple(sorted(packages)), arch=arch, shell=shell,
        arch_selected=selected)

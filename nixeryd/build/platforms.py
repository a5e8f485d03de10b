"""
Target platforms: how the OCI image spec and Nix name each, and the
``os/architecture[/variant]`` texts of ``NIXERY_PLATFORMS``.

An image is built for one :class:`Architecture`: Nix evaluates the
package set for its ``system`` (``aarch64-linux``), and the image config
and the image index say its OCI ``architecture`` and ``variant``
(``arm64``, ``v8``).  The variants are those the OCI image index
specification lists and containerd normalises to (``arm64`` is ``v8``,
``arm`` defaults to ``v7``), so that every client matches its own
platform against the index.  Pure, apart from :func:`host_architecture`,
which reads the machine's name once.
"""

from __future__ import annotations

import platform
from typing import Sequence

from attrs import frozen


@frozen
class Architecture:
    """
    A target platform, as Nix and as the OCI image config name it.

    :ivar nix_system: the Nix ``system`` string, e.g. ``x86_64-linux``.
    :ivar oci_arch: the OCI ``architecture``, e.g. ``amd64``.
    :ivar variant: the OCI ``variant`` (``v8`` for ``arm64``), or empty.
    """

    nix_system: str
    oci_arch: str
    variant: str = ""

    def platform(self) -> dict[str, str]:
        """The OCI ``platform`` object of an index entry, keys in a fixed order."""
        described = {"architecture": self.oci_arch, "os": "linux"}
        if self.variant:
            described["variant"] = self.variant
        return described

    def name(self) -> str:
        """``linux/arm64/v8``: how people and ``NIXERY_PLATFORMS`` name it."""
        return "/".join(["linux", self.oci_arch] + ([self.variant] if self.variant else []))

    def sort_key(self) -> tuple[str, str, str]:
        """The order of entries in an image index (stable, whatever the configuration's)."""
        return ("linux", self.oci_arch, self.variant)


AMD64 = Architecture("x86_64-linux", "amd64")
ARM64 = Architecture("aarch64-linux", "arm64", "v8")
I386 = Architecture("i686-linux", "386")
ARMV7 = Architecture("armv7l-linux", "arm", "v7")
ARMV6 = Architecture("armv6l-linux", "arm", "v6")
PPC64LE = Architecture("powerpc64le-linux", "ppc64le")
S390X = Architecture("s390x-linux", "s390x")
RISCV64 = Architecture("riscv64-linux", "riscv64")

#: Every platform by ``architecture[/variant]``, with the spellings
#: clients use for the same platform (``arm64/v8``, ``arm`` for ``arm/v7``).
_BY_NAME = {
    "amd64": AMD64, "arm64": ARM64, "arm64/v8": ARM64, "386": I386,
    "arm": ARMV7, "arm/v7": ARMV7, "arm/v6": ARMV6, "ppc64le": PPC64LE,
    "s390x": S390X, "riscv64": RISCV64,
}

#: ``platform.machine()`` → the platform, for the default.
_MACHINES = {
    "x86_64": AMD64, "amd64": AMD64, "aarch64": ARM64, "arm64": ARM64,
    "i686": I386, "i386": I386, "armv7l": ARMV7, "armv6l": ARMV6,
    "ppc64le": PPC64LE, "s390x": S390X, "riscv64": RISCV64,
}


def known_platforms() -> list[str]:
    """The names :func:`parse_platform` accepts, for messages."""
    return sorted({architecture.name() for architecture in _BY_NAME.values()})


def parse_platform(text: str) -> Architecture:
    """
    ``linux/arm64`` (or ``linux/arm64/v8``, or ``arm64``) → :data:`ARM64`.

    :raises ValueError: for another OS or an unknown architecture.
    """
    name = text.strip().lower()
    if name.startswith("linux/"):
        name = name[len("linux/"):]
    elif "/" in name and name.split("/", 1)[0] not in ("arm", "arm64"):
        raise ValueError("only linux platforms can be built: %r" % (text,))
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError("unknown platform %r" % (text,)) from None


def parse_platforms(text: str) -> tuple[Architecture, ...]:
    """
    A comma-separated platform list, the default platform first, without
    repeats.

    :raises ValueError: for an empty list or an unknown platform.
    """
    chosen: list[Architecture] = []
    for item in text.split(","):
        if item.strip():
            architecture = parse_platform(item)
            if architecture not in chosen:
                chosen.append(architecture)
    if not chosen:
        raise ValueError("no platform given")
    return tuple(chosen)


def host_architecture(machine: str | None = None) -> Architecture:
    """
    The platform of this machine (``amd64`` when its name is unknown, as
    before platforms could be chosen).
    """
    return _MACHINES.get((machine if machine is not None else platform.machine()).lower(),
                         AMD64)


def describe(platforms: Sequence[Architecture]) -> str:
    """``linux/amd64, linux/arm64/v8`` for logs and messages."""
    return ", ".join(architecture.name() for architecture in platforms)

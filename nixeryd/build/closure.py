"""
The runtime closure of an image, as Nix reports it.

Plain data shared by the Nix runner (which produces it), the layering
algorithm (which groups it) and the archiver (which writes its paths).
Nothing here performs I/O.
"""

from __future__ import annotations

from typing import Mapping

from attrs import field, frozen


@frozen
class StorePathInfo:
    """
    One store path of a closure.

    :ivar path: absolute store path, ``/nix/store/<hash>-<name>``.
    :ivar nar_size: size of this path alone, in bytes.
    :ivar closure_size: size of this path plus everything it references,
        transitively, in bytes.
    :ivar references: the store paths this one refers to (may include
        itself, as Nix reports self-references).
    """

    path: str
    nar_size: int
    closure_size: int
    references: tuple[str, ...] = field(converter=tuple[str, ...])


@frozen
class ClosureGraph:
    """
    The reference graph of an image's runtime closure.

    :ivar roots: the top-level store paths (outputs of the requested
        packages), in a stable order.
    :ivar paths: every store path of the closure, by path.
    """

    roots: tuple[str, ...] = field(converter=tuple[str, ...])
    paths: Mapping[str, StorePathInfo]

    def total_size(self) -> int:
        """Sum of the NAR sizes of every path in the closure."""
        return sum(info.nar_size for info in self.paths.values())


def store_path_name(path: str) -> str:
    """
    The name part of a store path: ``/nix/store/<hash>-glibc-2.33`` gives
    ``glibc-2.33``.  Popularity data is keyed by it.
    """
    base = path.rstrip("/").rsplit("/", 1)[-1]
    _, _, name = base.partition("-")
    return name

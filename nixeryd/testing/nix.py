"""
Stand-ins for Nix: :class:`FakeNix` does the
:class:`~nixeryd.build.nixsteps.NixSteps` (``resolve`` and ``build``) like
:class:`~nixeryd.build.nix.NixRunner`, :class:`FakeSource` is a
:class:`~nixeryd.build.sources.PackageSource`, and :class:`FakeStore`
makes real directories that stand in for store paths.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping, Sequence, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from nixeryd.build.closure import ClosureGraph, StorePathInfo
from nixeryd.build.nix import Resolution, ResolvedPackage
from nixeryd.build.sources import PinnedSource
from nixeryd.core.errors import BuildFailed, UnknownPackages
from nixeryd.testing.gates import follow

T = TypeVar("T")

_log = Logger()


class FakeNix:
    """
    Answers ``resolve`` and ``build`` from values given by the test.

    Resolutions are looked up by the requested package names, closures by
    the resolution's output paths.  Either call can be held until a gate
    Deferred fires (every call waiting on the same gate), and made to fail
    after the gate.  A gate fired with a failure keeps it as its own
    result: add an errback to the gate afterwards to consume it.

    :ivar resolve_calls: ``(source, packages, optional, system)`` of every
        ``resolve`` call, in order.
    :ivar build_calls: the resolution of every ``build`` call, in order.
    :ivar builds_finished: how many ``build`` calls returned a closure.
    :ivar resolve_gate: when set, ``resolve`` waits for it.
    :ivar build_gate: when set, ``build`` waits for it.
    :ivar resolve_error: when set, ``resolve`` raises it.
    :ivar build_error: when set, ``build`` raises it.
    :ivar resolve_lines: lines each ``resolve`` logs as Nix's stderr,
        before its gate.
    :ivar build_lines: lines each ``build`` logs as Nix's stderr, before
        its gate.
    :ivar logs: the logger given to every call (``None`` when not given),
        in order.
    """

    def __init__(self) -> None:
        self._resolutions: dict[tuple[str, ...], Resolution] = {}
        self._closures: dict[tuple[str, ...], ClosureGraph] = {}
        self.resolve_calls: list[tuple[PinnedSource, tuple[str, ...],
                                       tuple[str, ...], str]] = []
        self.build_calls: list[Resolution] = []
        self.builds_finished = 0
        self.resolve_gate: Deferred[Any] | None = None
        self.build_gate: Deferred[Any] | None = None
        self.resolve_error: BaseException | None = None
        self.build_error: BaseException | None = None
        self.resolve_lines: list[str] = []
        self.build_lines: list[str] = []
        self.logs: list[Logger | None] = []

    def add(self, packages: Sequence[str], resolution: Resolution,
            closure: ClosureGraph) -> None:
        """
        Answer ``resolve`` for exactly ``packages`` (in that order) with
        ``resolution``, and ``build`` of it with ``closure``.
        """
        self._resolutions[tuple(packages)] = resolution
        self._closures[resolution.out_paths] = closure

    async def resolve(self, source: PinnedSource, packages: Sequence[str],
                      optional: Sequence[str] = (), system: str = "x86_64-linux",
                      *, image: str | None = None,
                      log: Logger | None = None) -> Resolution:
        """
        The resolution added for ``packages``.

        :raises UnknownPackages: naming every requested package when none
            was added.
        """
        self.resolve_calls.append((source, tuple(packages), tuple(optional), system))
        self._emit(log, self.resolve_lines, "nix-instantiate", image, "resolve")
        if self.resolve_gate is not None:
            await follow(self.resolve_gate)
        if self.resolve_error is not None:
            raise self.resolve_error
        resolution = self._resolutions.get(tuple(packages))
        if resolution is None:
            raise UnknownPackages(list(packages))
        return resolution

    async def build(self, resolution: Resolution, *,
                    image: str | None = None,
                    gc_root: str | None = None,
                    log: Logger | None = None) -> ClosureGraph:
        """
        The closure added for ``resolution``'s output paths.

        :raises BuildFailed: when none was added.
        """
        self.build_calls.append(resolution)
        self._emit(log, self.build_lines, "nix-build", image, "build")
        if self.build_gate is not None:
            await follow(self.build_gate)
        if self.build_error is not None:
            raise self.build_error
        closure = self._closures.get(resolution.out_paths)
        if closure is None:
            raise BuildFailed("no closure for %s" % (", ".join(resolution.out_paths),))
        self.builds_finished += 1
        return closure

    def _emit(self, log: Logger | None, lines: Sequence[str], argv0: str,
              image: str | None, phase: str) -> None:
        """Log ``lines`` as the process runner logs a child's stderr."""
        self.logs.append(log)
        for line in lines:
            (log or _log).info("{argv0}[{pid}] {line}", line=line, argv0=argv0,
                               pid=0, stream="stderr", image=image, phase=phase)


class FakeSource:
    """
    A package source whose revision the test sets.

    :ivar kind: the pinned source's kind (``path``, ``git``, ``channel``).
    :ivar revision: the revision every pin reports (``None`` for a moving
        source); may be changed between calls.
    :ivar pins: every tag pinned, in order.
    """

    def __init__(self, kind: str = "path", revision: str | None = None) -> None:
        self.kind = kind
        self.revision = revision
        #: As the real sources: only git tags choose a revision.
        self.tag_selects_revision = kind == "git"
        self.pins: list[str] = []

    async def pin(self, tag: str) -> PinnedSource:
        """The package set for ``tag``: the configured kind and revision."""
        self.pins.append(tag)
        return PinnedSource(self.kind, {"kind": self.kind, "revision": self.revision},
                            self.revision)


@frozen
class Symlink:
    """
    A symbolic link in a :class:`FakeStore` path.

    :ivar target: the link's target, written verbatim.
    """

    target: str


class FakeStore:
    """
    Real directories standing in for Nix store paths, under ``root``.

    Each path is ``<root>/<32 characters>-<name>``, so
    :func:`~nixeryd.build.closure.store_path_name` gives back ``name``; the
    archiver and the customisation layer read them like store paths.

    :param root: an absolute directory, created if missing.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self._references: dict[str, tuple[str, ...]] = {}

    def path(self, name: str) -> str:
        """The store path named ``name`` (whether or not it was added)."""
        digest = hashlib.sha256(name.encode()).hexdigest()[:32]
        return os.path.join(self.root, "%s-%s" % (digest, name))

    def add(self, name: str, files: Mapping[str, bytes | Symlink],
            references: Sequence[str] = ()) -> str:
        """
        Create a store path holding ``files`` (relative path → content or
        :class:`Symlink`; parent directories are created).

        :param references: store paths this one refers to.
        :returns: the store path.
        """
        path = self.path(name)
        os.makedirs(path)
        for relative, content in files.items():
            target = os.path.join(path, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if isinstance(content, Symlink):
                os.symlink(content.target, target)
            else:
                with open(target, "wb") as f:
                    f.write(content)
        self._references[path] = tuple(references)
        return path

    def add_file(self, name: str, content: bytes) -> str:
        """Create a store path that is a single file."""
        path = self.path(name)
        with open(path, "wb") as f:
            f.write(content)
        self._references[path] = ()
        return path

    def closure(self, roots: Sequence[str]) -> ClosureGraph:
        """
        The closure of ``roots`` through the recorded references, with
        sizes measured on disk.
        """
        members: list[str] = []
        pending = list(roots)
        while pending:
            path = pending.pop()
            if path in members:
                continue
            members.append(path)
            pending.extend(self._references[path])
        sizes = {path: _disk_size(path) for path in members}
        infos = {}
        for path in members:
            reachable = {path}
            pending = [path]
            while pending:
                for reference in self._references[pending.pop()]:
                    if reference not in reachable:
                        reachable.add(reference)
                        pending.append(reference)
            infos[path] = StorePathInfo(
                path, sizes[path], sum(sizes[p] for p in reachable),
                self._references[path] + (path,))
        return ClosureGraph(roots=tuple(sorted(roots)), paths=infos)

    def resolution(self, source: PinnedSource, packages: Mapping[str, str],
                   system: str = "x86_64-linux") -> Resolution:
        """
        A resolution of ``packages`` (requested name → store path), in the
        given order.
        """
        return Resolution(source, system, tuple(
            ResolvedPackage(requested=requested, attr=(requested,), out_paths=(path,))
            for requested, path in packages.items()))


def _disk_size(path: str) -> int:
    """The ``lstat`` sizes of ``path`` and everything below it, plus 512
    bytes per entry, roughly what its NAR serialisation takes."""
    total = os.lstat(path).st_size + 512
    if os.path.isdir(path) and not os.path.islink(path):
        for directory, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                total += os.lstat(os.path.join(directory, name)).st_size + 512
    return total

"""
Test doubles for the image core: storage in memory, a scripted Nix, a
package source with a fixed revision, a runner whose work waits for the
test, and directories that stand in for store paths.

They let the builder and the image service be tested without Nix, without
a thread pool and without a storage directory, while keeping their
observable contracts: :class:`MemoryStorage` provides
:class:`~nixeryd.storage.interface.IStorage`, :class:`FakeNix` answers
``resolve`` and ``build`` like :class:`~nixeryd.build.nix.NixRunner`, and
:class:`FakeSource` answers ``pin`` like the package sources.  Each one
counts the calls it receives, so tests can check how much work was done.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from typing import Any, Callable, Mapping, Sequence, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from nixeryd.build.closure import ClosureGraph, StorePathInfo
from nixeryd.core.digests import check_digest
from nixeryd.core.documents import RedirectBlob
from nixeryd.core.errors import BlobUnknown, BuildFailed, UnknownPackages
from nixeryd.build.nix import Resolution, ResolvedPackage
from nixeryd.build.sources import PinnedSource
from nixeryd.storage.interface import IStorage
from nixeryd.storage.naming import check_document_name, check_reference
from nixeryd.storage.ociindex import REF_NAME

T = TypeVar("T")

# The document and reference rules of the filesystem backend, so that a
# test passing against memory would pass against the disk.


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _follow(gate: Deferred[Any]) -> Deferred[None]:
    """
    A new Deferred that fires when ``gate`` does (with ``None``, or with
    the gate's failure), leaving the gate's own result untouched so that
    any number of callers can wait on one gate.
    """
    follower: Deferred[None] = Deferred()

    def fire(result: Any) -> Any:
        if isinstance(result, Failure):
            follower.errback(result)
        else:
            follower.callback(None)
        return result

    gate.addBoth(fire)
    return follower


@implementer(IStorage)
class MemoryStorage:
    """
    An :class:`~nixeryd.storage.interface.IStorage` keeping everything in
    dictionaries; every Deferred it returns has already fired.

    Stricter than the filesystem backend in one respect: a blob whose
    content does not hash to its digest is refused with
    :class:`ValueError`, which catches callers that mislabel blobs.  Blobs
    are served by redirect to ``redirect_base`` followed by the digest.

    :param temp_directory: a real directory, where callers write layer
        files before handing them over.
    :ivar blobs: the stored blobs, by digest.
    :ivar documents: the stored documents, as JSON bytes, by
        ``(namespace, key)``.
    :ivar references: the recorded references, as OCI index descriptors,
        by reference.
    :ivar calls: how many times each method was called, by name.
    :ivar stored: every digest passed to a successful ``store_blob_file``
        or ``store_blob_bytes``, in order.
    :ivar failures: method name → exception; a method named here fails
        with it (after validating its arguments, and after removing the
        file given to ``store_blob_file``).
    """

    def __init__(self, temp_directory: str,
                 redirect_base: str = "https://blobs.invalid/") -> None:
        self._temp_directory = temp_directory
        self._redirect_base = redirect_base
        self.blobs: dict[str, bytes] = {}
        self.documents: dict[tuple[str, str], bytes] = {}
        self.references: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.stored: list[str] = []
        self.failures: dict[str, BaseException] = {}

    def _call(self, method: str, work: Callable[[], T]) -> Deferred[T]:
        """Count the call and turn the outcome of ``work`` into a Deferred."""
        self.calls[method] += 1
        try:
            return succeed(work())
        except BaseException:
            return fail()

    def delete_blob(self, digest: str) -> None:
        """Forget a blob, as if it had been removed from the backend."""
        del self.blobs[digest]

    # -- IStorage ---------------------------------------------------------

    def temp_directory(self) -> str:
        """The real directory given at construction."""
        return self._temp_directory

    def has_blob(self, digest: str) -> Deferred[bool]:
        """Whether the blob is stored."""
        def work() -> bool:
            check_digest(digest)
            self._check_failure("has_blob")
            return digest in self.blobs
        return self._call("has_blob", work)

    def store_blob_file(self, path: str, digest: str) -> Deferred[None]:
        """Read the file into memory and remove it, whatever happens."""
        def work() -> None:
            try:
                check_digest(digest)
                with open(path, "rb") as f:
                    data = f.read()
            finally:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            self._check_failure("store_blob_file")
            self._put_blob(data, digest)
        return self._call("store_blob_file", work)

    def store_blob_bytes(self, data: bytes, digest: str) -> Deferred[None]:
        """Keep a copy of ``data``."""
        def work() -> None:
            check_digest(digest)
            self._check_failure("store_blob_bytes")
            self._put_blob(bytes(data), digest)
        return self._call("store_blob_bytes", work)

    def blob(self, digest: str) -> Deferred[RedirectBlob]:
        """A redirect to the blob, or :class:`BlobUnknown`."""
        def work() -> RedirectBlob:
            check_digest(digest)
            self._check_failure("blob")
            if digest not in self.blobs:
                raise BlobUnknown("blob unknown to registry", {"digest": digest})
            return RedirectBlob(url=self._redirect_base + digest, digest=digest)
        return self._call("blob", work)

    def read_small_blob(self, digest: str, limit: int) -> Deferred[bytes | None]:
        """The blob's bytes, or ``None`` when missing or over ``limit``."""
        def work() -> bytes | None:
            check_digest(digest)
            self._check_failure("read_small_blob")
            data = self.blobs.get(digest)
            if data is None or len(data) > limit:
                return None
            return data
        return self._call("read_small_blob", work)

    def get_document(self, namespace: str, key: str) -> Deferred[Any]:
        """A fresh copy of the stored document, or ``None``."""
        def work() -> Any:
            check_document_name(namespace, key)
            self._check_failure("get_document")
            stored = self.documents.get((namespace, key))
            return None if stored is None else json.loads(stored)
        return self._call("get_document", work)

    def put_document(self, namespace: str, key: str, document: object) -> Deferred[None]:
        """Store the document as JSON, replacing an earlier one."""
        def work() -> None:
            check_document_name(namespace, key)
            self._check_failure("put_document")
            self.documents[(namespace, key)] = json.dumps(
                document, sort_keys=True).encode()
        return self._call("put_document", work)

    def record_reference(self, reference: str, manifest_digest: str,
                         media_type: str, size: int) -> Deferred[None]:
        """Name a manifest, replacing an earlier one of the same name."""
        def work() -> None:
            check_reference(reference)
            check_digest(manifest_digest)
            self._check_failure("record_reference")
            self.references[reference] = {
                "mediaType": media_type, "digest": manifest_digest, "size": size,
                "annotations": {REF_NAME: reference}}
        return self._call("record_reference", work)

    # -- helpers ------------------------------------------------------------

    def _check_failure(self, method: str) -> None:
        failure = self.failures.get(method)
        if failure is not None:
            raise failure

    def _put_blob(self, data: bytes, digest: str) -> None:
        actual = _sha256(data)
        if actual != digest:
            raise ValueError("blob stored as %s hashes to %s" % (digest, actual))
        self.blobs[digest] = data
        self.stored.append(digest)


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
                      *, image: str | None = None) -> Resolution:
        """
        The resolution added for ``packages``.

        :raises UnknownPackages: naming every requested package when none
            was added.
        """
        self.resolve_calls.append((source, tuple(packages), tuple(optional), system))
        if self.resolve_gate is not None:
            await _follow(self.resolve_gate)
        if self.resolve_error is not None:
            raise self.resolve_error
        resolution = self._resolutions.get(tuple(packages))
        if resolution is None:
            raise UnknownPackages(list(packages))
        return resolution

    async def build(self, resolution: Resolution, *,
                    image: str | None = None,
                    gc_root: str | None = None) -> ClosureGraph:
        """
        The closure added for ``resolution``'s output paths.

        :raises BuildFailed: when none was added.
        """
        self.build_calls.append(resolution)
        if self.build_gate is not None:
            await _follow(self.build_gate)
        if self.build_error is not None:
            raise self.build_error
        closure = self._closures.get(resolution.out_paths)
        if closure is None:
            raise BuildFailed("no closure for %s" % (", ".join(resolution.out_paths),))
        self.builds_finished += 1
        return closure


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


class ManualRunner:
    """
    A runner (``run(f, *args) -> Deferred``) that queues the work until
    the test calls :meth:`run_pending`, so that concurrent callers can be
    interleaved deterministically.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...],
                                 dict[str, Any], Deferred[Any]]] = []

    def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Queue ``function(*args, **kwargs)``; the Deferred fires when it ran."""
        d: Deferred[T] = Deferred()
        self.pending.append((function, args, kwargs, d))
        return d

    def run_pending(self) -> int:
        """
        Run queued work, including work queued while doing so, until none
        is left.

        :returns: how many calls ran.
        """
        count = 0
        while self.pending:
            function, args, kwargs, d = self.pending.pop(0)
            count += 1
            try:
                result = function(*args, **kwargs)
            except BaseException:
                d.errback()
            else:
                d.callback(result)
        return count


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

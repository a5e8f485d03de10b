"""
Layer blobs: what goes into a layer tarball, written to a temporary file.

Two kinds of layer exist.  A *store layer* holds whole Nix store paths,
read from disk; a *tree layer* holds a small tree described in memory (the
image's customisation layer of directories, symlinks and small files).
Both are written by :mod:`nixeryd.build.tarstream` into a new temporary file
that the caller renames into place, and both are deterministic: the same
inputs give byte-identical tar and gzip streams on every run and every
host, whatever order the inputs come in.  For store layers "the same
inputs" means the same file contents and modes: which files are hard
links of each other on disk (it differs between a built, an optimised and
a substituted store) does not change a byte.

Every function here blocks; callers run them in a thread pool.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import stat
import tempfile
from typing import Callable, Iterator, Literal, Sequence

from attrs import field, frozen

from nixeryd.build.tarstream import (
    CHUNK_SIZE,
    DEFAULT_COMPRESS_LEVEL,
    MEMBER_MTIME,
    SourceChanged,
    TarGzipWriter,
)

__all__ = [
    "DEFAULT_COMPRESS_LEVEL",
    "LAYER_FORMAT_VERSION",
    "LayerBlob",
    "MEMBER_MTIME",
    "STORE_PARENT_MODE",
    "TreeEntry",
    "hash_file",
    "write_store_layer",
    "write_tree_layer",
]

#: Version of the layer byte format: raise it whenever the same store paths
#: would give different tar or gzip bytes (member order, metadata, header
#: format, chunking), so layer caches keyed by it miss instead of serving
#: blobs that this code would no longer write.  Cache keys should also hold
#: the compression level.  Version 2 decides hard links by file content
#: instead of by inode.
LAYER_FORMAT_VERSION = 2

#: Mode of the directories above the store paths (``nix/``, ``nix/store/``),
#: which are not themselves read from disk.
STORE_PARENT_MODE = 0o755

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


@frozen
class LayerBlob:
    """
    A written layer.

    :ivar digest: ``sha256:<hex>`` of the gzip stream (the blob's name).
    :ivar diff_id: ``sha256:<hex>`` of the uncompressed tar stream.
    :ivar size: length of the gzip stream in bytes.
    :ivar path: the temporary file holding the gzip stream.
    """

    digest: str
    diff_id: str
    size: int
    path: str


def _check_kind(instance: object, attribute: object, value: str) -> None:
    """Reject a :class:`TreeEntry` kind that is not one we write."""
    if value not in ("dir", "symlink", "file"):
        raise ValueError("unknown tree entry kind %r" % (value,))


@frozen
class TreeEntry:
    """
    One member of a layer described in memory.

    :ivar name: path inside the image, relative (no leading slash), without
        ``.`` or ``..`` components; directories without a trailing slash.
    :ivar kind: ``"dir"``, ``"symlink"`` or ``"file"``.
    :ivar mode: permission bits, including setuid, setgid and sticky bits
        (``0o1777`` for a ``tmp`` directory).
    :ivar target: the link target of a symlink, written verbatim.
    :ivar content: the bytes of a file.
    """

    name: str
    kind: Literal["dir", "symlink", "file"] = field(validator=_check_kind)
    mode: int
    target: str = ""
    content: bytes = b""


def write_store_layer(paths: Sequence[str], directory: str, *,
                      compress_level: int = DEFAULT_COMPRESS_LEVEL,
                      root: str | None = None) -> LayerBlob:
    """
    Write a gzip-compressed tarball of whole Nix store paths.

    Members are named relative to ``/`` (``nix/store/<hash>-name/...``),
    sorted by name in byte order, and include every directory: the ones
    above the store paths (``nix/``, ``nix/store/``, with mode
    :data:`STORE_PARENT_MODE`) and every directory inside them.  Owners are
    0, user and group names empty, every mtime :data:`MEMBER_MTIME`, and
    modes keep the permission bits found on disk.  Symlinks keep their
    target.  Fifos, sockets and devices are skipped.

    Regular files with the same permission bits, size and content (by
    sha256) are written once, under the first name in sorted order, and as
    hard links to it under the others.  Hard links on disk are not
    consulted: Nix makes them only where it built a path or optimised the
    store, so a substituted or restored copy of the same path has none,
    and deciding by inode would give that copy different layer bytes.
    Deciding by content keeps every link on disk (linked names share
    content and mode), dedupes identical files, and makes the layer a
    function of the paths' contents and modes alone.  Only files whose
    mode and size equal another file's in the layer are hashed.  Empty
    files are never linked: a link entry would be no smaller than the file.

    :param paths: absolute store paths, in any order, none inside another.
    :param directory: where the temporary output file is created.
    :param compress_level: the isal deflate level, 0 to 3.
    :param root: if given, each path is read from the same location under
        this directory instead of from the path itself; the member names do
        not change.
    :returns: the written blob; the caller owns (renames or deletes) its
        file.  If anything fails, no file is left in ``directory``.
    """
    members = _store_members(paths, root)
    return _write_layer(directory, compress_level,
                        lambda writer: _write_store_members(writer, members))


def write_tree_layer(entries: Sequence[TreeEntry], directory: str, *,
                     compress_level: int = DEFAULT_COMPRESS_LEVEL) -> LayerBlob:
    """
    Write a gzip-compressed tarball of a tree described in memory.

    The entries are written sorted by name in byte order, with the same
    fixed metadata as store layers (owner 0, mtime :data:`MEMBER_MTIME`)
    and exactly the given modes.  Parent directories are not invented: list
    them if the image should have them with a particular mode.

    :param entries: the members, in any order, with unique names.
    :param directory: where the temporary output file is created.
    :param compress_level: the isal deflate level, 0 to 3.
    :raises ValueError: for a name that is absolute, empty, contains ``.``
        or ``..`` components or appears twice, for content on anything but a
        file, and for a target missing from a symlink or given to anything
        else.
    """
    keyed = sorted(((_tree_member_name(entry), entry) for entry in entries),
                   key=lambda pair: pair[0])
    for (name, _), (next_name, _) in zip(keyed, keyed[1:]):
        if name == next_name:
            raise ValueError("duplicate tree entry %r" % (os.fsdecode(name),))

    def write(writer: TarGzipWriter) -> None:
        for name, entry in keyed:
            if entry.kind == "dir":
                writer.add_directory(name, entry.mode)
            elif entry.kind == "symlink":
                writer.add_symlink(name, entry.mode, os.fsencode(entry.target))
            else:
                writer.add_bytes(name, entry.mode, entry.content)

    return _write_layer(directory, compress_level, write)


def hash_file(path: str) -> tuple[str, int]:
    """
    Stream a file through sha256.

    :returns: the hex digest and the size in bytes.
    """
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    size = 0
    with open(path, "rb", buffering=0) as source:
        while True:
            got = source.readinto(buffer)
            if not got:
                break
            digest.update(view[:got])
            size += got
    return digest.hexdigest(), size


def _write_layer(directory: str, compress_level: int,
                 write_members: Callable[[TarGzipWriter], None]) -> LayerBlob:
    """
    Create a temporary file in ``directory``, let ``write_members`` fill a
    :class:`TarGzipWriter` on it, and return the blob; on any failure the
    file is removed and the error propagates.
    """
    fd, temporary = tempfile.mkstemp(dir=directory, suffix=".layer.tmp")
    try:
        with open(fd, "wb", buffering=CHUNK_SIZE) as output:
            writer = TarGzipWriter(output, compress_level)
            write_members(writer)
            digests = writer.finish()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return LayerBlob(digest=digests.digest, diff_id=digests.diff_id,
                     size=digests.size, path=temporary)


def _tree_member_name(entry: TreeEntry) -> bytes:
    """
    The member name of a tree entry, encoded, after checking the name and
    that only files have content and only symlinks (all of them) a target.
    """
    name = entry.name
    parts = name.split("/")
    if not name or name.startswith("/") or any(
            part in ("", ".", "..") for part in parts):
        raise ValueError("invalid tree entry name %r" % (name,))
    if entry.content and entry.kind != "file":
        raise ValueError("tree entry %r is a %s with content" % (name, entry.kind))
    if (entry.kind == "symlink") != bool(entry.target):
        raise ValueError("tree entry %r: only symlinks have, and need, a target"
                         % (name,))
    return os.fsencode(name)


@frozen
class _Member:
    """
    One member of a store layer, found on disk.

    :ivar name: member name, without a trailing slash.
    :ivar source: where to read it, or ``None`` for a directory above the
        store paths.
    :ivar status: the ``lstat`` of ``source``, or ``None``.
    """

    name: bytes
    source: bytes | None
    status: os.stat_result | None


def _store_members(paths: Sequence[str], root: str | None) -> list[_Member]:
    """
    Every member of a store layer, sorted by name.

    :raises ValueError: for a path that is not absolute and normalised, or
        that lies inside another given path.
    :raises OSError: for a path that cannot be read.
    """
    names = set()
    for path in paths:
        if (not os.path.isabs(path) or os.path.normpath(path) != path
                or path == "/" or path.startswith("//")):
            raise ValueError("not a normalised absolute store path: %r" % (path,))
        names.add(os.fsencode(path[1:]))
    parents = set()
    for name in names:
        parts = name.split(b"/")
        for depth in range(1, len(parts)):
            parent = b"/".join(parts[:depth])
            if parent in names:
                raise ValueError("store path %r lies inside %r" % (
                    os.fsdecode(name), os.fsdecode(parent)))
            parents.add(parent)
    base = os.fsencode(root) if root is not None else b"/"
    members = [_Member(parent, None, None) for parent in parents]
    for name in names:
        members.extend(_walk(name, os.path.join(base, name)))
    members.sort(key=lambda member: member.name)
    return members


def _walk(name: bytes, source: bytes) -> Iterator[_Member]:
    """
    The members of one store path: itself and, for a directory, everything
    below it, with their ``lstat``, in no particular order.
    """
    status = os.lstat(source)
    yield _Member(name, source, status)
    if not stat.S_ISDIR(status.st_mode):
        return
    pending = [(name, source)]
    while pending:
        directory_name, directory_source = pending.pop()
        with os.scandir(directory_source) as listing:
            children = [(entry.name, entry.path) for entry in listing]
        for child, child_source in children:
            child_name = directory_name + b"/" + child
            child_status = os.lstat(child_source)
            yield _Member(child_name, child_source, child_status)
            if stat.S_ISDIR(child_status.st_mode):
                pending.append((child_name, child_source))


def _write_store_members(writer: TarGzipWriter, members: list[_Member]) -> None:
    """
    Write sorted store members, turning every regular file whose mode, size
    and content equal an earlier one's into a hard link to it.
    """
    colliding = _colliding_shapes(members)
    hasher = _ContentHasher()
    first_names: dict[tuple[int, int, bytes], bytes] = {}
    for member in members:
        status, source = member.status, member.source
        if status is None or source is None:
            writer.add_directory(member.name, STORE_PARENT_MODE)
            continue
        mode = status.st_mode
        permissions = stat.S_IMODE(mode)
        if stat.S_ISDIR(mode):
            writer.add_directory(member.name, permissions)
        elif stat.S_ISLNK(mode):
            writer.add_symlink(member.name, permissions, os.readlink(source))
        elif stat.S_ISREG(mode):
            shape = (permissions, status.st_size)
            if shape in colliding:
                content = shape + (hasher.digest(member),)
                first = first_names.get(content)
                if first is not None:
                    writer.add_hard_link(member.name, permissions, first)
                    continue
                first_names[content] = member.name
            fd = os.open(source, _OPEN_FLAGS)
            try:
                writer.add_file(member.name, permissions, status.st_size, fd)
            finally:
                os.close(fd)


def _colliding_shapes(members: list[_Member]) -> set[tuple[int, int]]:
    """
    The (permission bits, size) pairs shared by two or more non-empty
    regular files among ``members``: only files of these shapes can have a
    twin, so only they need hashing.
    """
    counts: collections.Counter[tuple[int, int]] = collections.Counter()
    for member in members:
        status = member.status
        if (status is not None and stat.S_ISREG(status.st_mode)
                and status.st_size):
            counts[stat.S_IMODE(status.st_mode), status.st_size] += 1
    return {shape for shape, count in counts.items() if count > 1}


class _ContentHasher:
    """
    The sha256 of store files, read in :data:`CHUNK_SIZE` chunks through one
    reused buffer (``os.readv`` and hashlib release the GIL on chunks this
    large).  Only digests are kept, and only those of files with more than
    one name on disk, so that another name of the same inode is not read
    again.
    """

    def __init__(self) -> None:
        self._buffer = bytearray(CHUNK_SIZE)
        self._by_inode: dict[tuple[int, int], bytes] = {}

    def digest(self, member: _Member) -> bytes:
        """
        The sha256 of a regular file member's content.

        :raises SourceChanged: if the file ends before its ``lstat`` size.
        """
        status = member.status
        assert status is not None and member.source is not None
        inode = (status.st_dev, status.st_ino)
        known = self._by_inode.get(inode)
        if known is not None:
            return known
        digest = hashlib.sha256()
        view = memoryview(self._buffer)
        remaining = status.st_size
        fd = os.open(member.source, _OPEN_FLAGS)
        try:
            while remaining:
                got = os.readv(fd, [view[:min(remaining, CHUNK_SIZE)]])
                if not got:
                    raise SourceChanged(
                        "%r ended %d bytes before its size of %d"
                        % (member.name, remaining, status.st_size))
                digest.update(view[:got])
                remaining -= got
        finally:
            os.close(fd)
        value = digest.digest()
        if status.st_nlink > 1:
            self._by_inode[inode] = value
        return value

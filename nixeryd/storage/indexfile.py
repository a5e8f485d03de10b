"""
The filesystem storage's ``index.json``, updated in place of many.

Every build names its image in the index, and the index names every image:
parsing, sorting and serialising it whole for each update cost about
80 ms at 20,000 entries (a second at 200,000).  :class:`IndexFile` keeps
what it last wrote in memory, each entry already serialised, and reuses
it while the file is still the one it wrote (same inode, size and
modification time): an update then serialises one entry and joins the
rest.  Whoever else rewrote the file (another daemon sharing the storage,
``nixeryd gc``) is noticed by the same test, and the file is read again.

Updates are made under a lock held across processes (``flock`` on
``nixeryd/index.lock``), so that daemons and the garbage collector sharing
a storage never lose each other's changes.
"""

from __future__ import annotations

import bisect
import fcntl
import itertools
import json
import os
import threading
from contextlib import contextmanager
from typing import Callable, Collection, Iterator, Mapping

from attrs import define

from nixeryd.storage.ociindex import Descriptor, index_bytes, index_entries, reference_of

#: What comes before and after the entries in the file.
_HEAD = index_bytes([])[:-len(b"]}")]
_TAIL = b"]}"


def _fragment(entry: Descriptor) -> bytes:
    return json.dumps(entry, separators=(",", ":")).encode()


@define
class _Entries:
    """
    An index in memory: every entry serialised, named ones by reference.

    :ivar unnamed: ``(digest, JSON)`` of the entries without a reference,
        in the file's order (they come first).
    :ivar fragments: reference → the JSON of its entry.
    :ivar digests: reference → the digest its entry names.
    :ivar order: the references, sorted.
    :ivar identity: ``(inode, size, mtime_ns)`` of the file these entries
        were read from or written to.
    """

    unnamed: list[tuple[object, bytes]]
    fragments: dict[str, bytes]
    digests: dict[str, object]
    order: list[str]
    identity: tuple[int, int, int] | None = None

    @classmethod
    def parse(cls, data: bytes | None) -> _Entries:
        unnamed: list[tuple[object, bytes]] = []
        fragments: dict[str, bytes] = {}
        digests: dict[str, object] = {}
        for entry in index_entries(data):
            reference = reference_of(entry)
            if reference:
                fragments[reference] = _fragment(entry)
                digests[reference] = entry.get("digest")
            else:
                unnamed.append((entry.get("digest"), _fragment(entry)))
        return cls(unnamed, fragments, digests, sorted(fragments))

    def set(self, reference: str, entry: Descriptor) -> None:
        """Have ``reference`` name ``entry``."""
        if reference not in self.fragments:
            bisect.insort(self.order, reference)
        self.fragments[reference] = _fragment(entry)
        self.digests[reference] = entry.get("digest")

    def count(self) -> int:
        return len(self.unnamed) + len(self.fragments)

    def prune(self, digests: Collection[str]) -> None:
        """Take out the entries naming one of ``digests``."""
        self.unnamed = [e for e in self.unnamed if e[0] not in digests]
        for reference in [r for r, digest in self.digests.items() if digest in digests]:
            del self.fragments[reference]
            del self.digests[reference]
        self.order = sorted(self.fragments)

    def serialise(self) -> bytes:
        return _HEAD + b",".join(itertools.chain(
            (fragment for _, fragment in self.unnamed),
            map(self.fragments.__getitem__, self.order))) + _TAIL


def _identity(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


class IndexFile:
    """
    ``index.json`` at ``path``, read and updated under ``lock_path``.

    :param write: writes bytes to a path atomically (the storage's own
        write: a temporary file, flushed, renamed into place).

    Every method blocks: call them in a thread.
    """

    def __init__(self, path: str, lock_path: str,
                 write: Callable[[str, bytes], None]) -> None:
        self._path = path
        self._lock_path = lock_path
        self._write = write
        self._thread_lock = threading.Lock()
        self._entries: _Entries | None = None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fd = os.open(self._lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _current(self) -> _Entries:
        """The index as the file holds it now (lock held)."""
        identity = _identity(self._path)
        if self._entries is not None and identity == self._entries.identity:
            return self._entries
        self._entries = None
        try:
            with open(self._path, "rb") as f:
                data: bytes | None = f.read()
        except FileNotFoundError:
            data = None
        entries = _Entries.parse(data)
        entries.identity = identity
        return entries

    def _store(self, entries: _Entries) -> None:
        """Write ``entries`` and remember them (lock held)."""
        self._entries = None
        self._write(self._path, entries.serialise())
        entries.identity = _identity(self._path)
        self._entries = entries

    def entries(self) -> list[Descriptor]:
        """Every entry, in the file's order."""
        try:
            with open(self._path, "rb") as f:
                return index_entries(f.read())
        except FileNotFoundError:
            return []

    def update(self, updates: Mapping[str, Descriptor]) -> None:
        """(Re)point each reference of ``updates`` at its descriptor."""
        with self._locked():
            entries = self._current()
            for reference, entry in updates.items():
                entries.set(reference, entry)
            self._store(entries)

    def prune(self, digests: Collection[str]) -> int:
        """Remove the entries naming one of ``digests``; how many there were."""
        with self._locked():
            entries = self._current()
            before = entries.count()
            entries.prune(digests)
            removed = before - entries.count()
            if removed:
                self._store(entries)
            return removed

"""
Temporary directories of the processes writing to a filesystem storage,
and the removal of what dead ones left.

Several daemons may share one storage directory, and any of them may die
mid-write (``SIGKILL``, a crash, a power cut), leaving a layer file of any
size and the garbage-collector roots of a build.  So each open storage
writes its temporary files (blobs and documents on their way into place,
layer files, Nix's out-links) into a directory of its own::

    <tmp>/writer-<pid>-<random>/       the writer's temporary files
    <tmp>/writer-<pid>-<random>.lock   flock()ed by the writer while open

The writer holds an exclusive ``flock`` on the lock file as long as its
storage is open; the kernel releases it when the process ends, however it
ends.  A storage that opens (:func:`sweep`) removes every writer directory
whose lock it can take, or that has no lock file: their writers are gone.
A writer directory whose lock is held belongs to a live process, here or
on another daemon sharing the storage, and is kept whatever its age.

The lock file is made under a staging name (``.new-<random>``), locked,
and only then renamed to its final name, so that no other process can
ever find a writer's lock file unlocked while the writer lives; staging
files older than :data:`STALE_STAGING_SECONDS` are leftovers of a process
that died in those few microseconds.  Any other entry was written by an
earlier nixeryd straight into ``<tmp>``; such a writer cannot be told
dead from alive, so its entries are removed only when older than
:data:`STALE_LEGACY_SECONDS`.

The same layout serves the GCS backend's local spool, which by default
is one directory under ``$TMPDIR`` shared by every user's daemons
(:func:`shared_directory`: sticky and writable by all, like ``/tmp``);
there a sweep judges only the entries of its own user.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
import time

from attrs import frozen
from twisted.logger import Logger

#: How the directory of a writer is named: ``writer-<pid>-<random>``.
WRITER_PREFIX = "writer-"
#: The suffix of a writer's lock file, next to its directory.
LOCK_SUFFIX = ".lock"
#: The prefix of a lock file not yet locked and named.
STAGING_PREFIX = ".new-"
#: Age after which a staging lock file is a leftover, in seconds.
STALE_STAGING_SECONDS = 60.0
#: Age after which an entry of an earlier layout is a leftover, in seconds.
STALE_LEGACY_SECONDS = 6 * 3600.0


@frozen
class WriterDirectory:
    """
    A writer's claimed directory.

    :ivar path: the directory for the writer's temporary files.
    :ivar lock_path: its lock file.
    :ivar fd: the lock file, open for reading and locked (closed on exec:
        a child process never holds the lock on the writer's behalf).
    """

    path: str
    lock_path: str
    fd: int


@frozen
class Swept:
    """
    What :func:`sweep` removed and kept.

    :ivar removed: names of the entries removed.
    :ivar size: bytes of the files removed.
    :ivar live: writer directories kept because their writer lives (another
        storage, in this process or another).
    """

    removed: tuple[str, ...]
    size: int
    live: int


def log_swept(log: Logger, swept: Swept, directory: str, kind: str) -> None:
    """
    Log what a sweep of ``directory`` removed, if anything; ``kind`` names
    its entries (``spool``, ``temporary``).
    """
    if swept.removed:
        log.info("Removed {count} %s entries ({bytes} bytes) left in {directory} by"
                 " processes that are gone; {live} other writers alive" % (kind,),
                 count=len(swept.removed), bytes=swept.size, directory=directory,
                 live=swept.live, entries=list(swept.removed))


def shared_directory(path: str) -> None:
    """
    Make ``path`` a directory every user may keep writer directories in:
    sticky and writable by all (mode 1777, as ``/tmp``), when this user
    creates or owns it.

    :raises OSError: when it is not a directory of its own (a symbolic
        link), or others may write to it without the sticky bit (they
        could then rename a writer's directory away).
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError("%s is not a directory" % (path,))
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) != 0o1777:
        os.chmod(path, 0o1777)
    elif info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise PermissionError("%s may be written by other users but is not sticky"
                              % (path,))


def claim(parent: str) -> WriterDirectory:
    """
    Make a writer directory under ``parent``, locked for this process until
    :func:`release` or its end.
    """
    made, staging = tempfile.mkstemp(prefix=STAGING_PREFIX, dir=parent)
    os.close(made)
    try:
        # Open for reading only: a file open for writing would keep the
        # filesystem from being remounted read-only.
        fd = os.open(staging, os.O_RDONLY)
    except BaseException:
        _remove(staging)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        name = "%s%d-%s" % (WRITER_PREFIX, os.getpid(),
                            os.path.basename(staging)[len(STAGING_PREFIX):])
        path = os.path.join(parent, name)
        lock_path = path + LOCK_SUFFIX
        os.rename(staging, lock_path)
    except BaseException:
        os.close(fd)
        _remove(staging)
        raise
    try:
        os.mkdir(path, 0o700)
    except BaseException:
        release(WriterDirectory(path, lock_path, fd))
        raise
    return WriterDirectory(path, lock_path, fd)


def claim_swept(parent: str, shared: bool) -> tuple[WriterDirectory, Swept]:
    """
    A writer directory under ``parent`` (created if missing: private, or
    a :func:`shared_directory` when ``shared``), and what :func:`sweep`
    removed there (in a shared directory, only this user's entries).
    """
    if shared:
        shared_directory(parent)
    else:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    writer = claim(parent)
    try:
        swept = sweep(parent, writer, owner=os.getuid() if shared else None)
    except BaseException:
        release(writer)
        raise
    return writer, swept


def release(writer: WriterDirectory) -> None:
    """
    Give up a writer directory: its lock file and, when empty, the
    directory.  A directory that still holds files is left without its lock
    file, for the next :func:`sweep` to remove.  A few system calls.
    """
    try:
        os.unlink(writer.lock_path)
    except OSError:
        pass
    try:
        os.rmdir(writer.path)
    except OSError:
        pass
    os.close(writer.fd)


def sweep(parent: str, mine: WriterDirectory | None = None,
          now: float | None = None, owner: int | None = None) -> Swept:
    """
    Remove from ``parent`` what dead writers left (see the module
    docstring), leaving ``mine`` alone.  Entries that cannot be removed are
    skipped.

    :param owner: judge only the entries of this user id (a directory
        shared by several users); ``None`` judges every entry.
    """
    now = time.time() if now is None else now
    names = set(os.listdir(parent))
    removed = []
    size = 0
    live = 0
    for name in sorted(names):
        path = os.path.join(parent, name)
        if mine is not None and path in (mine.path, mine.lock_path):
            continue
        if owner is not None:
            try:
                if os.lstat(path).st_uid != owner:
                    continue
            except OSError:
                continue
        if name.startswith(WRITER_PREFIX) and name.endswith(LOCK_SUFFIX):
            try:
                # Never a symbolic link, and never waiting on a FIFO.
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue  # Released, or swept by another process, meanwhile.
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    live += 1
                    continue
                # Its writer is gone.
                directory = path[:-len(LOCK_SUFFIX)]
                size += _size(directory)
                _remove(directory)
                _remove(path)
                removed.append(os.path.basename(directory))
            finally:
                os.close(fd)
        elif name.startswith(WRITER_PREFIX):
            if name + LOCK_SUFFIX in names and os.path.exists(path + LOCK_SUFFIX):
                continue  # Judged with its lock file.
            # No lock file: released with files left in it, or half swept.
            size += _size(path)
            if _remove(path):
                removed.append(name)
        else:
            limit = (STALE_STAGING_SECONDS if name.startswith(STAGING_PREFIX)
                     else STALE_LEGACY_SECONDS)
            try:
                old = os.lstat(path).st_mtime < now - limit
            except OSError:
                continue
            if old:
                entry_size = _size(path)
                if _remove(path):
                    removed.append(name)
                    size += entry_size
    return Swept(tuple(removed), size, live)


def _size(path: str) -> int:
    """Bytes of the regular files at or under ``path``."""
    try:
        info = os.lstat(path)
    except OSError:
        return 0
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size if stat.S_ISREG(info.st_mode) else 0
    total = 0
    for top, _, files in os.walk(path):
        for name in files:
            try:
                entry = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if stat.S_ISREG(entry.st_mode):
                total += entry.st_size
    return total


def _remove(path: str) -> bool:
    """Remove a file or a whole directory; whether it is gone."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True

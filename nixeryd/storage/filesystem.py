"""
Storage on the local filesystem, laid out as an OCI image layout.

::

    <root>/oci-layout               {"imageLayoutVersion": "1.0.0"}
    <root>/index.json               manifests named by reference
    <root>/blobs/sha256/<hex>       layers, configs and manifests
    <root>/nixeryd/<namespace>/<key>.json   cache documents
    <root>/nixeryd/tmp/writer-<pid>-<random>/   files being written by
                                    one open storage (its temp directory)

Because it is an OCI layout, skopeo and umoci read the storage directly.
Every write goes to a temporary file in the storage's own directory under
``nixeryd/tmp`` (same filesystem), is flushed with fsync and renamed into
place, so a crash never leaves a partial blob under its final name.  What
a dead process left in its directory (a layer file, Nix's GC roots) is
removed when a storage opens, at once, while the directories of live
processes sharing the storage are kept (:mod:`nixeryd.storage.tempdirs`).

A blob is checked against its digest (SHA-256 of the file, in the thread
pool) before it is reused or served, once per process and version of
its file (inode, size, modification time): a file replaced or rewritten
in place is hashed again, a file this process wrote or touched is not
(:meth:`FilesystemStorage.check_blob`; :mod:`nixeryd.storage.integrity`).
A write that fails (a full disk, a read-only or unwritable directory)
removes its temporary file and raises the ``OSError``.  No extended
attributes are needed: media types are known from the documents that
reference a blob.

A blob's or document's version is its inode and modification time: every
write is a new file renamed into place, and a blob reused is touched
(:meth:`FilesystemStorage.refresh_blob`).  A removal renames the entry into
the storage's temporary directory first, then looks at what it took: if
it is not the version listed (written again meanwhile), it is linked back
unless a newer one already took its place.  The index is updated by
:class:`~nixeryd.storage.indexfile.IndexFile`, updates asked for during a
write gathered into the next (:class:`~nixeryd.storage.indexqueue.IndexQueue`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import time
from typing import Any, Collection

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from nixeryd.core.digests import check_digest, is_valid_digest
from nixeryd.core.documents import LocalBlob, RedirectBlob
from nixeryd.core.errors import BlobUnknown
from nixeryd.core.sharedwork import SharedWork
from nixeryd.core.threads import Runner
from nixeryd.service.lru import LRU
from nixeryd.storage.indexfile import IndexFile
from nixeryd.storage.integrity import MISSING, BlobCheck, BlobCorrupt, BlobState
from nixeryd.storage.indexqueue import IndexQueue
from nixeryd.storage.interface import IStorage
from nixeryd.storage.listing import StoredBlob, StoredDocument
from nixeryd.storage.naming import (check_document_name, check_namespace,
                                    is_document_key)
from nixeryd.storage.ociindex import Descriptor, index_bytes
from nixeryd.storage.tempdirs import WriterDirectory, claim, log_swept, release, sweep

#: Mode of every file made visible: temporary files are created private,
#: but the layout is meant to be read by other tools and users.
BLOB_MODE = 0o644
#: How many blobs' checked file versions a storage remembers.
CHECKED_BLOBS = 100_000
#: Bytes read at a time when a blob is hashed.
HASH_READ_SIZE = 1024 * 1024

#: A version of a blob's file: inode, size and modification time.
FileIdentity = tuple[int, int, int]


def _identity(info: os.stat_result) -> FileIdentity:
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _stat_identity(path: str) -> FileIdentity | None:
    """The version of the file at ``path``, or ``None`` when it is gone."""
    try:
        return _identity(os.stat(path))
    except FileNotFoundError:
        return None


def _hash_file(path: str) -> tuple[str, FileIdentity] | None:
    """
    ``sha256:<hex>`` of the file and the version that was hashed (blocking),
    or ``None`` when it is gone.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            before = _identity(os.fstat(f.fileno()))
            while piece := f.read(HASH_READ_SIZE):
                digest.update(piece)
    except FileNotFoundError:
        return None
    return "sha256:" + digest.hexdigest(), before


def _unlink_quietly(path: str) -> None:
    """Remove ``path`` if it is still there."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _version(info: os.stat_result) -> str:
    """The version of a file: a new inode, or a new modification time, is a new version."""
    return "%d:%d" % (info.st_ino, info.st_mtime_ns)


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@implementer(IStorage)
class FilesystemStorage:
    """
    Blobs and documents under one directory.

    :param root: the storage directory; created if missing.
    :param runner: runs blocking functions (a thread pool service, or an
        inline runner for one-shot use).

    Making one blocks (it claims its temporary directory and sweeps what
    dead processes left): do it in a thread, or before the reactor runs.
    """

    log = Logger()

    def __init__(self, root: str, runner: Runner) -> None:
        self.root = os.path.abspath(root)
        self._runner = runner
        self._blobs = os.path.join(self.root, "blobs", "sha256")
        self._state = os.path.join(self.root, "nixeryd")
        self._tmp = os.path.join(self._state, "tmp")
        self._index = IndexFile(os.path.join(self.root, "index.json"),
                                os.path.join(self._state, "index.lock"),
                                self._write_atomically)
        self._index_queue = IndexQueue(
            lambda batch: self._runner.run(self._index.update, batch))
        #: Digest → the version of its file found to hash to it (changed
        #: on the reactor thread only).
        self._checked: LRU[str, FileIdentity] = LRU(CHECKED_BLOBS)
        self._hashing: SharedWork[tuple[str, FileIdentity], BlobCheck] = SharedWork()
        for directory in (self._blobs, self._tmp):
            os.makedirs(directory, mode=0o755, exist_ok=True)
        self._writer: WriterDirectory | None = claim(self._tmp)
        #: This storage's own temporary directory (gone once closed).
        self._own_tmp: str = self._writer.path
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise

    def _prepare(self) -> None:
        """Remove what dead processes left behind, and create the layout."""
        log_swept(self.log, sweep(self._tmp, self._writer), self._tmp, "temporary")
        layout = os.path.join(self.root, "oci-layout")
        if not os.path.exists(layout):
            self._write_atomically(layout, b'{"imageLayoutVersion":"1.0.0"}')
        index = os.path.join(self.root, "index.json")
        if not os.path.exists(index):
            self._write_atomically(index, index_bytes([]))

    # -- helpers running on the pool ------------------------------------

    def _blob_path(self, digest: str) -> str:
        return os.path.join(self._blobs, check_digest(digest))

    def _document_path(self, namespace: str, key: str) -> str:
        check_document_name(namespace, key)
        return os.path.join(self._state, namespace, key + ".json")

    def _write_atomically(self, final: str, data: bytes) -> None:
        fd, temporary = tempfile.mkstemp(dir=self._own_tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            _unlink_quietly(temporary)
            raise
        self._publish(temporary, final)

    def _move_into_place(self, path: str, digest: str) -> FileIdentity | None:
        """Publish the blob file; the version now in place."""
        try:
            final = self._blob_path(digest)
        except BaseException:
            _unlink_quietly(path)
            raise
        self._publish(path, final)
        return _stat_identity(final)

    def _publish(self, path: str, final: str) -> None:
        """
        Make the complete file at ``path`` visible as ``final``: readable by
        all, flushed to disk, renamed, and the rename flushed too.  The file
        is gone from ``path`` afterwards, whatever happens.
        """
        try:
            with open(path, "rb") as f:
                os.fchmod(f.fileno(), BLOB_MODE)
                os.fsync(f.fileno())
            os.replace(path, final)
        except BaseException:
            _unlink_quietly(path)
            raise
        _fsync_directory(os.path.dirname(final))

    def _stat_blob(self, digest: str) -> tuple[LocalBlob, FileIdentity]:
        path = self._blob_path(digest)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise BlobUnknown("blob unknown to registry", {"digest": digest}) from None
        return LocalBlob(path=path, size=info.st_size, digest=digest), _identity(info)

    def _read_small(self, digest: str, limit: int) -> bytes | None:
        path = self._blob_path(digest)
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size > limit:
                    return None
                return f.read(limit + 1)
        except FileNotFoundError:
            return None

    def _read_document(self, namespace: str, key: str) -> Any:
        try:
            with open(self._document_path(namespace, key), "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    def _write_document(self, namespace: str, key: str, document: object) -> None:
        path = self._document_path(namespace, key)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        self._write_atomically(path, json.dumps(document, sort_keys=True).encode())

    def _list_blobs(self) -> list[StoredBlob]:
        blobs = []
        with os.scandir(self._blobs) as entries:
            for entry in entries:
                digest = "sha256:" + entry.name
                if not is_valid_digest(digest):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                blobs.append(StoredBlob(digest, info.st_size, info.st_mtime, _version(info)))
        return blobs

    def _list_documents(self, namespace: str) -> list[StoredDocument]:
        check_namespace(namespace)
        documents = []
        try:
            with os.scandir(os.path.join(self._state, namespace)) as entries:
                for entry in entries:
                    key, json_suffix = entry.name[:-5], entry.name[-5:]
                    if json_suffix != ".json" or not is_document_key(key):
                        continue
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    documents.append(StoredDocument(namespace, key, info.st_size,
                                                    info.st_mtime, _version(info)))
        except FileNotFoundError:
            pass
        return documents

    def _remove(self, final: str, version: str) -> bool:
        """
        Remove ``final`` if it is still ``version``: taken aside by a rename
        (atomic), then dropped, or put back when it was written again.
        """
        aside = os.path.join(self._own_tmp, "removing-" + secrets.token_hex(8))
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            return False
        try:
            if _version(os.stat(aside)) == version:
                return True
            try:
                os.link(aside, final)
            except FileExistsError:
                pass  # An even newer one is in place already.
            return False
        finally:
            _unlink_quietly(aside)

    # -- IStorage ---------------------------------------------------------

    def temp_directory(self) -> str:
        """This storage's own directory under ``nixeryd/tmp``."""
        return self._own_tmp

    def _exists(self, digest: str) -> bool:
        return os.path.exists(self._blob_path(digest))

    def _touch(self, digest: str) -> tuple[bool | None, FileIdentity | None,
                                           FileIdentity | None]:
        """
        Set the blob's modification time to now (a new version); whether
        it is there, or ``None`` when it is there but may not be touched
        (another user's file); with the file's version before and after.
        """
        path = self._blob_path(digest)
        try:
            info = os.stat(path)
            before = _identity(info)
            # Later than the time it had, even within the clock's tick.
            now = max(time.time_ns(), info.st_mtime_ns + 1)
            try:
                os.utime(path, ns=(now, now))
            except PermissionError:
                os.utime(path)  # Needs only write access, not ownership.
        except FileNotFoundError:
            return False, None, None
        except PermissionError:
            return (None if os.path.exists(path) else False), None, None
        return True, before, _stat_identity(path)

    def _write_blob(self, data: bytes, digest: str) -> FileIdentity | None:
        path = self._blob_path(digest)
        self._write_atomically(path, data)
        return _stat_identity(path)

    # -- integrity ----------------------------------------------------------

    def _remember_written(self, identity: FileIdentity | None, digest: str) -> None:
        """This process wrote the blob's file: its version needs no hashing."""
        if identity is None:
            self._checked.pop(digest, None)
        else:
            self._checked.put(digest, identity)

    async def _check_version(self, digest: str, identity: FileIdentity) -> BlobCheck:
        """Whether this version of the blob's file hashes to ``digest``."""
        if self._checked.get_recent(digest) == identity:
            return BlobCheck(BlobState.INTACT)
        return await self._hashing.wait((digest, identity), lambda: Deferred.fromCoroutine(
            self._hash_blob(digest)))

    async def _hash_blob(self, digest: str) -> BlobCheck:
        hashed = await self._runner.run(_hash_file, self._blob_path(digest))
        if hashed is None:
            self._checked.pop(digest, None)
            return MISSING
        actual, identity = hashed
        if actual != digest:
            self._checked.pop(digest, None)
            self.log.warn("Blob {digest} is damaged: its file hashes to {actual}",
                          digest=digest, actual=actual)
            return BlobCheck(BlobState.CORRUPT)
        self._checked.put(digest, identity)
        return BlobCheck(BlobState.INTACT)

    async def _check_blob(self, digest: str) -> BlobCheck:
        identity = await self._runner.run(_stat_identity, self._blob_path(digest))
        if identity is None:
            self._checked.pop(digest, None)
            return MISSING
        return await self._check_version(digest, identity)

    async def _blob(self, digest: str) -> LocalBlob:
        found, identity = await self._runner.run(self._stat_blob, digest)
        check = await self._check_version(digest, identity)
        if check.state is BlobState.MISSING:
            raise BlobUnknown("blob unknown to registry", {"digest": digest})
        if not check.intact:
            raise BlobCorrupt("blob damaged in storage", {"digest": digest})
        return found

    def has_blob(self, digest: str) -> Deferred[bool]:
        return self._runner.run(self._exists, digest)

    def refresh_blob(self, digest: str) -> Deferred[bool]:
        """
        A new modification time for the blob, set in the pool; a version
        checked before stays checked.
        """
        def refreshed(outcome: tuple[bool | None, FileIdentity | None,
                                     FileIdentity | None]) -> bool:
            touched, before, after = outcome
            if touched is None:
                self.log.warn("Could not refresh the time of blob {digest}, reused:"
                              " its file is not writable by this user", digest=digest)
                return True
            if before is not None and self._checked.get(digest) == before:
                self._remember_written(after, digest)
            return touched
        return self._runner.run(self._touch, digest).addCallback(refreshed)

    def check_blob(self, digest: str, checksum: str | None = None) -> Deferred[BlobCheck]:
        """
        The file hashed against its digest, once per version and process
        (``checksum`` is not needed: the digest is one).
        """
        try:
            check_digest(digest)
        except Exception:
            return fail()
        return Deferred.fromCoroutine(self._check_blob(digest))

    def store_blob_file(self, path: str, digest: str) -> Deferred[None]:
        return self._runner.run(self._move_into_place, path, digest).addCallback(
            self._remember_written, digest)

    def store_blob_bytes(self, data: bytes, digest: str) -> Deferred[None]:
        return self._runner.run(self._write_blob, data, digest).addCallback(
            self._remember_written, digest)

    def blob(self, digest: str) -> Deferred[LocalBlob | RedirectBlob]:
        try:
            check_digest(digest)
        except Exception:
            return fail()
        return Deferred.fromCoroutine(self._blob(digest))

    def read_small_blob(self, digest: str, limit: int) -> Deferred[bytes | None]:
        return self._runner.run(self._read_small, digest, limit)

    def get_document(self, namespace: str, key: str) -> Deferred[Any]:
        return self._runner.run(self._read_document, namespace, key)

    def put_document(self, namespace: str, key: str, document: object) -> Deferred[None]:
        return self._runner.run(self._write_document, namespace, key, document)

    def record_reference(self, reference: str, manifest_digest: str,
                         media_type: str, size: int) -> Deferred[None]:
        return self._index_queue.record_reference(reference, manifest_digest,
                                                  media_type, size)

    def list_references(self) -> Deferred[list[Descriptor]]:
        return self._runner.run(self._index.entries)

    def prune_references(self, manifest_digests: Collection[str]) -> Deferred[int]:
        return self._runner.run(self._index.prune, frozenset(manifest_digests))

    def list_blobs(self) -> Deferred[list[StoredBlob]]:
        return self._runner.run(self._list_blobs)

    def remove_blob(self, digest: str, version: str) -> Deferred[bool]:
        try:
            path = self._blob_path(digest)
        except Exception:
            return fail()
        return self._runner.run(self._remove, path, version)

    def list_documents(self, namespace: str) -> Deferred[list[StoredDocument]]:
        return self._runner.run(self._list_documents, namespace)

    def remove_document(self, namespace: str, key: str, version: str) -> Deferred[bool]:
        try:
            path = self._document_path(namespace, key)
        except Exception:
            return fail()
        return self._runner.run(self._remove, path, version)

    def close(self) -> Deferred[None]:
        """
        Give up the temporary directory (its lock, and the directory when
        empty, as it is once no call is in flight): a few system calls,
        made here because the thread pools have stopped by then.
        """
        if self._writer is not None:
            writer, self._writer = self._writer, None
            release(writer)
        return succeed(None)

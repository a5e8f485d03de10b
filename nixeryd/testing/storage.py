"""
In-memory storage for tests: :class:`MemoryStorage` provides
:class:`~nixeryd.storage.interface.IStorage` with the filesystem backend's
naming rules, records what is stored and can fail any call.  Also the
digests every backend must refuse (:data:`INVALID_DIGESTS`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections import Counter
from typing import Any, Callable, Collection, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from nixeryd.core.digests import check_digest
from nixeryd.core.documents import LocalBlob, RedirectBlob
from nixeryd.core.errors import BlobUnknown
from nixeryd.storage.integrity import MISSING, BlobCheck, BlobCorrupt, BlobState
from nixeryd.storage.interface import IStorage
from nixeryd.storage.listing import StoredBlob, StoredDocument
from nixeryd.storage.naming import check_document_name, check_index_entry, check_namespace
from nixeryd.storage.ociindex import Descriptor, descriptor

T = TypeVar("T")

#: Digests every backend refuses: path escapes, wrong case or length, other
#: algorithms, a trailing newline, nothing at all.
INVALID_DIGESTS = (
    "sha256:../../etc/passwd",
    "sha256:../../etc",
    "sha256:" + "A" * 64,
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "a" * 64 + "\n",
    "sha256:../" + "a" * 61,
    "md5:" + "a" * 32,
    "sha512:" + "a" * 64,
    "sha512:" + "a" * 128,
    "a" * 64,
    "",
)


def digest_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


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
    :param now: the time blobs and documents are written at (a
        :class:`~twisted.internet.task.Clock`'s ``seconds``).
    :ivar blobs: the stored blobs, by digest.
    :ivar documents: the stored documents, as JSON bytes, by
        ``(namespace, key)``.
    :ivar references: the recorded references, as OCI index descriptors,
        by reference.
    :ivar written: when each blob (by digest) and document (by
        ``(namespace, key)``) was last written, and its version:
        ``(time, version)``; tests may age entries here.
    :ivar calls: how many times each method was called, by name.
    :ivar stored: every digest passed to a successful ``store_blob_file``
        or ``store_blob_bytes``, in order.
    :ivar failures: method name → exception; a method named here fails
        with it (after validating its arguments, and after removing the
        file given to ``store_blob_file``).
    :ivar before: method name → a function called (with no argument) as
        the method starts its work, to play another writer acting at that
        moment.
    """

    def __init__(self, temp_directory: str,
                 redirect_base: str = "https://blobs.invalid/",
                 now: Callable[[], float] = time.time) -> None:
        self._temp_directory = temp_directory
        self._redirect_base = redirect_base
        self._now = now
        self._versions = itertools.count(1)
        self.blobs: dict[str, bytes] = {}
        self.documents: dict[tuple[str, str], bytes] = {}
        self.references: dict[str, dict[str, Any]] = {}
        self.written: dict[object, tuple[float, str]] = {}
        self.calls: Counter[str] = Counter()
        self.stored: list[str] = []
        self.failures: dict[str, BaseException] = {}
        self.before: dict[str, Callable[[], None]] = {}

    def _call(self, method: str, work: Callable[[], T]) -> Deferred[T]:
        """Count the call and turn the outcome of ``work`` into a Deferred."""
        self.calls[method] += 1
        try:
            hook = self.before.get(method)
            if hook is not None:
                hook()
            return succeed(work())
        except BaseException:
            return fail()

    def _stamp(self, what: object) -> None:
        """Record that ``what`` (a digest, or a document's name) is written now."""
        self.written[what] = (self._now(), str(next(self._versions)))

    def delete_blob(self, digest: str) -> None:
        """Forget a blob, as if it had been removed from the backend."""
        del self.blobs[digest]
        self.written.pop(digest, None)

    def age(self, what: object, seconds: float) -> None:
        """Make a blob (by digest) or a document (by name) ``seconds`` older."""
        written, version = self.written[what]
        self.written[what] = (written - seconds, version)

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

    def refresh_blob(self, digest: str) -> Deferred[bool]:
        """Give a stored blob a new time and version; whether it is stored."""
        def work() -> bool:
            check_digest(digest)
            self._check_failure("refresh_blob")
            if digest not in self.blobs:
                return False
            self._stamp(digest)
            return True
        return self._call("refresh_blob", work)

    def check_blob(self, digest: str, checksum: str | None = None) -> Deferred[BlobCheck]:
        """Whether the blob's bytes hash to its digest (``checksum`` unused)."""
        def work() -> BlobCheck:
            check_digest(digest)
            self._check_failure("check_blob")
            data = self.blobs.get(digest)
            if data is None:
                return MISSING
            if digest_of(data) != digest:
                return BlobCheck(BlobState.CORRUPT)
            return BlobCheck(BlobState.INTACT)
        return self._call("check_blob", work)

    def damage_blob(self, digest: str, data: bytes) -> None:
        """Put other bytes under a stored blob's digest, as a damaged backend would."""
        self.blobs[digest] = data

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

    def blob(self, digest: str) -> Deferred[LocalBlob | RedirectBlob]:
        """A redirect to the blob, or :class:`BlobUnknown`."""
        def work() -> LocalBlob | RedirectBlob:
            check_digest(digest)
            self._check_failure("blob")
            if digest not in self.blobs:
                raise BlobUnknown("blob unknown to registry", {"digest": digest})
            if digest_of(self.blobs[digest]) != digest:
                raise BlobCorrupt("blob damaged in storage", {"digest": digest})
            return RedirectBlob(url=self._redirect_base + digest, digest=digest,
                                size=len(self.blobs[digest]))
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
            self._stamp((namespace, key))
        return self._call("put_document", work)

    def record_reference(self, reference: str, manifest_digest: str,
                         media_type: str, size: int) -> Deferred[None]:
        """Name a manifest, replacing an earlier one of the same name."""
        def work() -> None:
            check_index_entry(reference, manifest_digest)
            self._check_failure("record_reference")
            self.references[reference] = descriptor(
                reference, manifest_digest, media_type, size)
        return self._call("record_reference", work)

    def list_references(self) -> Deferred[list[Descriptor]]:
        """The recorded descriptors, sorted by reference."""
        def work() -> list[Descriptor]:
            self._check_failure("list_references")
            return [json.loads(json.dumps(self.references[reference]))
                    for reference in sorted(self.references)]
        return self._call("list_references", work)

    def prune_references(self, manifest_digests: Collection[str]) -> Deferred[int]:
        """Forget the references naming one of the manifests."""
        def work() -> int:
            self._check_failure("prune_references")
            pruned = [reference for reference, entry in self.references.items()
                      if entry["digest"] in manifest_digests]
            for reference in pruned:
                del self.references[reference]
            return len(pruned)
        return self._call("prune_references", work)

    def list_blobs(self) -> Deferred[list[StoredBlob]]:
        """Every blob with its time and version."""
        def work() -> list[StoredBlob]:
            self._check_failure("list_blobs")
            return [StoredBlob(digest, len(data), *self.written[digest])
                    for digest, data in self.blobs.items()]
        return self._call("list_blobs", work)

    def remove_blob(self, digest: str, version: str) -> Deferred[bool]:
        """Forget the blob if it is still ``version``."""
        def work() -> bool:
            check_digest(digest)
            self._check_failure("remove_blob")
            if digest not in self.blobs or self.written[digest][1] != version:
                return False
            self.delete_blob(digest)
            return True
        return self._call("remove_blob", work)

    def list_documents(self, namespace: str) -> Deferred[list[StoredDocument]]:
        """Every document of ``namespace`` with its time and version."""
        def work() -> list[StoredDocument]:
            check_namespace(namespace)
            self._check_failure("list_documents")
            return [StoredDocument(namespace, key, len(data), *self.written[(space, key)])
                    for (space, key), data in self.documents.items() if space == namespace]
        return self._call("list_documents", work)

    def remove_document(self, namespace: str, key: str, version: str) -> Deferred[bool]:
        """Forget the document if it is still ``version``."""
        def work() -> bool:
            check_document_name(namespace, key)
            self._check_failure("remove_document")
            name = (namespace, key)
            if name not in self.documents or self.written[name][1] != version:
                return False
            del self.documents[name]
            del self.written[name]
            return True
        return self._call("remove_document", work)

    def close(self) -> Deferred[None]:
        """Nothing to release; counted like every other call."""
        return self._call("close", lambda: None)

    # -- helpers ------------------------------------------------------------

    def _check_failure(self, method: str) -> None:
        failure = self.failures.get(method)
        if failure is not None:
            raise failure

    def _put_blob(self, data: bytes, digest: str) -> None:
        actual = digest_of(data)
        if actual != digest:
            raise ValueError("blob stored as %s hashes to %s" % (digest, actual))
        self.blobs[digest] = data
        self._stamp(digest)
        self.stored.append(digest)


def write_temporary(storage: IStorage, data: bytes) -> str:
    """
    A new file holding ``data`` in ``storage``'s temporary directory, as
    the builder writes a layer before handing it to ``store_blob_file``.
    """
    directory = storage.temp_directory()
    path = os.path.join(directory, "upload-%d" % (len(os.listdir(directory)),))
    with open(path, "wb") as f:
        f.write(data)
    return path

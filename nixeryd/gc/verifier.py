"""
One pass over a storage that checks every blob against its digest
(``nixeryd verify``): :class:`Verifier` and its :class:`VerifyReport`.

Each blob is checked as cheaply as it can be and still be sure:

* a small blob (manifests, configs: up to :data:`READ_LIMIT`) is read and
  hashed, whatever the backend;
* a larger one is checked by the backend
  (:meth:`~nixeryd.storage.interface.IStorage.check_blob`): hashed on the
  filesystem; in a bucket, its ``md5Hash`` (Cloud Storage) or ETag (S3)
  compared with the checksum the layer and manifest cache documents
  record.  A blob in a bucket for which no document records one (written
  before checksums were kept, or not a layer of this registry) is
  reported as not checked.

With ``repair``, a damaged blob is removed, guarded by the version
listed (one written again meanwhile, repaired already, stays): the next
pull of an image naming it finds it missing and builds it again, as the
daemons do with blobs the garbage collector removed.  Removing rather than
rebuilding here keeps the command free of Nix and of the image's package
set, and a daemon that still holds the image in memory notices the
removal on its next blob request.
"""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Any, Literal

from attrs import Factory, define

from nixeryd.build.builder import LAYER_NAMESPACE
from nixeryd.core.text import human_size
from nixeryd.core.threads import Runner
from nixeryd.service.manifestcache import MANIFEST_NAMESPACE
from nixeryd.storage.integrity import CHECKSUM_FIELD, CHECKSUMS_FIELD, BlobState
from nixeryd.storage.interface import IStorage
from nixeryd.storage.listing import StoredBlob
from nixeryd.storage.parallel import each

#: Blobs up to this size are read whole and hashed.
READ_LIMIT = 4 * 1024 * 1024
#: Storage calls in flight at once.
CONCURRENCY = 16

#: What a blob is found to be.
Finding = Literal["intact", "damaged", "unchecked"]


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@define
class VerifyReport:
    """
    One pass.

    :ivar repair: damaged blobs were removed.
    :ivar checked: the blobs checked (listed and still there).
    :ivar checked_bytes: their size.
    :ivar damaged: the damaged blobs found.
    :ivar unchecked: blobs nothing could vouch for (no checksum recorded).
    :ivar removed: the digests of the damaged blobs removed.
    """

    repair: bool
    checked: int = 0
    checked_bytes: int = 0
    damaged: list[StoredBlob] = Factory(list)
    unchecked: list[StoredBlob] = Factory(list)
    removed: list[str] = Factory(list)

    @property
    def damage_left(self) -> bool:
        """Whether damaged blobs remain in storage."""
        return len(self.removed) < len(self.damaged)

    def lines(self, verbose: bool = False) -> list[str]:
        """The report for people: a summary, then every damaged blob."""
        intact = self.checked - len(self.damaged) - len(self.unchecked)
        lines = ["Checked %d blobs (%s): %d intact, %d damaged, %d not checked"
                 " (no checksum recorded)" % (
                     self.checked, human_size(self.checked_bytes), intact,
                     len(self.damaged), len(self.unchecked))]
        removed = set(self.removed)
        for blob in sorted(self.damaged, key=lambda b: b.digest):
            lines.append("damaged: %s (%s)%s" % (
                blob.digest, human_size(blob.size), ", removed" if blob.digest in removed
                else ""))
        if verbose:
            lines.extend("not checked: %s (%s)" % (blob.digest, human_size(blob.size))
                         for blob in sorted(self.unchecked, key=lambda b: b.digest))
        if self.damaged and self.repair:
            lines.append("Removed %d damaged blobs: the next pull of an image naming one"
                         " builds it again" % (len(self.removed),))
        elif self.damaged:
            lines.append("Run again with --repair to remove them: the next pull of an"
                         " image naming one builds it again")
        return lines


class Verifier:
    """
    A verification pass over ``storage``.

    :param runner: hashes the small blobs read.
    :param repair: remove the damaged blobs found.
    """

    def __init__(self, storage: IStorage, runner: Runner, *, repair: bool = False,
                 concurrency: int = CONCURRENCY) -> None:
        self._storage = storage
        self._runner = runner
        self._repair = repair
        self._concurrency = concurrency

    async def verify(self) -> VerifyReport:
        """Check every blob; what was found (and removed)."""
        report = VerifyReport(self._repair)
        recorded = await self._recorded()

        async def check(blob: StoredBlob) -> None:
            finding = await self._check(blob, recorded.get(blob.digest))
            if finding is None:
                return  # Removed since it was listed.
            report.checked += 1
            report.checked_bytes += blob.size
            if finding == "damaged":
                report.damaged.append(blob)
                if self._repair and await self._storage.remove_blob(blob.digest,
                                                                    blob.version):
                    report.removed.append(blob.digest)
            elif finding == "unchecked":
                report.unchecked.append(blob)

        await each(await self._storage.list_blobs(), check, self._concurrency)
        return report

    async def _check(self, blob: StoredBlob, checksum: str | None) -> Finding | None:
        """What the blob is found to be, or ``None`` when it is gone."""
        if blob.size <= READ_LIMIT:
            data = await self._storage.read_small_blob(blob.digest, READ_LIMIT)
            if data is not None:
                actual = await self._runner.run(_sha256, data)
                return "intact" if actual == blob.digest else "damaged"
        check = await self._storage.check_blob(blob.digest, checksum)
        if check.state is BlobState.MISSING:
            return None
        if check.state is BlobState.CORRUPT:
            return "damaged"
        return "intact" if check.compared else "unchecked"

    async def _recorded(self) -> dict[str, str]:
        """Digest → the checksum the cache documents record for it."""
        recorded: dict[str, str] = {}

        def record(digest: Any, checksum: Any) -> None:
            if isinstance(digest, str) and isinstance(checksum, str):
                recorded[digest] = checksum

        async def read(namespace: str, key: str) -> None:
            try:
                document = await self._storage.get_document(namespace, key)
            except ValueError:
                return  # Not JSON: nothing recorded.
            if not isinstance(document, dict):
                return
            if namespace == LAYER_NAMESPACE:
                record(document.get("digest"), document.get(CHECKSUM_FIELD))
            checksums = document.get(CHECKSUMS_FIELD)
            if isinstance(checksums, dict):
                for digest, checksum in checksums.items():
                    record(digest, checksum)

        for namespace in (LAYER_NAMESPACE, MANIFEST_NAMESPACE):
            listed = await self._storage.list_documents(namespace)
            await each([document.key for document in listed], partial(read, namespace),
                       self._concurrency)
        return recorded

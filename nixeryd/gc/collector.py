"""
One garbage-collection pass over a storage: :class:`Collector`.

An image is what a manifest cache document names: its Docker and OCI
manifests (:mod:`nixeryd.service.manifestcache`).  A pass:

1. reads every manifest cache document and pull document
   (:mod:`nixeryd.service.pulls`) and decides which images are kept: those
   pulled or built within the retention (an image never pulled counts as
   pulled when its newest cache document was written), and those with a
   document written within the grace period;
2. marks every blob the kept images reference (both manifests, their
   config and layers), every manifest pulled within the retention (a
   daemon may still serve it from memory), and every manifest named in
   the image index that no cache document names (written there by other
   tools), except a daemon's index of several platforms (one naming only
   manifests of images), which is kept while its images are, or while
   pulled;
3. reads the layer cache documents: those of marked layers are kept, the
   others removed;
4. prunes the index entries of manifests not marked, then removes the
   documents of the images not kept and the stale pull and layer
   documents, each only if it is still the version listed: one written
   again meanwhile (a pull recorded, an image built again) is kept, and
   what it names marked;
5. lists the blobs, only now, and marks what the manifests written within
   the grace period reference (builds storing their manifests before
   their cache documents); then removes every blob neither marked nor
   written within the grace period, again only if still the version
   listed.

Nothing written within the grace period is removed, so a daemon building
on the same storage keeps what it writes; a blob a daemon stores again,
or a layer a build reuses (:meth:`~nixeryd.storage.interface.IStorage.refresh_blob`),
gets a new time and version on every backend, so the guarded removal of
step 5 leaves it, and a layer already removed is written again by the
build.  What a pass cannot protect is an image a daemon found in the
manifest cache just before the pass removed its blobs: that daemon holds
in memory an image whose blob is gone.  Its first pull of that blob is
answered ``BLOB_UNKNOWN``, and the daemon then forgets the image
(:mod:`nixeryd.service.images`), so the next pull looks in storage and
builds again what is missing.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger

from nixeryd.build.builder import LAYER_NAMESPACE
from nixeryd.core.digests import is_valid_digest
from nixeryd.gc.references import LAYER, MANIFEST, OTHER, referenced
from nixeryd.gc.report import Report
from nixeryd.service.manifestcache import MANIFEST_NAMESPACE, MAX_MANIFEST_BYTES
from nixeryd.service.pulls import DAY, PULL_NAMESPACE, pulled_day
from nixeryd.storage.interface import IStorage
from nixeryd.storage.listing import StoredBlob, StoredDocument
from nixeryd.storage.parallel import each

#: Storage calls in flight at once.
CONCURRENCY = 16
#: Blobs written within the grace period up to this size are read, to
#: find the manifests among them.
SCANNED_BLOB_LIMIT = 1024 * 1024
#: How the report names the documents of each namespace.
DOCUMENT_KINDS = {MANIFEST_NAMESPACE: "manifest document", PULL_NAMESPACE: "pull document",
                  LAYER_NAMESPACE: "layer document"}

#: A listed document and its content (``None`` when it is not JSON).
_Read = tuple[StoredDocument, Any]


def image_of(document: object) -> tuple[str, str] | None:
    """The Docker and OCI manifest digests a manifest cache document names."""
    if not isinstance(document, dict):
        return None
    docker, oci = document.get("docker"), document.get("oci")
    if (isinstance(docker, str) and isinstance(oci, str) and is_valid_digest(docker)
            and is_valid_digest(oci)):
        return docker, oci
    return None


def layer_of(document: object) -> str | None:
    """The blob a layer cache document names."""
    digest = document.get("digest") if isinstance(document, dict) else None
    return digest if isinstance(digest, str) and is_valid_digest(digest) else None


class Collector:
    """
    A pass over ``storage``.

    :param now: the time, in seconds since the epoch (``time.time``, or a
        :class:`~twisted.internet.task.Clock`'s ``seconds``).
    :param keep_days: images pulled or built within this many days are
        kept; ``None`` keeps every image (only what nothing references is
        removed).
    :param grace: seconds within which nothing written is removed.
    :param dry_run: remove nothing; the report says what would go.
    """

    log = Logger()

    def __init__(self, storage: IStorage, now: Callable[[], float], *,
                 keep_days: float | None, grace: float, dry_run: bool = False,
                 concurrency: int = CONCURRENCY) -> None:
        self._storage = storage
        self._now = now
        self._keep_days = keep_days
        self._grace = grace
        self._dry_run = dry_run
        self._concurrency = concurrency
        #: Digests kept.
        self.marked: set[str] = set()
        #: Digest → its kind, as far as manifests and documents tell.
        self._kinds: dict[str, str] = {}

    async def collect(self) -> Report:
        """Make the pass; what it removed (or would remove)."""
        started = self._now()
        young = started - self._grace
        keep_from = None if self._keep_days is None else started - self._keep_days * DAY
        report = Report(self._dry_run, self._keep_days, self._grace / 3600)

        def recent(when: float) -> bool:
            return keep_from is None or when >= keep_from

        # 1. Images, and when each was last pulled or built.
        images: dict[tuple[str, str], list[StoredDocument]] = {}
        doomed: list[StoredDocument] = []
        for document, content in await self._read(MANIFEST_NAMESPACE):
            pair = image_of(content)
            if pair is not None:
                images.setdefault(pair, []).append(document)
            elif document.modified < young:
                doomed.append(document)
        pulled: dict[str, float] = {}
        pull_documents: list[tuple[str, StoredDocument]] = []
        for document, content in await self._read(PULL_NAMESPACE):
            day, digest = pulled_day(content), "sha256:" + document.key
            if day is None or not is_valid_digest(digest):
                if document.modified < young:
                    doomed.append(document)
                continue
            pulled[digest] = max(pulled.get(digest, 0.0), min(started, (day + 1) * DAY))
            pull_documents.append((digest, document))
        roots: set[str] = set()
        expired: set[str] = set()
        for pair, documents in images.items():
            last = max([d.modified for d in documents] + [pulled.get(d, 0.0) for d in pair])
            if recent(last) or any(d.modified >= young for d in documents):
                report.images_kept += 1
                roots.update(pair)
            else:
                report.images_removed += 1
                expired.update(pair)
                doomed.extend(documents)

        # 2. Mark what is kept.
        roots.update(digest for digest, document in pull_documents
                     if recent(pulled[digest]) or document.modified >= young)
        known = {digest for pair in images for digest in pair}
        entries = await self._storage.list_references()
        foreign = {entry["digest"] for entry in entries
                   if _entry_digest(entry) and entry["digest"] not in known}
        for digest, named in (await self._indexes_of_images(foreign, known)).items():
            # A daemon's index of several platforms: kept with its images
            # (or when pulled, as a pull document says), not for ever.
            if not named <= roots:
                foreign.discard(digest)
        roots.update(foreign)
        await self._mark(roots)
        await self._classify(expired - self.marked)
        doomed.extend(document for digest, document in pull_documents
                      if digest not in self.marked and document.modified < young)

        # 3. Layer cache documents of layers no kept image uses.
        for document, content in await self._read(LAYER_NAMESPACE):
            layer = layer_of(content)
            if layer is not None:
                self._kinds.setdefault(layer, LAYER)
            if (layer is None or layer not in self.marked) and document.modified < young:
                doomed.append(document)

        # 4. The index, then the documents.
        pruned = {entry["digest"] for entry in entries
                  if _entry_digest(entry) and entry["digest"] not in self.marked}
        if self._dry_run:
            report.index_entries = sum(1 for entry in entries if entry.get("digest") in pruned)
        elif pruned:
            report.index_entries = await self._storage.prune_references(pruned)
        await each(doomed, lambda document: self._remove_document(document, report),
                   self._concurrency)

        # 5. Blobs, listed once everything is marked.
        blobs = await self._storage.list_blobs()
        await each([blob for blob in blobs if blob.modified >= young
                    and blob.digest not in self.marked and blob.size <= SCANNED_BLOB_LIMIT],
                   self._scan_young, self._concurrency)
        unmarked = [blob for blob in blobs
                    if blob.digest not in self.marked and blob.modified < young]
        for blob in blobs:
            if blob.digest in self.marked or blob.modified >= young:
                report.blobs_kept.add(blob.size)
        await each(unmarked, lambda blob: self._remove_blob(blob, report), self._concurrency)
        return report

    async def _read(self, namespace: str) -> list[_Read]:
        """Every document of ``namespace`` with its content."""
        listed = await self._storage.list_documents(namespace)
        contents: dict[str, Any] = {}

        async def read(document: StoredDocument) -> None:
            try:
                contents[document.key] = await self._storage.get_document(
                    namespace, document.key)
            except ValueError:
                contents[document.key] = None  # Not JSON: removed when old.

        await each(listed, read, self._concurrency)
        return [(document, contents.get(document.key)) for document in listed]

    async def _mark(self, manifests: set[str]) -> None:
        """Mark manifests and, read one level after the other, what they name."""
        todo = manifests - self.marked
        while todo:
            self.marked.update(todo)
            for digest in todo:
                self._kinds[digest] = MANIFEST
            found: set[str] = set()

            async def visit(digest: str) -> None:
                for name, kind in await self._references(digest):
                    self._kinds.setdefault(name, kind)
                    if kind == MANIFEST:
                        found.add(name)
                    else:
                        self.marked.add(name)

            await each(sorted(todo), visit, self._concurrency)
            todo = found - self.marked

    async def _references(self, digest: str) -> list[tuple[str, str]]:
        """What the stored manifest ``digest`` names (nothing if it is missing)."""
        body = await self._storage.read_small_blob(digest, MAX_MANIFEST_BYTES)
        return (referenced(body) or []) if body is not None else []

    async def _indexes_of_images(self, digests: set[str], known: set[str]
                                 ) -> dict[str, set[str]]:
        """
        Of ``digests``, the image indexes a daemon wrote for several
        platforms (they name only manifests of images, as cache documents
        name them), with the manifests each names.
        """
        found: dict[str, set[str]] = {}

        async def visit(digest: str) -> None:
            named = await self._references(digest)
            manifests = {name for name, kind in named if kind == MANIFEST}
            if named and len(manifests) == len(named) and manifests <= known:
                found[digest] = manifests

        await each(sorted(digests), visit, self._concurrency)
        return found

    async def _classify(self, manifests: set[str]) -> None:
        """Learn the kinds of what manifests name, without keeping them."""
        async def visit(digest: str) -> None:
            self._kinds[digest] = MANIFEST
            for name, kind in await self._references(digest):
                self._kinds.setdefault(name, kind)

        await each(sorted(manifests), visit, self._concurrency)

    async def _scan_young(self, blob: StoredBlob) -> None:
        """Mark what a manifest written within the grace period names."""
        body = await self._storage.read_small_blob(blob.digest, SCANNED_BLOB_LIMIT)
        if body is not None and referenced(body) is not None:
            await self._mark({blob.digest})

    async def _remove_document(self, document: StoredDocument, report: Report) -> None:
        kind = DOCUMENT_KINDS[document.namespace]
        name = "%s/%s" % (document.namespace, document.key)
        if self._dry_run:
            report.remove(kind, name, document.size)
        elif await self._storage.remove_document(document.namespace, document.key,
                                                 document.version):
            report.remove(kind, name, document.size)
        else:
            report.changed += 1
            await self._rescue(document)

    async def _rescue(self, document: StoredDocument) -> None:
        """Mark what a document written again during the pass names now."""
        content = await self._storage.get_document(document.namespace, document.key)
        self.log.info("{name} was written again during the pass: kept",
                      name="%s/%s" % (document.namespace, document.key))
        if document.namespace == MANIFEST_NAMESPACE:
            pair = image_of(content)
            await self._mark(set(pair) if pair is not None else set())
        elif document.namespace == PULL_NAMESPACE:
            await self._mark({"sha256:" + document.key})
        else:
            layer = layer_of(content)
            if layer is not None:
                self.marked.add(layer)

    async def _remove_blob(self, blob: StoredBlob, report: Report) -> None:
        kind = self._kinds.get(blob.digest, OTHER)
        if self._dry_run or await self._storage.remove_blob(blob.digest, blob.version):
            report.remove(kind, blob.digest, blob.size)
        else:
            report.changed += 1
            report.blobs_kept.add(blob.size)


def _entry_digest(entry: dict[str, Any]) -> bool:
    """Whether an index entry names a valid digest."""
    digest = entry.get("digest")
    return isinstance(digest, str) and is_valid_digest(digest)

"""
Manifests in storage, for the image service: every manifest served, by
digest (the recent ones also in memory), and the manifest cache, whose
documents name the two manifests of an image under a key that says
everything that determines it (see :mod:`nixeryd.service.images`).

Storage that fails here fails the request with
:class:`~nixeryd.core.errors.Unavailable`, its cause logged.

The images in memory are indexed by the blobs they name
(:meth:`ManifestCache.images_using`), so that an image whose blob is found
gone (removed by the garbage collector while a daemon held the image in
memory) can be forgotten and looked up or built again.

A cache document also records the checksum of every blob the image names
(config and layers), and an image is served from the cache only once
storage vouches for each of them (:mod:`nixeryd.storage.integrity`): one
whose blob is damaged is built again, which replaces the blob.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable

from twisted.logger import Logger

from nixeryd.build.manifest import manifest_from_bytes
from nixeryd.core.digests import check_digest
from nixeryd.core.documents import Image, ManifestDocument
from nixeryd.core.errors import ManifestUnknown, Unavailable
from nixeryd.metrics.hooks import NO_INSTRUMENTS, Instruments
from nixeryd.service.failures import STORAGE_FAILURES, report_storage_failure
from nixeryd.service.lru import LRU
from nixeryd.storage.integrity import CHECKSUMS_FIELD, BlobState, recorded_checksum
from nixeryd.storage.interface import IStorage

#: Bumped whenever the same inputs would give a different manifest.
MANIFEST_FORMAT_VERSION = "1"
#: Namespace of manifest cache documents in storage.
MANIFEST_NAMESPACE = "manifests"
#: Largest manifest read back from storage.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: How many manifests are kept in memory for requests by digest.
MEMORY_MANIFESTS = 10_000
#: How many blobs of images in memory are indexed (their images found
#: when one of them is gone).
MEMORY_BLOB_USERS = 100_000

_log = Logger()


def cache_key(*parts: str) -> str:
    """
    A manifest cache key: a hash of ``parts`` (which include
    :data:`MANIFEST_FORMAT_VERSION`).
    """
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def storage_failed(error: BaseException, what: str, log: Logger = _log) -> Unavailable:
    """
    The transient error for a storage failure, logged with its cause (a
    warning at most once a minute for each kind of failure:
    :class:`~nixeryd.service.failures.StorageIncidents`).
    """
    return report_storage_failure(error, what, log)


class ManifestCache:
    """
    Manifests by digest and images by cache key, in ``storage``.

    :param storage: holds the manifests (as blobs) and the cache documents.
    :param instruments: told of each cache lookup and storage failure.
    :param on_broken: called with the Docker manifest digests of images
        found lacking a blob in storage, for their owner to forget them.
    """

    def __init__(self, storage: IStorage, instruments: Instruments = NO_INSTRUMENTS,
                 on_broken: Callable[[set[str]], None] | None = None) -> None:
        self._storage = storage
        self._instruments = instruments
        self._on_broken = on_broken
        self._manifests: LRU[str, ManifestDocument] = LRU(MEMORY_MANIFESTS)
        #: Blob digest → Docker manifest digests of the images kept that name it.
        self._blob_users: LRU[str, set[str]] = LRU(MEMORY_BLOB_USERS)

    def keep(self, image: Image) -> None:
        """
        Answer both manifests of ``image`` by digest from memory, and index
        the blobs they name (a few kilobytes of JSON, parsed here).  For an
        image with several platforms: its index documents, and each
        platform's image (whose blobs are indexed under its own digest).
        """
        if image.index is not None:
            for document in (image.index.docker, image.index.oci):
                self._manifests.put(document.digest, document)
            for platform_image in image.index.images:
                self.keep(platform_image)
            return
        for document in (image.docker, image.oci):
            self._manifests.put(document.digest, document)
            for blob in _blobs_named(document):
                users = self._blob_users.get_recent(blob)
                if users is None:
                    self._blob_users.put(blob, {image.docker.digest})
                else:
                    users.add(image.docker.digest)

    def images_using(self, blob: str) -> set[str]:
        """
        The Docker manifest digests of the images kept in memory that name
        ``blob`` (forgotten from the index: the caller forgets the images).
        """
        return self._blob_users.pop(blob, None) or set()

    def holds(self, digest: str) -> bool:
        """Whether the manifest with ``digest`` is in memory."""
        return self._manifests.get_recent(digest) is not None

    def forget(self, digests: set[str]) -> None:
        """Forget from memory the manifests with these digests."""
        for digest in digests:
            self._manifests.pop(digest, None)

    def forget_except(self, digests: set[str]) -> int:
        """Forget from memory the manifests not in ``digests``; how many."""
        forgotten = [digest for digest in self._manifests if digest not in digests]
        for digest in forgotten:
            del self._manifests[digest]
        return len(forgotten)

    async def manifest(self, digest: str) -> ManifestDocument:
        """
        A manifest stored in this registry, by digest.

        :raises DigestInvalid: for a malformed digest.
        :raises ManifestUnknown: when there is no such manifest.
        :raises Unavailable: when storage cannot be used now.
        """
        check_digest(digest)
        document = self._manifests.get_recent(digest)
        if document is not None:
            return document
        try:
            body: bytes | None = await self._storage.read_small_blob(
                digest, MAX_MANIFEST_BYTES)
        except STORAGE_FAILURES as e:
            self._instruments.storage_failed()
            raise storage_failed(e, "reading manifest " + digest) from e
        document = manifest_from_bytes(body) if body is not None else None
        if document is None or document.digest != digest:
            raise ManifestUnknown("manifest unknown", {"digest": digest})
        self._manifests.put(digest, document)
        return document

    async def cached(self, key: str) -> Image | None:
        """The image stored under a cache key, if all of it is there."""
        image = await self._lookup(key)
        self._instruments.manifest_cache(image is not None)
        return image

    async def _lookup(self, key: str) -> Image | None:
        record = await self._storage.get_document(MANIFEST_NAMESPACE, key)
        if record is None:
            return None
        try:
            docker = await self.manifest(record["docker"])
            oci = await self.manifest(record["oci"])
        except ManifestUnknown:
            return None
        referenced = json.loads(docker.body)
        checksums: dict[str, str] = {}
        for descriptor in [referenced["config"]] + referenced["layers"]:
            blob = descriptor["digest"]
            check = await self._storage.check_blob(blob, recorded_checksum(record, blob))
            if not check.intact:
                _log.warn("Cached image {digest} {how} blob {blob}; rebuilding",
                          digest=docker.digest, blob=blob,
                          how="has a damaged" if check.state is BlobState.CORRUPT
                          else "lacks")
                if self._on_broken is not None:
                    self._on_broken({docker.digest})
                return None
            if check.checksum is not None:
                checksums[blob] = check.checksum
        image = Image(docker=docker, oci=oci)
        if any(recorded_checksum(record, blob) is None for blob in checksums):
            # Written before checksums were kept: keep the ones vouched for.
            await self._storage.put_document(MANIFEST_NAMESPACE, key,
                                             dict(record, **{CHECKSUMS_FIELD: checksums}))
        return image

    async def remember(self, key: str, image: Image) -> None:
        """
        Store ``image`` under a cache key, with the checksum of each blob
        it names (known to storage from the build: no request).
        """
        checksums: dict[str, str] = {}
        for blob in sorted(set(_blobs_named(image.docker) + _blobs_named(image.oci))):
            checksum = (await self._storage.check_blob(blob)).checksum
            if checksum is not None:
                checksums[blob] = checksum
        document: dict[str, object] = {"docker": image.docker.digest, "oci": image.oci.digest}
        if checksums:
            document[CHECKSUMS_FIELD] = checksums
        await self._storage.put_document(MANIFEST_NAMESPACE, key, document)


def _blobs_named(document: ManifestDocument) -> list[str]:
    """The config and layer digests a manifest of this registry names."""
    try:
        parsed = json.loads(document.body)
        return [str(d["digest"]) for d in [parsed["config"]] + list(parsed["layers"])]
    except (ValueError, KeyError, TypeError):
        return []

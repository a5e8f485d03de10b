"""
The image service: from ``(name, tag)`` to served manifests, built at most
once.

It answers the web layer.  A request is first looked up in memory, then in
the manifest cache in storage; only then is Nix asked.  Identical requests
in flight share one build (every waiter gets its own Deferred, so a client
that disconnects cancels only its own wait), and a semaphore bounds how
many Nix processes run at once.

Manifest cache keys say everything that determines a manifest:

- for a pinned source (a git commit, a channel commit), the source
  revision, the architecture and the sorted packages — a warm image then
  needs no Nix call at all, even after a restart or on another instance
  sharing the storage;
- for every source, after evaluation, the exact top-level store paths — so
  a moving source (a branch, a local path) evaluates, then reuses the
  image, or at least every layer, already built.

Both keys also hold the layering settings and a format version.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Callable, TypeVar

from twisted.application.service import MultiService, Service
from twisted.internet.defer import (CancelledError, Deferred, DeferredSemaphore,
                                    maybeDeferred)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nixeryd.build.builder import ImageBuilder
from nixeryd.build.manifest import manifest_from_bytes
from nixeryd.build.names import OPTIONAL_PACKAGES, ImageRequest, parse_image_name, validate_tag
from nixeryd.build.nixsteps import NixSteps
from nixeryd.build.sources import PackageSource, PinnedSource
from nixeryd.core import defaults
from nixeryd.core.digests import check_digest
from nixeryd.core.documents import Image, LocalBlob, ManifestDocument, RedirectBlob
from nixeryd.core.errors import ManifestUnknown, RegistryError
from nixeryd.core.sharedwork import SharedWork
from nixeryd.storage.interface import IStorage
from nixeryd.service.builds import BuildHistory

#: Bumped whenever the same inputs would give a different manifest.
MANIFEST_FORMAT_VERSION = "1"
#: Namespace of manifest cache documents in storage.
MANIFEST_NAMESPACE = "manifests"
#: Largest manifest read back from storage.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: How many manifests are kept in memory for requests by digest.
MEMORY_MANIFESTS = 10_000
#: How many (image, tag) answers and image tag lists are kept in memory.
MEMORY_IMAGES = 10_000
#: How many tags ``tags/list`` remembers for one name.
MAX_TAGS_PER_NAME = 100


K = TypeVar("K")
V = TypeVar("V")

#: An image in memory, with when it stops answering (``None``: never).
_Entry = tuple[Image, float | None]


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class _LRU(OrderedDict[K, V]):
    """A dict that forgets its least recently used entries past a size."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size

    def get_recent(self, key: K) -> V | None:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self._size:
            self.popitem(last=False)


class ImageService(MultiService):
    """
    Serves images by name and tag, manifests by digest, and blobs.

    :param source: the package source, which pins a tag to a package set.
    :param nix: resolves the requested names.
    :param builder: builds and stores resolved images.
    :param storage: holds the blobs and the manifest cache.
    :param clock: tells the time, for the expiry of moving tags.
    :param max_builds: how many Nix builds may run at once; as many
        evaluations may run beside them, so that an image already built
        never waits behind long builds.
    :param moving_ttl: seconds a tag of a moving source (a branch, a local
        path) keeps answering from memory before it is evaluated again.
    :param reference: how a built image is named in the storage's index,
        from ``(name, tag)``; ``None`` records nothing.
    :param builds: where build records are kept (a new history when not
        given).

    Child services (the thread pools) are added with ``setServiceParent``:
    they start with this service and stop, in reverse order and one after
    the other, once the work in flight has been cancelled.
    """

    log = Logger()

    def __init__(self, *, source: PackageSource, nix: NixSteps, builder: ImageBuilder,
                 storage: IStorage, clock: IReactorTime,
                 max_builds: int = defaults.MAX_BUILDS,
                 moving_ttl: float = defaults.MOVING_TTL,
                 reference: Callable[[str, str], str] | None = None,
                 on_start: Callable[[], Deferred[None] | None] | None = None,
                 builds: BuildHistory | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        #: Records of the builds running and recently ended.
        self.builds = builds if builds is not None else BuildHistory(clock)
        self._source = source
        self._nix = nix
        self._builder = builder
        self._storage = storage
        self._clock = clock
        self._builds = DeferredSemaphore(max_builds)
        self._evaluations = DeferredSemaphore(max_builds)
        self._moving_ttl = moving_ttl
        self._reference = reference
        self._on_start = on_start
        self._ready = on_start is None
        self._ready_waiters: list[Deferred[None]] = []
        #: :meth:`_memo_key` → (image, expiry).
        self._recent: _LRU[tuple[str, str], _Entry] = _LRU(MEMORY_IMAGES)
        #: ``(name as requested, tag)`` → (image, expiry): the warm path.
        self._warm: _LRU[tuple[str, str], _Entry] = _LRU(MEMORY_IMAGES)
        self._in_flight: SharedWork[tuple[str, str], Image] = SharedWork()
        self._manifests: _LRU[str, ManifestDocument] = _LRU(MEMORY_MANIFESTS)
        self._tags: _LRU[str, set[str]] = _LRU(MEMORY_IMAGES)

    # -- lifecycle ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self._on_start is not None:
            d = self._on_start()
            if d is None:
                self._became_ready(None)
            else:
                d.addErrback(lambda f: self.log.failure("Start-up task failed", f))
                d.addBoth(self._became_ready)

    def _became_ready(self, _: object) -> None:
        """Start-up work is over: let the waiting requests go on."""
        self._ready = True
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def _until_ready(self) -> None:
        """
        Wait for start-up work (popularity data, storage checks), which
        decides the layering and so the cache keys.
        """
        if not self._ready:
            waiter: Deferred[None] = Deferred(self._forget_ready_waiter)
            self._ready_waiters.append(waiter)
            await waiter

    def _forget_ready_waiter(self, waiter: Deferred[None]) -> None:
        """A request waiting for start-up work went away."""
        if waiter in self._ready_waiters:
            self._ready_waiters.remove(waiter)

    async def _stop_children(self) -> None:
        # In reverse order of addition, each once the one before it has
        # stopped (MultiService would stop them all at once).
        for child in reversed(list(self)):
            # IService.stopService may return a Deferred or None.
            await maybeDeferred(child.stopService)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)  # type: ignore[no-untyped-call]
        self._in_flight.cancel_all()
        return Deferred.fromCoroutine(self._stop_children())

    # -- the web layer's calls ----------------------------------------------

    def cached_image(self, name: str, tag: str) -> Image | None:
        """
        The image for ``name`` at ``tag`` if memory holds a current answer,
        else ``None`` (then :meth:`image` does the work).  Synchronous, so
        warm requests need no coroutine.
        """
        image = self._fresh(self._warm.get((name, tag)))
        if image is None:
            self._warm.pop((name, tag), None)
        return image

    async def image(self, name: str, tag: str) -> Image:
        """
        The image for ``name`` at ``tag``, built if needed.

        :raises RegistryError: for an invalid name or tag, unknown
            packages, or a failed build.
        """
        request = parse_image_name(name)
        validate_tag(tag)
        memo_key = self._memo_key(request, tag)
        recent = self._recent.get_recent(memo_key)
        image = self._fresh(recent)
        if recent is not None and image is not None:
            self._remember_tag(name, tag)
            self._warm.put((name, tag), recent)
            return image
        self._recent.pop(memo_key, None)
        waiter = self._wait_for(memo_key, request, tag)
        image = await waiter
        self._remember_tag(name, tag)
        recent = self._recent.get(memo_key)
        if recent is not None:
            self._warm.put((name, tag), recent)
        return image

    async def manifest(self, digest: str) -> ManifestDocument:
        """
        Any manifest this registry has served, by digest.

        :raises DigestInvalid: for a malformed digest.
        :raises ManifestUnknown: when there is no such manifest.
        """
        check_digest(digest)
        document = self._manifests.get_recent(digest)
        if document is not None:
            return document
        body: bytes | None = await self._storage.read_small_blob(digest, MAX_MANIFEST_BYTES)
        document = manifest_from_bytes(body) if body is not None else None
        if document is None or document.digest != digest:
            raise ManifestUnknown("manifest unknown", {"digest": digest})
        self._manifests.put(digest, document)
        return document

    async def blob(self, digest: str) -> LocalBlob | RedirectBlob:
        """Where the blob with ``digest`` is; fails with ``BlobUnknown``."""
        check_digest(digest)
        where: LocalBlob | RedirectBlob = await self._storage.blob(digest)
        return where

    async def tags(self, name: str) -> list[str]:
        """The tags known for ``name``: ``latest`` and every tag served."""
        parse_image_name(name)
        return sorted(self._tags.get(name, set()) | {"latest"})

    def _fresh(self, entry: _Entry | None) -> Image | None:
        """The image of a memory entry ``(image, expiry)`` unless it expired."""
        if entry is None:
            return None
        image, expires = entry
        if expires is not None and expires <= self._clock.seconds():
            return None
        return image

    # -- coalescing ---------------------------------------------------------

    def _memo_key(self, request: ImageRequest, tag: str) -> tuple[str, str]:
        """
        What identifies a request in memory and among builds in flight:
        the packages and architecture, and the tag only when the source
        lets it choose a revision (a local path or a channel ignores it, so
        ``hello:a`` and ``hello:b`` share one evaluation and one build).
        """
        if self._source.tag_selects_revision:
            return (request.key(), tag)
        return (request.key(), "")

    def _remember_tag(self, name: str, tag: str) -> None:
        tags = self._tags.get_recent(name)
        if tags is None:
            self._tags.put(name, {tag})
        elif len(tags) < MAX_TAGS_PER_NAME:
            tags.add(tag)

    def _wait_for(self, memo_key: tuple[str, str], request: ImageRequest,
                  tag: str) -> Deferred[Image]:
        """
        A Deferred of the caller's own for the image; starts the work if
        nobody else has.  Cancelling it removes only this waiter.
        """
        def start() -> Deferred[Image]:
            work = Deferred.fromCoroutine(self._produce(request, tag))
            work.addErrback(self._log_failure, request.name, tag)
            return work

        return self._in_flight.wait(memo_key, start)

    def _log_failure(self, failure: Failure, name: str, tag: str) -> Failure:
        """Log an image's failure once, however many wait for it."""
        error = failure.value
        if isinstance(error, RegistryError):
            self.log.warn("Image {image}:{tag} failed: {error}",
                          image=name, tag=tag, error=error.message)
        elif not isinstance(error, CancelledError):
            self.log.failure("Image {image}:{tag} failed", failure,
                             image=name, tag=tag)
        return failure

    # -- producing an image -------------------------------------------------

    async def _produce(self, request: ImageRequest, tag: str) -> Image:
        await self._until_ready()
        pinned = await self._source.pin(tag)
        pinned_key = None
        if pinned.revision is not None:
            pinned_key = _key("pinned", MANIFEST_FORMAT_VERSION, self._builder.settings_key(),
                              pinned.kind, pinned.revision, request.key())
            image = await self._cached(pinned_key)
            if image is not None:
                self.log.info("Serving {image}:{tag} from the manifest cache "
                              "(pinned source)", image=request.name, tag=tag)
                return self._finish(request, tag, pinned, image)
        self.log.info("Resolving {packages} for {image}:{tag}", image=request.name,
                      tag=tag, packages=", ".join(request.packages) or "(nothing)",
                      system=request.arch.nix_system, phase="resolving")
        async with self._evaluations:
            resolution = await self._nix.resolve(
                pinned, request.packages, OPTIONAL_PACKAGES, request.arch.nix_system,
                image=request.name)
        closure_key = _key("closure", MANIFEST_FORMAT_VERSION, self._builder.settings_key(),
                           request.arch.nix_system, request.key(),
                           *resolution.out_paths)
        image = await self._cached(closure_key)
        if image is None:
            async with self._builds:
                built = await self._builder.build(request, resolution)
            image = built.image
            await self._remember(closure_key, image)
            if self._reference is not None:
                await self._record_reference(request, tag, image)
        else:
            self.log.info("Serving {image}:{tag} from the manifest cache "
                          "(same store paths)", image=request.name, tag=tag)
        if pinned_key is not None:
            await self._remember(pinned_key, image)
        return self._finish(request, tag, pinned, image)

    async def _record_reference(self, request: ImageRequest, tag: str,
                                image: Image) -> None:
        """
        Name the image in the storage's index, for tools reading the
        storage directly.  A convenience: a name the index cannot hold, or
        an index that cannot be written, is logged and never fails the
        request.
        """
        assert self._reference is not None
        reference = self._reference(request.name, tag)
        try:
            await self._storage.record_reference(
                reference, image.oci.digest, image.oci.media_type, len(image.oci.body))
        except Exception as e:
            self.log.warn("Not naming {image}:{tag} in the storage index: {error}",
                          image=request.name, tag=tag, error=str(e))

    def _finish(self, request: ImageRequest, tag: str, pinned: PinnedSource,
                image: Image) -> Image:
        immutable = pinned.revision is not None and (
            pinned.kind == "channel" or pinned.revision == tag)
        expires = None if immutable else self._clock.seconds() + self._moving_ttl
        self._recent.put(self._memo_key(request, tag), (image, expires))
        for document in (image.docker, image.oci):
            self._manifests.put(document.digest, document)
        return image

    async def _cached(self, key: str) -> Image | None:
        """The image stored under a manifest cache key, if all of it is there."""
        record = await self._storage.get_document(MANIFEST_NAMESPACE, key)
        if record is None:
            return None
        try:
            docker = await self.manifest(record["docker"])
            oci = await self.manifest(record["oci"])
        except ManifestUnknown:
            return None
        referenced = json.loads(docker.body)
        for descriptor in [referenced["config"]] + referenced["layers"]:
            if not await self._storage.has_blob(descriptor["digest"]):
                self.log.warn("Cached image {digest} lacks blob {blob}; rebuilding",
                              digest=docker.digest, blob=descriptor["digest"])
                return None
        return Image(docker=docker, oci=oci)

    async def _remember(self, key: str, image: Image) -> None:
        await self._storage.put_document(
            MANIFEST_NAMESPACE, key,
            {"docker": image.docker.digest, "oci": image.oci.digest})

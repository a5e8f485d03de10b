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

Both keys also hold the layering settings and a format version
(:mod:`nixeryd.service.manifestcache`).

Every image that needs Nix gets a build record (:mod:`nixeryd.service.builds`)
that follows it through its phases and keeps its log; a failure ends the
record with the message the client gets, which the web layer ends with the
address of the build's page.  Storage failures become the transient
``Unavailable``.

Cold work has limits (:mod:`nixeryd.service.coldwork`): new work is
admitted within a bounded queue and a per-client share of it
(:mod:`nixeryd.service.admission`), work nobody waits for any more is
cancelled unless it is writing layers, evaluations and builds take
:mod:`nixeryd.service.slots` that long steps leave to short ones, and
permanent failures are answered from memory for a while
(:mod:`nixeryd.service.negative`).

Every manifest served is marked as pulled (:mod:`nixeryd.service.pulls`),
and images nobody pulled for a while are forgotten from memory, so that
the daemon rarely answers from memory an image the garbage collector
removed.  When it does, the first blob found gone (``BLOB_UNKNOWN`` to a
client, or a manifest cache lookup) has every image in memory naming it
forgotten, so that the next pull looks in storage and builds again what
is missing.  A blob found damaged by a blob request has those images made
again before it is answered (:mod:`nixeryd.service.repairs`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet.defer import (CancelledError, Deferred, FirstError, gatherResults,
                                    maybeDeferred)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nixeryd.build.builder import ImageBuilder
from nixeryd.build.manifest import build_index
from nixeryd.build.names import OPTIONAL_PACKAGES, ImageRequest, parse_image_name, validate_tag
from nixeryd.build.platforms import Architecture, host_architecture
from nixeryd.build.nixsteps import NixSteps
from nixeryd.build.process import PIPE_DRAIN, REAPER_MARGIN
from nixeryd.build.progress import BuildPhase
from nixeryd.core.text import human_size
from nixeryd.build.sources import PackageSource, PinnedSource
from nixeryd.core import defaults
from nixeryd.core.digests import check_digest
from nixeryd.core.documents import Image, LocalBlob, ManifestDocument, RedirectBlob
from nixeryd.core.errors import BlobUnknown, RegistryError, Unavailable
from nixeryd.core.sharedwork import SharedWork
from nixeryd.metrics.hooks import NO_INSTRUMENTS, Instruments
from nixeryd.storage.interface import IStorage
from nixeryd.service.buildlog import BuildLog
from nixeryd.service.builds import BuildHistory, describe_pinned_source
from nixeryd.service.admission import Admission
from nixeryd.service.coldwork import ABANDONED, ColdJob, ColdWork
from nixeryd.service.negative import FailureMemory
from nixeryd.service.slots import NixSlots
from nixeryd.service.failures import STORAGE_FAILURES
from nixeryd.service.lru import LRU
from nixeryd.service.pulls import NotRecorded, PullRecorder, Pulls
from nixeryd.service.repairs import BlobRepairs
from nixeryd.storage.integrity import BlobCorrupt
from nixeryd.service.manifestcache import (MANIFEST_FORMAT_VERSION, ManifestCache,
                                           cache_key, storage_failed)

#: How many (image, tag) answers and image tag lists are kept in memory.
MEMORY_IMAGES = 10_000
#: How many tags ``tags/list`` remembers for one name.
MAX_TAGS_PER_NAME = 100


#: Seconds a stop waits for the work it cancelled to end (Nix's process
#: trees stopped: their grace period, which is 5 s by default, and the
#: margins of :mod:`nixeryd.build.process`; then each build's clean-up,
#: its garbage-collector roots removed) before the thread pools stop
#: regardless.
STOP_WAIT = 5.0 + REAPER_MARGIN + PIPE_DRAIN + 5.0


def _fire(waiter: Deferred[bool], value: bool) -> None:
    """Fire ``waiter`` with ``value`` unless it has fired."""
    if not waiter.called:
        waiter.callback(value)


#: An image in memory, with when it stops answering (``None``: never).
_Entry = tuple[Image, float | None]


class ImageService(MultiService):
    """
    Serves images by name and tag, manifests by digest, and blobs.

    :param source: the package source, which pins a tag to a package set.
    :param nix: resolves the requested names.
    :param builder: builds and stores resolved images.
    :param storage: holds the blobs and the manifest cache.
    :param clock: tells the time, for the expiry of moving tags.
    :param max_builds: how many Nix builds may start at once; as many
        evaluations may run beside them, so that an image already built
        never waits behind long builds (see :mod:`nixeryd.service.slots`).
    :param moving_ttl: seconds a tag of a moving source (a branch, a local
        path) keeps answering from memory before it is evaluated again.
    :param reference: how a built image is named in the storage's index,
        from ``(name, tag)``; ``None`` records nothing.
    :param builds: where build records are kept (a new history when not
        given).
    :param instruments: told of manifest cache lookups and storage
        failures (for the daemon's metrics).
    :param max_queue: how many images may be in the making at once
        (see :mod:`nixeryd.service.admission`).
    :param failure_ttl: seconds a permanent failure is answered from
        memory (see :mod:`nixeryd.service.negative`).
    :param pulls: told of every manifest served; a
        :class:`~nixeryd.service.pulls.PullRecorder` also has the service
        forget, now and then, the images nobody pulled meanwhile.
    :param platforms: the platforms a name without a platform meta-package
        is built for, the default one first (the host's alone when not
        given).  With more than one, such a name is answered with the
        image of each platform and their index (:meth:`image`).
    :param cold_per_minute: cold work one client may start per minute
        (0: no bound; see :mod:`nixeryd.service.admission`).

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
                 builds: BuildHistory | None = None,
                 instruments: Instruments = NO_INSTRUMENTS,
                 max_queue: int = defaults.MAX_QUEUE,
                 failure_ttl: float = defaults.FAILURE_TTL,
                 pulls: Pulls | None = None,
                 platforms: Sequence[Architecture] | None = None,
                 cold_per_minute: int = 0) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        #: The platforms of a name without a platform meta-package, the
        #: default first.
        self.platforms: tuple[Architecture, ...] = (
            tuple(platforms) if platforms else (host_architecture(),))
        #: Records of the builds running and recently ended.
        self.builds = builds if builds is not None else BuildHistory(clock)
        self._source = source
        self._nix = nix
        self._builder = builder
        self._storage = storage
        self._clock = clock
        self._builds = NixSlots(clock, max_builds)
        self._evaluations = NixSlots(clock, max_builds)
        self._moving_ttl = moving_ttl
        self._reference = reference
        self._on_start = on_start
        self._ready = on_start is None
        self._ready_waiters: list[Deferred[None]] = []
        #: :meth:`_memo_key` → (image, expiry).
        self._recent: LRU[tuple[str, str], _Entry] = LRU(MEMORY_IMAGES)
        #: ``(name as requested, tag, whole)`` → (image, expiry): the warm
        #: path.  ``whole``: the answer for every client (with the index,
        #: for several platforms), not the default platform's image alone.
        self._warm: LRU[tuple[str, str, bool], _Entry] = LRU(MEMORY_IMAGES)
        #: Cold work in flight: admitted, and cancelled once abandoned.
        self.cold = ColdWork(Admission(max_queue, per_minute=cold_per_minute, clock=clock))
        self._in_flight: SharedWork[tuple[str, str], Image] = SharedWork(
            on_abandoned=self.cold.abandoned)
        #: Every piece of work running, shared or no longer (cancelled,
        #: ending): what a stop cancels and waits for.
        self._running: set[Deferred[Image]] = set()
        self._idle_waiters: list[Deferred[bool]] = []
        #: :meth:`_memo_key` → a permanent failure, for a while.
        self._failures = FailureMemory(clock, failure_ttl, moving_ttl)
        #: Set once the service stops: work cancelled from then on is
        #: cancelled by the stop, not by a call below timing out.
        self._stopping = False
        self._instruments = instruments
        self._cache = ManifestCache(storage, instruments, on_broken=self._forget_broken)
        self._repairs = BlobRepairs(self._locate_blob, self._forget_users, self.image)
        self._tags: LRU[str, set[str]] = LRU(MEMORY_IMAGES)
        self._pulls: Pulls = pulls if pulls is not None else NotRecorded()
        if isinstance(pulls, PullRecorder):
            pulls.on_sweep(self._forget_unpulled)

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
        """
        Cancel the work in flight, wait for it to end (for at most
        :data:`STOP_WAIT` seconds: Nix's processes stopped, each build's
        clean-up done, which needs the thread pools), then stop the
        children.
        """
        Service.stopService(self)  # type: ignore[no-untyped-call]
        self._stopping = True
        self._in_flight.cancel_all()
        for work in list(self._running):
            # Work no longer shared was cancelled when abandoned; cancelling
            # it again would cut short its ending (the wait for Nix's
            # process tree to stop).
            if not work.called:
                work.cancel()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._running:
            count = len(self._running)
            idle: Deferred[bool] = Deferred()
            self._idle_waiters.append(idle)
            timer = self._clock.callLater(STOP_WAIT, _fire, idle, False)
            if await idle:
                timer.cancel()
            else:
                self.log.warn("{count} of {total} cancelled builds did not end within"
                              " {seconds} s; stopping regardless", count=len(self._running),
                              total=count, seconds=STOP_WAIT)
        await self._stop_children()

    def _track(self, work: Deferred[Image]) -> Deferred[Image]:
        """Count ``work`` among the running until it ends; returns it."""
        def ended(outcome: object) -> object:
            self._running.discard(work)
            if not self._running:
                waiters, self._idle_waiters = self._idle_waiters, []
                for waiter in waiters:
                    _fire(waiter, True)
            return outcome

        self._running.add(work)
        work.addBoth(ended)
        return work

    # -- the web layer's calls ----------------------------------------------

    def cached_image(self, name: str, tag: str, *, index: bool = True) -> Image | None:
        """
        The image for ``name`` at ``tag`` if memory holds a current answer,
        else ``None`` (then :meth:`image` does the work).  Synchronous, so
        warm requests need no coroutine.

        :param index: as for :meth:`image`.
        """
        for whole in ((True,) if index else (True, False)):
            image = self._fresh(self._warm.get((name, tag, whole)))
            if image is not None:
                self._mark_pulled(image)
                return image
            self._warm.pop((name, tag, whole), None)
        return None

    async def image(self, name: str, tag: str, *, client: str | None = None,
                    index: bool = True) -> Image:
        """
        The image for ``name`` at ``tag``, built if needed.  A name
        without a platform meta-package, when the service has several
        platforms, gets the image of each (built in parallel, each shared
        and cached as the image of that platform alone) and their index:
        the default platform's image with the index.

        :param client: the address of the client asking, which new cold
            work counts against.
        :param index: whether the client takes an image index.  When not,
            a name of several platforms gets the default platform's image
            alone: the client never waits for the other platforms, nor
            fails when one of them cannot be built.
        :raises RegistryError: for an invalid name or tag, unknown
            packages, or a failed build (with the ``build_id`` of its
            record once Nix was asked; remembered for a while);
            ``Unavailable`` when storage or Nix cannot be used now;
            ``TooManyRequests`` when new cold work has no room.
        """
        request = parse_image_name(name, self.platforms[0])
        validate_tag(tag)
        whole = request.arch_selected or len(self.platforms) == 1
        if whole:
            image, entry = await self._platform_image(request, tag, client, record=True)
        elif not index:
            # The default platform's image, which the index names too; the
            # storage's index names the reference once the index is made.
            image, entry = await self._platform_image(request, tag, client, record=False)
        else:
            image, entry = await self._index_image(request, tag, client)
            whole = True
        self._remember_tag(name, tag)
        if entry is not None:
            self._warm.put((name, tag, whole), entry)
        self._mark_pulled(image)
        return image

    async def _platform_image(self, request: ImageRequest, tag: str, client: str | None,
                              record: bool) -> tuple[Image, _Entry | None]:
        """
        The image of one platform, from memory or from the work that
        produces it: the image and its memory entry (``None`` once
        forgotten).

        :param record: whether a build names the image in the storage's
            index (not when it is one platform of an index).
        """
        memo_key = self._memo_key(request, tag)
        recent = self._recent.get_recent(memo_key)
        image = self._fresh(recent)
        if recent is not None and image is not None:
            return image, recent
        self._recent.pop(memo_key, None)
        failed = self._failures.recall(memo_key)
        if failed is not None:
            raise failed
        image = await self._wait_for(memo_key, request, tag, client, record)
        return image, self._recent.get(memo_key)

    async def _index_image(self, request: ImageRequest, tag: str,
                           client: str | None) -> tuple[Image, _Entry | None]:
        """
        The image of every platform, produced in parallel (Nix's slots
        bound how many evaluate and build at once), and their index; its
        memory entry answers until the first of theirs expires.  The
        first failure fails the request and cancels this request's wait
        for the other platforms.
        """
        requests = [attrs.evolve(request, arch=architecture)
                    for architecture in self.platforms]
        results: list[tuple[Image, _Entry | None]] = await _all_or_cancel([
            Deferred.fromCoroutine(self._platform_image(one, tag, client, record=False))
            for one in requests])
        index = build_index([(one.arch, image)
                             for one, (image, _) in zip(requests, results)])
        default = results[0][0]
        image = Image(docker=default.docker, oci=default.oci, index=index)
        await self._store_index(request, tag, image)
        entries = [entry for _, entry in results]
        if any(entry is None for entry in entries):
            return image, None
        expiries = [entry[1] for entry in entries if entry is not None and entry[1] is not None]
        return image, (image, min(expiries) if expiries else None)

    async def _store_index(self, request: ImageRequest, tag: str, image: Image) -> None:
        """
        Store the index documents of ``image`` as blobs, so that they are
        served by digest (after a restart, by other instances), and name
        the OCI index in the storage's index; unless memory holds them.
        """
        index = image.index
        assert index is not None
        if self._cache.holds(index.oci.digest) and self._cache.holds(index.docker.digest):
            return
        try:
            for document in (index.docker, index.oci):
                await self._storage.store_blob_bytes(document.body, document.digest)
        except STORAGE_FAILURES as e:
            self._instruments.storage_failed()
            raise storage_failed(e, "storing the index of %s:%s" % (request.name, tag),
                                 self.log) from e
        self._cache.keep(image)
        if self._reference is not None:
            await self._record_reference(request, tag, index.oci)

    def _mark_pulled(self, image: Image) -> None:
        """
        Tell the pull records of the manifest served; for an index, of it
        and of every platform's image, which the garbage collector then
        keeps with it.
        """
        self._pulls.pulled(image.docker.digest)
        if image.index is not None:
            self._pulls.pulled(image.index.docker.digest)
            self._pulls.pulled(image.index.oci.digest)
            for platform_image in image.index.images:
                self._pulls.pulled(platform_image.docker.digest)

    async def manifest(self, digest: str) -> ManifestDocument:
        """
        Any manifest this registry has served, by digest.

        :raises DigestInvalid: for a malformed digest.
        :raises ManifestUnknown: when there is no such manifest.
        :raises Unavailable: when storage cannot be used now.
        """
        document = await self._cache.manifest(digest)
        self._pulls.pulled(digest)
        return document

    async def blob(self, digest: str) -> LocalBlob | RedirectBlob:
        """
        Where the blob with ``digest`` is, made again first if storage
        holds it damaged; fails with ``BlobUnknown``, or ``Unavailable``
        when storage cannot be used now.
        """
        check_digest(digest)
        return await self._repairs.blob(digest)

    async def _locate_blob(self, digest: str) -> LocalBlob | RedirectBlob:
        """Where the blob is, in storage; :class:`BlobCorrupt` when damaged."""
        try:
            where: LocalBlob | RedirectBlob = await self._storage.blob(digest)
        except BlobCorrupt:
            raise
        except BlobUnknown:
            self._forget_broken(self._cache.images_using(digest), digest)
            raise
        except STORAGE_FAILURES as e:
            self._instruments.storage_failed()
            raise storage_failed(e, "looking up blob " + digest, self.log) from e
        return where

    async def tags(self, name: str) -> list[str]:
        """The tags known for ``name``: ``latest`` and every tag served."""
        parse_image_name(name)
        return sorted(self._tags.get(name, set()) | {defaults.TAG})

    def _forget_unpulled(self, pulled: set[str]) -> None:
        """
        Forget from memory the images and manifests whose digests are not
        in ``pulled`` (nobody pulled them since the last time): their next
        pull looks in storage, where the garbage collector may have
        removed them.
        """
        kept = set(pulled)
        forgotten = 0
        for memory in self._memories():
            for key, (image, _) in list(memory.items()):
                digests = {document.digest for document in image.documents()}
                if digests & pulled:
                    kept.update(digests)
                else:
                    del memory[key]
                    forgotten += 1
        manifests = self._cache.forget_except(kept)
        if forgotten or manifests:
            self.log.info("Forgot from memory {count} images and {manifests} manifests"
                          " nobody pulled lately", count=forgotten, manifests=manifests)

    def _forget_users(self, blob: str) -> list[tuple[str, str]]:
        """
        Forget from memory the images naming a damaged ``blob`` (for an
        index, the image of any of its platforms); the names and tags they
        were asked for by, to make them again.
        """
        images = self._cache.images_using(blob)
        names = sorted({(name, tag) for (name, tag, _), (image, _) in self._warm.items()
                        if image.docker_digests() & images})
        self._forget_broken(images, blob, "holds a damaged")
        return names

    def _memories(self) -> tuple[LRU[Any, _Entry], ...]:
        """The images in memory: the warm answers, and each platform's image."""
        return (self._warm, self._recent)

    def _forget_broken(self, images: set[str], blob: str | None = None,
                       how: str = "lacks") -> None:
        """
        Forget from memory the images with these Docker manifest digests:
        storage lacks a blob of theirs (``blob`` when known), so their next
        pull looks in storage, and builds again what is missing.
        """
        if not images:
            return
        manifests = set(images)
        forgotten = 0
        for memory in self._memories():
            for key, (image, _) in list(memory.items()):
                if image.docker_digests() & images:
                    del memory[key]
                    manifests.update(document.digest for document in image.documents())
                    forgotten += 1
        self._cache.forget(manifests)
        self.log.warn("Storage {how} {blob} of images held in memory{why}: forgot {count}"
                      " of their names and tags", how=how, blob=blob or "a blob",
                      why=" (removed by garbage collection?)" if how == "lacks" else "",
                      count=forgotten, images=sorted(images))

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
                  tag: str, client: str | None, record: bool) -> Deferred[Image]:
        """
        A Deferred of the caller's own for the image; starts the work if
        nobody else has, when admitted (else the Deferred fails with
        ``TooManyRequests``).  Cancelling it removes only this waiter; the
        last waiter gone cancels the work (:mod:`nixeryd.service.coldwork`).
        The work logs its own outcome, once however many wait for it.
        """
        def start() -> Deferred[Image]:
            job = self.cold.start(memo_key, client)
            return self._track(self.cold.follow(job, Deferred.fromCoroutine(
                self._produce(request, tag, job, record))))

        return self._in_flight.wait(memo_key, start)

    # -- producing an image -------------------------------------------------

    async def _produce(self, request: ImageRequest, tag: str, job: ColdJob,
                       record: bool) -> Image:
        """
        The image for a request: from the pinned manifest cache, or from a
        build with a record of its own (see :mod:`nixeryd.service.builds`).
        Every outcome is logged here, once however many wait for it; a
        permanent failure is remembered under ``job.key``.
        """
        build: BuildLog | None = None
        pinned: PinnedSource | None = None
        try:
            await self._until_ready()
            pinned = await self._source.pin(tag)
            pinned_key = None
            if pinned.revision is not None:
                pinned_key = cache_key("pinned", MANIFEST_FORMAT_VERSION,
                                  self._builder.settings_key(), pinned.kind,
                                  pinned.revision, request.key())
                image = await self._cache.cached(pinned_key)
                if image is not None:
                    self.log.info("Serving {image}:{tag} from the manifest cache "
                                  "(pinned source)", image=request.name, tag=tag)
                    return self._finish(request, tag, pinned, image)
            build = job.build = self._start_build(request, tag, pinned)
            image, outcome = await self._evaluate_and_build(
                build, request, tag, pinned, record, on_build=job.ticket.building)
            if pinned_key is not None:
                await self._cache.remember(pinned_key, image)
        except CancelledError as e:
            if job.abandoned:
                if build is not None:
                    build.cancelled(ABANDONED)
                raise
            if not self._stopping:
                # Only stopping cancels this work: this was a call below
                # cancelled by its own timeout (a storage request).
                raise self._failed(build, request, tag, e,
                               Failure()) from e  # type: ignore[no-untyped-call]
            if build is not None:
                build.cancelled("the registry is stopping")
            raise
        except Exception as e:
            error = self._failed(build, request, tag, e,
                                 Failure())  # type: ignore[no-untyped-call]
            self._failures.remember(job.key, error,
                                    moving=pinned is None or not _immutable(pinned, tag))
            if error is e:
                raise
            raise error from e
        build.succeeded(image.docker.digest, outcome)
        return self._finish(request, tag, pinned, image)

    def _start_build(self, request: ImageRequest, tag: str,
                     pinned: PinnedSource) -> BuildLog:
        """A new build record, as Nix is about to be asked."""
        return BuildLog(self.builds.start(
            image=request.name, tag=tag, packages=request.packages,
            system=request.arch.nix_system, source=describe_pinned_source(pinned),
            revision=pinned.revision))

    async def _evaluate_and_build(self, build: BuildLog, request: ImageRequest,
                                  tag: str, pinned: PinnedSource, record: bool, *,
                                  on_build: Callable[[], None] = lambda: None,
                                  ) -> tuple[Image, str]:
        """
        Evaluate the request, then serve the image already stored for the
        same store paths or build it (``on_build`` called first, for the
        client's rate): the image, and one line saying how it was made.
        ``record``: name a built image in the storage's index.
        """
        log = build.log
        async with self._evaluations.slot():
            build.enter(BuildPhase.EVALUATING)
            log.info("Evaluating {packages} for {image}:{tag} ({source})",
                     image=request.name, tag=tag, source=build.record.source,
                     packages=", ".join(request.packages) or "(nothing)",
                     system=request.arch.nix_system, phase="resolving")
            resolution = await self._nix.resolve(
                pinned, request.packages, OPTIONAL_PACKAGES, request.arch.nix_system,
                image=request.name, log=log)
        closure_key = cache_key("closure", MANIFEST_FORMAT_VERSION, self._builder.settings_key(),
                           request.arch.nix_system, request.key(),
                           *resolution.out_paths)
        image = await self._cache.cached(closure_key)
        if image is not None:
            return image, "the same store paths as an image already stored: served that image"
        on_build()
        if self._builds.full():
            build.enter(BuildPhase.WAITING)
            log.info("Waiting for a build slot", image=request.name, tag=tag)
        async with self._builds.slot():
            build.enter(BuildPhase.BUILDING)
            built = await self._builder.build(request, resolution, build)
        image = built.image
        await self._cache.remember(closure_key, image)
        if self._reference is not None and record:
            await self._record_reference(request, tag, image.oci)
        done = build.record
        return image, "built in %.1f s: %d layers, %s" % (
            done.duration(), len(done.layers), human_size(done.total_layer_bytes()))

    def _failed(self, build: BuildLog | None, request: ImageRequest, tag: str,
                error: BaseException, failure: Failure) -> BaseException:
        """
        Log a failure once and end the build's record with it.  Returns the
        error for the waiters: a registry error as it is (with the build's
        id), a storage failure or a timed-out call as :class:`Unavailable`,
        anything else as it is (a 500, logged with its traceback).
        """
        client_error: RegistryError | None = None
        if isinstance(error, RegistryError):
            client_error = error
        elif isinstance(error, CancelledError):
            self.log.warn("A call for {image}:{tag} was cancelled by its timeout",
                          image=request.name, tag=tag)
            self._instruments.storage_failed()
            client_error = Unavailable("a call of the registry timed out; try again later")
        elif isinstance(error, STORAGE_FAILURES):
            self._instruments.storage_failed()
            client_error = storage_failed(
                error, "producing %s:%s" % (request.name, tag), self.log)
        if build is not None:
            if client_error is None:
                build.crashed(failure)
            else:
                build.failed(client_error)
        elif client_error is None:
            self.log.failure("Image {image}:{tag} failed", failure,
                             image=request.name, tag=tag)
        else:
            self.log.warn("Image {image}:{tag} failed: {error}", image=request.name,
                          tag=tag, error=client_error.message)
        return client_error or error

    async def _record_reference(self, request: ImageRequest, tag: str,
                                document: ManifestDocument) -> None:
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
                reference, document.digest, document.media_type, len(document.body))
        except Exception as e:
            self.log.warn("Not naming {image}:{tag} in the storage index: {error}",
                          image=request.name, tag=tag, error=str(e))

    def _finish(self, request: ImageRequest, tag: str, pinned: PinnedSource,
                image: Image) -> Image:
        expires = None if _immutable(pinned, tag) else self._clock.seconds() + self._moving_ttl
        self._recent.put(self._memo_key(request, tag), (image, expires))
        self._cache.keep(image)
        return image


def _immutable(pinned: PinnedSource, tag: str) -> bool:
    """Whether ``tag`` always names this revision (a channel, or a commit as the tag)."""
    return pinned.revision is not None and (
        pinned.kind == "channel" or pinned.revision == tag)


async def _all_or_cancel(waits: list[Deferred[Any]]) -> list[Any]:
    """
    Every result of ``waits``; on the first failure, the others are
    cancelled and that failure's own exception raised.  Cancelling the
    caller cancels them all.
    """
    try:
        return await gatherResults(waits, consumeErrors=True)
    except FirstError as e:
        for wait in waits:
            if not wait.called:
                wait.cancel()
        e.subFailure.raiseException()
        raise  # pragma: no cover

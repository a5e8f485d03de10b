"""
Wiring: the service tree, assembled in one place.

:func:`make_thread_pools` makes every thread pool, sized from the
configuration; :func:`assemble_image_service` builds an image service and
everything under it; :func:`make_daemon_service` puts the image service,
the blob pool and the HTTP server under one parent.  Both the daemon
(``twistd nixery``) and the one-shot build command use these functions, so
they build images the same way.
"""

from __future__ import annotations

import os
from typing import Awaitable, Callable, Mapping, Optional, Sequence, TypeVar

from attrs import frozen
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (IListeningPort, IProtocolFactory, IReactorCore,
                                         IReactorProcess, IStreamServerEndpoint,
                                         IReactorTCP, IReactorThreads, IReactorTime)
from twisted.logger import Logger
from zope.interface import alsoProvides

from nixeryd.app.config import Config
from nixeryd.app.preflight import StartupFailed, run_checks
from nixeryd.app.readychecks import readiness_checks
from nixeryd.app.settings import SourceSetting
from nixeryd.app.startup import log_serving
from nixeryd.app.storages import make_storage, open_storage
from nixeryd.build.builder import ImageBuilder
from nixeryd.build.childenv import child_environment
from nixeryd.build.nix import NixRunner, default_nix_dir
from nixeryd.build.platforms import Architecture
from nixeryd.build.popularity import load_popularity
from nixeryd.build.sources import source_from_config
from nixeryd.core import defaults
from nixeryd.core.threads import Runner, ThreadPoolService
from nixeryd.metrics.daemon import DaemonMetrics
from nixeryd.metrics.hooks import NO_INSTRUMENTS
from nixeryd.metrics.monitoring import Monitoring
from nixeryd.storage.gcs.retry import NO_OBSERVER
from nixeryd.service.builds import BuildHistory
from nixeryd.service.images import ImageService
from nixeryd.service.pulls import PullRecorder
from nixeryd.storage.interface import IStorage
from nixeryd.storage.service import StorageService

log = Logger()

#: A storage backend of some class.
StorageT = TypeVar("StorageT", bound=IStorage)
#: An image service of some class (tests give a fake one).
ImagesT = TypeVar("ImagesT", bound=Service)


class IServiceReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorProcess,
                      IReactorThreads):
    """
    What the service tree needs of the reactor: it runs Nix and git,
    keeps time, connects (GCS, popularity data), listens, hands work to
    threads and is stopped when the storage is unusable.
    """


def global_reactor() -> IServiceReactor:
    """
    The global reactor, declared to provide :class:`IServiceReactor` once
    it is checked to provide every interface that one combines.

    :raises TypeError: naming what it lacks.
    """
    from twisted.internet import reactor

    bases = IServiceReactor.getBases()  # type: ignore[no-untyped-call]
    missing = [interface.getName() for interface in bases
               if not interface.providedBy(reactor)]
    if missing:
        raise TypeError("the reactor does not provide %s" % (", ".join(missing),))
    alsoProvides(reactor, IServiceReactor)
    return IServiceReactor(reactor)


@frozen
class ThreadPools:
    """
    Every thread pool of the service tree.

    :ivar storage: storage calls (file metadata, small reads and writes,
        moves); apart from the layer pool so that the short calls of warm
        requests never queue behind the seconds-long tar and gzip work of a
        cold build.
    :ivar layers: writing layers (tar, gzip, hashing).
    :ivar blobs: sending blob bodies with ``sendfile`` (the daemon only).
    """

    storage: ThreadPoolService
    layers: ThreadPoolService
    blobs: ThreadPoolService


def make_thread_pools(reactor: IReactorThreads,
                      layer_threads: int = defaults.LAYER_THREADS) -> ThreadPools:
    """
    The thread pools, sized from :mod:`nixeryd.core.defaults` and the
    configured layer threads.  A pool starts no thread before it is
    started and used.
    """
    return ThreadPools(
        storage=ThreadPoolService(reactor, defaults.STORAGE_THREADS, name="nixeryd-storage"),
        layers=ThreadPoolService(reactor, layer_threads, name="nixeryd-layers"),
        blobs=ThreadPoolService(reactor, defaults.BLOB_THREADS, name="nixeryd-blobs"))


def assemble_image_service(
        reactor: IServiceReactor, *, pools: ThreadPools, source: SourceSetting,
        storage: Callable[[Runner], StorageT], env: Mapping[str, str],
        nix_timeout: float = defaults.NIX_TIMEOUT,
        nix_options: Sequence[tuple[str, str]] = (),
        max_builds: int = defaults.MAX_BUILDS,
        layer_budget: int = defaults.LAYER_BUDGET,
        popularity: Optional[str] = None,
        moving_ttl: float = defaults.MOVING_TTL,
        reference: Optional[Callable[[str, str], str]] = None,
        start_check: Optional[Callable[[], Awaitable[object]]] = None,
        keep_builds: int = defaults.KEEP_BUILDS,
        build_log_lines: int = defaults.BUILD_LOG_LINES,
        metrics: Optional[DaemonMetrics] = None,
        max_queue: int = defaults.MAX_QUEUE,
        failure_ttl: float = defaults.FAILURE_TTL,
        record_pulls: bool = False,
        cold_per_minute: int = 0,
        platforms: Sequence[Architecture] = (),
        ) -> ImageService:
    """
    Build an :class:`ImageService` and everything under it.

    Its children are the storage (closed when the service stops), the
    storage pool and the layer pool: the service stops them in reverse
    order, once the work in flight is cancelled, so the storage is closed
    last, when no call can be in flight.

    :param pools: the thread pools (:func:`make_thread_pools`); the blob
        pool is not used here.
    :param source: the package source setting.
    :param storage: makes the storage backend from the runner it is to
        use for blocking calls.
    :param env: the environment of Nix's and git's processes, from
        :func:`~nixeryd.build.childenv.child_environment`.
    :param popularity: a file or URL with popularity data, loaded when the
        service starts; its absence or failure is logged, never fatal.
    :param reference: how a built image is named in the storage's index.
    :param start_check: run when the service starts (its thread pools
        started), before requests are served; if it fails with
        :class:`~nixeryd.app.preflight.StartupFailed`, its message is logged
        and the reactor stopped.
    :param keep_builds: finished builds whose records are kept.
    :param build_log_lines: log lines kept per build.
    :param metrics: told of the image service's and the builder's work,
        and of every build (none recorded when not given).
    :param max_queue: images in the making at once, running or waiting.
    :param failure_ttl: seconds a permanent failure is answered from memory.
    :param record_pulls: record in storage when each image is pulled, for
        the garbage collector (:mod:`nixeryd.service.pulls`; the
        recorder is the service's last child, so it writes what it holds
        before the pools stop).
    :param platforms: the platforms a name is built for, the default
        first; this machine's alone when empty.
    :raises ValueError: for a malformed package source.
    """
    chosen = {source.kind: source.location}
    package_source = source_from_config(
        chosen.get("channel"), chosen.get("repo"), chosen.get("path"),
        reactor=reactor, env=env)
    store = storage(pools.storage)
    nix = NixRunner(reactor, runner=pools.layers, nix_dir=default_nix_dir(),
                    timeout=nix_timeout, options=nix_options, env=env)
    instruments = metrics if metrics is not None else NO_INSTRUMENTS
    builder = ImageBuilder(nix=nix, storage=store, runner=pools.layers,
                           layer_budget=layer_budget, instruments=instruments)

    async def load_popularity_data() -> None:
        data = await load_popularity(popularity, reactor=reactor, runner=pools.storage)
        builder.set_popularity(data)
        log.info("Loaded popularity data for {count} names", count=len(data))

    async def check() -> None:
        if start_check is None:
            return
        try:
            await start_check()
        except StartupFailed as e:
            log.critical("Start-up check failed, stopping: {message}",
                         message=e.message, event="startup-failed")
            reactor.stop()

    async def start() -> None:
        await check()
        if popularity:
            await load_popularity_data()

    def on_start() -> Deferred[None]:
        return Deferred.fromCoroutine(start())

    pulls = PullRecorder(store, reactor) if record_pulls else None
    service = ImageService(
        source=package_source, nix=nix, builder=builder, storage=store, clock=reactor,
        max_builds=max_builds, moving_ttl=moving_ttl, reference=reference,
        on_start=on_start, max_queue=max_queue, failure_ttl=failure_ttl,
        instruments=instruments, pulls=pulls, platforms=platforms,
        cold_per_minute=cold_per_minute,
        builds=BuildHistory(reactor, keep_builds=keep_builds, keep_lines=build_log_lines))
    if metrics is not None:
        metrics.follow(service.builds)
    StorageService(store).setServiceParent(service)  # type: ignore[no-untyped-call]
    pools.storage.setServiceParent(service)  # type: ignore[no-untyped-call]
    pools.layers.setServiceParent(service)  # type: ignore[no-untyped-call]
    if pulls is not None:
        pulls.setServiceParent(service)  # type: ignore[no-untyped-call]
    return service


def make_image_service(config: Config, reactor: IServiceReactor, pools: ThreadPools, *,
                       check_at_start: bool = True,
                       monitoring: Optional[Monitoring] = None) -> ImageService:
    """
    The daemon's image service, from its validated
    :class:`~nixeryd.app.config.Config`.  Built images are named
    ``<name>:<tag>`` in the storage's index.

    :param check_at_start: run the start-up checks
        (:func:`nixeryd.app.preflight.run_checks`) when the service starts,
        stopping the reactor if one fails (``twistd nixery``);
        ``nixeryd serve`` runs them itself before anything starts.
    :param monitoring: gets the service's metrics, and the readiness
        checks of its package source, Nix and storage
        (:mod:`nixeryd.app.readychecks`).
    :raises StartupFailed: when the storage cannot be made.
    """
    env = child_environment(os.environ)
    storage = make_storage(config, reactor, pools.storage, retry_observer=(
        monitoring.metrics if monitoring is not None else NO_OBSERVER))

    async def start_check() -> None:
        checked = await run_checks(
            config, reactor=reactor, env=env, runner=pools.storage,
            open_storage=lambda: open_storage(config, reactor, pools.storage))
        log_serving(log, config, checked, None)

    if monitoring is not None:
        monitoring.readiness.use(readiness_checks(
            config, reactor=reactor, env=env, runner=pools.storage, storage=storage))
    return assemble_image_service(
        reactor, pools=pools, source=config.source, storage=lambda runner: storage,
        env=env, nix_timeout=config.nix_timeout, nix_options=config.nix_options,
        max_builds=config.max_builds, layer_budget=config.layer_budget,
        popularity=config.popularity_url,
        reference=lambda name, tag: name + ":" + tag,
        start_check=start_check if check_at_start else None,
        metrics=monitoring.metrics if monitoring is not None else None,
        keep_builds=config.keep_builds, build_log_lines=config.build_log_lines,
        max_queue=config.max_queue, failure_ttl=config.failure_ttl, record_pulls=True,
        platforms=config.platforms, cold_per_minute=config.private.cold_per_minute)


def close_unstarted_storages(top: Service) -> Deferred[None]:
    """
    Close every storage in the service tree under ``top``
    (:class:`~nixeryd.storage.service.StorageService`), for a tree that
    never started: a storage holds resources from its construction (a
    filesystem storage's temporary directory), which stopping the tree
    would have given back.
    """
    closing: list[Deferred[None]] = []
    services: list[Service] = [top]
    while services:
        service = services.pop()
        if isinstance(service, StorageService):
            closing.append(service.storage.close())
        if isinstance(service, MultiService):
            services.extend(service)
    done: Deferred[None] = gatherResults(closing).addCallback(lambda _: None)
    return done


class HTTPServerService(StreamServerEndpointService):
    """
    The HTTP server: listens on its endpoint when started, raising at once
    (from ``privilegedStartService``) when it cannot, and remembers the
    port it listens on.

    :ivar listening: the listening port, once listening.
    """

    listening: Optional[IListeningPort] = None

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> None:
        super().__init__(endpoint, factory)  # type: ignore[no-untyped-call]
        # As strports.service makes it: an endpoint that cannot listen
        # raises from privilegedStartService instead of being logged.
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        """Listen, or raise why not (e.g. ``CannotListenError``)."""
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        waiting: Optional[Deferred[IListeningPort]] = self._waitingForPort
        if waiting is not None:
            waiting.addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.listening = port
        return port


def make_daemon_service(
        config: Config, reactor: IServiceReactor, *,
        site: Callable[[ImagesT, ThreadPoolService], IProtocolFactory],
        images: Callable[[Config, IServiceReactor, ThreadPools], ImagesT],
        monitoring: Optional[Monitoring] = None,
        ) -> MultiService:
    """
    The daemon's service tree: the image service (with the storage and its
    pools under it), the readiness checks (with ``monitoring``), the blob
    pool, then the HTTP server
    (:class:`HTTPServerService`, named ``http``) on the configured
    endpoint.

    :param site: makes the HTTP site from the image service and the blob
        pool.
    :param images: makes the image service (:func:`make_image_service`).
    :param monitoring: its readiness checks run in the tree, after the
        image service (whose pools they use) has started.
    :raises StartupFailed: when the storage cannot be made.
    """
    pools = make_thread_pools(reactor, config.layer_threads)
    image_service = images(config, reactor, pools)
    top = MultiService()  # type: ignore[no-untyped-call]
    image_service.setServiceParent(top)  # type: ignore[no-untyped-call]
    if monitoring is not None:
        monitoring.readiness.setServiceParent(top)  # type: ignore[no-untyped-call]
    pools.blobs.setServiceParent(top)  # type: ignore[no-untyped-call]
    endpoint = serverFromString(reactor, config.listen)  # type: ignore[no-untyped-call]
    server = HTTPServerService(endpoint, site(image_service, pools.blobs))
    server.setName("http")  # type: ignore[no-untyped-call]
    server.setServiceParent(top)  # type: ignore[no-untyped-call]
    return top

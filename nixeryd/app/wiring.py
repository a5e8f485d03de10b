"""
Wiring: one function that assembles an image service from settings.

Both the daemon (``twistd nixery``) and the one-shot build command use it,
so they build images the same way.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

from twisted.logger import Logger

from nixeryd.build.builder import ImageBuilder
from nixeryd.service.images import ImageService
from nixeryd.build.layers import DEFAULT_LAYER_BUDGET
from nixeryd.build.nix import NixRunner, default_nix_dir
from nixeryd.build.popularity import load_popularity
from nixeryd.build.childenv import child_environment
from nixeryd.core.threads import ThreadPoolService

log = Logger()

#: Threads for storage calls (file metadata, small reads and writes, moves).
STORAGE_THREADS = 4


def assemble_image_service(
        reactor: Any, *, source: Any, storage: Callable[[Any], Any],
        nix_timeout: float = 600.0, nix_options: Sequence[tuple[str, str]] = (),
        max_builds: int = 2, layer_budget: int = DEFAULT_LAYER_BUDGET,
        popularity: str | None = None, threads: int = 4,
        moving_ttl: float = 60.0,
        reference: Callable[[str, str], str] | None = None,
        start_checks: Sequence[Callable[[Any], Any]] = (),
        env: Mapping[str, str]) -> ImageService:
    """
    Build an :class:`ImageService` and everything under it.

    :param source: the package source (:mod:`nixeryd.build.sources`).
    :param storage: makes the storage backend from the thread-pool runner
        it is to use for blocking calls.
    :param threads: threads for writing layers (tar, gzip, hashing).
    :param popularity: a file or URL with popularity data, loaded when the
        service starts; its absence or failure is logged, never fatal.
    :param start_checks: called with the storage when the service starts;
        if one fails, the failure is logged and the reactor stopped (a
        storage that cannot be used is a configuration error).
    :param env: the environment of Nix's processes, from
        :func:`~nixeryd.build.childenv.child_environment` (the same one the
        source's git runs with).
    """
    # Two pools, so that the short storage calls of warm requests (stat,
    # small reads) never queue behind the seconds-long tar and gzip work
    # of a cold build.
    pool = ThreadPoolService(reactor, STORAGE_THREADS, name="nixeryd-storage")
    build_pool = ThreadPoolService(reactor, threads, name="nixeryd-layers")
    store = storage(pool)
    nix = NixRunner(reactor, nix_dir=default_nix_dir(), timeout=nix_timeout,
                    options=nix_options, env=env)
    builder = ImageBuilder(nix=nix, storage=store, runner=build_pool,
                           layer_budget=layer_budget)

    async def load_popularity_data() -> None:
        data = await load_popularity(popularity, reactor=reactor, runner=pool)
        builder.set_popularity(data)
        log.info("Loaded popularity data for {count} names", count=len(data))

    async def check_storage() -> None:
        try:
            for check in start_checks:
                await check(store)
        except Exception as e:
            log.critical("Storage is not usable, stopping: {error}", error=str(e))
            reactor.stop()

    async def start() -> None:
        await check_storage()
        if popularity:
            await load_popularity_data()

    def on_start() -> Any:
        from twisted.internet.defer import Deferred
        return Deferred.fromCoroutine(start())

    service = ImageService(
        source=source, nix=nix, builder=builder, storage=store, clock=reactor,
        max_builds=max_builds, moving_ttl=moving_ttl, reference=reference,
        on_start=on_start)
    pool.setServiceParent(service)
    build_pool.setServiceParent(service)
    return service


def make_image_service(config: Any, reactor: Any) -> ImageService:
    """
    The daemon's image service, from its validated
    :class:`~nixeryd.app.config.Config`.  Built images are named
    ``<name>:<tag>`` in the storage's index.

    :raises UsageError: when the GCS key file cannot be used.
    """
    from twisted.python.usage import UsageError

    from nixeryd.build.sources import source_from_config

    env = child_environment(os.environ)
    source = source_from_config(**{config.source.kind: config.source.location},
                                reactor=reactor, env=env)
    checks: list[Callable[[Any], Any]] = []
    if config.storage_backend == "gcs":
        from nixeryd.storage.gcs.storage import (GCSError, build_gcs_storage,
                                         load_service_account_key)
        try:
            key = (load_service_account_key(config.google_credentials)
                   if config.google_credentials else None)
        except GCSError as e:
            raise UsageError(str(e)) from None

        def storage(runner: Any) -> Any:
            try:
                return build_gcs_storage(reactor, runner, config.gcs_bucket, key,
                                         config.gcs_endpoint)
            except GCSError as e:
                raise UsageError(str(e)) from None

        checks.append(lambda store: store.check_bucket())
    else:
        from nixeryd.storage.filesystem import FilesystemStorage

        def storage(runner: Any) -> Any:
            return FilesystemStorage(config.storage_path, runner)

    return assemble_image_service(
        reactor, source=source, storage=storage,
        nix_timeout=config.nix_timeout, nix_options=config.nix_options,
        max_builds=config.max_builds, layer_budget=config.layer_budget,
        popularity=config.popularity_url, threads=config.layer_threads,
        reference=lambda name, tag: name + ":" + tag, start_checks=checks, env=env)

"""
Wiring: one function that assembles an image service from settings.

Both the daemon (``twistd nixery``) and the one-shot build command use it,
so they build images the same way.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

from twisted.logger import Logger

from nixeryd.builder import ImageBuilder
from nixeryd.images import ImageService
from nixeryd.layers import DEFAULT_LAYER_BUDGET
from nixeryd.nix import NixRunner, default_nix_dir
from nixeryd.pkgsource import source_from_config
from nixeryd.popularity import load_popularity
from nixeryd.process import child_environment
from nixeryd.threads import ThreadPoolService

log = Logger()


def assemble_image_service(
        reactor: Any, *, channel: str | None = None, pkgs_repo: str | None = None,
        pkgs_path: str | None = None, storage: Callable[[Any], Any],
        nix_timeout: float = 600.0, nix_options: Sequence[tuple[str, str]] = (),
        max_builds: int = 2, layer_budget: int = DEFAULT_LAYER_BUDGET,
        popularity: str | None = None, threads: int = 4,
        moving_ttl: float = 60.0,
        reference: Callable[[str, str], str] | None = None,
        environ: Mapping[str, str] = os.environ) -> ImageService:
    """
    Build an :class:`ImageService` and everything under it.

    :param storage: makes the storage backend from the thread-pool runner.
    :param popularity: a file or URL with popularity data, loaded when the
        service starts; its absence or failure is logged, never fatal.
    :param environ: the environment that Nix and git inherit (through an
        allow-list), read once here.
    :raises ValueError: when no package source is set.
    """
    env = child_environment(environ)
    source = source_from_config(channel, pkgs_repo, pkgs_path, reactor=reactor, env=env)
    pool = ThreadPoolService(reactor, threads)
    store = storage(pool)
    nix = NixRunner(reactor, nix_dir=default_nix_dir(), timeout=nix_timeout,
                    options=nix_options, env=env)
    builder = ImageBuilder(nix=nix, storage=store, runner=pool,
                           layer_budget=layer_budget)

    async def load() -> None:
        data = await load_popularity(popularity, reactor=reactor, runner=pool)
        builder.set_popularity(data)
        log.info("Loaded popularity data for {count} names", count=len(data))

    def start() -> Any:
        if not popularity:
            return None
        from twisted.internet.defer import Deferred
        return Deferred.fromCoroutine(load())

    return ImageService(
        source=source, nix=nix, builder=builder, storage=store, clock=reactor,
        max_builds=max_builds, moving_ttl=moving_ttl, reference=reference,
        children=(pool,), on_start=start)

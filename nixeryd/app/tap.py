"""
The ``nixery`` twistd plugin: command-line options and the service tree.

``twistd -n nixery --pkgs-path ... --storage-path ...`` (or the Nixery
environment variables) builds one :class:`~nixeryd.app.config.Config`, checks
it before anything starts, and runs the image service and the HTTP site
under one :class:`~twisted.application.service.MultiService`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Mapping, Optional

from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from nixeryd.app.config import Config, config_from
from nixeryd.app.settings import (
    CHANNEL,
    GCS_BUCKET,
    GCS_CREDENTIAL_SETTINGS,
    GCS_ENDPOINT,
    S3_SETTINGS,
    HEAD_TIMEOUT,
    IDLE_TIMEOUT,
    LAYER_BUDGET,
    LISTEN,
    MAX_BUILDS,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_CLIENT,
    NIX_TIMEOUT,
    PKGS_PATH,
    PKGS_REPO,
    POPULARITY_URL,
    PORT,
    STALL_TIMEOUT,
    STORAGE_BACKEND,
    STORAGE_PATH,
    THREADS,
    KEEP_BUILDS,
    BUILD_LOG_LINES,
    MAX_QUEUE,
    FAILURE_TTL,
    PRIVATE_SETTINGS,
    PLATFORMS,
    ImageOptions,
    flags,
    parameters,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProtocolFactory

    from nixeryd.app.wiring import IServiceReactor
    from nixeryd.auth.assemble import Auth
    from nixeryd.core.threads import ThreadPoolService
    from nixeryd.registry.connections import ConnectionLimits
    from nixeryd.registry.imagesource import ImageSource
    from nixeryd.service.images import ImageService


class Options(ImageOptions):
    """
    Options of ``twistd nixery``.

    Every option falls back to the environment variable named in its help
    (an empty variable counts as unset); the checked result is
    :attr:`config`.

    :param environ: the environment to read; the process environment when
        not given.
    """

    synopsis = "[options]"
    longdesc = ("A container registry that builds images from Nix packages on"
                " demand: `docker pull <host>/shell/git` gives an image with"
                " bash, coreutils and git.")

    optParameters = parameters(
        [LISTEN, PORT, CHANNEL, PKGS_REPO, PKGS_PATH, STORAGE_BACKEND, STORAGE_PATH,
         GCS_BUCKET, GCS_ENDPOINT, *S3_SETTINGS, NIX_TIMEOUT, POPULARITY_URL, MAX_BUILDS,
         LAYER_BUDGET, THREADS, KEEP_BUILDS, BUILD_LOG_LINES, MAX_QUEUE, FAILURE_TTL,
         HEAD_TIMEOUT, IDLE_TIMEOUT, STALL_TIMEOUT, MAX_CONNECTIONS_PER_CLIENT,
         MAX_CONNECTIONS, PLATFORMS, *GCS_CREDENTIAL_SETTINGS, *PRIVATE_SETTINGS],
        variables=True)
    optFlags = flags(GCS_CREDENTIAL_SETTINGS, variables=True)

    config: Config

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        super().__init__()
        self._environ: Mapping[str, str] = os.environ if environ is None else environ

    def postOptions(self) -> None:
        """Build and check the configuration, including the listen endpoint."""
        self.config = config_from(self, self._environ)
        from twisted.internet import reactor

        try:
            serverFromString(reactor, self.config.listen)  # type: ignore[no-untyped-call]
        except (ValueError, KeyError, TypeError) as error:
            raise usage.UsageError(
                "invalid listen endpoint %r: %s" % (self.config.listen, error)
            ) from None


def makeService(options: Options, reactor: Optional[IServiceReactor] = None) -> MultiService:
    """
    The service tree of ``twistd nixery``: :func:`build_service`, whose
    start-up checks run when the image service starts (the port is open
    by then) and stop the reactor if one fails.  A storage that cannot be
    made is one line on stderr and exit code 1, before anything starts.
    """
    from nixeryd.app.preflight import StartupFailed

    try:
        return build_service(options, reactor)
    except StartupFailed as e:
        raise SystemExit("nixeryd: %s" % (e.message,)) from None


def connection_limits(config: Config, open_files: Optional[int] = None) -> ConnectionLimits:
    """
    The HTTP site's connection limits: the configured deadlines and
    limits, the total never above what ``open_files`` descriptors carry
    (the process's soft limit when not given).
    """
    from nixeryd.registry.connections import (ConnectionLimits, connections_for_descriptors,
                                              open_file_limit)

    carried = connections_for_descriptors(
        open_file_limit() if open_files is None else open_files)
    total = carried if config.max_connections is None else min(config.max_connections, carried)
    return ConnectionLimits(
        head_timeout=config.head_timeout, idle_timeout=config.idle_timeout,
        stall_timeout=config.stall_timeout,
        per_client=config.max_connections_per_client, total=total)


def build_service(options: Options, reactor: Optional[IServiceReactor] = None, *,
                  check_at_start: bool = True) -> MultiService:
    """
    The service tree (:func:`nixeryd.app.wiring.make_daemon_service`).

    :param options: parsed :class:`Options`.
    :param reactor: the reactor; the global one when not given.
    :param check_at_start: run the start-up checks when the image service
        starts (``nixeryd serve`` runs them before, itself).
    :raises StartupFailed: when the storage cannot be made.
    """
    import functools

    from nixeryd.app.wiring import global_reactor, make_daemon_service, make_image_service
    from nixeryd.metrics.monitoring import make_monitoring
    from nixeryd.core.text import describe_source_setting
    from nixeryd.registry.site import make_site

    running = global_reactor() if reactor is None else reactor
    source = describe_source_setting(options.config.source.kind,
                                        options.config.source.location)
    monitoring = make_monitoring(running)
    limits = connection_limits(options.config)
    private = PrivateServices(options.config, running)

    def site(images: ImageService, blobs: ThreadPoolService) -> IProtocolFactory:
        return private.wrap(make_site(images, blobs, builds=images.builds, source=source,
                                      clock=running, monitoring=monitoring, limits=limits,
                                      auth=private.auth(images)))

    top = make_daemon_service(
        options.config, running, site=site,
        images=functools.partial(make_image_service, check_at_start=check_at_start,
                                 monitoring=monitoring),
        monitoring=monitoring)
    private.add_to(top)
    return top


class PrivateServices:
    """
    What a private instance adds to the service tree: the thread pool that
    checks passwords and tokens, the gate of ``/v2`` (:mod:`nixeryd.auth`),
    and TLS around the site with its ``SIGHUP`` reload
    (:mod:`nixeryd.registry.tls`); nothing when they are off.

    :raises StartupFailed: for TLS files that cannot be used.
    """

    def __init__(self, config: Config, reactor: IServiceReactor) -> None:
        from nixeryd.app.preflight import StartupFailed
        from nixeryd.core import defaults
        from nixeryd.core.threads import ThreadPoolService
        from nixeryd.registry.tls import ReloadingContextFactory

        self._config = config.private
        self._reactor = reactor
        self.pool = ThreadPoolService(reactor, defaults.AUTH_THREADS, name="nixeryd-auth")
        self.tls: Optional[ReloadingContextFactory] = None
        if self._config.tls_cert is not None and self._config.tls_key is not None:
            try:
                self.tls = ReloadingContextFactory(self._config.tls_cert,
                                                   self._config.tls_key)
            except (OSError, ValueError) as e:
                raise StartupFailed("TLS: %s" % (
                    e if isinstance(e, ValueError) else "cannot read %s: %s"
                    % (e.filename, e.strerror),)) from None

    def auth(self, images: ImageSource) -> Optional[Auth]:
        """The gate over ``images``, when authentication is on."""
        from nixeryd.app.preflight import StartupFailed
        from nixeryd.auth.assemble import AuthSetupFailed, make_auth

        try:
            return make_auth(self._config, images, runner=self.pool, clock=self._reactor)
        except AuthSetupFailed as e:
            raise StartupFailed(str(e)) from None

    def wrap(self, site: IProtocolFactory) -> IProtocolFactory:
        """The site, over TLS when configured."""
        from nixeryd.registry.tls import tls_factory

        return site if self.tls is None else tls_factory(self.tls, site)

    def add_to(self, top: MultiService) -> None:
        """
        Add the pool (when authentication or TLS is on) and the ``SIGHUP``
        handler to ``top``: it reads TLS files again, and without TLS keeps
        ``systemctl reload`` from ending the daemon.
        """
        from nixeryd.registry.tls import TLSReloadService

        if self._config.authenticated or self.tls is not None:
            self.pool.setServiceParent(top)  # type: ignore[no-untyped-call]
        reload = TLSReloadService(self.tls, self.pool, self._reactor)
        reload.setServiceParent(top)  # type: ignore[no-untyped-call]

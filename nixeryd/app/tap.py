"""
The ``nixery`` twistd plugin: command-line options and the service tree.

``twistd -n nixery --pkgs-path ... --storage-path ...`` (or the Nixery
environment variables) builds one :class:`~nixeryd.app.config.Config`, checks
it before anything starts, and runs the image service and the HTTP site
under one :class:`~twisted.application.service.MultiService`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from nixeryd.app.config import (
    DEFAULT_LAYER_BUDGET,
    DEFAULT_LISTEN,
    DEFAULT_MAX_BUILDS,
    DEFAULT_NIX_TIMEOUT,
    DEFAULT_THREADS,
    Config,
    config_from,
)


class Options(usage.Options):
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

    optParameters = [
        ["listen", None, None,
         "Server endpoint to listen on, e.g. tcp:8080:interface=127.0.0.1"
         " (default %s)." % (DEFAULT_LISTEN,)],
        ["port", None, None, "TCP port to listen on, on all interfaces [PORT]."],
        ["channel", None, None,
         "nixpkgs channel (branch or commit) to take packages from [NIXERY_CHANNEL]."],
        ["pkgs-repo", None, None,
         "Git repository of a package set; the image tag selects the ref"
         " [NIXERY_PKGS_REPO]."],
        ["pkgs-path", None, None,
         "Local directory of a package set [NIXERY_PKGS_PATH]."],
        ["storage-backend", None, None,
         "filesystem (default) or gcs [NIXERY_STORAGE_BACKEND]."],
        ["storage-path", None, None,
         "Directory for filesystem storage [STORAGE_PATH]."],
        ["gcs-bucket", None, None, "Bucket for gcs storage [GCS_BUCKET]."],
        ["gcs-endpoint", None, None,
         "GCS emulator URL, e.g. http://127.0.0.1:9023 [STORAGE_EMULATOR_HOST]."],
        ["nix-timeout", None, None,
         "Seconds allowed for each Nix step of an image, evaluation then"
         " build (default %g)"
         " [NIX_TIMEOUT]." % (DEFAULT_NIX_TIMEOUT,)],
        ["popularity-url", None, None,
         "File path or URL of package popularity data [NIX_POPULARITY_URL]."],
        ["max-builds", None, None,
         "Nix builds allowed at once (default %d) [NIXERY_MAX_BUILDS]."
         % (DEFAULT_MAX_BUILDS,)],
        ["layer-budget", None, None,
         "Most layers an image may have, 1 to 125 (default %d)"
         " [NIXERY_LAYER_BUDGET]." % (DEFAULT_LAYER_BUDGET,)],
        ["threads", None, None,
         "Threads for blocking work (default %d)." % (DEFAULT_THREADS,)],
    ]

    config: Config

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        super().__init__()
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self["nix-option"] = []

    def opt_nix_option(self, value: str) -> None:
        """A Nix setting NAME=VALUE (e.g. substituters= to build offline); repeatable [NIXERY_NIX_OPTIONS, ';'-separated]."""
        self["nix-option"].append(value)

    def postOptions(self) -> None:
        """Build and check the configuration, including the listen endpoint."""
        self.config = config_from(self, self._environ)
        from twisted.internet import reactor

        try:
            serverFromString(reactor, self.config.listen)
        except (ValueError, KeyError, TypeError) as error:
            raise usage.UsageError(
                "invalid listen endpoint %r: %s" % (self.config.listen, error)
            ) from None


ImageServiceFactory = Callable[[Config, Any], IService]


#: Threads sending blob bodies with sendfile: concurrent blob downloads
#: beyond this wait for a thread.
BLOB_THREADS = 32


def makeService(options: Options, reactor: Any = None,
                image_service_factory: Optional[ImageServiceFactory] = None,
                ) -> MultiService:
    """
    The service tree: the image service, then the listening site.

    :param options: parsed :class:`Options`.
    :param reactor: the reactor; the global one when not given.
    :param image_service_factory: builds the image service from the
        configuration and the reactor;
        :func:`nixeryd.app.wiring.make_image_service` when not given.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    if image_service_factory is None:
        from nixeryd.app.wiring import make_image_service

        image_service_factory = make_image_service
    from nixeryd.registry.web import make_site

    from nixeryd.core.threads import ThreadPoolService

    config = options.config
    images = image_service_factory(config, reactor)
    top = MultiService()
    images.setServiceParent(top)
    blob_pool = ThreadPoolService(reactor, BLOB_THREADS, name="nixeryd-blobs")
    blob_pool.setServiceParent(top)
    server = strports.service(config.listen, make_site(images, blob_pool),
                              reactor=reactor)
    server.setName("http")
    server.setServiceParent(top)
    return top

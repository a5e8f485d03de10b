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

from nixeryd.app.config import Config, config_from
from nixeryd.app.settings import (
    CHANNEL,
    GCS_BUCKET,
    GCS_ENDPOINT,
    LAYER_BUDGET,
    LISTEN,
    MAX_BUILDS,
    NIX_TIMEOUT,
    PKGS_PATH,
    PKGS_REPO,
    POPULARITY_URL,
    PORT,
    STORAGE_BACKEND,
    STORAGE_PATH,
    THREADS,
    ImageOptions,
    parameters,
)
from nixeryd.core import defaults


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
         GCS_BUCKET, GCS_ENDPOINT, NIX_TIMEOUT, POPULARITY_URL, MAX_BUILDS,
         LAYER_BUDGET, THREADS], variables=True)

    config: Config

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        super().__init__()
        self._environ: Mapping[str, str] = os.environ if environ is None else environ

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
    from nixeryd.registry.site import make_site

    from nixeryd.core.threads import ThreadPoolService

    config = options.config
    images = image_service_factory(config, reactor)
    top = MultiService()
    images.setServiceParent(top)
    blob_pool = ThreadPoolService(reactor, defaults.BLOB_THREADS, name="nixeryd-blobs")
    blob_pool.setServiceParent(top)
    server = strports.service(config.listen, make_site(images, blob_pool),
                              reactor=reactor)
    server.setName("http")
    server.setServiceParent(top)
    return top

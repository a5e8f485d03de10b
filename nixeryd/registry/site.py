"""
The registry's web site: the resource tree (``/v2``, the front page and
the build pages), TLS-guarded channels with bounded connections (limits
per client and in all, deadlines: :mod:`nixeryd.registry.connections`,
:mod:`nixeryd.registry.deadlines`) and one access log event per request.

:func:`make_site` is what the daemon listens with.
"""

from __future__ import annotations

import time
from typing import Optional

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from nixeryd.auth.assemble import Auth
from nixeryd.auth.gate import user_of
from nixeryd.metrics.daemon import DaemonMetrics
from nixeryd.metrics.monitoring import Monitoring
from nixeryd.registry.api import RegistryResource
from nixeryd.registry.blobs import BlobPool
from nixeryd.registry.connections import (BusyAnswer, ConnectionGuard, ConnectionLimits,
                                          client_of)
from nixeryd.registry.deadlines import DeadlineChannel
from nixeryd.registry.imagesource import ImageSource
from nixeryd.registry.pages.html import NotFoundPage
from nixeryd.registry.pages.resources import BuildsResource, IndexResource, mount_monitoring
from nixeryd.registry.responses import request_fields
from nixeryd.registry.tlsguard import TLSGuardSite
from nixeryd.service.builds import BuildHistory

access_log = Logger(namespace="nixeryd.access")


def _reactor_clock() -> IReactorTime:
    from twisted.internet import reactor

    return IReactorTime(reactor)


class RootResource(Resource):
    """
    The site's root: ``/v2`` is the registry, ``/`` the front page,
    ``/builds/<id>`` a build's page, and everything else a 404 page.

    :param builds: the build records the pages show; none when not given.
    :param source: the package source, described for people.
    :param clock: times the build pages' event streams (the global
        reactor when not given).
    :param auth: the gate of ``/v2``, the ``/token`` endpoint and the
        pages' guard, when authentication is on (:mod:`nixeryd.auth`).
    :ivar registry: the ``/v2`` resource.
    """

    def __init__(self, images: ImageSource, blob_pool: Optional[BlobPool] = None, *,
                 builds: Optional[BuildHistory] = None, source: Optional[str] = None,
                 clock: Optional[IReactorTime] = None, auth: Optional[Auth] = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.registry = RegistryResource(images, blob_pool,
                                         gate=auth.gate if auth is not None else None)
        self.putChild(b"v2", self.registry)
        if auth is not None and auth.token_endpoint is not None:
            self.putChild(b"token", auth.token_endpoint)
        build_pages: Resource = BuildsResource(
            builds, clock if clock is not None else _reactor_clock())
        index: Resource = IndexResource(builds, source)
        if auth is not None:
            index, build_pages = auth.guard_pages(builds, index, IndexResource(None, source),
                                                  build_pages)
        self.putChild(b"builds", build_pages)
        self._index = index
        self._not_found = NotFoundPage()

    def getChild(self, path: bytes, request: Request) -> Resource:
        """The front page for ``/``, the 404 page for anything else."""
        if path == b"" and not request.postpath:
            return self._index
        return self._not_found

    def render(self, request: Request) -> bytes | int:
        """Serve the front page for a request for the root itself."""
        page: bytes | int = self._index.render(request)  # type: ignore[no-untyped-call]
        return page


class RegistryRequest(Request):
    """A request that remembers when it started, for the access log."""

    def __init__(self, channel: http.HTTPChannel, *args: object, **kwargs: object) -> None:
        super().__init__(channel, *args, **kwargs)  # type: ignore[no-untyped-call]
        self.started = time.monotonic()


class RegistrySite(TLSGuardSite):
    """
    The registry's ``Site``: TLS-guarded channels with deadlines, as many
    as :attr:`connections` admits, and a structured access log.

    Each finished request produces one ``twisted.logger`` event with the
    fields ``method``, ``path``, ``status``, ``bytes``, ``duration``
    (seconds), ``client`` and ``user`` (the authenticated user, or
    ``None``), and is counted in ``metrics``.

    :param resource: the root of the resource tree.
    :param metrics: counts each finished request, if given.
    """

    requestFactory = RegistryRequest
    # Any callable returning a channel serves (see TLSGuardSite.protocol).
    protocol = DeadlineChannel

    _connections: Optional[ConnectionGuard] = None

    def __init__(self, resource: IResource, metrics: Optional[DaemonMetrics] = None) -> None:
        super().__init__(resource)  # type: ignore[no-untyped-call]
        self._metrics = metrics

    @property
    def connections(self) -> ConnectionGuard:
        """
        The open connections and their limits (by default those of
        :class:`ConnectionLimits`), on the site's reactor.
        """
        if self._connections is None:
            self._connections = ConnectionGuard(ConnectionLimits(), self.reactor)
        return self._connections

    def limit_connections(self, limits: ConnectionLimits,
                          clock: Optional[IReactorTime] = None) -> None:
        """
        Bound connections by ``limits``, timed on ``clock`` (the site's
        reactor when not given); blob responses sent with ``sendfile`` are
        given up after the same stall timeout as the others.
        """
        if clock is not None:
            self.reactor = clock
        self._connections = ConnectionGuard(limits, self.reactor)
        if isinstance(self.resource, RootResource):
            self.resource.registry.blobs.stall_timeout = limits.stall_timeout

    # A refused connection gets a plain protocol, not a channel: a listening
    # port takes any protocol from any factory.
    def buildProtocol(  # type: ignore[override]
            self, addr: Optional[IAddress]) -> Optional[Protocol]:
        """
        A channel with deadlines for an admitted connection; for one over
        a limit, a protocol that answers ``503`` and closes.
        """
        client = client_of(addr)
        guard = self.connections
        if not guard.admit(client):
            return BusyAnswer()
        channel: object = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        if isinstance(channel, DeadlineChannel):
            channel.attach(guard, client, self.reactor)
            return channel
        guard.release(client)
        return channel if isinstance(channel, Protocol) else None

    def stopFactory(self) -> None:
        """Report the refusals and aborts not yet reported: the site stops."""
        if self._connections is not None:
            self._connections.flush()
        super().stopFactory()

    def log(self, request: http.Request) -> None:
        """Emit the access log event for a finished request."""
        started = request.started if isinstance(request, RegistryRequest) else None
        duration = 0.0 if started is None else round(time.monotonic() - started, 6)
        address = request.getClientAddress()  # type: ignore[no-untyped-call]
        access_log.info(
            "{client} {method} {path} {status} {bytes} {duration}",
            **request_fields(request),
            status=request.code,
            bytes=request.sentLength,
            duration=duration,
            client=getattr(address, "host", None),
            user=user_of(request),
        )
        if self._metrics is not None:
            self._metrics.request_done(request.path or b"", request.method, request.code,
                                       request.sentLength)


def make_site(images: ImageSource, blob_pool: Optional[BlobPool] = None, *,
              builds: Optional[BuildHistory] = None, source: Optional[str] = None,
              clock: Optional[IReactorTime] = None,
              monitoring: Optional[Monitoring] = None,
              limits: Optional[ConnectionLimits] = None,
              auth: Optional[Auth] = None) -> RegistrySite:
    """
    The registry site serving ``images``; blob bodies go out with
    ``sendfile`` from ``blob_pool``'s threads when one is given.  The pages
    show ``builds`` and the package ``source`` (see :class:`RootResource`).
    With ``monitoring``, requests are counted and ``/metrics``,
    ``/healthz`` and ``/readyz`` answer.  ``limits`` bound its connections
    (by default, :class:`~nixeryd.registry.connections.ConnectionLimits`).
    ``auth`` guards ``/v2`` and serves ``/token`` (see :class:`RootResource`).
    """
    root = RootResource(images, blob_pool, builds=builds, source=source, clock=clock,
                        auth=auth)
    if monitoring is None:
        site = RegistrySite(root)
    else:
        mount_monitoring(root, monitoring)
        site = RegistrySite(root, monitoring.metrics)
    site.limit_connections(limits if limits is not None else ConnectionLimits(), clock)
    return site

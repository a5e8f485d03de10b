"""
The pages' resources: :class:`IndexResource` (``/``) and
:class:`BuildsResource` (``/builds/<id>``, ``/builds/<id>/events``,
``/builds/<id>/log``); :func:`mount_monitoring` adds the operators'
``/metrics``, ``/healthz`` and ``/readyz``.

Each page is rendered from records in memory on the reactor thread; the
largest is one build's kept log, escaped once per request.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from nixeryd.metrics.monitoring import Monitoring
from nixeryd.metrics.resources import HealthResource, MetricsResource, ReadyResource
from nixeryd.registry.hosts import request_host
from nixeryd.registry.httpnames import HEAD
from nixeryd.registry.pages.buildpage import build_page, log_text
from nixeryd.registry.pages.events import EVENT_STREAM, BuildEventStream, start_after
from nixeryd.registry.pages.html import (PLAIN_TEXT, PageResource, not_found, send_page,
                                         set_common_headers)
from nixeryd.registry.pages.index import IndexFacts, index_page
from nixeryd.service.builds import BuildHistory, BuildRecord


class IndexResource(PageResource):
    """
    The front page.

    :param builds: the build history, if any.
    :param source: the package source, described for people.
    """

    def __init__(self, builds: BuildHistory | None, source: str | None) -> None:
        super().__init__()
        self._builds = builds
        self._source = source

    def render_page(self, request: Request) -> bytes:
        """The page for this request's host and scheme."""
        facts = IndexFacts(host=request_host(request), secure=request.isSecure(),  # type: ignore[no-untyped-call]
                           source=self._source, builds=self._builds)
        return send_page(request, 200, index_page(facts))


class BuildsResource(PageResource):
    """
    Everything under ``/builds/``: a build's page, its event stream and
    its plain-text log; a 404 page for anything else, including builds no
    longer kept.

    :param builds: the build history, if any.
    :param clock: times the event streams' heartbeats.
    """

    def __init__(self, builds: BuildHistory | None, clock: IReactorTime) -> None:
        super().__init__()
        self._builds = builds
        self._clock = clock

    def render_page(self, request: Request) -> bytes | int:
        """Route by the rest of the path."""
        parts = request.postpath or []
        if not parts or self._builds is None:
            return not_found(request)
        try:
            build_id = parts[0].decode("ascii")
        except UnicodeDecodeError:
            return not_found(request)
        record = self._builds.get(build_id) if build_id else None
        if record is None:
            return not_found(request)
        rest = parts[1:]
        if rest == []:
            return send_page(request, 200, build_page(record))
        if rest == [b"log"]:
            return send_page(request, 200, log_text(record), PLAIN_TEXT)
        if rest == [b"events"]:
            return self._events(request, record)
        return not_found(request)

    def _events(self, request: Request, record: BuildRecord) -> bytes | int:
        if request.method == HEAD:
            request.setResponseCode(200)
            set_common_headers(request, EVENT_STREAM)
            return b""
        BuildEventStream(request, record, self._clock, start_after(request)).start()
        return NOT_DONE_YET


def mount_monitoring(root: Resource, monitoring: Monitoring) -> None:
    """
    Put ``/metrics``, ``/healthz`` and ``/readyz`` under ``root`` (see
    :mod:`nixeryd.metrics.resources`).
    """
    root.putChild(b"metrics", MetricsResource(monitoring.metrics))
    root.putChild(b"healthz", HealthResource())
    root.putChild(b"readyz", ReadyResource(monitoring.readiness))

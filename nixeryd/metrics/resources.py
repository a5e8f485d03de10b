"""
The operators' resources: ``/metrics`` (:class:`MetricsResource`, the
Prometheus text format), ``/healthz`` (:class:`HealthResource`: the
process answers) and ``/readyz`` (:class:`ReadyResource`: the last
readiness round found nothing wrong).

Each answers GET and HEAD (HEAD with GET's status and headers) and 405
to anything else, on the reactor thread and from memory: ``/readyz``
reads the result of the background checks
(:mod:`nixeryd.metrics.readiness`), never runs them.
"""

from __future__ import annotations

from twisted.web.server import Request

from nixeryd.metrics.daemon import CONTENT_TYPE, DaemonMetrics
from nixeryd.metrics.readiness import Readiness
from nixeryd.registry.httpnames import CONTENT_LENGTH, HEAD
from nixeryd.registry.pages.html import PLAIN_TEXT, PageResource, send_page, set_common_headers


class MetricsResource(PageResource):
    """``/metrics``: every metric of ``metrics``, as Prometheus scrapes them."""

    def __init__(self, metrics: DaemonMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_page(self, request: Request) -> bytes:
        """The exposition, or its headers alone for HEAD."""
        body = self._metrics.exposition()
        request.setResponseCode(200)
        set_common_headers(request, CONTENT_TYPE)
        request.responseHeaders.setRawHeaders(CONTENT_LENGTH, [b"%d" % (len(body),)])
        return b"" if request.method == HEAD else body


class HealthResource(PageResource):
    """``/healthz``: 200 ``ok`` whenever the process answers."""

    def render_page(self, request: Request) -> bytes:
        """Always ``ok``."""
        return send_page(request, 200, "ok\n", PLAIN_TEXT)


class ReadyResource(PageResource):
    """
    ``/readyz``: 200 ``ok`` when the last readiness round found nothing
    wrong, else 503 with one line per problem.
    """

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self._readiness = readiness

    def render_page(self, request: Request) -> bytes:
        """The last round's result."""
        problems = self._readiness.problems
        if not problems:
            return send_page(request, 200, "ok\n", PLAIN_TEXT)
        body = "not ready\n" + "".join("- %s\n" % (" ".join(p.split()),) for p in problems)
        return send_page(request, 503, body, PLAIN_TEXT)

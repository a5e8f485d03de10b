"""
HTML for people: escaping, the frame every page shares, and sending a
page with its security headers (:func:`send_page`, :class:`PageResource`).

Every piece of text that comes from a build or a client goes through
:func:`text` before it is placed in markup; page code builds HTML from
constants and escaped values only.
"""

from __future__ import annotations

import html

from twisted.web.resource import Resource
from twisted.web.server import Request

from nixeryd.registry.httpnames import ALLOWED_METHODS, CONTENT_LENGTH, CONTENT_TYPE, GET, HEAD
from nixeryd.registry.pages.assets import CONTENT_SECURITY_POLICY, SCRIPT, STYLE

HTML = b"text/html; charset=utf-8"
PLAIN_TEXT = b"text/plain; charset=utf-8"


def text(value: object) -> str:
    """``value`` as text that is safe in element content and quoted attributes."""
    return html.escape(str(value), quote=True)


def frame(title: str, body: str, *, script: bool = False) -> str:
    """
    A whole page: ``title`` (plain text, escaped here) and ``body``
    (markup, already escaped where it holds outside text), with the inline
    style and, when asked, the inline script.
    """
    script_tag = "<script>%s</script>\n" % (SCRIPT,) if script else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<title>%s</title>\n<style>%s</style>\n</head>\n<body>\n"
        "<header><a href=\"/\">nixeryd</a></header>\n%s\n%s</body>\n</html>\n"
        % (text(title), STYLE, body, script_tag))


def set_common_headers(request: Request, content_type: bytes) -> None:
    """The headers every page and stream carries."""
    headers = request.responseHeaders
    headers.setRawHeaders(CONTENT_TYPE, [content_type])
    headers.setRawHeaders(b"X-Content-Type-Options", [b"nosniff"])
    headers.setRawHeaders(b"Content-Security-Policy", [CONTENT_SECURITY_POLICY])
    headers.setRawHeaders(b"Referrer-Policy", [b"no-referrer"])
    headers.setRawHeaders(b"Cache-Control", [b"no-store"])


def send_page(request: Request, status: int, body: str,
              content_type: bytes = HTML) -> bytes:
    """
    Set the status and headers of a page and return what ``render``
    returns: the body, or nothing for HEAD (with the same length).
    """
    data = body.encode("utf-8")
    request.setResponseCode(status)
    set_common_headers(request, content_type)
    request.responseHeaders.setRawHeaders(CONTENT_LENGTH, [b"%d" % (len(data),)])
    return b"" if request.method == HEAD else data


def not_found(request: Request) -> bytes:
    """The 404 page; it does not repeat the path asked for."""
    return send_page(request, 404, frame("Not found", (
        "<main>\n<h1>Not found</h1>\n<p>There is no page here. Builds are kept for a"
        " while after they end; older ones are forgotten.</p>\n"
        "<p><a href=\"/\">How to pull from this registry, and its builds</a></p>\n"
        "</main>")))


def method_not_allowed(request: Request) -> bytes:
    """The 405 page, with ``Allow: GET, HEAD``."""
    body = send_page(request, 405, frame("Method not allowed", (
        "<main>\n<h1>Method not allowed</h1>\n"
        "<p>The pages of this registry answer GET and HEAD only.</p>\n</main>")))
    request.responseHeaders.setRawHeaders(b"Allow", [ALLOWED_METHODS])
    return body


class PageResource(Resource):
    """
    A page (or stream) that answers GET and HEAD, and 405 to anything
    else; subclasses implement :meth:`render_page`.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def render(self, request: Request) -> bytes | int:
        """Check the method, then render the page."""
        if request.method not in (GET, HEAD):
            return method_not_allowed(request)
        return self.render_page(request)

    def render_page(self, request: Request) -> bytes | int:
        """The page's body (see :func:`send_page`), or ``NOT_DONE_YET``."""
        raise NotImplementedError


class NotFoundPage(PageResource):
    """A 404 page for every path it is asked for."""

    def render_page(self, request: Request) -> bytes:
        """The 404 page."""
        return not_found(request)

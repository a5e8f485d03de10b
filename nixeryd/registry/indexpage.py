"""
The plain-text page served outside ``/v2``: what this registry is and
how to pull from it (:class:`IndexPage`).
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request

from nixeryd.registry.hosts import request_host
from nixeryd.registry.httpnames import ALLOWED_METHODS, CONTENT_LENGTH, CONTENT_TYPE, GET, HEAD

_INDEX_TEXT = """\
nixeryd: a container registry that builds images from Nix packages on demand.

Each /-separated part of an image name is a Nix package; "shell" adds bash
and core utilities. For example:

    docker pull {host}/shell/git
    podman run -it {host}/shell/htop htop

The registry API is served under /v2/.
"""


class IndexPage(Resource):
    """
    A plain-text page saying what this registry is and how to pull from it.

    :param status: 200 for ``/``, 404 for every other path outside ``/v2``.

    The ``Host`` header appears in the examples only when it is a plain
    host name or address (with an optional port), so the page never
    repeats arbitrary client input.
    """

    isLeaf = True

    def __init__(self, status: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._status = status

    def render(self, request: Request) -> bytes:
        """Answer GET and HEAD with the page; other methods with a 405."""
        headers = request.responseHeaders
        if request.method != GET and request.method != HEAD:
            request.setResponseCode(405)
            headers.setRawHeaders(b"Allow", [ALLOWED_METHODS])
            body = b"Method not allowed.\n"
        else:
            request.setResponseCode(self._status)
            shown = request_host(request) or "<registry host>"
            body = _INDEX_TEXT.format(host=shown).encode("utf-8")
            if self._status == 404:
                body = b"Not found.\n\n" + body
        headers.setRawHeaders(CONTENT_TYPE, [b"text/plain; charset=utf-8"])
        headers.setRawHeaders(b"X-Content-Type-Options", [b"nosniff"])
        headers.setRawHeaders(CONTENT_LENGTH, [b"%d" % (len(body),)])
        return b"" if request.method == HEAD else body

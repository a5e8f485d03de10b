"""
The ``/v2`` registry API: where each request is routed to its handler.

:meth:`RegistryResource.render` checks the method, turns the path into a
route (:func:`nixeryd.registry.routes.parse_v2_path`) and dispatches on
the route's type.  Warm manifests (:meth:`ImageSource.cached_image`) are
answered synchronously, without a coroutine: that is the hot path.
Everything else is a coroutine handler run by
:func:`nixeryd.registry.rendering.render_async`, which awaits the image
service; blobs are answered by :mod:`nixeryd.registry.blobs`.
"""

from __future__ import annotations

import json
from typing import Optional

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from nixeryd.auth.gate import AuthGate
from nixeryd.build.manifest import canonical_json
from nixeryd.core.documents import Image, ManifestDocument
from nixeryd.core.mediatypes import OCI_INDEX
from nixeryd.registry.blobs import BlobPool, BlobResponder
from nixeryd.registry.httpnames import (
    API_VERSION,
    API_VERSION_HEADER,
    CONTENT_LENGTH,
    CONTENT_TYPE,
    DIGEST_HEADER,
    GET,
    HEAD,
    IMMUTABLE,
    JSON,
)
from nixeryd.registry.imagesource import ImageSource
from nixeryd.registry.negotiate import accepts_index, choose_manifest
from nixeryd.registry.pagination import paginate
from nixeryd.registry.rendering import render_async
from nixeryd.registry.responses import MethodNotAllowed, write_failure
from nixeryd.registry.routes import (
    Blob,
    ManifestByDigest,
    ManifestByTag,
    Ping,
    Route,
    Referrers,
    TagsList,
    parse_v2_path,
)

_PING_BODY = b"{}"
#: The referrers of any manifest: none, since nothing can be pushed here.
_NO_REFERRERS = canonical_json(
    {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})


def _set_manifest_headers(request: Request, document: ManifestDocument) -> bytes:
    """Set the headers of a manifest response and return its body."""
    headers = request.responseHeaders
    body = document.body
    headers.setRawHeaders(CONTENT_TYPE, [document.media_type.encode("ascii")])
    headers.setRawHeaders(CONTENT_LENGTH, [b"%d" % (len(body),)])
    headers.setRawHeaders(DIGEST_HEADER, [document.digest.encode("ascii")])
    return body


def _query_value(request: Request, name: bytes) -> Optional[str]:
    """The first value of a query parameter, or ``None``."""
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name)
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


def _client_address(request: Request) -> Optional[str]:
    """
    The peer's IP address, which cold work is counted against; ``None`` for
    a connection without one (a UNIX socket).
    """
    address = request.getClientAddress()  # type: ignore[no-untyped-call]
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


class RegistryResource(Resource):
    """
    The ``/v2`` API, mounted at ``/v2`` and dispatching on the rest of the
    path itself (names contain ``/``).

    :param images: the image service.
    :param blob_pool: threads for sending blob bodies with ``sendfile``;
        see :class:`~nixeryd.registry.blobs.BlobResponder`.
    :param clock: the reactor, for scheduling; the global one when not given.
    :param gate: when authentication is on, what every request passes
        first (:mod:`nixeryd.auth.gate`); cold work then counts against
        the user rather than the address.

    :ivar blobs: answers blob requests.
    """

    isLeaf = True

    def __init__(self, images: ImageSource, blob_pool: Optional[BlobPool] = None,
                 clock: Optional[IReactorTime] = None, *,
                 gate: Optional[AuthGate] = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._images = images
        self._gate = gate
        if clock is None:
            from twisted.internet import reactor as global_reactor

            clock = global_reactor
        self.blobs = BlobResponder(blob_pool, clock)

    def render(self, request: Request) -> bytes | int:
        """
        Route one request: return the body at once (warm manifests, the
        ping) or ``NOT_DONE_YET`` when a handler or an error answers it.
        """
        request.responseHeaders.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
        method = request.method
        try:
            if method != GET and method != HEAD:
                raise MethodNotAllowed(
                    "this registry is read-only: only GET and HEAD are supported",
                    {"method": method.decode("ascii", "backslashreplace")})
            route = parse_v2_path(request.postpath or ())
        except Exception:
            write_failure(request, Failure())  # type: ignore[no-untyped-call]
            return NOT_DONE_YET
        if self._gate is not None:
            try:
                identity = self._gate.admitted_now(request, route)
            except Exception:
                write_failure(request, Failure())  # type: ignore[no-untyped-call]
                return NOT_DONE_YET
            if identity is None:
                return render_async(request, self._admitted, route)
            return self._route(request, route, identity.client)
        return self._route(request, route, _client_address(request))

    def _route(self, request: Request, route: Route, client: Optional[str]) -> bytes | int:
        """Answer an admitted request; ``client`` is who cold work counts against."""
        method = request.method
        match route:
            case ManifestByTag():
                index = accepts_index(request.requestHeaders.getRawHeaders(b"accept"))
                image = self._images.cached_image(route.name, route.tag, index=index)
                if image is not None:
                    # Warm images are answered at once, without a coroutine.
                    body = self._manifest_body(request, image)
                    return b"" if method == HEAD else body
                return render_async(request, self._manifest_by_tag, route, client, index)
            case Blob():
                return render_async(request, self._blob, route)
            case ManifestByDigest():
                return render_async(request, self._manifest_by_digest, route)
            case TagsList():
                return render_async(request, self._tags, route)
            case Referrers():
                return self._referrers(request)
            case Ping():
                body = self._ping(request)
                return b"" if method == HEAD else body

    async def _admitted(self, request: Request, route: Route) -> Optional[bytes]:
        """
        Admit a request through the gate (which may need threads), then
        answer it as :meth:`_route` does (a body, or a handler of its own).
        """
        assert self._gate is not None
        identity = await self._gate.admit(request, route)
        answer = self._route(request, route, identity.client)
        return answer if isinstance(answer, bytes) else None

    def _ping(self, request: Request) -> bytes:
        headers = request.responseHeaders
        headers.setRawHeaders(CONTENT_TYPE, [JSON])
        headers.setRawHeaders(CONTENT_LENGTH, [b"2"])
        return _PING_BODY

    async def _manifest_by_tag(self, request: Request, route: ManifestByTag,
                               client: Optional[str], index: bool) -> bytes:
        image = await self._images.image(route.name, route.tag, client=client, index=index)
        return self._manifest_body(request, image)

    def _manifest_body(self, request: Request, image: Image) -> bytes:
        """Headers and body of the manifest the client accepts best."""
        document = choose_manifest(
            image, request.requestHeaders.getRawHeaders(b"accept"))
        request.responseHeaders.setRawHeaders(b"Vary", [b"Accept"])
        return _set_manifest_headers(request, document)

    async def _manifest_by_digest(self, request: Request,
                                  route: ManifestByDigest) -> bytes:
        document = await self._images.manifest(route.digest)
        body = _set_manifest_headers(request, document)
        request.responseHeaders.setRawHeaders(b"Cache-Control", [IMMUTABLE])
        return body

    async def _tags(self, request: Request, route: TagsList) -> bytes:
        tags = sorted(await self._images.tags(route.name))
        page, next_query = paginate(
            tags, _query_value(request, b"n"), _query_value(request, b"last"))
        body = json.dumps({"name": route.name, "tags": page}).encode("utf-8")
        headers = request.responseHeaders
        if next_query is not None:
            headers.setRawHeaders(b"Link", [
                b'</v2/%s/tags/list?%s>; rel="next"'
                % (route.name.encode("ascii"), next_query.encode("ascii"))])
        headers.setRawHeaders(CONTENT_TYPE, [JSON])
        headers.setRawHeaders(CONTENT_LENGTH, [b"%d" % (len(body),)])
        return body

    def _referrers(self, request: Request) -> bytes:
        """
        The referrers API: an empty image index, whatever the subject
        (the spec forbids a 404 from a registry that has the API).  With
        an ``artifactType`` filter, the empty list is the filtered list
        too, and the response says the filter was applied.
        """
        headers = request.responseHeaders
        headers.setRawHeaders(CONTENT_TYPE, [OCI_INDEX.encode("ascii")])
        headers.setRawHeaders(CONTENT_LENGTH, [b"%d" % (len(_NO_REFERRERS),)])
        if _query_value(request, b"artifactType") is not None:
            headers.setRawHeaders(b"OCI-Filters-Applied", [b"artifactType"])
        return b"" if request.method == HEAD else _NO_REFERRERS

    async def _blob(self, request: Request, route: Blob) -> Optional[bytes]:
        blob = await self._images.blob(route.digest)
        return self.blobs.respond(request, blob)

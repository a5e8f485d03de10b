"""
Request paths as route labels: a small fixed set (:data:`ROUTES`), so that
the request metrics have a bounded number of series whatever paths
clients ask for.  Pure: bytes in, a constant string out.

The classification follows the resource tree's routing closely enough to
count (``/v2/<name>/manifests/<reference>`` is ``manifest`` whether or
not the name is valid); a percent-encoded operation (``%6Danifests``),
which the registry decodes, counts as ``other``.
"""

from __future__ import annotations

PING = "ping"
MANIFEST = "manifest"
BLOB = "blob"
TAGS = "tags"
REFERRERS = "referrers"
INDEX = "index"
BUILD_PAGE = "build_page"
BUILD_EVENTS = "build_events"
METRICS = "metrics"
HEALTH = "health"
OTHER = "other"

#: Every route label, in the order the metrics list them.
ROUTES = (PING, MANIFEST, BLOB, TAGS, REFERRERS, INDEX, BUILD_PAGE, BUILD_EVENTS, METRICS,
          HEALTH, OTHER)

#: Paths outside ``/v2`` and ``/builds/`` that have a route of their own.
_EXACT = {
    b"/": INDEX,
    b"/v2": PING,
    b"/v2/": PING,
    b"/metrics": METRICS,
    b"/healthz": HEALTH,
    b"/readyz": HEALTH,
}

#: The shortest ``/v2/…/manifests`` and ``…/blobs`` heads with a name.
_MANIFESTS = b"/manifests"
_BLOBS = b"/blobs"
_REFERRERS = b"/referrers"
_MIN_MANIFESTS_HEAD = len(b"/v2/x" + _MANIFESTS)
_MIN_BLOBS_HEAD = len(b"/v2/x" + _BLOBS)
_MIN_REFERRERS_HEAD = len(b"/v2/x" + _REFERRERS)


def route_of(path: bytes) -> str:
    """The route label of a request path (without its query string)."""
    exact = _EXACT.get(path)
    if exact is not None:
        return exact
    if path.startswith(b"/v2/"):
        head = path[:path.rfind(b"/")]
        if head.endswith(_MANIFESTS) and len(head) >= _MIN_MANIFESTS_HEAD:
            return MANIFEST
        if head.endswith(_BLOBS) and len(head) >= _MIN_BLOBS_HEAD:
            return BLOB
        if head.endswith(_REFERRERS) and len(head) >= _MIN_REFERRERS_HEAD:
            return REFERRERS
        if path.endswith(b"/tags/list") and len(path) > len(b"/v2/tags/list"):
            return TAGS
        return OTHER
    if path.startswith(b"/builds/"):
        return BUILD_EVENTS if path.endswith(b"/events") else BUILD_PAGE
    return OTHER


#: Method labels; any other method is ``other``.
_METHODS = {method: method.decode("ascii") for method in (
    b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS")}


def method_label(method: bytes) -> str:
    """The method label: a common method's name, else ``other``."""
    return _METHODS.get(method, OTHER)

"""
Loading the popularity data that guides layering.

Popularity data says how many packages of the package set refer to each
store path name (``{"glibc-2.37-8": 31337, ...}``); the layering algorithm
gives popular paths layers of their own so images share them.  The data is
an optimisation only: when it is not configured, cannot be fetched or is
malformed, a warning is logged and layering goes on without it, so a
registry never fails to start or build because of it.

The data can come from a local file or from an ``http://`` or
``https://`` URL.  Reading the file and decoding the JSON (a few
megabytes) go through the given runner (a thread pool in the daemon),
never on the reactor thread.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, ResponseFailed

from treq import collect
from treq.client import HTTPClient

from nixeryd.core.httpbody import BodyTooLarge, read_limited
from nixeryd.core.threads import Runner

log = Logger()

#: How long fetching the data from a URL may take, in seconds.
DEFAULT_FETCH_TIMEOUT = 60.0

#: The largest popularity document accepted, in bytes.  Real data for all
#: of nixpkgs is a few megabytes.
MAX_POPULARITY_BYTES = 64 * 1024 * 1024

_URL_SCHEMES = ("http://", "https://")


class PopularityTooLarge(ValueError):
    """The popularity document exceeds :data:`MAX_POPULARITY_BYTES`."""


class PopularityFetchFailed(Exception):
    """The server answered the popularity request with an error status."""


def parse_popularity(data: bytes) -> dict[str, int]:
    """
    Decode a popularity document.

    :param data: UTF-8 JSON, an object mapping store path names to
        non-negative integer counts.
    :return: the counts by name.
    :raise ValueError: if the data is not such an object (invalid JSON or
        UTF-8, another JSON type, a non-integer or negative count).
    """
    document: Any = json.loads(data)
    if not isinstance(document, dict):
        raise ValueError("popularity data must be a JSON object, not %s"
                         % (type(document).__name__,))
    for name, count in document.items():
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError("popularity of %r must be an integer, not %r"
                             % (name, count))
        if count < 0:
            raise ValueError("popularity of %r is negative: %d" % (name, count))
    return document


def _read_and_parse(path: str) -> dict[str, int]:
    """Read a popularity file and decode it; runs in a worker thread."""
    with open(path, "rb") as stream:
        data = stream.read(MAX_POPULARITY_BYTES + 1)
    if len(data) > MAX_POPULARITY_BYTES:
        raise PopularityTooLarge("%s is larger than %d bytes"
                                 % (path, MAX_POPULARITY_BYTES))
    return parse_popularity(data)


async def load_popularity(source: str | None, *, reactor: IReactorTime,
                          runner: Runner,
                          treq_client: HTTPClient | None = None,
                          timeout: float = DEFAULT_FETCH_TIMEOUT) -> dict[str, int]:
    """
    Load popularity data, or give empty data if that is not possible.

    :param source: a local file path, an ``http(s)://`` URL, or ``None``
        or ``""`` for no data.
    :param reactor: keeps the deadline of a URL fetch; the default HTTP
        client connects with it too.
    :param runner: runs file reading and JSON decoding off the reactor
        thread.
    :param treq_client: the HTTP client for URLs; by default one over a
        plain :class:`~twisted.web.client.Agent` on ``reactor``.
    :param timeout: seconds a URL fetch may take in all.
    :return: the counts by store path name; empty when ``source`` is
        unset or loading failed (which is logged as a warning).
    """
    if not source:
        return {}
    try:
        if source.startswith(_URL_SCHEMES):
            client = treq_client if treq_client is not None else HTTPClient(
                Agent(reactor))  # type: ignore[no-untyped-call]
            fetching = Deferred.fromCoroutine(_fetch(client, source))
            fetching.addTimeout(timeout, reactor)
            data = await fetching
            counts = await runner.run(parse_popularity, data)
        else:
            counts = await runner.run(_read_and_parse, source)
    except CancelledError:
        raise
    except Exception as error:
        log.warn("Popularity data from {source} is unavailable, layering "
                 "without it: {error}", source=source, error=repr(error))
        return {}
    log.info("Loaded popularity data for {count} store path names from {source}",
             count=len(counts), source=source)
    return counts


async def _fetch(client: HTTPClient, url: str) -> bytes:
    """
    The body of a successful GET of ``url``, within the size limit.

    The agent reports a cancelled request as a failed response; that is
    turned back into :class:`CancelledError`, so a timeout or a cancelled
    load is told apart from a server error.
    """
    try:
        response = await client.get(url, unbuffered=True)
    except ResponseFailed as error:
        if any(reason.check(CancelledError) for reason in error.reasons):
            raise CancelledError() from error
        raise
    if response.code != 200:
        await collect(response, lambda chunk: None)
        raise PopularityFetchFailed("%s answered HTTP %d" % (url, response.code))
    try:
        return await read_limited(response, MAX_POPULARITY_BYTES)
    except BodyTooLarge:
        raise PopularityTooLarge("%s is larger than %d bytes"
                                 % (url, MAX_POPULARITY_BYTES)) from None

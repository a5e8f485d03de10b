"""
Floods of registry requests for the end-to-end tests of the limits on
cold work: many connections to a daemon on loopback, each with one GET,
from chosen source addresses (any ``127.x.y.z`` reaches a daemon
listening on ``127.0.0.1``), kept open for a while, then closed without
reading their answers: requests their clients abandoned.
"""

from __future__ import annotations

import json
import selectors
import socket
import time
from typing import Sequence

from attrs import frozen


@frozen
class Answer:
    """
    What a flooding connection was answered before it was closed.

    :ivar status: the HTTP status.
    :ivar retry_after: the ``Retry-After`` header, if any.
    :ivar message: the first registry error's message, if any.
    """

    status: int
    retry_after: str | None
    message: str | None


def connect(port: int, path: str, source: str = "127.0.0.1") -> socket.socket:
    """A connection from ``source`` to the daemon at ``port``, its GET of ``path`` sent."""
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.bind((source, 0))
    connection.connect(("127.0.0.1", port))
    connection.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n"
                       % (path.encode("ascii"), port))
    return connection


def flood(port: int, paths: Sequence[str], sources: Sequence[str],
          hold: float) -> list[Answer]:
    """
    Send one GET of each path, each on a connection of its own from the
    sources in turn, keep every connection open until ``hold`` seconds
    from the first (and half a second after the last, for the answers
    sent at once), reading what arrives, then close them all.

    :returns: the answers that arrived in time (at most one per path).
    """
    started = time.monotonic()
    received: dict[socket.socket, bytes] = {}
    with selectors.DefaultSelector() as selector:
        for index, path in enumerate(paths):
            connection = connect(port, path, sources[index % len(sources)])
            connection.setblocking(False)
            received[connection] = b""
            selector.register(connection, selectors.EVENT_READ)
            _read(selector, received, 0)
        deadline = max(started + hold, time.monotonic() + 0.5)
        while selector.get_map() and time.monotonic() < deadline:
            _read(selector, received, deadline - time.monotonic())
    for connection in received:
        connection.close()
    return [answer for answer in map(_answer, received.values()) if answer is not None]


def _read(selector: selectors.BaseSelector, received: dict[socket.socket, bytes],
          timeout: float) -> None:
    """Read what has arrived within ``timeout`` seconds; forget connections that ended."""
    for key, _ in selector.select(max(0.0, timeout)):
        readable = key.fileobj
        assert isinstance(readable, socket.socket)
        data = readable.recv(65536)
        if data:
            received[readable] += data
        else:
            selector.unregister(readable)


def _answer(response: bytes) -> Answer | None:
    """The status, ``Retry-After`` and error message of a whole response, if one came."""
    head, separator, body = response.partition(b"\r\n\r\n")
    if not separator:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    message = None
    try:
        message = json.loads(body)["errors"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    return Answer(status, headers.get("retry-after"), message)

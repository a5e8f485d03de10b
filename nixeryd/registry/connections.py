"""
How many connections the registry holds, from whom, and for how long.

Every connection costs a descriptor, two while a blob file is open for it;
a process out of descriptors can accept no one (``EMFILE``) and open no
file.  So connections are limited per client address and in all, the
total sized from the open-file limit (:func:`connections_for_descriptors`),
and a new connection over a limit is answered with a minimal ``503`` and
closed at once (:class:`BusyAnswer`): it never reaches HTTP.

:class:`ConnectionLimits` holds the limits and the three deadlines that
:mod:`nixeryd.registry.deadlines` enforces on each connection.
:class:`ConnectionGuard` counts open connections by client and reports
refused and aborted ones in at most one log line a minute, as such events
come in floods.
"""

from __future__ import annotations

import resource
from typing import Optional

from attrs import field, frozen
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from nixeryd.core import defaults
from nixeryd.registry.floodreport import REPORT_INTERVAL, Flood, FloodReport
from nixeryd.service.admission import client_key

_BUSY_TEXT = b"Too many connections; try again shortly.\n"

BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT)
)
"""The bytes sent on a connection over a limit, before it is closed."""


def open_file_limit() -> int:
    """The process's soft limit of open files (``RLIMIT_NOFILE``)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connections_for_descriptors(soft_limit: int,
                                blob_threads: int = defaults.BLOB_THREADS,
                                reserve: int = defaults.DESCRIPTOR_RESERVE) -> int:
    """
    The most connections that ``soft_limit`` descriptors carry: each may
    hold its socket and an open blob file, each sendfile thread one copy
    of a socket, and ``reserve`` stay for everything else.  At least 1.
    """
    return max(1, (soft_limit - reserve - blob_threads) // 2)


@frozen
class ConnectionLimits:
    """
    The limits of a site's connections.

    :ivar head_timeout: seconds to send a whole request, from the
        connection or from its first byte (not renewed by later bytes).
    :ivar idle_timeout: seconds a kept-alive connection waits for the next
        request's first byte.
    :ivar stall_timeout: seconds a response (or a closing connection) may
        make no progress before the connection is aborted.
    :ivar per_client: connections one client address may hold.
    :ivar total: connections in all; by default, what the open-file limit
        carries (:func:`connections_for_descriptors`).
    """

    head_timeout: float = defaults.HEAD_TIMEOUT
    idle_timeout: float = defaults.IDLE_TIMEOUT
    stall_timeout: float = defaults.STALL_TIMEOUT
    per_client: int = defaults.MAX_CONNECTIONS_PER_CLIENT
    total: int = field(factory=lambda: connections_for_descriptors(open_file_limit()))


def client_of(address: Optional[IAddress]) -> str:
    """
    The key a connection is counted under: its peer's host as admission
    counts clients (:func:`~nixeryd.service.admission.client_key`: an
    IPv6 address by its ``/64``, which one host or customer usually has
    whole), so that a client cannot pass the limit by rotating addresses
    within it.
    """
    host = getattr(address, "host", None)
    if host is None:
        return str(address)
    return client_key(str(host)) or str(host)


class BusyAnswer(Protocol):
    """Sends :data:`BUSY_ANSWER` and closes: a connection over a limit."""

    def connectionMade(self) -> None:
        """Answer at once; nothing the client sends is read."""
        transport = self.transport
        assert transport is not None
        transport.write(BUSY_ANSWER)
        transport.loseConnection()


class ConnectionGuard:
    """
    The open connections of one site, by client address, within
    :class:`ConnectionLimits`; and the report of connections refused or
    aborted.

    The first refusal or abort after a quiet spell starts an interval; at
    its end one line says how many there were, why, and from which
    clients.  Nothing is scheduled while nothing is pending.

    :param limits: the limits.
    :param clock: schedules the report.
    :param interval: seconds between report lines.
    :param logger: where the line goes.
    """

    def __init__(self, limits: ConnectionLimits, clock: IReactorTime,
                 interval: float = REPORT_INTERVAL,
                 logger: Optional[Logger] = None) -> None:
        self.limits = limits
        self._clock = clock
        self._interval = interval
        self._log = logger if logger is not None else Logger(namespace=__name__)
        self._by_client: dict[str, int] = {}
        self._open = 0
        self._refusals = FloodReport(clock, self._report, interval)

    @property
    def open(self) -> int:
        """Connections admitted and not yet closed."""
        return self._open

    def open_from(self, client: str) -> int:
        """Connections ``client`` holds."""
        return self._by_client.get(client, 0)

    @property
    def pending(self) -> int:
        """Refusals and aborts counted and not yet reported."""
        return self._refusals.pending

    def admit(self, client: str) -> bool:
        """
        Count a new connection from ``client`` if the limits allow it;
        else count it as refused and return false.
        """
        held = self._by_client.get(client, 0)
        if held >= self.limits.per_client:
            self.note(client, "refused over the limit of %d per client" % (self.limits.per_client,))
            return False
        if self._open >= self.limits.total:
            self.note(client, "refused over the limit of %d in all" % (self.limits.total,))
            return False
        self._by_client[client] = held + 1
        self._open += 1
        return True

    def release(self, client: str) -> None:
        """A connection from ``client`` has closed."""
        held = self._by_client.get(client, 0)
        if held <= 1:
            self._by_client.pop(client, None)
        else:
            self._by_client[client] = held - 1
        self._open = max(0, self._open - 1)

    def note(self, client: str, reason: str) -> None:
        """Count one connection refused or aborted for ``reason``."""
        self._refusals.note(client, reason)

    def flush(self) -> None:
        """Report what is counted now and schedule nothing (the site stops)."""
        self._refusals.flush()

    def _report(self, flood: Flood) -> None:
        count = flood.count
        self._log.info(
            "{count} connection{s} refused or aborted in the last {period}: {reason_list}"
            " (from {client_list})",
            count=count, s="" if count == 1 else "s", period=flood.period,
            reasons=flood.reasons, clients=flood.clients,
            reason_list="; ".join("%d %s" % (n, reason) for reason, n in flood.reasons.items()),
            client_list=flood.client_list, event="connections-refused")

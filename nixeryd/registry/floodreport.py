"""
Events that come in floods (connections refused, TLS handshakes answered
on the plain port), counted and reported in at most one log line an
interval, naming a few of the clients.

:class:`FloodReport` does the counting and the timing; what the line says
is its owner's (:mod:`nixeryd.registry.connections`,
:mod:`nixeryd.registry.tlsguard`).
"""

from __future__ import annotations

from typing import Callable, Optional

from attrs import frozen
from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Seconds over which events are counted before one line reports them.
REPORT_INTERVAL = 60.0

#: Client addresses named in one report line, at most.
REPORTED_CLIENTS = 5


@frozen
class Flood:
    """
    What one interval counted.

    :ivar reasons: events by reason, in the order first seen.
    :ivar clients: the first :data:`REPORTED_CLIENTS` clients, in order.
    :ivar more_clients: other clients were counted too.
    :ivar period: the interval in words: ``minute`` or ``<n> seconds``.
    """

    reasons: dict[str, int]
    clients: list[str]
    more_clients: bool
    period: str

    @property
    def count(self) -> int:
        """Events in all."""
        return sum(self.reasons.values())

    @property
    def client_list(self) -> str:
        """The named clients, with ``...`` for the others."""
        return ", ".join(self.clients) + (", ..." if self.more_clients else "")


class FloodReport:
    """
    Counts events by reason and client; the first after a quiet spell
    starts an interval, at whose end ``report`` is given what was counted.
    Nothing is scheduled while nothing is pending.

    :param clock: schedules the report.
    :param report: says what one interval counted (a log line).
    :param interval: seconds between reports.
    """

    def __init__(self, clock: IReactorTime, report: Callable[[Flood], None],
                 interval: float = REPORT_INTERVAL) -> None:
        self._clock = clock
        self._report_to = report
        self._interval = interval
        self._reasons: dict[str, int] = {}
        self._clients: dict[str, None] = {}
        self._more_clients = False
        self._call: Optional[IDelayedCall] = None

    @property
    def pending(self) -> int:
        """Events counted and not yet reported."""
        return sum(self._reasons.values())

    def note(self, client: str, reason: str = "") -> None:
        """Count one event from ``client`` for ``reason``."""
        self._reasons[reason] = self._reasons.get(reason, 0) + 1
        if client not in self._clients:
            if len(self._clients) < REPORTED_CLIENTS:
                self._clients[client] = None
            else:
                self._more_clients = True
        if self._call is None:
            self._call = self._clock.callLater(self._interval, self._report)

    def flush(self) -> None:
        """Report what is counted now and schedule nothing (the site stops)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._report()

    def _report(self) -> None:
        self._call = None
        if not self._reasons:
            return
        flood = Flood(self._reasons, list(self._clients), self._more_clients,
                      "minute" if self._interval == 60 else "%g seconds" % (self._interval,))
        self._reasons = {}
        self._clients = {}
        self._more_clients = False
        self._report_to(flood)

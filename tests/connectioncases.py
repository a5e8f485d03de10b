"""
Helpers for the tests of connection limits and deadlines: a site with
small limits on a fake clock, its channels on in-memory transports that
record an abort and can hold bytes the "kernel" has not taken, and
readers of what went over the wire.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, Logger
from twisted.python.failure import Failure
from zope.interface import provider

from nixeryd.registry.connections import ConnectionLimits
from nixeryd.registry.site import RegistrySite, make_site
from nixeryd.service.builds import BuildHistory
from nixeryd.testing.images import FakeImageService

#: Limits small enough to count, long enough to tell apart.
LIMITS = ConnectionLimits(head_timeout=10.0, idle_timeout=30.0, stall_timeout=60.0,
                          per_client=3, total=5)


class ConnectionTransport(StringTransport):
    """
    An in-memory transport that records an abort and, like a TCP
    transport, says how many written bytes it still holds
    (``dataBuffer``, ``offset``, ``_tempDataLen``): :meth:`hold` makes the
    "kernel" take nothing from then on, :meth:`take` lets it take some.
    As Twisted's TCP transport does, it pauses its producer while it
    holds more than :attr:`bufferSize` bytes and resumes it once they are
    all taken.

    :ivar aborted: whether ``abortConnection`` was called.
    :ivar protocol: the protocol connected to it.
    """

    def __init__(self, client: str = "10.0.0.1") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", client, 40000))
        self.aborted = False
        self.protocol: Optional[IProtocol] = None
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self._holding = False
        self.bufferSize = 64 * 1024
        self.producer_paused = False

    def hold(self) -> None:
        """From now on, keep written bytes as not yet taken."""
        self._holding = True

    @property
    def held(self) -> int:
        """Bytes written and not yet taken."""
        return len(self.dataBuffer) - self.offset

    def take(self, count: int) -> None:
        """The kernel takes ``count`` of the bytes held."""
        self.offset = min(len(self.dataBuffer), self.offset + count)
        if self.held == 0 and self.producer_paused and self.producer is not None:
            self.producer_paused = False
            self.producer.resumeProducing()

    def write(self, data: bytes) -> None:
        super().write(data)
        if self._holding:
            self.dataBuffer += data
            if (self.held > self.bufferSize and not self.producer_paused
                    and self.producer is not None):
                self.producer_paused = True
                self.producer.pauseProducing()

    def writeSequence(self, data: Any) -> None:
        for part in data:
            self.write(part)

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def lose(self) -> None:
        """
        End the connection as a TCP transport does once aborted: its
        producer is stopped, then its protocol told.
        """
        if self.producer is not None:
            self.producer.stopProducing()
        assert self.protocol is not None
        self.protocol.connectionLost(Failure(ConnectionAborted()))


def limited_site(images: FakeImageService | None = None,
                 limits: ConnectionLimits = LIMITS,
                 builds: BuildHistory | None = None,
                 clock: Clock | None = None) -> tuple[RegistrySite, Clock]:
    """A registry site with ``limits``, its deadlines on a fake clock."""
    clock = clock if clock is not None else Clock()
    site = make_site(images if images is not None else FakeImageService(), clock=clock,
                     limits=limits, builds=builds)
    return site, clock


def connect(site: RegistrySite, client: str = "10.0.0.1") -> tuple[Any, ConnectionTransport]:
    """
    A new connection from ``client``: the protocol the site built for it
    (a channel, or the busy answer) on a :class:`ConnectionTransport`.
    """
    protocol = site.buildProtocol(IPv4Address("TCP", client, 40000))
    transport = ConnectionTransport(client)
    assert protocol is not None
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def open_descriptors(path: str) -> int:
    """How many of this process's descriptors have ``path`` open."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(os.path.join("/proc/self/fd", name)) == path:
                count += 1
        except OSError:
            pass  # closed since it was listed
    return count


_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def statuses(wire: bytes) -> list[int]:
    """The status codes of the responses in ``wire``, in order."""
    return [int(match.group(1)) for match in _STATUS_LINE.finditer(wire)]


def listing_logger(events: list[LogEvent]) -> Logger:
    """A logger appending its events to ``events``."""
    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    return Logger(observer=observe)

"""
Loopback helpers: :func:`serve_locally` runs a site on a free loopback
port for one test, and :class:`RawClient` sends fixed bytes and records
the answer, for tests of what goes over the wire.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site


def serve_locally(testcase: SynchronousTestCase, site: Site) -> str:
    """
    Listen with ``site`` on a free loopback port until ``testcase`` ends.

    :return: the base URL, ``http://127.0.0.1:<port>``.
    """
    from twisted.internet import reactor

    # listenTCP is typed to take a ServerFactory of Twisted's default
    # protocol type, which no Site is (the factory type is invariant).
    port: IListeningPort = reactor.listenTCP(
        0, site, interface="127.0.0.1")  # type: ignore[arg-type]
    testcase.addCleanup(port.stopListening)
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    return "http://127.0.0.1:%d" % (address.port,)


class RawClient(Protocol):
    """
    A TCP client that sends fixed bytes, records everything the server
    answers, and fires :attr:`closed` when the connection ends: for tests
    of what goes over the wire (TLS refusal, pipelining, disconnects, a
    client that stops reading).
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self._size_waiters: list[tuple[int, Deferred[None]]] = []

    def connectionMade(self) -> None:
        self._connected_transport().write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        waiting = self._size_waiters
        self._size_waiters = [(size, waiter) for size, waiter in waiting
                              if size > len(self.received)]
        for size, waiter in waiting:
            if size <= len(self.received):
                waiter.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)

    def wait_for_bytes(self, size: int) -> Deferred[None]:
        """A Deferred that fires once at least ``size`` bytes have arrived."""
        waiter: Deferred[None] = Deferred()
        if len(self.received) >= size:
            waiter.callback(None)
        else:
            self._size_waiters.append((size, waiter))
        return waiter

    def pause_reading(self) -> None:
        """Stop reading from the socket, so that the server's writes back up."""
        IPushProducer(self._connected_transport()).pauseProducing()

    def disconnect(self) -> Deferred[None]:
        """Close the connection; the Deferred is :attr:`closed`."""
        self._connected_transport().loseConnection()
        return self.closed

    def _connected_transport(self) -> ITransport:
        transport = self.transport
        assert transport is not None, "not connected"
        return transport

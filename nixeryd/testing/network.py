"""
Loopback helpers: :func:`serve_locally` runs a site on a free loopback
port for one test, and :class:`RawClient` sends fixed bytes and records
the answer, for tests of what goes over the wire.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol



def serve_locally(testcase: Any, site: Any) -> str:
    """
    Listen with ``site`` on a free loopback port until ``testcase`` ends.

    :return: the base URL, ``http://127.0.0.1:<port>``.
    """
    from twisted.internet import reactor

    port: IListeningPort = reactor.listenTCP(0, site, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return "http://127.0.0.1:%d" % (port.getHost().port,)


class RawClient(Protocol):
    """
    A TCP client that sends fixed bytes, records everything the server
    answers, and fires :attr:`closed` when the connection ends: for tests
    of what goes over the wire (TLS refusal, pipelining, disconnects).
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(None)

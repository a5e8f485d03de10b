"""
A prompt answer to TLS handshakes sent to the plain HTTP port.

Clients built on containers/image (skopeo, podman, buildah) try HTTPS
first, even for registries configured as insecure, and fall back to plain
HTTP only when the TLS attempt fails.  An HTTP server that reads the TLS
ClientHello as the start of a request line waits for a line ending that
never comes, so each client call stalls until its TLS timeout (10 s).

A TLS connection always opens with a handshake record, whose first byte is
``0x16``; no HTTP request line can start with it.  :class:`TLSGuardChannel`
looks at the first byte of each connection and, for a handshake, answers
at once with a plain ``400`` response and closes the connection, as other
registries do.  The TLS client then fails fast ("server gave HTTP response
to HTTPS client") and the fallback to HTTP follows immediately.

Such refusals are routine (every podman pull makes one), so they are not
logged one by one: :class:`TLSRefusals` counts them and logs at most one
line per interval (a minute) saying how many there were.
:class:`TLSGuardSite` keeps one count per site and reports what is left
of it when the site stops listening.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

from nixeryd.registry.floodreport import REPORT_INTERVAL, Flood, FloodReport

TLS_HANDSHAKE_RECORD = 0x16
"""The TLS record type of a handshake message (the first byte sent)."""

_EXPLANATION = b"This registry speaks plain HTTP on this port; TLS is not offered.\n"

PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n"
    b"\r\n%s" % (len(_EXPLANATION), _EXPLANATION)
)
"""The bytes sent to a client that opens with a TLS handshake."""

class TLSRefusals:
    """
    Counts refused TLS handshakes and logs at most one line per interval.

    The first refusal after a quiet spell starts an interval; when it
    ends, one line says how many handshakes were refused in it and from
    which clients.  Nothing is scheduled while no refusal is pending.

    :param clock: schedules the report.
    :param interval: seconds between report lines.
    :param logger: where the line goes.
    """

    def __init__(self, clock: IReactorTime, interval: float = REPORT_INTERVAL,
                 logger: Optional[Logger] = None) -> None:
        self._log = logger if logger is not None else Logger(namespace=__name__)
        self._refusals = FloodReport(clock, self._report, interval)

    @property
    def pending(self) -> int:
        """Refusals counted and not yet reported."""
        return self._refusals.pending

    def refused(self, client: str) -> None:
        """Count one refused handshake from ``client``."""
        self._refusals.note(client)

    def flush(self) -> None:
        """Report what is counted now, and schedule nothing (the site stops)."""
        self._refusals.flush()

    def _report(self, flood: Flood) -> None:
        count = flood.count
        self._log.info(
            "Refused {count} TLS handshake{s} on the plain HTTP port in the last"
            " {period} (from {client_list}); clients fall back to plain HTTP",
            count=count, s="" if count == 1 else "s", period=flood.period,
            clients=flood.clients, client_list=flood.client_list, event="tls-refused")


class TLSGuardChannel(HTTPChannel):
    """
    An HTTP channel that refuses a TLS handshake as soon as it arrives.

    Everything else is plain :class:`~twisted.web.http.HTTPChannel`
    behaviour; the only cost on ordinary connections is one flag test per
    received chunk.  Refusals are counted by the site's
    :attr:`TLSGuardSite.tls_refusals`.
    """

    _first_byte_checked = False
    _refused = False

    def dataReceived(self, data: bytes) -> None:
        """
        Answer a TLS ClientHello at once; pass anything else to HTTP.

        Once refused, the rest of the handshake (which may arrive in later
        chunks before the connection is closed) is dropped.
        """
        if not self._first_byte_checked:
            self._first_byte_checked = True
            if data[0] == TLS_HANDSHAKE_RECORD:
                self._refused = True
                self._refuse_tls()
                return
        elif self._refused:
            return
        HTTPChannel.dataReceived(self, data)  # type: ignore[no-untyped-call]

    _host: Optional[IAddress] = None

    def getHost(self) -> IAddress:
        """
        The local address, asked of the socket once per connection:
        Twisted asks for it at every request, and a keep-alive client
        sends many.
        """
        if self._host is None:
            self._host = HTTPChannel.getHost(self)  # type: ignore[no-untyped-call]
        return self._host

    def _refuse_tls(self) -> None:
        """Send the plain-HTTP 400, close the connection and count the refusal."""
        transport = self.transport
        # Data only arrives on a connected channel.
        assert transport is not None
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        transport.write(PLAIN_HTTP_ANSWER)
        transport.loseConnection()
        site = getattr(self, "site", None)
        if isinstance(site, TLSGuardSite):
            peer = transport.getPeer()
            site.tls_refusals.refused(str(getattr(peer, "host", peer)))


class TLSGuardSite(Site):
    """
    A :class:`~twisted.web.server.Site` of :class:`TLSGuardChannel`
    channels, with the count of the handshakes they refused.
    """

    # Twisted types ``protocol`` as the factory of its HTTP/1.1-or-HTTP/2
    # wrapper; any callable returning a channel works the same way, and this
    # site serves plain HTTP/1.1 through the guard.
    protocol = TLSGuardChannel  # type: ignore[assignment]

    _tls_refusals: Optional[TLSRefusals] = None

    @property
    def tls_refusals(self) -> TLSRefusals:
        """The count of refused handshakes, reported on the site's reactor."""
        if self._tls_refusals is None:
            self._tls_refusals = TLSRefusals(self.reactor)
        return self._tls_refusals

    @tls_refusals.setter
    def tls_refusals(self, refusals: TLSRefusals) -> None:
        self._tls_refusals = refusals

    def stopFactory(self) -> None:
        """Report the refusals not yet reported: the site stops listening."""
        if self._tls_refusals is not None:
            self._tls_refusals.flush()
        super().stopFactory()

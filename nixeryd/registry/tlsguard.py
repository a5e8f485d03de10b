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
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.web.http import HTTPChannel

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


class TLSGuardChannel(HTTPChannel):
    """
    An HTTP channel that refuses a TLS handshake as soon as it arrives.

    Everything else is plain :class:`~twisted.web.http.HTTPChannel`
    behaviour; the only cost on ordinary connections is one flag test per
    received chunk.
    """

    _log = Logger()
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
        """Send the plain-HTTP 400 and close the connection."""
        transport = self.transport
        # Data only arrives on a connected channel.
        assert transport is not None
        peer = transport.getPeer()
        self._log.debug(
            "Refused a TLS handshake from {client} on the plain HTTP port",
            client=getattr(peer, "host", str(peer)),
        )
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        transport.write(PLAIN_HTTP_ANSWER)
        transport.loseConnection()

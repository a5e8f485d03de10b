"""
Blob bodies copied through the reactor: :class:`BlobSender`, a push
producer that reads a file a chunk at a time while the connection takes it.

This is how bodies go out on connections where ``sendfile`` cannot be
used (TLS, in-memory transports in tests) and when every thread of the
blob pool is busy; :mod:`nixeryd.registry.sendfile` is the zero-copy way.
:class:`StreamedRequest` names what both senders use of a request.
"""

from __future__ import annotations

from typing import BinaryIO, Optional, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from nixeryd.registry.responses import NamedRequest, request_fields

log = Logger()

BLOB_CHUNK_SIZE = 256 * 1024
"""Bytes read from a blob file per write to the connection."""


class StreamedRequest(NamedRequest, Protocol):
    """
    The part of a :class:`twisted.web.server.Request` that a body sender
    uses, once the status and headers are set.
    """

    @property
    def channel(self) -> object:
        """The connection's channel; ``None`` once the connection is gone."""

    @property
    def finished(self) -> int:
        """True once :meth:`finish` has been called."""

    sentLength: int
    """Body bytes sent, for the access log."""

    def notifyFinish(self) -> Deferred[None]:
        """Fires when the response is done, fails if the connection is lost first."""

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """Let ``producer`` be paused and resumed as the connection's buffer fills."""

    def unregisterProducer(self) -> None:
        """Forget the producer."""

    def write(self, data: bytes) -> None:
        """Send part of the body (the headers first, on the first call)."""

    def finish(self) -> None:
        """End the response."""

    def loseConnection(self) -> None:
        """Drop the connection, making a truncated body visible."""


@implementer(IPushProducer)
class BlobSender:
    """
    Streams part of an open file to a request, as a push producer.

    Chunks are read and written while the connection accepts them; when
    its buffer fills, Twisted pauses the sender and resumes it once the
    buffer has drained, so no more than a chunk or two is ever in memory.
    The file is closed when the body is complete or the client goes away,
    including when the channel aborts a client that stopped reading
    (:mod:`nixeryd.registry.deadlines`): Twisted then stops the sender.
    """

    def __init__(self, request: StreamedRequest, file: BinaryIO, length: int,
                 chunk_size: int = BLOB_CHUNK_SIZE) -> None:
        self._request = request
        self._file: Optional[BinaryIO] = file
        self._remaining = length
        self._chunk_size = chunk_size
        self._paused = False
        self._sending = False

    def start(self) -> None:
        """Register with the request and send the first chunks."""
        self._request.registerProducer(self, True)
        self._send()

    def _send(self) -> None:
        if self._sending:
            return
        self._sending = True
        try:
            while not self._paused and self._file is not None:
                if self._remaining == 0:
                    self._complete()
                    break
                wanted = min(self._chunk_size, self._remaining)
                data = self._file.read(wanted)
                if len(data) != wanted:
                    raise OSError("blob file is shorter than its recorded size")
                self._remaining -= wanted
                self._request.write(data)
        except Exception:
            log.failure("Could not send blob for {method} {path}",
                        **request_fields(self._request))
            self._close()
            if self._request.channel is not None:
                self._request.unregisterProducer()
                self._request.loseConnection()
        finally:
            self._sending = False

    def _complete(self) -> None:
        self._close()
        self._request.unregisterProducer()
        self._request.finish()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def pauseProducing(self) -> None:
        """Stop sending until resumed (the connection's buffer is full)."""
        self._paused = True

    def resumeProducing(self) -> None:
        """Send more (the connection's buffer has drained)."""
        self._paused = False
        self._send()

    def stopProducing(self) -> None:
        """The connection is gone: close the file and send nothing more."""
        self._close()

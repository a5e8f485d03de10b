"""
A request body streamed from a region of a file, for uploads to a cloud
storage service (a resumable upload's chunks, an S3 PUT or part): a layer is never held whole in memory, and the reactor
thread never reads the disk.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from nixeryd.core.threads import Runner
from nixeryd.storage.errors import StorageServiceError


def _open_for_reading(path: str) -> BinaryIO:
    return open(path, "rb")


@implementer(IBodyProducer)
class FileRegionProducer:
    """
    A request body that streams ``length`` bytes of a file from ``offset``.

    Each piece of at most ``read_size`` bytes is read in the thread pool and
    written to the connection; while the connection's buffer is full the
    producer is paused and reads nothing, so memory use stays near one piece
    whatever the file size.

    :ivar pieces_read: how many pieces were read so far.
    :ivar largest_piece: the size of the largest piece written.
    """

    log = Logger()

    def __init__(self, runner: Runner, path: str, offset: int, length: int,
                 read_size: int = 256 * 1024) -> None:
        self.length = length
        self.pieces_read = 0
        self.largest_piece = 0
        self._runner = runner
        self._path = path
        self._offset = offset
        self._read_size = read_size
        self._paused: Deferred[None] | None = None
        self._stopped = False
        self._finished: Deferred[None] = Deferred()

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """Start writing the region to ``consumer``; fires when all is written."""
        d = Deferred.fromCoroutine(self._produce(consumer))
        d.addErrback(self._failed)
        return self._finished

    async def _produce(self, consumer: IConsumer) -> None:
        f = await self._runner.run(_open_for_reading, self._path)
        try:
            position, end = self._offset, self._offset + self.length
            while position < end:
                while self._paused is not None and not self._stopped:
                    await self._paused
                if self._stopped:
                    return
                wanted = min(self._read_size, end - position)
                data = await self._runner.run(os.pread, f.fileno(), wanted, position)
                if self._stopped:
                    return
                if not data:
                    raise StorageServiceError("%s ended at byte %d while uploading it"
                                              % (self._path, position))
                self.pieces_read += 1
                self.largest_piece = max(self.largest_piece, len(data))
                consumer.write(data)
                position += len(data)
        finally:
            await self._runner.run(f.close)
        if not self._stopped:
            self._finished.callback(None)

    def _failed(self, failure: Failure) -> None:
        if not self._stopped and not self._finished.called:
            self._finished.errback(failure)
        else:
            self.log.failure("Reading {path} for an upload failed", failure,
                             path=self._path)

    def pauseProducing(self) -> None:
        """Stop reading until :meth:`resumeProducing`."""
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        """Continue reading after :meth:`pauseProducing`."""
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        """
        Abandon the body (the request failed or was cancelled); the Deferred
        from :meth:`startProducing` then never fires, as the interface asks.
        """
        self._stopped = True
        self.resumeProducing()

"""
Blobs found damaged while a client pulls: made again before they are
answered.

A blob request for an image held in memory finds, now and then, that
storage holds other bytes under the blob's digest
(:class:`~nixeryd.storage.integrity.BlobCorrupt`: a replaced object, a
damaged file).  The client already has the manifest, so the blob it asks
for must be made again: :class:`BlobRepairs` has the image service make
again each image in memory that names the blob (the caches then find the
damage, and the build writes the blob anew, replacing it) and answers the
request with the repaired blob.  Requests for other blobs of an image
being made again wait for that work rather than start their own.  A blob
that no image in memory names, or that is still damaged afterwards, is
answered as unknown: never with the damaged bytes.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from nixeryd.core.documents import LocalBlob, RedirectBlob
from nixeryd.core.sharedwork import follow
from nixeryd.storage.integrity import BlobCorrupt

#: How many rounds of repair one blob request may wait for.
REPAIR_ROUNDS = 3

Where = LocalBlob | RedirectBlob


class BlobRepairs:
    """
    Repairs of damaged blobs, for the image service.

    :param locate: where a blob is (``IStorage.blob``, with the service's
        error handling); fails with :class:`BlobCorrupt` for a damaged one.
    :param users: the ``(name, tag)`` of every image in memory that names
        a blob; those images are forgotten from memory.
    :param remake: make an image again, by name and tag.
    """

    log = Logger()

    def __init__(self, locate: Callable[[str], Awaitable[Where]],
                 users: Callable[[str], list[tuple[str, str]]],
                 remake: Callable[[str, str], Awaitable[object]]) -> None:
        self._locate = locate
        self._users = users
        self._remake = remake
        self._running: set[Deferred[None]] = set()

    async def blob(self, digest: str) -> Where:
        """
        The blob, made again first if it is found damaged.

        :raises BlobCorrupt: when it could not be made again.
        """
        for _ in range(REPAIR_ROUNDS):
            try:
                return await self._locate(digest)
            except BlobCorrupt:
                pass
            if self._running:
                # Another request is making an image again: this blob may
                # be one of its blobs.
                await DeferredList([follow(work) for work in self._running])
                continue
            names = self._users(digest)
            if not names:
                break
            self.log.warn("Blob {digest} is damaged in storage: making again the"
                          " {count} images in memory that use it", digest=digest,
                          count=len(names), images=["%s:%s" % name for name in names])
            work = Deferred.fromCoroutine(self._remake_all(names))
            self._running.add(work)
            try:
                await follow(work)
            finally:
                self._running.discard(work)
        raise BlobCorrupt("blob damaged in storage and not made again; pull the image"
                          " again", {"digest": digest})

    async def _remake_all(self, names: list[tuple[str, str]]) -> None:
        for name, tag in names:
            try:
                await self._remake(name, tag)
            except Exception as e:
                self.log.warn("Could not make {image}:{tag} again: {error}",
                              image=name, tag=tag, error=str(e))


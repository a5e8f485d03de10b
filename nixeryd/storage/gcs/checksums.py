"""
What each blob object of the bucket must hold, as this process knows it:
the MD5 it was uploaded with, or the one a cache document recorded, and
whether the object was seen with it (see :mod:`nixeryd.storage.integrity`).

Cloud Storage computes ``md5Hash`` from the bytes it holds, so an object
whose bytes were replaced has another one; comparing it with the MD5 the
blob was written with tells a damaged object from the blob, without
reading it.  This memory makes that one metadata request per blob and
process: a blob this process uploaded, or checked once, is trusted
without asking again, except by blob requests, which compare the metadata
they fetch anyway.  Pure bookkeeping, on the reactor thread.
"""

from __future__ import annotations

from twisted.logger import Logger

from nixeryd.service.lru import LRU
from nixeryd.storage.gcs.bucket import ObjectResource
from nixeryd.storage.integrity import MISSING, BlobCheck, BlobState

#: How many blobs' MD5s are remembered.
REMEMBERED_BLOBS = 100_000
#: How an MD5 is written as a checksum (:class:`BlobCheck`).
MD5_PREFIX = "md5:"


def md5_checksum(md5: str) -> str:
    """The checksum to record for a base64 MD5 (``md5Hash``)."""
    return MD5_PREFIX + md5


def checksum_md5(checksum: str | None) -> str | None:
    """The base64 MD5 of a recorded checksum, or ``None`` for none or another kind."""
    if checksum is None or not checksum.startswith(MD5_PREFIX):
        return None
    return checksum[len(MD5_PREFIX):] or None


class ObjectChecksums:
    """
    Digest → (the MD5 its object must have, whether it was seen with it).

    :param size: how many blobs are remembered (the least recently used
        are forgotten, and checked again when next reused).
    """

    log = Logger()

    def __init__(self, size: int = REMEMBERED_BLOBS) -> None:
        self._known: LRU[str, tuple[str, bool]] = LRU(size)

    def written(self, digest: str, md5: str) -> None:
        """The object now holds the blob, with this MD5 (uploaded, or found so)."""
        self._known.put(digest, (md5, True))

    def forget(self, digest: str) -> None:
        """The object is gone."""
        self._known.pop(digest, None)

    def expected(self, digest: str, checksum: str | None) -> str | None:
        """The MD5 the object must have: recorded by the caller, else known here."""
        recorded = checksum_md5(checksum)
        if recorded is not None:
            return recorded
        known = self._known.get(digest)
        return known[0] if known is not None else None

    def confirmed(self, digest: str, md5: str | None) -> BlobCheck | None:
        """
        The answer without a request, when the object was seen holding
        ``md5`` (or, with ``None``, holding what it must) in this process.
        """
        known = self._known.get_recent(digest)
        if known is None or not known[1] or (md5 is not None and md5 != known[0]):
            return None
        return BlobCheck(BlobState.INTACT, md5_checksum(known[0]))

    def judge(self, digest: str, md5: str | None, resource: ObjectResource | None,
              where: str) -> BlobCheck:
        """
        Compare an object's metadata with the MD5 it must have (``None``:
        nothing recorded, so what it has now is taken as what it must have,
        as for blobs cached before checksums were kept) and remember the
        outcome.

        :param where: the object's ``gs://`` address, for the log.
        """
        if resource is None:
            self.forget(digest)
            return MISSING
        observed = resource.get("md5Hash")
        if not isinstance(observed, str):
            # No MD5 to compare (a composite object, never written here).
            return BlobCheck(BlobState.INTACT, compared=False)
        compared = md5 is not None
        if md5 is None:
            md5 = observed
        if observed != md5:
            self._known.put(digest, (md5, False))
            self.log.warn("{object} is damaged: its MD5 is {observed}, the blob's is {md5}",
                          object=where, observed=observed, md5=md5, digest=digest)
            return BlobCheck(BlobState.CORRUPT, md5_checksum(md5))
        self._known.put(digest, (md5, True))
        return BlobCheck(BlobState.INTACT, md5_checksum(md5), compared=compared)

    def contradicts(self, digest: str, resource: ObjectResource, where: str) -> bool:
        """
        Whether metadata fetched for another reason (a blob request) shows
        an object other than the one known; remembered when it does.
        """
        known = self._known.get(digest)
        observed = resource.get("md5Hash")
        if known is None or not isinstance(observed, str) or observed == known[0]:
            return False
        self.judge(digest, known[0], resource, where)
        return True

"""
What each blob object of a bucket must hold, as this process knows it:
the fingerprints the object store gives of content (Cloud Storage's
``md5Hash``, S3's ETag) that the blob was written with, or that a cache
document recorded, and whether the object was seen with one of them (see
:mod:`nixeryd.storage.integrity`).

An object store computes these from the bytes it holds, so an object whose
bytes were replaced shows another one; comparing it with the blob's tells
a damaged object from the blob without reading it.  This memory makes
that one metadata request per blob and process: a blob this process
uploaded, or checked once, is trusted without asking again, except by
blob requests, which compare the metadata they fetch anyway.  Pure
bookkeeping, on the reactor thread.

A checksum is written ``<kind>:<value>[,<value>...]``: ``md5:<base64>``
on Cloud Storage; on S3, ``etag:`` and the ETags the object may show (the
MD5 of a single upload, or the multipart form; a copy onto itself, which
refreshes an object's time, may turn one into the other).
"""

from __future__ import annotations

from typing import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from nixeryd.core.sharedwork import SharedWork
from nixeryd.service.lru import LRU
from nixeryd.storage.integrity import MISSING, BlobCheck, BlobState

#: How many blobs' fingerprints are remembered.
REMEMBERED_BLOBS = 100_000

Fingerprints = frozenset[str]
#: Looks an object up: whether it exists, and its fingerprint (if any).
Look = Callable[[], Awaitable[tuple[bool, "str | None"]]]


def _always(observed: str) -> bool:
    return True


class ObjectChecksums:
    """
    Digest → (the fingerprints its object may show, whether it was seen
    with one of them).

    :param kind: the checksum's kind, ``md5`` or ``etag``.
    :param comparable: whether an observed fingerprint says anything of
        the content (an S3 ETag of an encrypted object does not).
    :param first_use: whether an observed fingerprint may be taken as the
        blob's when nothing was recorded (one a refresh could change may
        not).
    :param size: how many blobs are remembered (the least recently used
        are forgotten, and checked again when next reused).
    """

    log = Logger()

    def __init__(self, kind: str, *, comparable: Callable[[str], bool] = _always,
                 first_use: Callable[[str], bool] = _always,
                 size: int = REMEMBERED_BLOBS) -> None:
        self._prefix = kind + ":"
        self._comparable = comparable
        self._first_use = first_use
        self._known: LRU[str, tuple[Fingerprints, bool]] = LRU(size)
        self._asking: SharedWork[tuple[str, Fingerprints | None], BlobCheck] = SharedWork()

    async def check(self, digest: str, checksum: str | None, look: Look,
                    where: str) -> BlobCheck:
        """
        The check of a blob against ``checksum`` (or what is known here):
        from memory when the object was seen right in this process, else
        with one ``look`` (shared by concurrent callers).
        """
        expected = self.expected(digest, checksum)
        confirmed = self.confirmed(digest, expected)
        if confirmed is not None:
            return confirmed
        return await self._asking.wait((digest, expected), lambda: Deferred.fromCoroutine(
            self._ask(digest, expected, look, where)))

    async def _ask(self, digest: str, expected: Fingerprints | None, look: Look,
                   where: str) -> BlobCheck:
        exists, observed = await look()
        return self.judge(digest, expected, exists, observed, where)

    def checksum(self, fingerprints: Fingerprints) -> str:
        """The checksum to record for these fingerprints."""
        return self._prefix + ",".join(sorted(fingerprints))

    def parse(self, checksum: str | None) -> Fingerprints | None:
        """The fingerprints of a recorded checksum, or ``None`` (none, or another kind)."""
        if checksum is None or not checksum.startswith(self._prefix):
            return None
        values = frozenset(v for v in checksum[len(self._prefix):].split(",") if v)
        return values or None

    def written(self, digest: str, fingerprints: Fingerprints) -> None:
        """The object now holds the blob (uploaded, or found so)."""
        self._known.put(digest, (fingerprints, True))

    def forget(self, digest: str) -> None:
        """The object is gone."""
        self._known.pop(digest, None)

    def expected(self, digest: str, checksum: str | None) -> Fingerprints | None:
        """What the object may show: recorded by the caller, else known here."""
        recorded = self.parse(checksum)
        if recorded is not None:
            return recorded
        known = self._known.get(digest)
        return known[0] if known is not None else None

    def confirmed(self, digest: str, expected: Fingerprints | None) -> BlobCheck | None:
        """
        The answer without a request, when the object was seen holding
        ``expected`` (or, with ``None``, what it must) in this process.
        """
        known = self._known.get_recent(digest)
        if known is None or not known[1] or (expected is not None and expected != known[0]):
            return None
        return BlobCheck(BlobState.INTACT, self.checksum(known[0]))

    def judge(self, digest: str, expected: Fingerprints | None, exists: bool,
              observed: str | None, where: str) -> BlobCheck:
        """
        Compare what an object shows with what it may show (``None``:
        nothing recorded, so a fingerprint that may be taken as the blob's
        is, as for blobs cached before checksums were kept) and remember
        the outcome.

        :param exists: whether the object exists.
        :param observed: its fingerprint (``None`` when it shows none).
        :param where: the object's address, for the log.
        """
        if not exists:
            self.forget(digest)
            return MISSING
        if observed is None or not self._comparable(observed):
            return BlobCheck(BlobState.INTACT, compared=False)
        compared = expected is not None
        if expected is None:
            if not self._first_use(observed):
                return BlobCheck(BlobState.INTACT, compared=False)
            expected = frozenset({observed})
        if observed not in expected:
            self._known.put(digest, (expected, False))
            self.log.warn("{object} is damaged: it shows {observed}, the blob {expected}",
                          object=where, observed=observed, expected=sorted(expected),
                          digest=digest)
            return BlobCheck(BlobState.CORRUPT, self.checksum(expected))
        self._known.put(digest, (expected, True))
        return BlobCheck(BlobState.INTACT, self.checksum(expected), compared=compared)

    def contradicts(self, digest: str, observed: str | None, where: str) -> bool:
        """
        Whether metadata fetched for another reason (a blob request) shows
        an object other than the one known; remembered when it does.
        """
        known = self._known.get(digest)
        if (known is None or observed is None or not self._comparable(observed)
                or observed in known[0]):
            return False
        self.judge(digest, known[0], True, observed, where)
        return True

"""
Storage in an S3 bucket: AWS S3 or an S3-compatible server (MinIO, Ceph,
R2, SeaweedFS, rclone), with the object names both cloud backends share
(:mod:`nixeryd.storage.objectnames`).

Registry clients download blobs from the bucket itself:
:meth:`S3Storage.blob` answers with a SigV4 presigned URL, valid for a few
minutes, to an object it has just seen exist (or with its plain URL under
``public_url`` for a public bucket).  Everything else goes through the S3
API (:class:`~nixeryd.storage.s3.bucket.S3Client`) on the reactor, without
blocking it: hashing and file reads run in the injected thread pool.

A file is hashed once before it is sent (its MD5 and SHA-256 must be in
the first byte's headers).  Files up to ``multipart_threshold`` go up in
one PUT streamed from disk; larger ones as a multipart upload, part by
part, each part streamed from disk and retried on its own, and the upload
aborted on any failure so that no parts are left behind.  Uploads a dead
process left are aborted when a storage is checked at start-up
(:meth:`S3Storage.check_bucket`), once older than a day.  A blob that
already exists with the same size and ETag is not uploaded again.

For garbage collection, objects are listed with ListObjectsV2 and a
version is an object's ETag and time to the millisecond.  Storing a blob
that exists, or reusing it, copies it onto itself with a new
``x-amz-meta-mtime``, which gives it a new time (and so a new version);
servers backed by rclone take the time from that field.  A removal looks
the object up in a listing first and deletes it only if it is still the
version listed, with ``If-Match`` on its ETag where the server checks it.

Before a cache reuses a blob it is checked (:meth:`S3Storage.check_blob`):
the object's ETag against those the blob may show (its MD5, or its
multipart form), recorded in the cache documents or known to this
process, once per blob and process
(:class:`~nixeryd.storage.checksums.ObjectChecksums`); a blob request
compares the ETag its HEAD fetches anyway, and a damaged object is never
redirected to (:mod:`nixeryd.storage.integrity`).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Mapping

from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer

from treq.client import HTTPClient

from nixeryd.core.documents import LocalBlob, RedirectBlob
from nixeryd.core.errors import BlobUnknown
from nixeryd.core.httpbody import BodyTooLarge
from nixeryd.core.threads import Runner
from nixeryd.storage.canonical import uri_encode_path
from nixeryd.storage.circuit import Circuit
from nixeryd.storage.objectnames import (
    BLOB_PREFIX, blob_digest, blob_object_name, document_key, document_object_name,
    document_prefix)
from nixeryd.storage.bucketstorage import BucketStorage
from nixeryd.storage.checksums import Fingerprints, ObjectChecksums
from nixeryd.storage.integrity import BlobCheck, BlobCorrupt
from nixeryd.storage.interface import IStorage
from nixeryd.storage.listing import StoredBlob, StoredDocument
from nixeryd.storage.retry import NO_OBSERVER, Retrier, RetryObserver
from nixeryd.storage.s3.bucket import (
    BucketAddress, ObjectInfo, S3Client, aws_endpoint, default_addressing_style)
from nixeryd.storage.s3.credentials import find_credentials
from nixeryd.storage.s3.http import BACKEND, PreconditionFailed, S3Error
from nixeryd.storage.s3.index import S3Index
from nixeryd.storage.s3.objects import (
    UploadPlan, format_mtime, parse_last_modified, plan_upload)

DOCUMENT_LIMIT = 16 * 1024 * 1024
#: Files larger than this go up as multipart uploads.
DEFAULT_MULTIPART_THRESHOLD = 16 * 1024 * 1024
#: The size of each part but the last (S3 wants at least 5 MiB).
DEFAULT_PART_SIZE = 16 * 1024 * 1024
#: Seconds after which a multipart upload nobody finished is aborted.
STALE_UPLOAD_SECONDS = 24 * 3600.0

_PLAIN_MD5 = re.compile(r"[0-9a-f]{32}")
#: An ETag that says what the content is: an MD5, or a multipart upload's.
_CONTENT_ETAG = re.compile(r"[0-9a-f]{32}(-[0-9]+)?")


def _content_etag(etag: str) -> bool:
    return _CONTENT_ETAG.fullmatch(etag) is not None


def _plain_md5(etag: str) -> bool:
    return _PLAIN_MD5.fullmatch(etag) is not None


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def object_version(found: ObjectInfo) -> str:
    """An object's ETag and time, which a removal is guarded by."""
    return "%s@%s" % (found.etag, found.last_modified)


def _same_content(found: ObjectInfo, size: int, etags: Fingerprints) -> bool:
    """
    Whether a stored object holds the content of ``size`` bytes that shows
    one of ``etags``: the same size, and one of those ETags, or one that
    says nothing of the content (a multipart upload in other parts, an
    encrypted object).
    """
    return found.size == size and (found.etag in etags or not _plain_md5(found.etag))


@implementer(IStorage)
class S3Storage(BucketStorage[S3Client]):
    """
    Blobs and documents in one S3 bucket.

    :param clock: the time presigned URLs are valid from, and blobs
        refreshed at.
    :param runner: runs blocking work (hashing, file reads).
    :param client: the S3 API on the bucket.
    :param spool_directory: where layer files wait for their upload, in
        a directory of this storage's own; by default
        ``$TMPDIR/nixeryd-spool``, shared with other users.
    :param multipart_threshold: files up to this size go up in one PUT.
    :param part_size: the size of each part of a multipart upload.
    :param url_lifetime: seconds a presigned blob URL stays valid.
    :param public_url: the base URL under which the bucket's objects can be
        read without credentials (a public bucket, a CDN in front of it);
        blob URLs are then plain ones under it.

    Its :class:`~nixeryd.storage.interface.IStorage` methods, and the
    spool it claims when made (blocking), are
    :class:`~nixeryd.storage.bucketstorage.BucketStorage`'s.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, runner: Runner, client: S3Client, *,
                 spool_directory: str | None = None,
                 multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
                 part_size: int = DEFAULT_PART_SIZE,
                 url_lifetime: int = 300, public_url: str | None = None) -> None:
        super().__init__(clock, runner, client, spool_directory)
        self._multipart_threshold = multipart_threshold
        self._part_size = part_size
        self._url_lifetime = url_lifetime
        self._public_url = public_url.rstrip("/") if public_url else None
        self._index = S3Index(runner, client)
        # Taken as the blob's when nothing was recorded: a plain MD5 only
        # (a refresh, a copy onto itself, may turn a multipart ETag into one).
        self._checksums = ObjectChecksums("etag", comparable=_content_etag,
                                          first_use=_plain_md5)

    def _s3(self, key: str) -> str:
        return "s3://%s/%s" % (self.bucket, key)

    # -- blobs ------------------------------------------------------------

    async def _refresh(self, key: str) -> bool:
        """
        Give an object a new time (a copy onto itself), so that the garbage
        collector's grace period covers it as it covers a new one and a
        removal guarded by its earlier version fails; whether it exists.
        """
        return await self.client.touch(key, {"mtime": format_mtime(self._clock.seconds())})

    async def _refresh_quietly(self, key: str) -> None:
        """:meth:`_refresh`, with a failure (a key that may not copy) logged."""
        try:
            await self._refresh(key)
        except Exception as e:
            self.log.warn("Could not refresh the time of {target}, stored again: {error}",
                          target=self._s3(key), error=str(e))

    async def _needs_upload(self, key: str, plan: UploadPlan) -> bool:
        """Whether the blob must be uploaded; a blob already there is refreshed."""
        existing = await self.client.head(key)
        if existing is None:
            return True
        if _same_content(existing, plan.size, plan.etags()):
            await self._refresh_quietly(key)
            self._written(key, plan.etags())
            return False
        self.log.warn("{target} differs from its digest (size {stored}, ETag {etag},"
                      " expected {size}); replacing it", target=self._s3(key),
                      stored=existing.size, etag=existing.etag, size=plan.size)
        return True

    async def _store_file(self, path: str, digest: str) -> None:
        try:
            key = blob_object_name(digest)
            plan = await self._runner.run(plan_upload, path, self._multipart_threshold,
                                          self._part_size)
            if not await self._needs_upload(key, plan):
                return
            if plan.multipart:
                await self._upload_multipart(key, path, plan)
            else:
                await self.client.put_file(key, path, plan.parts[0])
            self._written(key, plan.etags())
        finally:
            await self._unspool(path)

    async def _upload_multipart(self, key: str, path: str, plan: UploadPlan) -> None:
        """
        Upload a file part by part; on any failure (cancellation included)
        abort the upload, so that S3 keeps none of its parts.
        """
        upload_id = await self.client.start_multipart(key)
        try:
            etags = []
            for part in plan.parts:
                etags.append(await self.client.upload_part(key, upload_id, path, part))
            try:
                await self.client.complete_multipart(key, upload_id, etags)
            except S3Error as e:
                # A completion retried after its answer was lost finds the
                # upload gone: the object is there if the first one worked.
                found = await self.client.head(key) if e.code == "NoSuchUpload" else None
                if found is None or found.size != plan.size:
                    raise
        except BaseException:
            try:
                await self.client.abort_multipart(key, upload_id)
            except Exception as e:
                self.log.warn("Could not abort the upload {upload} of {target}: {error};"
                              " the next start-up check aborts it once a day old",
                              upload=upload_id, target=self._s3(key), error=str(e))
            raise
        self.log.debug("Uploaded {target}, {size} bytes in {parts} parts",
                       target=self._s3(key), size=plan.size, parts=len(plan.parts))

    async def _store_bytes(self, data: bytes, digest: str) -> None:
        key = blob_object_name(digest)
        md5 = await self._runner.run(_md5_hex, data)
        existing = await self.client.head(key)
        if existing is not None and _same_content(existing, len(data), frozenset({md5})):
            await self._refresh_quietly(key)
        else:
            await self.client.put_bytes(key, data)
        self._written(key, frozenset({md5}))

    def _written(self, key: str, etags: Fingerprints) -> None:
        """The object ``key`` holds its blob, which shows one of ``etags``."""
        digest = blob_digest(key)
        if digest is not None:
            self._checksums.written(digest, etags)

    async def _check_blob(self, digest: str, checksum: str | None) -> BlobCheck:
        key = blob_object_name(digest)

        async def look() -> tuple[bool, str | None]:
            found = await self.client.head(key)
            return found is not None, found.etag if found is not None else None

        return await self._checksums.check(digest, checksum, look, self._s3(key))

    async def _has_blob(self, digest: str) -> bool:
        return await self.client.head(blob_object_name(digest)) is not None

    async def _refresh_blob(self, digest: str) -> bool:
        """
        Give the blob a new time; whether it exists.  When the copy is not
        allowed, its existence is looked up instead (and the failure logged).
        """
        key = blob_object_name(digest)
        try:
            return await self._refresh(key)
        except S3Error as e:
            self.log.warn("Could not refresh the time of {target}, reused: {error}",
                          target=self._s3(key), error=str(e))
        return await self._has_blob(digest)

    async def _blob(self, digest: str) -> LocalBlob | RedirectBlob:
        key = blob_object_name(digest)
        found = await self.client.head(key)
        if found is None:
            self._checksums.forget(digest)
            raise BlobUnknown("blob unknown to registry", {"digest": digest})
        if self._checksums.contradicts(digest, found.etag, self._s3(key)):
            raise BlobCorrupt("blob damaged in storage", {"digest": digest})
        return RedirectBlob(url=await self.blob_url(key), digest=digest, size=found.size)

    async def _read_small(self, digest: str, limit: int) -> bytes | None:
        try:
            found = await self.client.get(blob_object_name(digest), limit)
        except BodyTooLarge:
            return None
        return None if found is None else found[0]

    # -- documents and the index ------------------------------------------

    async def _get_document(self, namespace: str, key: str) -> Any:
        name = document_object_name(namespace, key)
        try:
            found = await self.client.get(name, DOCUMENT_LIMIT)
        except BodyTooLarge:
            raise S3Error("%s is larger than %d bytes"
                          % (self._s3(name), DOCUMENT_LIMIT)) from None
        if found is None:
            return None
        return await self._runner.run(json.loads, found[0])

    async def _put_document(self, namespace: str, key: str, document: object) -> None:
        name = document_object_name(namespace, key)
        data = await self._runner.run(
            lambda: json.dumps(document, sort_keys=True).encode())
        await self.client.put_bytes(name, data, content_type="application/json")

    # -- listing and removal ----------------------------------------------

    async def _list_blobs(self) -> list[StoredBlob]:
        blobs = []
        for found in await self.client.list_objects(BLOB_PREFIX):
            digest = blob_digest(found.key)
            if digest is not None:
                blobs.append(StoredBlob(digest, found.size,
                                        parse_last_modified(found.last_modified),
                                        object_version(found)))
        return blobs

    async def _list_documents(self, namespace: str) -> list[StoredDocument]:
        documents = []
        for found in await self.client.list_objects(document_prefix(namespace)):
            key = document_key(namespace, found.key)
            if key is not None:
                documents.append(StoredDocument(
                    namespace, key, found.size, parse_last_modified(found.last_modified),
                    object_version(found)))
        return documents

    async def _remove(self, key: str, version: str) -> bool:
        found = await self.client.find(key)
        if found is None or object_version(found) != version:
            return False
        try:
            await self.client.delete(key, if_match=found.etag)
        except PreconditionFailed:
            return False
        return True

    # -- public -----------------------------------------------------------

    async def blob_url(self, key: str) -> str:
        """
        A URL to the object: presigned for ``url_lifetime`` seconds, or a
        plain one under ``public_url``.
        """
        if self._public_url is not None:
            return self._public_url + "/" + uri_encode_path(key)
        return await self.client.presign(key, self._url_lifetime)

    async def _check_bucket(self) -> None:
        """
        Make sure the bucket exists and the credentials may use it (fails
        with :class:`S3Error` and an explanation otherwise), then abort
        the multipart uploads of blobs that dead processes left (a failure
        of that is logged).
        """
        await self.client.check_bucket()
        try:
            await self.abort_stale_uploads()
        except Exception as e:
            self.log.warn("Could not list the unfinished uploads of s3://{bucket}: {error}",
                          bucket=self.bucket, error=str(e))

    async def abort_stale_uploads(self, older_than: float = STALE_UPLOAD_SECONDS) -> int:
        """
        Abort the multipart uploads of blobs started more than
        ``older_than`` seconds ago (what a process that died mid-upload
        left); how many.
        """
        now = self._clock.seconds()
        aborted = 0
        for upload in await self.client.list_uploads(BLOB_PREFIX):
            try:
                started = parse_last_modified(upload.initiated)
            except ValueError:
                continue
            if now - started > older_than:
                await self.client.abort_multipart(upload.key, upload.upload_id)
                aborted += 1
        if aborted:
            self.log.info("Aborted {count} unfinished uploads older than {hours:g} hours"
                          " in s3://{bucket}", count=aborted, hours=older_than / 3600,
                          bucket=self.bucket)
        return aborted


def build_s3_storage(
        reactor: IReactorTCP, runner: Runner, bucket: str, *, region: str,
        environ: Mapping[str, str], endpoint: str | None = None,
        addressing_style: str | None = None, url_lifetime: int = 300,
        public_url: str | None = None, spool_directory: str | None = None,
        persistent_connections: bool = True, retry_observer: RetryObserver = NO_OBSERVER,
        circuit: Circuit | None = None) -> S3Storage:
    """
    The S3 storage of a bucket, not yet checked: call
    :meth:`S3Storage.check_bucket` before relying on it, and
    :meth:`S3Storage.close` when done.  Blocking: it reads the shared
    credentials files and claims the spool directory.

    :param reactor: connects to S3; also its clock.
    :param region: the region requests are signed for.
    :param environ: the AWS variables the credentials are found with
        (:data:`~nixeryd.storage.s3.credentials.VARIABLES`).
    :param endpoint: an S3-compatible server's ``http(s)://host[:port]``;
        ``None`` for AWS S3 in ``region``.
    :param addressing_style: ``path`` or ``virtual``; by default
        :func:`~nixeryd.storage.s3.bucket.default_addressing_style`.
    :param url_lifetime: seconds a presigned blob URL stays valid.
    :param public_url: where the bucket's objects are readable without
        credentials; blob URLs are then plain ones.
    :param spool_directory: where layer files wait for their upload.
    :param retry_observer: told of each retry (the daemon's metrics).
    :param circuit: the outage circuit of every request to the bucket (not
        to the credential endpoints, which keep their own short retries); a
        new one with the defaults when not given.
    :raises NoCredentials: when no credentials can be found.
    :raises ValueError: for an unknown addressing style.
    """
    clock = IReactorTime(reactor)
    pool = HTTPConnectionPool(  # type: ignore[no-untyped-call]
        reactor, persistent=persistent_connections)
    http = HTTPClient(Agent(reactor, pool=pool))  # type: ignore[no-untyped-call]
    credentials = find_credentials(environ, clock, runner, http)
    address = BucketAddress.of(endpoint or aws_endpoint(region), bucket,
                               addressing_style or default_addressing_style(endpoint, bucket))
    retrier = Retrier(clock, backend=BACKEND, observer=retry_observer,
                      circuit=circuit if circuit is not None else Circuit(
                          clock, backend=BACKEND, target="s3://" + bucket))
    client = S3Client(clock, runner, http, pool, bucket, address=address, region=region,
                      credentials=credentials, retrier=retrier)
    return S3Storage(clock, runner, client, spool_directory=spool_directory,
                     url_lifetime=url_lifetime, public_url=public_url)


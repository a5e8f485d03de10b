"""
Storage in a Google Cloud Storage bucket (object names in
:mod:`nixeryd.storage.objectnames`).

Registry clients download blobs from the bucket itself: :meth:`GCSStorage.blob`
answers with a V4 signed URL, valid for a few minutes, to an object it has
just seen exist; requests for one blob at once share the metadata request
on its way, and a blob seen intact within the last second is answered again
without one (:mod:`nixeryd.storage.gcs.recentblobs`), so a busy blob costs
at most one request a second, not one per client.  Everything else goes through
the JSON API
(:class:`~nixeryd.storage.gcs.bucket.BucketClient`) on the reactor, without
blocking it: hashing, file reads and RSA signing run in the injected thread
pool.

The MD5 that guards an upload must be in its first request, so a file is
hashed (in the thread pool, a piece at a time) just before it is sent.
Layer files larger than ``simple_upload_limit`` go through a resumable
upload, streamed from disk.  A blob that already exists with the same size
and MD5 is not uploaded again.

The image index is :class:`~nixeryd.storage.gcs.index.BucketIndex`.

Layer files and Nix's out-links wait in a local spool, in a directory of
this storage's own (:mod:`nixeryd.storage.tempdirs`); what dead daemons
left there is removed when a storage opens.  The default spool,
``$TMPDIR/nixeryd-spool``, is shared by every user (sticky, like
``/tmp``), each sweeping only its own leftovers.

For garbage collection, objects are listed with ``objects.list`` (a page
at a time) and deleted with ``objects.delete`` guarded by the generation
and metageneration listed.  A blob stored again while it exists is not
uploaded again; instead its ``customTime`` is set to now, which is its
time for the collector's grace period and changes its metageneration (the
builder stores a blob that exists only when it makes an image again that
the caches had forgotten).  A layer the builder reuses gets the same
refresh (:meth:`GCSStorage.refresh_blob`).

Before a cache reuses a blob it is checked
(:meth:`GCSStorage.check_blob`): the object's ``md5Hash`` against the MD5
it was uploaded with (recorded in the cache documents, or known to this
process), once per blob and process
(:class:`~nixeryd.storage.checksums.ObjectChecksums`); a blob request
compares the metadata it fetches anyway, and a damaged object is never
redirected to (:mod:`nixeryd.storage.integrity`).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer

from treq.client import HTTPClient

from nixeryd.core.documents import LocalBlob, RedirectBlob
from nixeryd.core.errors import BlobUnknown
from nixeryd.core.httpbody import BodyTooLarge
from nixeryd.core.sharedwork import SharedWork
from nixeryd.core.threads import Runner
from nixeryd.core import defaults
from nixeryd.storage.gcs.auth import AccessTokenSource, TokenSource
from nixeryd.storage.gcs.bucket import DEFAULT_API_ENDPOINT, BucketClient, ObjectResource
from nixeryd.storage.circuit import Circuit
from nixeryd.storage.errors import StorageServiceError
from nixeryd.storage.gcs.metadata import MetadataServer
from nixeryd.storage.gcs.signers import IAMSigner, KeySigner, Signer, SignedUrls
from nixeryd.storage.gcs.http import BACKEND, GCSError, PreconditionFailed
from nixeryd.storage.gcs.index import BucketIndex
from nixeryd.storage.gcs.objects import file_size_and_md5, format_time, md5_base64, parse_time
from nixeryd.storage.objectnames import (
    BLOB_PREFIX, blob_digest, blob_object_name, document_key, document_object_name,
    document_prefix)
from nixeryd.storage.gcs.recentblobs import RecentBlobs
from nixeryd.storage.retry import NO_OBSERVER, Retrier, RetryObserver
from nixeryd.storage.gcs.signing import DEFAULT_SIGNING_ENDPOINT, ServiceAccountKey
from nixeryd.storage.bucketstorage import BucketStorage
from nixeryd.storage.checksums import ObjectChecksums
from nixeryd.storage.integrity import BlobCheck, BlobCorrupt
from nixeryd.storage.interface import IStorage
from nixeryd.storage.listing import StoredBlob, StoredDocument

DOCUMENT_LIMIT = 16 * 1024 * 1024
#: Writes of a document tried, each over the generation the previous one
#: found, before giving up (other writers keep replacing it).
GUARDED_WRITE_TRIES = 5
#: The object a URL is signed for at start-up, to find a signer that cannot sign.
SIGNING_PROBE = "nixeryd/startup/signing-probe"
#: Files up to this size are uploaded in one request, larger ones resumably.
DEFAULT_SIMPLE_UPLOAD_LIMIT = 5 * 1024 * 1024

def modified_time(resource: ObjectResource) -> float:
    """When an object was last written: the later of ``updated`` and ``customTime``."""
    times = [parse_time(resource[field]) for field in ("updated", "customTime")
             if isinstance(resource.get(field), str)]
    return max(times, default=0.0)


def object_version(resource: ObjectResource) -> str:
    """An object's generation and metageneration, which a removal is guarded by."""
    return "%s/%s" % (resource.get("generation", ""), resource.get("metageneration", ""))


def _md5_of(resource: ObjectResource | None) -> str | None:
    """An object's ``md5Hash``, if it has one (composite objects do not)."""
    md5 = resource.get("md5Hash") if resource is not None else None
    return md5 if isinstance(md5, str) else None


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@implementer(IStorage)
class GCSStorage(BucketStorage[BucketClient]):
    """
    Blobs and documents in one Cloud Storage bucket.

    :param clock: the time signed URLs are valid from.
    :param runner: runs blocking work (hashing, file reads, signing).
    :param client: the JSON API on the bucket.
    :param signing_key: the service-account key that signs blob URLs
        (unless ``signer`` is given); with neither, blob URLs are plain,
        unsigned ones (emulators, public buckets).
    :param signer: who signs blob URLs (:mod:`nixeryd.storage.gcs.signers`).
    :param signing_endpoint: the host signed URLs point to (defaults to the
        client's endpoint); path style, so emulators serve them too.
    :param spool_directory: where layer files wait for their upload, in
        a directory of this storage's own; by default
        ``$TMPDIR/nixeryd-spool``, shared with other users.
    :param simple_upload_limit: files up to this size are uploaded in a
        single request.
    :param url_lifetime: seconds a signed blob URL stays valid.

    Its :class:`~nixeryd.storage.interface.IStorage` methods, and the
    spool it claims when made (blocking), are
    :class:`~nixeryd.storage.bucketstorage.BucketStorage`'s.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, runner: Runner, client: BucketClient, *,
                 signing_key: ServiceAccountKey | None,
                 signer: Signer | None = None,
                 signing_endpoint: str | None = None,
                 spool_directory: str | None = None,
                 simple_upload_limit: int = DEFAULT_SIMPLE_UPLOAD_LIMIT,
                 url_lifetime: int = 300) -> None:
        super().__init__(clock, runner, client, spool_directory)
        if signer is None and signing_key is not None:
            signer = KeySigner(signing_key, runner)
        self._urls = None if signer is None else SignedUrls(signer, clock, url_lifetime)
        self._signing_endpoint = (signing_endpoint or client.endpoint).rstrip("/")
        self._simple_upload_limit = simple_upload_limit
        self._index = BucketIndex(runner, client)
        self._checksums = ObjectChecksums("md5")
        #: Blob requests' metadata requests in flight, by object name.
        self._blob_lookups: SharedWork[str, tuple[ObjectResource | None, int]] = SharedWork()
        self._recent = RecentBlobs(clock.seconds)

    # -- blobs ------------------------------------------------------------

    async def _needs_upload(self, name: str, size: int, md5: str) -> tuple[bool, str]:
        """
        Whether the blob must be uploaded, and the generation precondition
        to upload it with: ``"0"`` when absent, the current generation when
        a different object sits under the name.
        """
        existing = await self.client.metadata(name)
        if existing is None:
            return True, "0"
        same_size = int(existing.get("size", -1)) == size
        if same_size and existing.get("md5Hash") in (None, md5):
            await self._refresh(name)
            self._written(name, md5)
            return False, ""
        self.log.warn("gs://{bucket}/{name} differs from its digest (size {stored}, "
                      "expected {size}); replacing it",
                      bucket=self.bucket, name=name, stored=existing.get("size"), size=size)
        return True, str(existing.get("generation", "0"))

    async def _refresh(self, name: str) -> None:
        """
        Mark an object stored again as written now, so that the garbage
        collector's grace period covers it as it covers a new one, and a
        removal guarded by its earlier version fails.  A failure (a key
        without ``storage.objects.update``) is logged, never raised.
        """
        try:
            await self.client.set_custom_time(name, format_time(self._clock.seconds()))
        except Exception as e:
            self.log.warn("Could not refresh the time of gs://{bucket}/{name}, stored again:"
                          " {error}", bucket=self.bucket, name=name, error=str(e))

    async def _store_file(self, path: str, digest: str) -> None:
        try:
            name = blob_object_name(digest)
            size, md5 = await self._runner.run(file_size_and_md5, path)
            needed, generation = await self._needs_upload(name, size, md5)
            if not needed:
                return
            try:
                if size <= self._simple_upload_limit:
                    data = await self._runner.run(_read_file, path)
                    await self.client.upload_bytes(name, data, md5, generation)
                else:
                    await self.client.upload_file(name, path, size, md5, generation)
                self._written(name, md5)
            except PreconditionFailed:
                await self._check_concurrent_upload(name, size, md5)
        finally:
            await self._unspool(path)

    async def _store_bytes(self, data: bytes, digest: str) -> None:
        name = blob_object_name(digest)
        md5 = await self._runner.run(md5_base64, data)
        needed, generation = await self._needs_upload(name, len(data), md5)
        if needed:
            try:
                await self.client.upload_bytes(name, data, md5, generation)
                self._written(name, md5)
            except PreconditionFailed:
                await self._check_concurrent_upload(name, len(data), md5)

    async def _check_concurrent_upload(self, name: str, size: int, md5: str) -> None:
        """After a 412, accept the object another writer stored if it is ours."""
        needed, _ = await self._needs_upload(name, size, md5)
        if needed:
            raise GCSError("gs://%s/%s changed during the upload and does not match"
                           % (self.bucket, name))

    def _written(self, name: str, md5: str) -> None:
        """The object ``name`` holds its blob, whose MD5 is ``md5``."""
        digest = blob_digest(name)
        if digest is not None:
            self._checksums.written(digest, frozenset({md5}))

    async def _check_blob(self, digest: str, checksum: str | None) -> BlobCheck:
        name = blob_object_name(digest)

        async def look() -> tuple[bool, str | None]:
            resource = await self.client.metadata(name)
            return resource is not None, _md5_of(resource)

        check = await self._checksums.check(digest, checksum, look,
                                            "gs://%s/%s" % (self.bucket, name))
        if not check.intact:
            self._recent.forget(name)
        return check

    async def _has_blob(self, digest: str) -> bool:
        name = blob_object_name(digest)
        if await self.client.metadata(name) is None:
            self._recent.forget(name)
            return False
        return True

    async def _refresh_blob(self, digest: str) -> bool:
        """
        Set the blob's ``customTime`` to now; whether it exists.  Without
        the permission to update objects, its existence is looked up
        instead (and the failure logged).
        """
        name = blob_object_name(digest)
        try:
            await self.client.set_custom_time(name, format_time(self._clock.seconds()))
            return True
        except StorageServiceError as e:
            if e.status == 404:
                self._recent.forget(name)
                return False
            self.log.warn("Could not refresh the time of gs://{bucket}/{name}, reused:"
                          " {error}", bucket=self.bucket, name=name, error=str(e))
        return await self._has_blob(digest)

    async def _blob(self, digest: str) -> LocalBlob | RedirectBlob:
        name = blob_object_name(digest)
        # Requests for one blob at once (many clients pulling one image)
        # share the metadata request on its way: its answer is at most one
        # round trip older than any of them.
        size = self._recent.size(name)
        if size is None:
            resource, started = await self._blob_lookups.wait(
                name, lambda: Deferred.fromCoroutine(self._look_up(name)))
            if resource is None:
                self._checksums.forget(digest)
                self._recent.forget(name)
                raise BlobUnknown("blob unknown to registry", {"digest": digest})
            if self._checksums.contradicts(digest, _md5_of(resource),
                                           "gs://%s/%s" % (self.bucket, name)):
                self._recent.forget(name)
                raise BlobCorrupt("blob damaged in storage", {"digest": digest})
            size = int(resource["size"])
            self._recent.saw(name, size, started)
        return RedirectBlob(url=await self.signed_url(name), digest=digest, size=size)

    async def _look_up(self, name: str) -> tuple[ObjectResource | None, int]:
        """A blob object's metadata, with when the lookup began for :attr:`_recent`."""
        started = self._recent.lookup_started()
        return await self.client.metadata(name), started

    async def _read_small(self, digest: str, limit: int) -> bytes | None:
        try:
            return await self.client.download(blob_object_name(digest), limit)
        except BodyTooLarge:
            return None

    # -- documents and the index ------------------------------------------

    async def _get_document(self, namespace: str, key: str) -> Any:
        name = document_object_name(namespace, key)
        try:
            data = await self.client.download(name, DOCUMENT_LIMIT)
        except BodyTooLarge:
            raise GCSError("gs://%s/%s is larger than %d bytes"
                           % (self.bucket, name, DOCUMENT_LIMIT)) from None
        if data is None:
            return None
        return await self._runner.run(json.loads, data)

    async def _put_document(self, namespace: str, key: str, document: object) -> None:
        name = document_object_name(namespace, key)

        def serialise() -> tuple[bytes, str]:
            data = json.dumps(document, sort_keys=True).encode()
            return data, md5_base64(data)

        data, md5 = await self._runner.run(serialise)
        await self._write_guarded(name, data, md5, "application/json")

    async def _write_guarded(self, name: str, data: bytes, md5: str,
                             content_type: str) -> None:
        """
        Write an object that may exist, each write guarded by a generation
        precondition so that it is safe to send again: first as a new
        object, then over the generation found.  An object found with
        this very content is kept (and refreshed, as a blob stored again).
        """
        generation = "0"
        for _ in range(GUARDED_WRITE_TRIES):
            try:
                await self.client.upload_bytes(name, data, md5, generation,
                                               content_type=content_type)
                return
            except PreconditionFailed:
                existing = await self.client.metadata(name)
            if existing is None:
                generation = "0"
            elif (existing.get("md5Hash") == md5
                  and int(existing.get("size", -1)) == len(data)):
                await self._refresh(name)
                return
            else:
                generation = str(existing.get("generation", "0"))
        raise GCSError("gs://%s/%s changed under every one of %d writes"
                       % (self.bucket, name, GUARDED_WRITE_TRIES))

    # -- listing and removal ----------------------------------------------

    async def _list_blobs(self) -> list[StoredBlob]:
        blobs = []
        for resource in await self.client.list_objects(BLOB_PREFIX):
            digest = blob_digest(str(resource.get("name", "")))
            if digest is not None:
                blobs.append(StoredBlob(digest, int(resource.get("size", 0)),
                                        modified_time(resource), object_version(resource)))
        return blobs

    async def _list_documents(self, namespace: str) -> list[StoredDocument]:
        documents = []
        for resource in await self.client.list_objects(document_prefix(namespace)):
            key = document_key(namespace, str(resource.get("name", "")))
            if key is not None:
                documents.append(StoredDocument(
                    namespace, key, int(resource.get("size", 0)), modified_time(resource),
                    object_version(resource)))
        return documents

    async def _remove(self, name: str, version: str) -> bool:
        # What was seen of the object is forgotten when its removal starts,
        # and again once done (a lookup may have seen it meanwhile).
        self._recent.forget(name)
        generation, _, metageneration = version.partition("/")
        try:
            return await self.client.delete(name, generation or None, metageneration or None)
        finally:
            self._recent.forget(name)

    # -- public -----------------------------------------------------------

    async def signed_url(self, name: str, method: str = "GET") -> str:
        """
        A URL to the object, valid for ``url_lifetime`` seconds (one signed
        recently enough is handed out again); plain without a signer.
        """
        if self._urls is None:
            return "%s/%s/%s" % (self._signing_endpoint, self.bucket,
                                 quote(name, safe="/~"))
        return await self._urls.url(bucket=self.bucket, object_name=name, method=method,
                                    endpoint=self._signing_endpoint)

    async def _check_bucket(self) -> None:
        """
        Make sure the bucket exists, the credentials may use it and blob
        URLs can be signed (through IAM, the account may sign); fails with
        :class:`GCSError` and an explanation otherwise.
        """
        await self.client.check_bucket()
        if self._urls is not None:
            await self._urls.url(bucket=self.bucket, object_name=SIGNING_PROBE,
                                 method="GET", endpoint=self._signing_endpoint)


def build_gcs_storage(
        reactor: IReactorTCP, runner: Runner, bucket: str, key: ServiceAccountKey | None,
        endpoint: str | None = None, *, signing_endpoint: str | None = None,
        spool_directory: str | None = None,
        persistent_connections: bool | None = None,
        public: bool = False, metadata_host: str | None = None,
        signing_account: str | None = None,
        iam_endpoint: str = defaults.GCS_IAM_ENDPOINT,
        retry_observer: RetryObserver = NO_OBSERVER,
        circuit: Circuit | None = None) -> GCSStorage:
    """
    The GCS storage with the credentials Google's libraries would find,
    not yet checked: call :meth:`GCSStorage.check_bucket` before relying on
    it (it obtains the first token), and :meth:`GCSStorage.close` when done.

    * With a service-account ``key``: its tokens (real Cloud Storage), and
      it signs blob URLs.
    * Without, on real Cloud Storage (or wherever ``metadata_host`` is
      given): tokens from the metadata server, and blob URLs signed through
      IAM ``signBlob`` for ``signing_account`` (by default the metadata
      server's default account).
    * Without, on an emulator: anonymous requests, plain blob URLs.

    :param reactor: connects to Cloud Storage; also its clock.
    :param endpoint: an emulator's ``http://host:port``; ``None`` for real
        Cloud Storage.
    :param signing_endpoint: the host signed blob URLs point to, when it
        differs from ``endpoint``.
    :param spool_directory: where layer files wait for their upload.
    :param persistent_connections: keep connections open between requests;
        by default on for Cloud Storage, off for emulators (some close the
        connection after each answer without announcing it).
    :param public: blob URLs are plain, unsigned ones (a public bucket).
    :param metadata_host: the metadata server's ``host[:port]``; given, it
        is used even with an emulator.
    :param signing_account: the account that signs through IAM.
    :param iam_endpoint: the IAM Credentials API.
    :param retry_observer: told of each retry (the daemon's metrics).
    :param circuit: the outage circuit of the bucket's requests and of
        IAM signing (not of the key's tokens, fetched inside a bucket
        request, which have one of their own; nor of the metadata server,
        which keeps its own short retries); a new one with the defaults
        when not given.
    """
    if persistent_connections is None:
        persistent_connections = endpoint is None
    clock = IReactorTime(reactor)
    pool = HTTPConnectionPool(  # type: ignore[no-untyped-call]
        reactor, persistent=persistent_connections)
    http = HTTPClient(Agent(reactor, pool=pool))  # type: ignore[no-untyped-call]
    retrier = Retrier(clock, backend=BACKEND, observer=retry_observer,
                      circuit=circuit if circuit is not None else Circuit(
                          clock, backend=BACKEND, target="gs://" + bucket))
    tokens: TokenSource | None = None
    signer: Signer | None = None
    if key is not None:
        if endpoint is None:
            # A circuit of its own: a token is fetched inside a bucket
            # request, so the bucket's probe would refuse its own token.
            tokens = AccessTokenSource(clock, runner, key, http, retrier=Retrier(
                clock, backend=BACKEND, observer=retry_observer,
                circuit=Circuit(clock, backend=BACKEND, target=key.token_uri)))
        signer = KeySigner(key, runner)
    elif endpoint is None or metadata_host is not None:
        metadata = MetadataServer(clock, http, metadata_host or defaults.GCE_METADATA_HOST)
        tokens = metadata
        signer = IAMSigner(clock, http, metadata, signing_account or metadata.email,
                           iam_endpoint, retrier=retrier)
    client = BucketClient(clock, runner, http, pool, bucket,
                          endpoint=endpoint or DEFAULT_API_ENDPOINT, token_source=tokens,
                          retrier=retrier)
    return GCSStorage(
        clock, runner, client, signing_key=None, signer=None if public else signer,
        signing_endpoint=signing_endpoint or endpoint or DEFAULT_SIGNING_ENDPOINT,
        spool_directory=spool_directory)

"""
Storage in a Google Cloud Storage bucket.

::

    gs://<bucket>/blobs/sha256/<hex>                layers, configs, manifests
    gs://<bucket>/nixeryd/<namespace>/<key>.json    cache documents
    gs://<bucket>/index.json                        manifests named by reference

Registry clients download blobs from the bucket itself: :meth:`GCSStorage.blob`
answers with a V4 signed URL, valid for a few minutes, to an object it has
just seen exist.  Everything else goes through the JSON API with treq, on the
reactor, without blocking it: hashing, file reads and RSA signing run in the
injected thread pool.

Uploads carry the object's MD5 in their metadata, so Cloud Storage refuses
a body that arrived damaged instead of storing it under its content address.
The MD5 must be in the first request of an upload, so a file is hashed (in
the thread pool, a piece at a time) just before it is sent.
Small bodies go in one multipart request; layer files larger than
``simple_upload_limit`` go through a resumable upload, in chunks streamed from
disk a piece at a time, so a layer is never held whole in memory.  A blob that
already exists with the same size and MD5 is not uploaded again.

The image index is updated by read-modify-write guarded with
``ifGenerationMatch``, so concurrent daemons sharing the bucket retry
instead of overwriting each other's references (emulators that ignore
preconditions make this last-writer-wins).

Only a 404 means "missing".  Any other unexpected status (403 for missing
permissions, 5xx, ...) raises :class:`GCSError`, so a misconfigured bucket
never looks empty.

Authentication uses a service-account key: the same key signs the URLs and
the JWT assertions exchanged for OAuth2 access tokens
(:class:`AccessTokenSource`).  Against an emulator, requests are anonymous.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import tempfile
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable
from urllib.parse import quote, urlencode

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from treq.client import HTTPClient

from nixeryd.core.digests import check_digest
from nixeryd.core.documents import RedirectBlob
from nixeryd.core.errors import BlobUnknown
from nixeryd.storage.gcs.signing import (
    DEFAULT_SIGNING_ENDPOINT, JWT_BEARER_GRANT, ServiceAccountKey, UrlStyle,
    jwt_assertion, sign_url_v4)
from nixeryd.storage.ociindex import updated_index
from nixeryd.core.httpbody import BodyTooLarge, read_limited
from nixeryd.storage.interface import IStorage
from nixeryd.storage.naming import check_document_name, check_reference

#: The JSON API of real Cloud Storage.
DEFAULT_API_ENDPOINT = "https://storage.googleapis.com"
#: Resumable upload chunks must be multiples of this (except the last one).
RESUMABLE_GRANULARITY = 256 * 1024
DOCUMENT_LIMIT = 16 * 1024 * 1024
INDEX_LIMIT = 64 * 1024 * 1024
#: How many times record_reference retries after a concurrent index update.
INDEX_ATTEMPTS = 8
#: How much of an error body is kept for the error message.
ERROR_BODY_LIMIT = 64 * 1024
INDEX_OBJECT = "index.json"



class GCSError(Exception):
    """
    Cloud Storage (or its token endpoint) answered something unexpected.

    :ivar status: the HTTP status, or ``None`` for a failure without one.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _PreconditionFailed(Exception):
    """A generation precondition did not hold (HTTP 412)."""


def blob_object_name(digest: str) -> str:
    """The object that holds the blob with ``digest`` (validated)."""
    return "blobs/sha256/" + check_digest(digest)


def document_object_name(namespace: str, key: str) -> str:
    """
    The object that holds a cache document.

    :raises ValueError: for a namespace or key outside the allowed grammar.
    """
    check_document_name(namespace, key)
    return "nixeryd/%s/%s.json" % (namespace, key)


def md5_base64(data: bytes) -> str:
    """The MD5 of ``data`` as Cloud Storage writes it (``md5Hash``)."""
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def file_size_and_md5(path: str, read_size: int = 1024 * 1024) -> tuple[int, str]:
    """Size and base64 MD5 of a file, read a piece at a time (blocking)."""
    digest = hashlib.md5()
    size = 0
    with open(path, "rb") as f:
        while piece := f.read(read_size):
            digest.update(piece)
            size += len(piece)
    return size, base64.b64encode(digest.digest()).decode("ascii")


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _multipart_body(metadata: dict[str, Any], data: bytes) -> tuple[bytes, str]:
    """A ``multipart/related`` upload body and its content type."""
    boundary = "nixeryd-" + secrets.token_hex(16)
    while boundary.encode("ascii") in data:
        boundary = "nixeryd-" + secrets.token_hex(16)
    delimiter = b"--" + boundary.encode("ascii")
    body = b"".join([
        delimiter, b"\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n",
        json.dumps(metadata).encode("utf-8"), b"\r\n",
        delimiter, b"\r\nContent-Type: application/octet-stream\r\n\r\n",
        data, b"\r\n", delimiter, b"--\r\n"])
    return body, "multipart/related; boundary=" + boundary


async def _error_for(response: IResponse, what: str) -> GCSError:
    """A :class:`GCSError` describing an unexpected answer (body drained)."""
    try:
        body = await read_limited(response, ERROR_BODY_LIMIT)
        detail = body.decode("utf-8", "replace").strip()
    except BodyTooLarge:
        detail = "(long body)"
    message = "%s: Cloud Storage answered HTTP %d" % (what, response.code)
    if detail:
        message += ": " + detail[:500]
    return GCSError(message, response.code)


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

    def __init__(self, runner: Any, path: str, offset: int, length: int,
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

    def startProducing(self, consumer: Any) -> Deferred[None]:
        """Start writing the region to ``consumer``; fires when all is written."""
        d = Deferred.fromCoroutine(self._produce(consumer))
        d.addErrback(self._failed)
        return self._finished

    async def _produce(self, consumer: Any) -> None:
        f = await self._runner.run(open, self._path, "rb")
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
                    raise GCSError("%s ended at byte %d while uploading it"
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


class AccessTokenSource:
    """
    OAuth2 access tokens for a service account, obtained with the JWT bearer
    grant (RFC 7523) and cached until shortly before they expire.

    Concurrent callers during a refresh share one token request.

    :param clock: provides ``seconds()`` (the reactor).
    :param runner: runs the RSA signature of the assertion.
    :param key: the service account's key; its ``token_uri`` is contacted.
    :param http: the treq client to post with.
    :param margin: seconds before expiry at which a token is renewed.
    """

    log = Logger()

    def __init__(self, clock: Any, runner: Any, key: ServiceAccountKey,
                 http: HTTPClient, reactor: Any = None, margin: float = 300,
                 timeout: float = 60) -> None:
        self._clock = clock
        self._reactor = reactor if reactor is not None else clock
        self._runner = runner
        self._key = key
        self._http = http
        self._margin = margin
        self._timeout = timeout
        self._token: str | None = None
        self._expires = 0.0
        self._waiters: list[Deferred[str]] = []

    def token(self) -> Deferred[str]:
        """A Deferred firing with a valid access token."""
        if self._token is not None and self._clock.seconds() < self._expires - self._margin:
            return succeed(self._token)
        waiter: Deferred[str] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            Deferred.fromCoroutine(self._refresh()).addBoth(self._deliver)
        return waiter

    async def _refresh(self) -> str:
        now = self._clock.seconds()
        assertion = await self._runner.run(jwt_assertion, self._key, issued_at=int(now))
        response = await self._http.post(
            self._key.token_uri,
            data={"grant_type": JWT_BEARER_GRANT, "assertion": assertion},
            allow_redirects=False, reactor=self._reactor, timeout=self._timeout)
        if response.code != 200:
            raise await _error_for(response, "fetching an access token from "
                                   + self._key.token_uri)
        try:
            answer = json.loads(await read_limited(response, ERROR_BODY_LIMIT))
            token = answer["access_token"]
            lifetime = float(answer.get("expires_in", 3600))
        except (BodyTooLarge, ValueError, KeyError, TypeError):
            raise GCSError("the token endpoint %s answered without an access token"
                           % (self._key.token_uri,)) from None
        self._token, self._expires = token, now + lifetime
        self.log.info("Obtained an access token for {account}, valid {seconds} s",
                      account=self._key.client_email, seconds=int(lifetime))
        return token

    def _deliver(self, result: str | Failure) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


@implementer(IStorage)
class GCSStorage:
    """
    Blobs and documents in one Cloud Storage bucket.

    :param reactor: the reactor (network, clock for signing times).
    :param runner: runs blocking functions; has ``run(f, *args)``.
    :param bucket: the bucket name.
    :param signing_key: the service-account key that signs blob URLs; with
        ``None`` (emulators only) blob URLs are plain, unsigned ones.
    :param token_source: gives access tokens for the JSON API; ``None``
        sends anonymous requests (emulators).
    :param endpoint: ``scheme://host[:port]`` of the JSON API.
    :param signing_endpoint: the host signed URLs point to (defaults to
        ``endpoint``); path style, so emulators serve them too.
    :param spool_directory: where layer files wait for their upload.
    :param pool: the HTTP connection pool; emulators that close connections
        without saying so need a non-persistent one.
    :param chunk_size: bytes per resumable-upload request (a multiple of
        256 KiB).
    :param read_size: bytes read from disk at a time while uploading.
    :param simple_upload_limit: files up to this size are uploaded in a
        single request.
    :param url_lifetime: seconds a signed blob URL stays valid.
    """

    log = Logger()

    def __init__(self, reactor: Any, runner: Any, bucket: str, *,
                 signing_key: ServiceAccountKey | None,
                 token_source: AccessTokenSource | None = None,
                 endpoint: str = DEFAULT_API_ENDPOINT,
                 signing_endpoint: str | None = None,
                 spool_directory: str | None = None,
                 pool: HTTPConnectionPool | None = None,
                 http: HTTPClient | None = None,
                 chunk_size: int = 16 * 1024 * 1024,
                 read_size: int = 256 * 1024,
                 simple_upload_limit: int = 5 * 1024 * 1024,
                 url_lifetime: int = 300,
                 request_timeout: float = 300) -> None:
        if chunk_size <= 0 or chunk_size % RESUMABLE_GRANULARITY:
            raise ValueError("chunk_size must be a positive multiple of %d"
                             % (RESUMABLE_GRANULARITY,))
        self._reactor = reactor
        self._runner = runner
        self.bucket = bucket
        self._signing_key = signing_key
        self._tokens = token_source
        self._endpoint = endpoint.rstrip("/")
        self._signing_endpoint = (signing_endpoint or self._endpoint).rstrip("/")
        self._spool = os.path.abspath(spool_directory or os.path.join(
            tempfile.gettempdir(), "nixeryd-spool"))
        os.makedirs(self._spool, mode=0o700, exist_ok=True)
        self._pool = pool if pool is not None else HTTPConnectionPool(reactor)
        self._http = http if http is not None else HTTPClient(
            Agent(reactor, pool=self._pool))
        self._chunk_size = chunk_size
        self._read_size = read_size
        self._simple_upload_limit = simple_upload_limit
        self._url_lifetime = url_lifetime
        self._timeout = request_timeout
        self._index_lock = DeferredLock()

    # -- HTTP plumbing ----------------------------------------------------

    def _object_url(self, name: str, **query: str) -> str:
        url = "%s/storage/v1/b/%s/o/%s" % (
            self._endpoint, quote(self.bucket, safe=""), quote(name, safe=""))
        return url + ("?" + urlencode(query) if query else "")

    def _upload_url(self, **query: str) -> str:
        return "%s/upload/storage/v1/b/%s/o?%s" % (
            self._endpoint, quote(self.bucket, safe=""), urlencode(query))

    async def _request(self, method: str, url: str, *,
                       headers: dict[str, str] | None = None,
                       data: Any = None) -> IResponse:
        all_headers = dict(headers or {})
        if self._tokens is not None:
            all_headers["Authorization"] = "Bearer " + await self._tokens.token()
        return await self._http.request(
            method, url, headers=all_headers, data=data, allow_redirects=False,
            reactor=self._reactor, timeout=self._timeout)

    async def _metadata(self, name: str) -> dict[str, Any] | None:
        """The object's metadata, or ``None`` when it does not exist."""
        response = await self._request(
            "GET", self._object_url(name, fields="size,md5Hash,crc32c,generation"))
        if response.code == 404:
            await read_limited(response, ERROR_BODY_LIMIT)
            return None
        if response.code != 200:
            raise await _error_for(response, "looking up gs://%s/%s" % (self.bucket, name))
        return json.loads(await read_limited(response, ERROR_BODY_LIMIT))

    async def _download(self, name: str, limit: int,
                        generation: str | None = None) -> bytes | None:
        """
        The object's content, or ``None`` when it does not exist.

        :raises BodyTooLarge: when it is larger than ``limit``.
        :raises _PreconditionFailed: when ``generation`` is no longer current.
        """
        query = {"alt": "media"}
        if generation is not None:
            query["ifGenerationMatch"] = generation
        response = await self._request("GET", self._object_url(name, **query))
        if response.code == 404:
            await read_limited(response, ERROR_BODY_LIMIT)
            return None
        if response.code == 412:
            await read_limited(response, ERROR_BODY_LIMIT)
            raise _PreconditionFailed()
        if response.code != 200:
            raise await _error_for(response, "downloading gs://%s/%s" % (self.bucket, name))
        return await read_limited(response, limit)

    async def _finish_upload(self, response: IResponse, name: str, size: int,
                             md5: str) -> dict[str, Any]:
        """Check the answer to the request that completed an upload."""
        if response.code == 412:
            await read_limited(response, ERROR_BODY_LIMIT)
            raise _PreconditionFailed()
        if response.code not in (200, 201):
            raise await _error_for(response, "uploading gs://%s/%s" % (self.bucket, name))
        resource = json.loads(await read_limited(response, ERROR_BODY_LIMIT))
        if resource.get("md5Hash") not in (None, md5) or int(resource.get("size", size)) != size:
            raise GCSError("gs://%s/%s was stored with MD5 %s and size %s, not %s and %d"
                           % (self.bucket, name, resource.get("md5Hash"),
                              resource.get("size"), md5, size))
        self.log.debug("Uploaded gs://{bucket}/{name}, {size} bytes",
                       bucket=self.bucket, name=name, size=size)
        return resource

    async def _upload_bytes(self, name: str, data: bytes, md5: str,
                            generation: str | None = None,
                            content_type: str = "application/octet-stream") -> dict[str, Any]:
        """
        Upload ``data`` in one multipart request; with ``generation``, only
        if the object's generation is still that (``"0"``: still absent).
        """
        body, multipart_type = _multipart_body(
            {"name": name, "md5Hash": md5, "contentType": content_type}, data)
        query = {"uploadType": "multipart", "name": name}
        if generation is not None:
            query["ifGenerationMatch"] = generation
        response = await self._request(
            "POST", self._upload_url(**query),
            headers={"Content-Type": multipart_type}, data=body)
        return await self._finish_upload(response, name, len(data), md5)

    async def _upload_file_resumable(self, name: str, path: str, size: int,
                                     md5: str, generation: str) -> dict[str, Any]:
        """
        Upload a file in chunks streamed from disk (resumable upload), if
        the object's generation is still ``generation``.
        """
        metadata = json.dumps({"name": name, "md5Hash": md5,
                               "contentType": "application/octet-stream"}).encode()
        response = await self._request(
            "POST", self._upload_url(uploadType="resumable", name=name,
                                     ifGenerationMatch=generation),
            headers={"Content-Type": "application/json; charset=UTF-8",
                     "X-Upload-Content-Type": "application/octet-stream",
                     "X-Upload-Content-Length": str(size)},
            data=metadata)
        if response.code == 412:
            await read_limited(response, ERROR_BODY_LIMIT)
            raise _PreconditionFailed()
        if response.code != 200:
            raise await _error_for(response, "starting the upload of gs://%s/%s"
                                   % (self.bucket, name))
        await read_limited(response, ERROR_BODY_LIMIT)
        locations = response.headers.getRawHeaders(b"location") or []
        if not locations:
            raise GCSError("starting the upload of gs://%s/%s: no session URL in the answer"
                           % (self.bucket, name))
        session = locations[0].decode("ascii")
        offset = 0
        while True:
            end = min(offset + self._chunk_size, size)
            producer = FileRegionProducer(self._runner, path, offset, end - offset,
                                          self._read_size)
            response = await self._request(
                "PUT", session,
                headers={"Content-Range": "bytes %d-%d/%d" % (offset, end - 1, size),
                         "Content-Type": "application/octet-stream"},
                data=producer)
            self.log.debug("Sent bytes {first}-{last} of {size} for gs://{bucket}/{name}",
                           first=offset, last=end - 1, size=size, bucket=self.bucket,
                           name=name, pieces=producer.pieces_read,
                           largest_piece=producer.largest_piece)
            if response.code != 308:
                return await self._finish_upload(response, name, size, md5)
            await read_limited(response, ERROR_BODY_LIMIT)
            offset = self._resume_offset(response)
            if offset >= size:
                raise GCSError("uploading gs://%s/%s: all %d bytes sent but the upload "
                               "did not complete" % (self.bucket, name, size))

    @staticmethod
    def _resume_offset(response: IResponse) -> int:
        """Where to continue after a 308: one past the last byte received."""
        ranges = response.headers.getRawHeaders(b"range") or []
        match = re.fullmatch(rb"bytes=0-(\d+)", ranges[0].strip()) if ranges else None
        return int(match.group(1)) + 1 if match else 0

    async def _needs_upload(self, name: str, size: int, md5: str) -> tuple[bool, str]:
        """
        Whether the blob must be uploaded, and the generation precondition
        to upload it with: ``"0"`` when absent, the current generation when
        a different object sits under the name.
        """
        existing = await self._metadata(name)
        if existing is None:
            return True, "0"
        same_size = int(existing.get("size", -1)) == size
        if same_size and existing.get("md5Hash") in (None, md5):
            return False, ""
        self.log.warn("gs://{bucket}/{name} differs from its digest (size {stored}, "
                      "expected {size}); replacing it",
                      bucket=self.bucket, name=name, stored=existing.get("size"), size=size)
        return True, str(existing.get("generation", "0"))

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
                    await self._upload_bytes(name, data, md5, generation)
                else:
                    await self._upload_file_resumable(name, path, size, md5, generation)
            except _PreconditionFailed:
                await self._check_concurrent_upload(name, size, md5)
        finally:
            await self._runner.run(_remove_quietly, path)

    async def _store_bytes(self, data: bytes, digest: str) -> None:
        name = blob_object_name(digest)
        md5 = await self._runner.run(md5_base64, data)
        needed, generation = await self._needs_upload(name, len(data), md5)
        if needed:
            try:
                await self._upload_bytes(name, data, md5, generation)
            except _PreconditionFailed:
                await self._check_concurrent_upload(name, len(data), md5)

    async def _check_concurrent_upload(self, name: str, size: int, md5: str) -> None:
        """After a 412, accept the object another writer stored if it is ours."""
        needed, _ = await self._needs_upload(name, size, md5)
        if needed:
            raise GCSError("gs://%s/%s changed during the upload and does not match"
                           % (self.bucket, name))

    async def _blob(self, digest: str) -> RedirectBlob:
        name = blob_object_name(digest)
        if await self._metadata(name) is None:
            raise BlobUnknown("blob unknown to registry", {"digest": digest})
        return RedirectBlob(url=await self.signed_url(name), digest=digest)

    async def _read_small(self, digest: str, limit: int) -> bytes | None:
        try:
            return await self._download(blob_object_name(digest), limit)
        except BodyTooLarge:
            return None

    async def _get_document(self, namespace: str, key: str) -> Any:
        name = document_object_name(namespace, key)
        try:
            data = await self._download(name, DOCUMENT_LIMIT)
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
        await self._upload_bytes(name, data, md5, content_type="application/json")

    async def _record(self, reference: str, digest: str, media_type: str,
                      size: int) -> None:
        check_reference(reference)
        check_digest(digest)
        async with self._index_lock:
            for _ in range(INDEX_ATTEMPTS):
                try:
                    await self._update_index(reference, digest, media_type, size)
                    return
                except _PreconditionFailed:
                    self.log.info("gs://{bucket}/{name} changed meanwhile; retrying",
                                  bucket=self.bucket, name=INDEX_OBJECT)
        raise GCSError("gs://%s/%s kept changing; gave up naming %s"
                       % (self.bucket, INDEX_OBJECT, reference))

    async def _update_index(self, reference: str, digest: str, media_type: str,
                            size: int) -> None:
        """
        One read-modify-write of the index, guarded by its generation: the
        write fails with :class:`_PreconditionFailed` if another writer got
        in between (Cloud Storage checks ``ifGenerationMatch``).
        """
        metadata = await self._metadata(INDEX_OBJECT)
        generation = "0" if metadata is None else str(metadata.get("generation", "0"))
        current = None
        if metadata is not None:
            try:
                current = await self._download(INDEX_OBJECT, INDEX_LIMIT, generation)
            except BodyTooLarge:
                raise GCSError("gs://%s/%s is larger than %d bytes"
                               % (self.bucket, INDEX_OBJECT, INDEX_LIMIT)) from None
            if current is None:
                raise _PreconditionFailed()
        updated = await self._runner.run(
            updated_index, current, reference, digest, media_type, size)
        await self._upload_bytes(INDEX_OBJECT, updated, md5_base64(updated),
                                 generation, content_type="application/json")

    def _run(self, coroutine_function: Callable[..., Awaitable[Any]], *args: Any) -> Deferred:
        return Deferred.fromCoroutine(coroutine_function(*args))

    # -- public -----------------------------------------------------------

    async def signed_url(self, name: str, method: str = "GET") -> str:
        """
        A URL to the object, valid for ``url_lifetime`` seconds; signed in
        the thread pool when there is a key, plain otherwise.
        """
        if self._signing_key is None:
            return "%s/%s/%s" % (self._signing_endpoint, self.bucket,
                                 quote(name, safe="/~"))
        timestamp = datetime.fromtimestamp(self._reactor.seconds(), timezone.utc)
        signed = await self._runner.run(
            lambda: sign_url_v4(self._signing_key, bucket=self.bucket, object_name=name,
                                method=method, expiration=self._url_lifetime,
                                timestamp=timestamp, endpoint=self._signing_endpoint,
                                style=UrlStyle.PATH))
        return signed.url

    async def check_bucket(self) -> None:
        """
        Make sure the bucket exists and the credentials may use it.

        :raises GCSError: with an explanation otherwise.
        """
        url = "%s/storage/v1/b/%s?fields=name" % (self._endpoint, quote(self.bucket, safe=""))
        try:
            response = await self._request("GET", url)
        except GCSError:
            raise
        except Exception as e:
            raise GCSError("cannot reach Cloud Storage at %s to check gs://%s: %s"
                           % (self._endpoint, self.bucket, e)) from None
        if response.code == 200:
            await read_limited(response, ERROR_BODY_LIMIT)
            return
        error = await _error_for(response, "checking bucket gs://%s" % (self.bucket,))
        if response.code == 404:
            error = GCSError("the bucket gs://%s does not exist (at %s)"
                             % (self.bucket, self._endpoint), 404)
        elif response.code in (401, 403):
            error = GCSError("the credentials may not use gs://%s: %s"
                             % (self.bucket, error), response.code)
        raise error

    def close(self) -> Deferred[None]:
        """Close idle connections (at shutdown, and at the end of tests)."""
        return self._pool.closeCachedConnections()

    # -- IStorage ---------------------------------------------------------

    def temp_directory(self) -> str:
        return self._spool

    def has_blob(self, digest: str):
        async def exists() -> bool:
            return await self._metadata(blob_object_name(digest)) is not None
        return Deferred.fromCoroutine(exists())

    def store_blob_file(self, path: str, digest: str):
        return self._run(self._store_file, path, digest)

    def store_blob_bytes(self, data: bytes, digest: str):
        return self._run(self._store_bytes, data, digest)

    def blob(self, digest: str):
        return self._run(self._blob, digest)

    def read_small_blob(self, digest: str, limit: int):
        return self._run(self._read_small, digest, limit)

    def get_document(self, namespace: str, key: str):
        return self._run(self._get_document, namespace, key)

    def put_document(self, namespace: str, key: str, document: object):
        return self._run(self._put_document, namespace, key, document)

    def record_reference(self, reference: str, manifest_digest: str,
                         media_type: str, size: int):
        return self._run(self._record, reference, manifest_digest, media_type, size)


def _load_key(path: str) -> ServiceAccountKey:
    with open(path, "rb") as f:
        return ServiceAccountKey.from_json(f.read())


def gcs_storage_from_settings(
        reactor: Any, runner: Any, bucket: str, credentials_path: str | None = None,
        endpoint: str | None = None, *, signing_endpoint: str | None = None,
        spool_directory: str | None = None,
        persistent_connections: bool | None = None,
        environ: Any = None) -> Deferred[GCSStorage]:
    """
    A Deferred firing with the GCS storage built from the daemon's
    settings, once the bucket is known to be usable: a wrong setting stops
    the daemon at start-up with a clear message instead of failing every
    request.

    :param credentials_path: a service-account JSON key file; defaults to
        ``GOOGLE_APPLICATION_CREDENTIALS``.  Required for real Cloud Storage
        (it signs blob URLs and obtains access tokens); optional with an
        emulator ``endpoint``, which is used anonymously.
    :param endpoint: an emulator's ``http://host:port``; ``None`` for real
        Cloud Storage.
    :param signing_endpoint: the host signed blob URLs point to, when it
        differs from ``endpoint``.
    :param spool_directory: where layer files wait for their upload.
    :param persistent_connections: keep connections open between requests;
        by default on for Cloud Storage, off for emulators (some close the
        connection after each answer without announcing it).
    :param environ: the environment to read ``GOOGLE_APPLICATION_CREDENTIALS``
        from (``os.environ`` by default).
    :raises GCSError: (in the Deferred) when the key cannot be read or the
        bucket is unusable.
    """
    return Deferred.fromCoroutine(_storage_from_settings(
        reactor, runner, bucket, credentials_path, endpoint, signing_endpoint,
        spool_directory, persistent_connections,
        os.environ if environ is None else environ))


def build_gcs_storage(
        reactor: Any, runner: Any, bucket: str, key: ServiceAccountKey | None,
        endpoint: str | None = None, *, signing_endpoint: str | None = None,
        spool_directory: str | None = None,
        persistent_connections: bool | None = None) -> GCSStorage:
    """
    The GCS storage for a loaded service-account ``key`` (``None`` only
    with an emulator ``endpoint``), not yet checked: call
    :meth:`GCSStorage.check_bucket` before relying on it.

    :raises GCSError: when real Cloud Storage is asked for without a key.
    """
    if key is None and endpoint is None:
        raise GCSError("GCS storage needs a service account key file: set "
                       "GOOGLE_APPLICATION_CREDENTIALS to its path")
    if persistent_connections is None:
        persistent_connections = endpoint is None
    pool = HTTPConnectionPool(reactor, persistent=persistent_connections)
    http = HTTPClient(Agent(reactor, pool=pool))
    tokens = None
    if endpoint is None and key is not None:
        tokens = AccessTokenSource(reactor, runner, key, http)
    return GCSStorage(
        reactor, runner, bucket, signing_key=key, token_source=tokens,
        endpoint=endpoint or DEFAULT_API_ENDPOINT,
        signing_endpoint=signing_endpoint or endpoint or DEFAULT_SIGNING_ENDPOINT,
        spool_directory=spool_directory, pool=pool, http=http)


def load_service_account_key(path: str) -> ServiceAccountKey:
    """
    Read a service-account JSON key file (blocking: call it at start-up or
    in the thread pool).

    :raises GCSError: when it cannot be read or is not a key file.
    """
    try:
        return _load_key(path)
    except (OSError, ValueError) as e:
        raise GCSError("cannot use the service account key %s: %s" % (path, e)) from None


async def _storage_from_settings(
        reactor: Any, runner: Any, bucket: str, credentials_path: str | None,
        endpoint: str | None, signing_endpoint: str | None,
        spool_directory: str | None, persistent_connections: bool | None,
        environ: Any) -> GCSStorage:
    """Read the key, build the storage and check the bucket."""
    path = credentials_path or environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
    key = None
    if path is not None:
        key = await runner.run(load_service_account_key, path)
    storage = build_gcs_storage(
        reactor, runner, bucket, key, endpoint, signing_endpoint=signing_endpoint,
        spool_directory=spool_directory, persistent_connections=persistent_connections)
    try:
        await storage.check_bucket()
    except BaseException:
        await storage.close()
        raise
    GCSStorage.log.info("Using gs://{bucket} at {endpoint}", bucket=bucket,
                        endpoint=endpoint or DEFAULT_API_ENDPOINT)
    return storage

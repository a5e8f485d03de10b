"""
The Cloud Storage JSON API for one bucket: object metadata, downloads and
uploads, with treq on the reactor.

Small bodies go up in one multipart request; larger files go through a
resumable upload, in chunks streamed from disk
(:class:`~nixeryd.storage.filebody.FileRegionProducer`).  Every upload
names the MD5 of its content, and may be guarded by a generation
precondition (``ifGenerationMatch``), which Cloud Storage answers with 412
(:class:`~nixeryd.storage.gcs.http.PreconditionFailed`) when it no longer
holds.

Requests that are safe to repeat (reads, a body cut short included;
listings; uploads and deletions guarded by a generation; ``customTime``
patches) are sent again after transient failures
(:mod:`nixeryd.storage.retry`); the others are tried once.  A
resumable upload whose chunk fails asks its session how much it holds and
goes on from there (:meth:`BucketClient.upload_file`).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Awaitable, Callable, TypeVar
from urllib.parse import quote, urlencode

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IBodyProducer, IResponse

from treq.client import HTTPClient

from nixeryd.core.threads import Runner
from nixeryd.storage.gcs.auth import TokenSource
from nixeryd.storage.errors import StorageServiceError
from nixeryd.storage.filebody import FileRegionProducer
from nixeryd.storage.gcs.http import BACKEND, GCSError, PreconditionFailed, error_for
from nixeryd.storage.bucketclient import DEFAULT_READ_SIZE, PooledBucketClient
from nixeryd.storage.httpcalls import cancel_after, drain, read_complete
from nixeryd.storage.retry import (
    REASON_SERVER_ERROR, TRANSIENT_ERRORS, Attempts, Retrier, error_reason, status_reason,
    transient_status)

#: The JSON API of real Cloud Storage.
DEFAULT_API_ENDPOINT = "https://storage.googleapis.com"
#: Resumable upload chunks must be multiples of this (except the last one).
RESUMABLE_GRANULARITY = 256 * 1024
#: Bytes per resumable-upload request.
DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
#: Answers that say a resumable-upload session no longer exists.
SESSION_GONE = frozenset({404, 410})
#: New sessions a resumable upload may start after its session is gone.
SESSION_RESTARTS = 3
#: Objects asked for per page of a listing (the most the API gives).
LIST_PAGE_SIZE = 1000
#: The largest page of a listing read (an emulator may send every object
#: in one page, each with its whole resource).
LIST_PAGE_LIMIT = 256 * 1024 * 1024
#: The fields of each listed object.
LIST_FIELDS = ("items(name,size,updated,customTime,generation,metageneration),"
               "nextPageToken")

#: The fields of an object's metadata asked for.
METADATA_FIELDS = "size,md5Hash,crc32c,generation,metageneration,updated,customTime,contentType"

T = TypeVar("T")

#: An object resource of the JSON API, as decoded from its answer.
ObjectResource = dict[str, Any]


def multipart_body(metadata: dict[str, str], data: bytes) -> tuple[bytes, str]:
    """
    A ``multipart/related`` upload body and its content type.

    The object's content type is both in the metadata (``contentType``,
    which Cloud Storage and gcp-storage-emulator read) and on the media
    part (which fake-gcs-server reads instead).
    """
    media_type = metadata.get("contentType", "application/octet-stream")
    boundary = "nixeryd-" + secrets.token_hex(16)
    while boundary.encode("ascii") in data:
        boundary = "nixeryd-" + secrets.token_hex(16)
    delimiter = b"--" + boundary.encode("ascii")
    body = b"".join([
        delimiter, b"\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n",
        json.dumps(metadata).encode("utf-8"), b"\r\n",
        delimiter, b"\r\nContent-Type: ", media_type.encode("ascii"), b"\r\n\r\n",
        data, b"\r\n", delimiter, b"--\r\n"])
    return body, "multipart/related; boundary=" + boundary


def resume_offset(response: IResponse) -> int:
    """Where to continue after a 308: one past the last byte received."""
    ranges = response.headers.getRawHeaders(b"range") or []
    match = re.fullmatch(rb"bytes=0-(\d+)", ranges[0].strip()) if ranges else None
    return int(match.group(1)) + 1 if match else 0


class BucketClient(PooledBucketClient):
    """
    Requests on the objects of one Cloud Storage bucket, through the JSON API.

    The parameters not named here are :class:`PooledBucketClient`'s.

    :param endpoint: ``scheme://host[:port]`` of the JSON API.
    :param token_source: gives access tokens; ``None`` sends anonymous
        requests (emulators).
    :param chunk_size: bytes per resumable-upload request (a multiple of
        256 KiB).
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, runner: Runner, http: HTTPClient,
                 pool: HTTPConnectionPool, bucket: str, *,
                 endpoint: str = DEFAULT_API_ENDPOINT,
                 token_source: TokenSource | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 read_size: int = DEFAULT_READ_SIZE,
                 request_timeout: float = 300,
                 retrier: Retrier | None = None) -> None:
        if chunk_size <= 0 or chunk_size % RESUMABLE_GRANULARITY:
            raise ValueError("chunk_size must be a positive multiple of %d"
                             % (RESUMABLE_GRANULARITY,))
        super().__init__(clock, runner, http, pool, bucket, backend=BACKEND,
                         read_size=read_size, request_timeout=request_timeout,
                         retrier=retrier)
        self.endpoint = endpoint.rstrip("/")
        self._tokens = token_source
        self._chunk_size = chunk_size

    def _object_url(self, name: str, **query: str) -> str:
        url = "%s/storage/v1/b/%s/o/%s" % (
            self.endpoint, quote(self.bucket, safe=""), quote(name, safe=""))
        return url + ("?" + urlencode(query) if query else "")

    def _list_url(self, **query: str) -> str:
        return "%s/storage/v1/b/%s/o?%s" % (
            self.endpoint, quote(self.bucket, safe=""), urlencode(query))

    def _upload_url(self, **query: str) -> str:
        return "%s/upload/storage/v1/b/%s/o?%s" % (
            self.endpoint, quote(self.bucket, safe=""), urlencode(query))

    def _sender(self, method: str, url: str, headers: dict[str, str] | None = None,
                data: bytes | IBodyProducer | None = None) -> Callable[[], Awaitable[IResponse]]:
        """The call sending one attempt of a request (with a fresh token)."""
        async def send() -> IResponse:
            all_headers: dict[bytes | str, bytes | str] = {}
            all_headers.update(headers or {})
            if self._tokens is not None:
                all_headers["Authorization"] = "Bearer " + await self._tokens.token()
            response = await cancel_after(self._http.request(
                method, url, headers=all_headers, data=data, allow_redirects=False),
                self._timeout, self._clock)
            return response

        return send

    async def _request(self, method: str, url: str, *, target: str, safe: bool,
                       headers: dict[str, str] | None = None,
                       data: bytes | IBodyProducer | None = None) -> IResponse:
        """
        Send a request; again after a transient failure when ``safe`` (a
        body to send again must then be ``bytes``).
        """
        return await self._retrier.request(
            self._sender(method, url, headers, data), method=method, target=target,
            safe=safe and not IBodyProducer.providedBy(data), log=self.log)

    async def _get(self, url: str, read: Callable[[IResponse], Awaitable[T]], *,
                   target: str) -> T:
        """
        ``read`` of the answer to a GET, both tried again after a transient
        failure (a connection lost in the middle of the body too).
        """
        return await self._retrier.call(self._sender("GET", url), read, method="GET",
                                        target=target, safe=True, log=self.log)

    def _gs(self, name: str) -> str:
        return "gs://%s/%s" % (self.bucket, name)

    async def metadata(self, name: str) -> ObjectResource | None:
        """The object's metadata, or ``None`` when it does not exist."""
        async def read(response: IResponse) -> ObjectResource | None:
            if response.code == 404:
                await drain(response)
                return None
            if response.code != 200:
                raise await error_for(response, "looking up gs://%s/%s" % (self.bucket, name))
            resource: ObjectResource = json.loads(await drain(response))
            return resource

        return await self._get(
            self._object_url(name, fields=METADATA_FIELDS), read, target=self._gs(name))

    async def download(self, name: str, limit: int,
                       generation: str | None = None) -> bytes | None:
        """
        The object's content, or ``None`` when it does not exist; a
        download cut short is tried again from the start.

        :raises BodyTooLarge: when it is larger than ``limit``.
        :raises PreconditionFailed: when ``generation`` is no longer current.
        """
        query = {"alt": "media"}
        if generation is not None:
            query["ifGenerationMatch"] = generation

        async def read(response: IResponse) -> bytes | None:
            if response.code == 404:
                await drain(response)
                return None
            if response.code == 412:
                await drain(response)
                raise PreconditionFailed()
            if response.code != 200:
                raise await error_for(response, "downloading gs://%s/%s" % (self.bucket, name))
            return await read_complete(response, limit)

        return await self._get(self._object_url(name, **query), read, target=self._gs(name))

    async def _finish_upload(self, response: IResponse, name: str, size: int,
                             md5: str) -> ObjectResource:
        """Check the answer to the request that completed an upload."""
        if response.code == 412:
            await drain(response)
            raise PreconditionFailed()
        if response.code not in (200, 201):
            raise await error_for(response, "uploading gs://%s/%s" % (self.bucket, name))
        resource: ObjectResource = json.loads(await drain(response))
        if resource.get("md5Hash") not in (None, md5) or int(resource.get("size", size)) != size:
            raise GCSError("gs://%s/%s was stored with MD5 %s and size %s, not %s and %d"
                           % (self.bucket, name, resource.get("md5Hash"),
                              resource.get("size"), md5, size))
        self.log.debug("Uploaded gs://{bucket}/{name}, {size} bytes",
                       bucket=self.bucket, name=name, size=size)
        return resource

    async def upload_bytes(self, name: str, data: bytes, md5: str,
                           generation: str | None = None,
                           content_type: str = "application/octet-stream") -> ObjectResource:
        """
        Upload ``data`` in one multipart request; with ``generation``, only
        if the object's generation is still that (``"0"``: still absent).

        Only a guarded upload is retried; its 412 may then mean that an
        earlier attempt was stored, which the caller checks.
        """
        body, multipart_type = multipart_body(
            {"name": name, "md5Hash": md5, "contentType": content_type}, data)
        query = {"uploadType": "multipart", "name": name}
        if generation is not None:
            query["ifGenerationMatch"] = generation
        response = await self._request(
            "POST", self._upload_url(**query), target=self._gs(name),
            safe=generation is not None,
            headers={"Content-Type": multipart_type}, data=body)
        return await self._finish_upload(response, name, len(data), md5)

    async def upload_file(self, name: str, path: str, size: int,
                          md5: str, generation: str) -> ObjectResource:
        """
        Upload a file in chunks streamed from disk (resumable upload), if
        the object's generation is still ``generation``.

        A chunk that fails transiently (a lost connection, a 5xx) is not
        sent again blindly: the session is asked how much it holds
        (``Content-Range: bytes */SIZE``, answered 308 with ``Range``) and
        the upload goes on from there, from the file.  Only a session that
        is gone (404, 410) starts over, in a new session, unless the object
        it was writing is there complete.  The waits between the attempts
        and their deadline are the retries'; the deadline counts from the
        last chunk that went through.
        """
        target = self._gs(name)
        attempts = self._retrier.attempts("PUT", target, self.log)
        session = await self._start_session(name, size, md5, generation)
        offset = 0
        restarts = 0
        while True:
            end = min(offset + self._chunk_size, size)
            producer = FileRegionProducer(self._runner, path, offset, end - offset,
                                          self._read_size)
            gone: int | None = None
            try:
                response = await self._retrier.attempt(self._sender(
                    "PUT", session, data=producer,
                    headers={"Content-Range": "bytes %d-%d/%d" % (offset, end - 1, size),
                             "Content-Type": "application/octet-stream"}))
                self.log.debug("Sent bytes {first}-{last} of {size} for gs://{bucket}/{name}",
                               first=offset, last=end - 1, size=size, bucket=self.bucket,
                               name=name, pieces=producer.pieces_read,
                               largest_piece=producer.largest_piece)
                if response.code == 308:
                    await drain(response)
                    held = self._next_offset(response, offset, size, name)
                    if held > offset:
                        attempts.restart()
                    elif not await attempts.retry(
                            REASON_SERVER_ERROR, "a chunk of which the session holds"
                            " nothing (HTTP 308 at byte %d)" % (held,)):
                        raise GCSError("uploading gs://%s/%s: the session holds no byte"
                                       " past %d until the retries' deadline"
                                       % (self.bucket, name, held), 308)
                    offset = held
                    continue
                if response.code in SESSION_GONE:
                    await drain(response)
                    gone = response.code
                elif not transient_status(response.code):
                    # The answer of the last chunk (its body may be lost too).
                    return await self._finish_upload(response, name, size, md5)
                else:
                    await drain(response)
                    await self._retry_chunk(attempts, name, status=response.code)
            except TRANSIENT_ERRORS as e:
                await self._retry_chunk(attempts, name, error=e)
            if gone is None:
                response = await self._request(
                    "PUT", session, target=target, safe=True,
                    headers={"Content-Range": "bytes */%d" % (size,)})
                if response.code == 308:
                    await drain(response)
                    held = resume_offset(response)
                    self.log.info("Resuming the upload of gs://{bucket}/{name} at byte"
                                  " {offset} of {size} (this chunk began at {chunk})",
                                  bucket=self.bucket, name=name, offset=held, size=size,
                                  chunk=offset, event="gcs-upload-resumed")
                    offset = self._next_offset(response, offset, size, name, held)
                    continue
                if response.code not in SESSION_GONE:
                    return await self._finish_upload(response, name, size, md5)
                await drain(response)
                gone = response.code
            # The session is gone: it may have completed the object first.
            existing = await self.metadata(name)
            if (existing is not None and existing.get("md5Hash") == md5
                    and int(existing.get("size", -1)) == size):
                return existing
            restarts += 1
            if restarts > SESSION_RESTARTS:
                raise GCSError("uploading gs://%s/%s: the upload session was gone %d times"
                               % (self.bucket, name, restarts), gone)
            self.log.warn("The upload session of gs://{bucket}/{name} is gone (HTTP"
                          " {status}); starting over", bucket=self.bucket, name=name,
                          status=gone, event="gcs-upload-restarted")
            session = await self._start_session(name, size, md5, generation)
            offset = 0

    async def _retry_chunk(self, attempts: Attempts, name: str, *, status: int | None = None,
                           error: BaseException | None = None) -> None:
        """
        Wait before asking the session where it stands, after a chunk failed
        transiently with ``status`` or ``error``.

        :raises: the error, or a :class:`GCSError` for the status, once the
            retries' deadline has passed.
        """
        if error is not None:
            if not await attempts.retry(error_reason(error), repr(error), error=error):
                raise error
            return
        assert status is not None
        if not await attempts.retry(status_reason(status), "HTTP %d" % (status,)):
            raise GCSError("uploading gs://%s/%s: Cloud Storage answered HTTP %d until"
                           " the retries' deadline" % (self.bucket, name, status), status)

    def _next_offset(self, response: IResponse, offset: int, size: int, name: str,
                     held: int | None = None) -> int:
        """Where to continue after a 308; the session must still want bytes."""
        held = resume_offset(response) if held is None else held
        if held >= size:
            raise GCSError("uploading gs://%s/%s: all %d bytes sent but the upload "
                           "did not complete" % (self.bucket, name, size))
        return held

    async def _start_session(self, name: str, size: int, md5: str,
                             generation: str) -> str:
        """The URL of a new resumable-upload session for the object."""
        metadata = json.dumps({"name": name, "md5Hash": md5,
                               "contentType": "application/octet-stream"}).encode()
        response = await self._request(
            "POST", self._upload_url(uploadType="resumable", name=name,
                                     ifGenerationMatch=generation),
            target=self._gs(name), safe=True,
            headers={"Content-Type": "application/json; charset=UTF-8",
                     "X-Upload-Content-Type": "application/octet-stream",
                     "X-Upload-Content-Length": str(size)},
            data=metadata)
        if response.code == 412:
            await drain(response)
            raise PreconditionFailed()
        if response.code != 200:
            raise await error_for(response, "starting the upload of gs://%s/%s"
                                  % (self.bucket, name))
        await drain(response)
        locations: list[bytes] = response.headers.getRawHeaders(b"location") or []
        if not locations:
            raise GCSError("starting the upload of gs://%s/%s: no session URL in the answer"
                           % (self.bucket, name))
        return locations[0].decode("ascii")

    async def list_objects(self, prefix: str,
                           page_size: int = LIST_PAGE_SIZE) -> list[ObjectResource]:
        """
        Every object whose name starts with ``prefix`` (``objects.list``,
        one page after the other), with its name, size, times and
        generations.
        """
        objects: list[ObjectResource] = []
        token: str | None = None
        while True:
            query = {"prefix": prefix, "maxResults": str(page_size), "fields": LIST_FIELDS}
            if token is not None:
                query["pageToken"] = token
            async def read(response: IResponse) -> dict[str, Any]:
                if response.code != 200:
                    raise await error_for(response, "listing gs://%s/%s"
                                          % (self.bucket, prefix))
                body = await read_complete(response, LIST_PAGE_LIMIT)
                page: dict[str, Any] = await self._runner.run(json.loads, body)
                return page

            page = await self._get(self._list_url(**query), read,
                                   target=self._gs(prefix + "*"))
            objects.extend(item for item in page.get("items", []) if isinstance(item, dict))
            token = page.get("nextPageToken") or None
            if token is None:
                return objects

    async def delete(self, name: str, generation: str | None = None,
                     metageneration: str | None = None) -> bool:
        """
        Delete the object (``objects.delete``), only if it is still
        ``generation`` and ``metageneration`` when given; whether it was
        deleted (``False`` when it is gone or has changed).
        """
        query = {}
        if generation is not None:
            query["ifGenerationMatch"] = generation
        if metageneration is not None:
            query["ifMetagenerationMatch"] = metageneration
        response = await self._request("DELETE", self._object_url(name, **query),
                                       target=self._gs(name), safe=generation is not None)
        if response.code in (200, 204):
            await drain(response)
            return True
        if response.code in (404, 412):
            await drain(response)
            return False
        raise await error_for(response, "deleting gs://%s/%s" % (self.bucket, name))

    async def set_custom_time(self, name: str, timestamp: str) -> None:
        """
        Set the object's ``customTime`` (``objects.patch``); Cloud Storage
        keeps the later of the old and the new one, so sending the same
        patch again changes nothing more: it is retried.
        """
        response = await self._request(
            "PATCH", self._object_url(name, fields="customTime"),
            target=self._gs(name), safe=True,
            headers={"Content-Type": "application/json"},
            data=json.dumps({"customTime": timestamp}).encode())
        if response.code != 200:
            raise await error_for(response, "refreshing gs://%s/%s" % (self.bucket, name))
        await drain(response)

    async def check_bucket(self) -> None:
        """
        Make sure the bucket exists and the credentials may use it.

        :raises GCSError: with an explanation otherwise.
        """
        url = "%s/storage/v1/b/%s?fields=name" % (self.endpoint, quote(self.bucket, safe=""))
        try:
            # Tried once: at start-up, a failure is reported at once.
            response = await self._request("GET", url, target="gs://" + self.bucket,
                                           safe=False)
        except StorageServiceError:
            raise
        except Exception as e:
            raise GCSError("cannot reach Cloud Storage at %s to check gs://%s: %s"
                           % (self.endpoint, self.bucket, e)) from None
        if response.code == 200:
            await drain(response)
            return
        error = await error_for(response, "checking bucket gs://%s" % (self.bucket,))
        if response.code == 404:
            error = GCSError("the bucket gs://%s does not exist (at %s)"
                             % (self.bucket, self.endpoint), 404)
        elif response.code in (401, 403):
            error = GCSError("the credentials may not use gs://%s: %s"
                             % (self.bucket, error), response.code)
        raise error


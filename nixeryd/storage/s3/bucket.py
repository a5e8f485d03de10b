"""
The S3 REST API on one bucket: object metadata (HEAD), downloads,
uploads (one PUT, or a multipart upload streamed from disk part by part),
listings, copies and deletions, with treq on the reactor.

Every request is signed with SigV4 (:mod:`nixeryd.storage.s3.signing`)
when it is sent, so a retry after a wait carries a fresh time.  Requests
that are safe to repeat (reads, listings, uploads of content-addressed
bodies, parts, deletions) are sent again after transient failures with
the policy of the Cloud Storage backend
(:class:`~nixeryd.storage.retry.Retrier`); a body streamed from disk
is read again from the file for each attempt.

The bucket is addressed path style (``<endpoint>/<bucket>/<key>``, which
every S3-compatible server understands) or virtual-hosted style
(``<bucket>.<endpoint host>/<key>``, which AWS prefers).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence
from urllib.parse import urlsplit

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IBodyProducer, IResponse

from treq.client import HTTPClient

from nixeryd.core.httpbody import read_limited
from nixeryd.core.threads import Runner
from nixeryd.storage.canonical import (
    EMPTY_SHA256, canonical_query_by_name, host_with_port, uri_encode_path)
from nixeryd.storage.filebody import FileRegionProducer
from nixeryd.storage.bucketclient import DEFAULT_READ_SIZE, PooledBucketClient
from nixeryd.storage.httpcalls import cancel_after, drain
from nixeryd.storage.retry import Retrier
from nixeryd.storage.s3.credentials import CredentialSource
from nixeryd.storage.s3.http import (
    BACKEND, PreconditionFailed, S3Error, child_text, children, error_for, error_from_xml,
    local_name, parse_xml)
from nixeryd.storage.s3.objects import Part, bytes_checksums, utc_now
from nixeryd.storage.s3.signing import presign_url, signed_headers

#: Objects asked for per page of a listing (the most S3 gives).
LIST_PAGE_SIZE = 1000
#: The largest page of a listing read.
LIST_PAGE_LIMIT = 64 * 1024 * 1024

#: What a bucket name may hold: S3's rules (lower-case letters, digits,
#: dots and hyphens) with the capitals and underscores of old us-east-1
#: buckets; a path carries any of them as it is.
_BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}\Z")
#: A bucket name that is one DNS label, which a virtual host can carry.
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


def aws_endpoint(region: str) -> str:
    """The regional endpoint of AWS S3."""
    return "https://s3.%s.amazonaws.com" % (region,)


def check_bucket_name(bucket: str) -> str:
    """
    ``bucket`` if it can be a bucket's name.

    :raises ValueError: otherwise.
    """
    if not _BUCKET_NAME.match(bucket):
        raise ValueError("%r is not a bucket name (letters, digits, dots, hyphens and"
                         " underscores)" % (bucket,))
    return bucket


def default_addressing_style(endpoint: str | None, bucket: str) -> str:
    """
    Virtual-hosted on AWS for a bucket name that is one DNS label; path
    style for another name (with dots it would not match the certificate
    of ``*.s3.<region>.amazonaws.com``), as AWS's SDKs choose, and with
    any other endpoint.
    """
    return "virtual" if endpoint is None and _DNS_LABEL.match(bucket) else "path"


@frozen
class ObjectInfo:
    """
    What S3 says of an object.

    :ivar key: its name.
    :ivar size: its length in bytes.
    :ivar etag: its ETag, without the quotes.
    :ivar last_modified: when it was last written, as S3 wrote it (a
        listing's ``2024-05-01T12:00:00.123Z``, or a HEAD's HTTP date).
    """

    key: str
    size: int
    etag: str
    last_modified: str


@frozen
class Upload:
    """A multipart upload in progress: its key, id and start (ISO 8601)."""

    key: str
    upload_id: str
    initiated: str


@frozen
class BucketAddress:
    """
    Where a bucket's objects are, for one addressing style.

    :ivar base_url: ``scheme://host[:port]`` requests go to.
    :ivar host: the ``Host`` header they carry.
    :ivar prefix: the path before the key: ``/<bucket>`` path style,
        empty virtual-hosted style.
    """

    base_url: str
    host: str
    prefix: str

    @classmethod
    def of(cls, endpoint: str, bucket: str, style: str) -> "BucketAddress":
        """
        The address of ``bucket`` at ``endpoint`` in ``style`` (``path``
        or ``virtual``).

        :raises ValueError: for another style or an endpoint without a host.
        """
        endpoint = endpoint.rstrip("/")
        if style == "path":
            return cls(endpoint, host_with_port(endpoint), "/" + bucket)
        if style == "virtual":
            parts = urlsplit(endpoint)
            host = bucket + "." + host_with_port(endpoint)
            return cls("%s://%s" % (parts.scheme, host), host, "")
        raise ValueError("the addressing style is path or virtual, not %r" % (style,))

    def path(self, key: str | None) -> str:
        """The encoded path of an object, or of the bucket (``key=None``)."""
        if key is None:
            return self.prefix or "/"
        return self.prefix + "/" + uri_encode_path(key)


def _header(response: IResponse, name: bytes) -> str:
    values: list[bytes] = response.headers.getRawHeaders(name) or [b""]
    return values[0].decode("latin-1")


def _etag(response: IResponse) -> str:
    return _header(response, b"etag").strip().strip('"')


#: A request body: bytes sent as they are, or a factory of a producer
#: made anew for each attempt.
Body = bytes | Callable[[], IBodyProducer] | None


class S3Client(PooledBucketClient):
    """
    Requests on the objects of one S3 bucket, signed with SigV4 (the
    parameters not named here are :class:`PooledBucketClient`'s).

    :param address: where the bucket is.
    :param region: the region requests are signed for.
    :param credentials: gives the key to sign with.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, runner: Runner, http: HTTPClient,
                 pool: HTTPConnectionPool, bucket: str, *, address: BucketAddress,
                 region: str, credentials: CredentialSource,
                 read_size: int = DEFAULT_READ_SIZE, request_timeout: float = 300,
                 retrier: Retrier | None = None) -> None:
        super().__init__(clock, runner, http, pool, bucket, backend=BACKEND,
                         read_size=read_size, request_timeout=request_timeout,
                         retrier=retrier)
        self.address = address
        self.region = region
        self.credentials = credentials

    def _s3(self, key: str) -> str:
        return "s3://%s/%s" % (self.bucket, key)

    async def _request(self, method: str, key: str | None, *, target: str, safe: bool,
                       query: Sequence[tuple[str, str]] = (),
                       headers: dict[str, str] | None = None, body: Body = None,
                       payload_hash: str = EMPTY_SHA256) -> IResponse:
        """
        Send a signed request; again after a transient failure when ``safe``.
        """
        path = self.address.path(key)
        query_text = canonical_query_by_name(query)
        url = self.address.base_url + path + ("?" + query_text if query_text else "")

        async def send() -> IResponse:
            credentials = await self.credentials.credentials()
            sent = signed_headers(
                credentials, region=self.region, method=method, host=self.address.host,
                path=path, query=query, headers=headers or {}, payload_hash=payload_hash,
                timestamp=utc_now(self._clock.seconds()))
            sent.pop("Host")  # the agent sends it, from the URL
            data = body() if callable(body) else body
            all_headers: dict[bytes | str, bytes | str] = {
                name: value for name, value in sent.items()}
            response = await cancel_after(self._http.request(
                method, url, headers=all_headers, data=data, allow_redirects=False),
                self._timeout, self._clock)
            return response

        return await self._retrier.request(send, method=method, target=target, safe=safe,
                                           log=self.log)

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size, ETag and time, or ``None`` when it does not exist."""
        response = await self._request("HEAD", key, target=self._s3(key), safe=True)
        if response.code == 404:
            await drain(response)
            return None
        if response.code != 200:
            raise await error_for(response, "looking up " + self._s3(key))
        await drain(response)
        return ObjectInfo(key, int(_header(response, b"content-length") or 0),
                          _etag(response), _header(response, b"last-modified"))

    async def get(self, key: str, limit: int) -> tuple[bytes, str] | None:
        """
        The object's content and ETag, or ``None`` when it does not exist.

        :raises BodyTooLarge: when it is larger than ``limit``.
        """
        response = await self._request("GET", key, target=self._s3(key), safe=True)
        if response.code == 404:
            await drain(response)
            return None
        if response.code != 200:
            raise await error_for(response, "downloading " + self._s3(key))
        return await read_limited(response, limit), _etag(response)

    async def _check_put(self, response: IResponse, key: str, what: str) -> str:
        if response.code in (409, 412):
            await drain(response)
            raise PreconditionFailed()
        if response.code != 200:
            raise await error_for(response, what + " " + self._s3(key))
        await drain(response)
        return _etag(response)

    async def put_bytes(self, key: str, data: bytes, *,
                        content_type: str = "application/octet-stream",
                        if_match: str | None = None,
                        if_none_match: bool = False) -> str:
        """
        Store ``data`` in one request; its ETag.  With ``if_match`` (an
        ETag) or ``if_none_match``, only if the object is still that one,
        or still absent (servers that ignore conditions store it anyway).

        :raises PreconditionFailed: when the condition did not hold.
        """
        md5, sha256 = await self._runner.run(bytes_checksums, data)
        headers = {"Content-Type": content_type, "Content-MD5": md5}
        if if_match is not None:
            headers["If-Match"] = '"%s"' % (if_match,)
        if if_none_match:
            headers["If-None-Match"] = "*"
        response = await self._request("PUT", key, target=self._s3(key), safe=True,
                                       headers=headers, body=data, payload_hash=sha256)
        etag = await self._check_put(response, key, "uploading")
        self.log.debug("Uploaded {target}, {size} bytes", target=self._s3(key),
                       size=len(data))
        return etag

    def _producer(self, path: str, part: Part) -> Callable[[], IBodyProducer]:
        return lambda: FileRegionProducer(self._runner, path, part.offset, part.length,
                                          self._read_size)

    async def put_file(self, key: str, path: str, part: Part) -> str:
        """Store a whole file in one request, streamed from disk; its ETag."""
        response = await self._request(
            "PUT", key, target=self._s3(key), safe=True,
            headers={"Content-Type": "application/octet-stream", "Content-MD5": part.md5},
            body=self._producer(path, part), payload_hash=part.sha256)
        etag = await self._check_put(response, key, "uploading")
        self.log.debug("Uploaded {target}, {size} bytes in one request",
                       target=self._s3(key), size=part.length)
        return etag

    async def start_multipart(self, key: str) -> str:
        """Start a multipart upload; its id."""
        response = await self._request(
            "POST", key, target=self._s3(key), safe=True, query=[("uploads", "")],
            headers={"Content-Type": "application/octet-stream"})
        if response.code != 200:
            raise await error_for(response, "starting the upload of " + self._s3(key))
        root = parse_xml(await drain(response))
        upload_id = child_text(root, "UploadId")
        if not upload_id:
            raise S3Error("starting the upload of %s: no UploadId in the answer"
                          % (self._s3(key),))
        return upload_id

    async def upload_part(self, key: str, upload_id: str, path: str, part: Part) -> str:
        """Send one part, streamed from disk (retried, read again); its ETag."""
        response = await self._request(
            "PUT", key, target="%s part %d" % (self._s3(key), part.number), safe=True,
            query=[("partNumber", str(part.number)), ("uploadId", upload_id)],
            headers={"Content-MD5": part.md5}, body=self._producer(path, part),
            payload_hash=part.sha256)
        if response.code != 200:
            raise await error_for(response, "uploading part %d of %s"
                                  % (part.number, self._s3(key)))
        await drain(response)
        self.log.debug("Sent part {part} ({size} bytes) of {target}", part=part.number,
                       size=part.length, target=self._s3(key))
        return _etag(response)

    async def complete_multipart(self, key: str, upload_id: str,
                                 etags: Sequence[str]) -> str:
        """Assemble the parts sent into the object; its ETag."""
        document = "".join(
            "<Part><PartNumber>%d</PartNumber><ETag>\"%s\"</ETag></Part>" % (number, etag)
            for number, etag in enumerate(etags, 1))
        data = ("<CompleteMultipartUpload>%s</CompleteMultipartUpload>"
                % (document,)).encode("utf-8")
        md5, sha256 = await self._runner.run(bytes_checksums, data)
        response = await self._request(
            "POST", key, target=self._s3(key), safe=True, query=[("uploadId", upload_id)],
            headers={"Content-Type": "application/xml", "Content-MD5": md5},
            body=data, payload_hash=sha256)
        if response.code != 200:
            raise await error_for(response, "completing the upload of " + self._s3(key))
        body = await drain(response)
        # S3 may answer 200 and then report a failure in the body.
        code, message = error_from_xml(body)
        if code is not None:
            raise S3Error("completing the upload of %s: %s (%s)"
                          % (self._s3(key), code, message), 200, code)
        return child_text(parse_xml(body), "ETag").strip('"')

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abandon a multipart upload, whose parts S3 then drops."""
        response = await self._request("DELETE", key, target=self._s3(key), safe=True,
                                       query=[("uploadId", upload_id)])
        if response.code not in (200, 204, 404):
            raise await error_for(response, "aborting the upload of " + self._s3(key))
        await drain(response)

    async def list_uploads(self, prefix: str) -> list[Upload]:
        """The multipart uploads in progress under ``prefix`` (one page)."""
        response = await self._request(
            "GET", None, target=self._s3(prefix + "*"), safe=True,
            query=[("uploads", ""), ("prefix", prefix)])
        if response.code != 200:
            error = await error_for(response, "listing the uploads of " + self._s3(prefix))
            if error.code == "NoSuchUpload":
                return []  # rclone's answer when there are none
            raise error
        root = parse_xml(await read_limited(response, LIST_PAGE_LIMIT))
        return [Upload(child_text(item, "Key"), child_text(item, "UploadId"),
                       child_text(item, "Initiated"))
                for item in children(root, "Upload")]

    async def list_objects(self, prefix: str,
                           page_size: int = LIST_PAGE_SIZE) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (ListObjectsV2, page by page)."""
        objects: list[ObjectInfo] = []
        token: str | None = None
        while True:
            query = [("list-type", "2"), ("prefix", prefix), ("max-keys", str(page_size))]
            if token is not None:
                query.append(("continuation-token", token))
            response = await self._request("GET", None, target=self._s3(prefix + "*"),
                                           safe=True, query=query)
            if response.code != 200:
                raise await error_for(response, "listing " + self._s3(prefix))
            body = await read_limited(response, LIST_PAGE_LIMIT)
            page, token = await self._runner.run(_parse_listing, body)
            objects.extend(page)
            if token is None:
                return objects

    async def find(self, key: str) -> ObjectInfo | None:
        """
        The object as a listing shows it (its time to the millisecond, as
        :meth:`list_objects` gives it), or ``None`` when it does not exist.
        """
        response = await self._request(
            "GET", None, target=self._s3(key), safe=True,
            query=[("list-type", "2"), ("prefix", key), ("max-keys", "1")])
        if response.code != 200:
            raise await error_for(response, "looking up " + self._s3(key))
        page, _ = _parse_listing(await read_limited(response, LIST_PAGE_LIMIT))
        return next((found for found in page if found.key == key), None)

    async def delete(self, key: str, if_match: str | None = None) -> None:
        """
        Delete the object (absent already is no error); with ``if_match``,
        only if its ETag is still that (where the server checks it).

        :raises PreconditionFailed: when the condition did not hold.
        """
        headers = {"If-Match": '"%s"' % (if_match,)} if if_match is not None else {}
        response = await self._request("DELETE", key, target=self._s3(key), safe=True,
                                       headers=headers)
        if response.code in (409, 412):
            await drain(response)
            raise PreconditionFailed()
        if response.code not in (200, 204, 404):
            raise await error_for(response, "deleting " + self._s3(key))
        await drain(response)

    async def touch(self, key: str, metadata: dict[str, str]) -> bool:
        """
        Copy the object onto itself with new metadata, which gives it a
        new time; whether it exists.
        """
        headers = {"x-amz-copy-source": uri_encode_path("/%s/%s" % (self.bucket, key)),
                   "x-amz-metadata-directive": "REPLACE",
                   "Content-Type": "application/octet-stream"}
        headers.update({"x-amz-meta-" + name: value for name, value in metadata.items()})
        response = await self._request("PUT", key, target=self._s3(key), safe=True,
                                       headers=headers)
        if response.code == 404:
            await drain(response)
            return False
        if response.code != 200:
            raise await error_for(response, "refreshing " + self._s3(key))
        code, message = error_from_xml(await drain(response))
        if code is not None:
            raise S3Error("refreshing %s: %s (%s)" % (self._s3(key), code, message),
                          200, code)
        return True

    async def presign(self, key: str, expiration: int, method: str = "GET") -> str:
        """A presigned URL to the object, valid for ``expiration`` seconds."""
        credentials = await self.credentials.credentials()
        return presign_url(credentials, region=self.region, method=method,
                           base_url=self.address.base_url, host=self.address.host,
                           path=self.address.path(key), expiration=expiration,
                           timestamp=utc_now(self._clock.seconds())).url

    async def check_bucket(self) -> None:
        """
        Make sure the bucket exists and the credentials may list it (one
        listing of at most one key, tried once: at start-up a failure is
        reported at once).

        :raises S3Error: with an explanation otherwise; its ``code`` says
            whether the key itself is wrong.
        """
        target = "s3://" + self.bucket
        try:
            response = await self._request(
                "GET", None, target=target, safe=False,
                query=[("list-type", "2"), ("max-keys", "1")])
        except S3Error:
            raise
        except Exception as e:
            raise S3Error("cannot reach S3 at %s to check %s: %s"
                          % (self.address.base_url, target, e)) from None
        if response.code == 200:
            await drain(response)
            return
        error = await error_for(response, "checking bucket " + target)
        if error.code == "NoSuchBucket" or (response.code == 404 and error.code is None):
            error = S3Error("the bucket %s does not exist (at %s)"
                            % (target, self.address.base_url), 404, error.code)
        elif response.code in (401, 403):
            reason = str(error).partition("S3 answered ")[2]
            error = S3Error("S3 refused the credentials (%s) for %s: %s"
                            % (self.credentials.description, target, reason),
                            response.code, error.code)
        raise error



def _parse_listing(body: bytes) -> tuple[list[ObjectInfo], str | None]:
    """One page of ListObjectsV2: its objects and the next page's token."""
    root = parse_xml(body)
    if local_name(root.tag) != "ListBucketResult":
        raise S3Error("a listing answered %s, not ListBucketResult" % (local_name(root.tag),))
    objects = [ObjectInfo(child_text(item, "Key"), int(child_text(item, "Size", "0")),
                          child_text(item, "ETag").strip('"'),
                          child_text(item, "LastModified"))
               for item in children(root, "Contents")]
    truncated = child_text(root, "IsTruncated").lower() == "true"
    token = child_text(root, "NextContinuationToken") or None
    return objects, token if truncated else None

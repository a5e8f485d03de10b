"""
What the S3 backend promises beyond the storage contract, on ``rclone
serve s3`` (which checks every signature): refused keys and tampered or
expired presigned URLs, multipart uploads (parts retried, the upload
aborted on failure), stale uploads aborted, Content-MD5 checked, public
buckets, and how buckets are addressed.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from treq.client import HTTPClient

from nixeryd.core.documents import RedirectBlob
from nixeryd.storage.gcs.retry import NO_RETRY, Retrier, RetryPolicy
from nixeryd.storage.s3.bucket import (
    BucketAddress, S3Client, aws_endpoint, check_bucket_name, default_addressing_style)
from nixeryd.storage.s3.credentials import StaticCredentials
from nixeryd.storage.s3.http import S3Error
from nixeryd.storage.s3.objects import Part, plan_upload
from nixeryd.storage.s3.signing import Credentials
from nixeryd.storage.s3.storage import S3Storage
from nixeryd.testing.network import serve_locally
from nixeryd.testing.storage import digest_of
from tests.rclones3 import (
    ACCESS_KEY, REGION, SECRET_KEY, RcloneTestCase, s3_client, s3_storage, start_rclone)

MIB = 1024 * 1024


async def get(url: str) -> tuple[int, bytes]:
    """Status and body of a GET, on a connection of its own."""
    response = await treq.get(url, pool=HTTPConnectionPool(reactor, persistent=False))
    body: bytes = await response.content()
    return response.code, body


class FlakyProxy(Resource):
    """
    Forwards requests to an S3 server unchanged (``Host`` included, so
    signatures hold), except those ``fails`` picks, answered 503 SlowDown,
    and those ``holds`` picks, never answered.

    :ivar seen: ``(method, uri)`` of every request, forwarded or not.
    """

    isLeaf = True

    def __init__(self, backend: str, fails: Callable[[Request, int], bool]) -> None:
        super().__init__()
        self.backend = backend
        self.fails = fails
        self.seen: list[tuple[str, str]] = []
        #: Picks the requests left without an answer.
        self.holds: Callable[[Request, int], bool] = lambda request, attempt: False
        self.held: list[Request] = []

    def render(self, request: Request) -> Any:
        method = request.method.decode()
        uri = request.uri.decode()
        self.seen.append((method, uri))
        if self.holds(request, 1):
            self.held.append(request)  # never answered
            return NOT_DONE_YET
        if self.fails(request, sum(1 for seen in self.seen if seen == (method, uri))):
            request.setResponseCode(503)
            return b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"
        Deferred.fromCoroutine(self._forward(request, method, uri)).addErrback(
            lambda failure: request.processingFailed(failure))
        return NOT_DONE_YET

    async def _forward(self, request: Request, method: str, uri: str) -> None:
        assert request.content is not None
        body = request.content.read()
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in (b"content-length", b"connection"):
                headers.setRawHeaders(name, values)
        response = await treq.request(method, self.backend + uri, headers=headers,
                                      data=body if body else None,
                                      pool=HTTPConnectionPool(reactor, persistent=False))
        content = await response.content()
        request.setResponseCode(response.code)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in (b"content-length", b"connection", b"transfer-encoding"):
                request.responseHeaders.setRawHeaders(name, values)
        request.write(content)
        request.finish()


def part_request(number: int) -> Callable[[Request, int], bool]:
    """Picks the requests sending part ``number``."""
    return lambda request, _: (request.method == b"PUT"
                               and b"partNumber=%d&" % (number,) in request.uri + b"&")


class S3BackendTests(RcloneTestCase):
    """The S3 backend against a server that checks signatures."""

    def storage(self, **kwargs: Any) -> S3Storage:
        return s3_storage(self, self.runner, self.server, **kwargs)

    def write(self, storage: S3Storage, data: bytes) -> str:
        path = os.path.join(storage.temp_directory(), "upload-%d" % (len(data),))
        with open(path, "wb") as f:
            f.write(data)
        return path

    async def test_wrong_secret_refused(self) -> None:
        """A wrong secret is SignatureDoesNotMatch, and never looks like an empty bucket."""
        client = s3_client(self, self.runner, self.server, secret="wrong")
        with self.assertRaises(S3Error) as caught:
            await client.check_bucket()
        self.assertEqual(caught.exception.code, "SignatureDoesNotMatch")
        self.assertEqual(caught.exception.status, 403)
        self.assertIn("S3 refused the credentials (the test key) for s3://nixeryd-test",
                      str(caught.exception))
        storage = self.storage(client=client)
        with self.assertRaises(S3Error) as head:
            await storage.has_blob(digest_of(b"x"))
        self.assertEqual(head.exception.status, 403)
        with self.assertRaises(S3Error) as listing:
            await storage.list_blobs()
        self.assertEqual(listing.exception.code, "SignatureDoesNotMatch")

    async def test_missing_bucket(self) -> None:
        """A bucket that does not exist is said to be missing."""
        client = s3_client(self, self.runner, self.server)
        client.bucket = "absent"
        client.address = BucketAddress.of(self.server.endpoint, "absent", "path")
        with self.assertRaises(S3Error) as caught:
            await client.check_bucket()
        self.assertIn("the bucket s3://absent does not exist", str(caught.exception))

    async def test_presigned_urls_checked(self) -> None:
        """
        The presigned URL of a blob downloads it; changed in any signed
        part, or with a forged signature, it is refused with 403.
        """
        storage = self.storage()
        data = b"layer bytes"
        await storage.store_blob_bytes(data, digest_of(data))
        blob = await storage.blob(digest_of(data))
        assert isinstance(blob, RedirectBlob)
        self.assertEqual(await get(blob.url), (200, data))
        other = b"another blob"
        await storage.store_blob_bytes(other, digest_of(other))
        signature = blob.url.rsplit("=", 1)[1]
        for tampered in (
                blob.url.replace("X-Amz-Expires=300", "X-Amz-Expires=301"),
                blob.url.replace(digest_of(data)[7:], digest_of(other)[7:]),
                blob.url.replace(signature, "0" * len(signature))):
            self.assertNotEqual(tampered, blob.url)
            status, body = await get(tampered)
            self.assertEqual(status, 403, tampered)
            self.assertIn(b"SignatureDoesNotMatch", body)

    async def test_expired_url_refused(self) -> None:
        """A presigned URL past its lifetime is refused."""
        storage = S3Storage(reactor, self.runner, s3_client(self, self.runner, self.server),
                            spool_directory=self.mktemp(), url_lifetime=1)
        self.addCleanup(storage.close)
        await storage.store_blob_bytes(b"short-lived", digest_of(b"short-lived"))
        blob = await storage.blob(digest_of(b"short-lived"))
        assert isinstance(blob, RedirectBlob)
        self.assertEqual((await get(blob.url))[0], 200)
        await deferLater(reactor, 2.2, lambda: None)
        status, body = await get(blob.url)
        # AWS answers 403 AccessDenied, rclone 400.
        self.assertIn(status, (400, 403), body)

    async def test_multipart_upload(self) -> None:
        """
        A file over the threshold goes up in parts (each with its own MD5);
        the object is whole, has the multipart ETag, and no upload is left.
        """
        storage = self.storage(multipart_threshold=5 * MIB, part_size=5 * MIB)
        data = os.urandom(11 * MIB + 3)
        plan = await deferToThread(plan_upload, self.write(storage, data), 5 * MIB, 5 * MIB)
        self.assertEqual([part.length for part in plan.parts], [5 * MIB, 5 * MIB, MIB + 3])
        await storage.store_blob_file(self.write(storage, data), digest_of(data))
        blob = await storage.blob(digest_of(data))
        assert isinstance(blob, RedirectBlob)
        status, body = await get(blob.url)
        self.assertEqual((status, digest_of(body)), (200, digest_of(data)))
        found = await storage.client.head("blobs/sha256/" + digest_of(data)[7:])
        assert found is not None
        self.assertIn(found.etag, plan.etags())
        self.assertEqual(await self.server.uploads(), [])
        # Stored again: no upload, a new time.
        [listed] = await storage.list_blobs()
        await storage.store_blob_file(self.write(storage, data), digest_of(data))
        [again] = await storage.list_blobs()
        self.assertNotEqual(again.version, listed.version)

    async def proxied_storage(self, fails: Callable[[Request, int], bool],
                              retrier: Retrier) -> tuple[S3Storage, FlakyProxy]:
        proxy = FlakyProxy(self.server.endpoint, fails)
        client = s3_client(self, self.runner, self.server, retrier=retrier)
        front = serve_locally(self, Site(proxy))
        client.address = BucketAddress.of(front, self.server.bucket, "path")
        return self.storage(client=client, multipart_threshold=5 * MIB,
                            part_size=5 * MIB), proxy

    async def test_part_retried(self) -> None:
        """A part answered 503 once is sent again (read again from disk), and the upload ends."""
        storage, proxy = await self.proxied_storage(
            lambda request, attempt: part_request(2)(request, attempt) and attempt == 1,
            Retrier(reactor, RetryPolicy(initial=0.05, cap=0.1, deadline=5)))
        data = os.urandom(10 * MIB + 1)
        await storage.store_blob_file(self.write(storage, data), digest_of(data))
        parts = [uri for method, uri in proxy.seen if method == "PUT" and "partNumber=2" in uri]
        self.assertEqual(len(parts), 2)
        blob = await storage.blob(digest_of(data))
        assert isinstance(blob, RedirectBlob)
        status, body = await get(blob.url)
        self.assertEqual((status, digest_of(body)), (200, digest_of(data)))
        self.assertEqual(await self.server.uploads(), [])

    async def test_failed_upload_aborted(self) -> None:
        """A part that keeps failing fails the store, and the upload is aborted."""
        storage, proxy = await self.proxied_storage(part_request(2), Retrier(
            reactor, RetryPolicy(initial=0.05, cap=0.1, deadline=0.3)))
        data = os.urandom(10 * MIB + 1)
        path = self.write(storage, data)
        with self.assertRaises(S3Error) as caught:
            await storage.store_blob_file(path, digest_of(data))
        self.assertEqual(caught.exception.code, "SlowDown")
        self.assertFalse(os.path.exists(path))
        self.assertIn("DELETE", [method for method, uri in proxy.seen if "uploadId=" in uri])
        self.assertEqual(await self.server.uploads(), [])
        self.assertFalse(await storage.has_blob(digest_of(data)))

    async def test_cancelled_upload_aborted(self) -> None:
        """
        A store cancelled while a part is on its way (its build abandoned)
        aborts the upload: no parts stay behind, no blob appears.
        """
        storage, proxy = await self.proxied_storage(lambda request, attempt: False,
                                                    Retrier(reactor, NO_RETRY))
        proxy.holds = part_request(2)
        data = os.urandom(10 * MIB + 1)
        path = self.write(storage, data)
        storing = storage.store_blob_file(path, digest_of(data))
        while not proxy.held:
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(await self.server.uploads()), 1)
        storing.cancel()
        with self.assertRaises(Exception):
            await storing  # once the upload is aborted
        self.assertIn("DELETE", [method for method, uri in proxy.seen if "uploadId=" in uri])
        self.assertEqual(await self.server.uploads(), [])
        self.assertFalse(os.path.exists(path))
        self.assertFalse(await storage.has_blob(digest_of(data)))

    async def test_head_errors_are_not_absence(self) -> None:
        """A HEAD answered anything but 200 or 404 is an error, never a missing blob."""
        storage, _ = await self.proxied_storage(
            lambda request, attempt: request.method == b"HEAD", Retrier(reactor, NO_RETRY))
        for call in (storage.has_blob, storage.blob):
            with self.assertRaises(S3Error) as caught:
                await call(digest_of(b"any blob"))
            self.assertEqual(caught.exception.status, 503)

    async def test_stale_uploads_aborted(self) -> None:
        """Uploads of blobs older than the limit are aborted at the check; younger ones stay."""
        def start() -> None:
            self.server.botocore().create_multipart_upload(
                Bucket=self.server.bucket, Key="blobs/sha256/" + "a" * 64)
        await deferToThread(start)
        storage = self.storage()
        await storage.check_bucket()
        self.assertEqual(len(await self.server.uploads()), 1)
        self.assertEqual(await storage.abort_stale_uploads(older_than=0), 1)
        self.assertEqual(await self.server.uploads(), [])

    async def test_damaged_body_refused(self) -> None:
        """A body that does not match its Content-MD5 is refused (BadDigest), not stored."""
        storage = self.storage()
        path = self.write(storage, b"the real content")
        plan = await deferToThread(plan_upload, path, MIB, MIB)
        [part] = plan.parts
        wrong = Part(1, 0, part.length, "1B2M2Y8AsgTpgAmY7PhCfg==", part.sha256)
        with self.assertRaises(S3Error) as caught:
            await storage.client.put_file("blobs/sha256/" + "b" * 64, path, wrong)
        self.assertEqual(caught.exception.code, "BadDigest")
        self.assertIsNone(await storage.client.head("blobs/sha256/" + "b" * 64))

    async def test_different_object_replaced(self) -> None:
        """An object under a blob's name that is not that blob is replaced."""
        storage = self.storage()
        data = os.urandom(1000)
        key = "blobs/sha256/" + digest_of(data)[7:]
        await storage.client.put_bytes(key, b"something else")
        await storage.store_blob_file(self.write(storage, data), digest_of(data))
        self.assertEqual(await storage.read_small_blob(digest_of(data), 2000), data)

    async def test_different_object_of_same_size_replaced(self) -> None:
        """
        A blob stored from memory replaces an object of the same size under
        its name that is not that blob (its ETag is another MD5).
        """
        storage = self.storage()
        data = b"the manifest"
        key = "blobs/sha256/" + digest_of(data)[7:]
        await storage.client.put_bytes(key, b"X" * len(data))
        await storage.store_blob_bytes(data, digest_of(data))
        self.assertEqual(await storage.read_small_blob(digest_of(data), 2000), data)

    async def test_listing_in_pages(self) -> None:
        """A listing longer than a page follows its continuation tokens to the end."""
        client = s3_client(self, self.runner, self.server)
        keys = ["blobs/sha256/%064x" % (number,) for number in range(7)]
        for key in keys + ["index.json"]:
            await client.put_bytes(key, b"x")
        listed = await client.list_objects("blobs/sha256/", page_size=2)
        self.assertEqual([found.key for found in listed], keys)

    async def test_public_bucket(self) -> None:
        """With a public URL, blobs are redirected to plain URLs under it, which serve them."""
        public = await start_rclone(reactor, os.path.abspath(self.mktemp()),
                                    self.server.bucket, root=self.server.root, auth=False)
        self.addCleanup(lambda: Deferred.fromCoroutine(public.stop()))
        storage = self.storage(public_url=public.endpoint + "/" + public.bucket + "/")
        data = b"public layer"
        await storage.store_blob_bytes(data, digest_of(data))
        blob = await storage.blob(digest_of(data))
        assert isinstance(blob, RedirectBlob)
        self.assertEqual(blob.url, "%s/%s/blobs/sha256/%s" % (
            public.endpoint, public.bucket, digest_of(data)[7:]))
        self.assertEqual(await get(blob.url), (200, data))


@implementer(IAgentEndpointFactory)
class ConnectTo:
    """Connects every request to one loopback port, whatever its URL's host."""

    def __init__(self, port: int) -> None:
        self.port = port

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)


class VirtualHostedTests(RcloneTestCase):
    """Virtual-hosted style against a server that reads the bucket from the Host header."""

    async def test_virtual_hosted_requests_and_urls(self) -> None:
        """
        Requests and presigned URLs naming the bucket in the host (names
        resolved to loopback here) are accepted, awkward keys included.
        """
        server = await start_rclone(reactor, os.path.abspath(self.mktemp()),
                                    self.server.bucket, root=self.server.root,
                                    virtual_hosts=True)
        self.addCleanup(lambda: Deferred.fromCoroutine(server.stop()))
        port = int(server.endpoint.rsplit(":", 1)[1])
        pool = HTTPConnectionPool(reactor, persistent=False)
        http = HTTPClient(Agent.usingEndpointFactory(reactor, ConnectTo(port), pool=pool))
        address = BucketAddress.of("http://s3.test:%d" % (port,), server.bucket, "virtual")
        self.assertEqual(address.host, "%s.s3.test:%d" % (server.bucket, port))

        def client_with(secret: str) -> S3Client:
            return S3Client(reactor, self.runner, http, pool, server.bucket, address=address,
                            region=REGION, credentials=StaticCredentials(
                                Credentials(ACCESS_KEY, secret), "the test key"),
                            retrier=Retrier(reactor, NO_RETRY))

        client = client_with(SECRET_KEY)
        self.addCleanup(client.close)
        await client.check_bucket()
        key = "a b/c+d=e"
        await client.put_bytes(key, b"virtually hosted")
        self.assertTrue(os.path.exists(server.path(key)))
        self.assertEqual([found.key for found in await client.list_objects("a ")], [key])
        url = await client.presign(key, 60)
        self.assertTrue(url.startswith("http://%s/a%%20b/c%%2Bd%%3De?" % (address.host,)), url)
        response = await http.get(url)
        self.assertEqual((response.code, await response.content()), (200, b"virtually hosted"))
        with self.assertRaises(S3Error) as caught:
            await client_with("wrong").check_bucket()
        self.assertEqual(caught.exception.code, "SignatureDoesNotMatch")


class AddressingTests(SynchronousTestCase):
    """How a bucket is addressed."""

    def test_path_style(self) -> None:
        """Path style keeps the endpoint, and its port, in the Host."""
        address = BucketAddress.of("http://127.0.0.1:9000/", "images", "path")
        self.assertEqual((address.base_url, address.host, address.path("a b/c")),
                         ("http://127.0.0.1:9000", "127.0.0.1:9000", "/images/a%20b/c"))
        self.assertEqual(address.path(None), "/images")

    def test_virtual_style(self) -> None:
        """Virtual-hosted style puts the bucket in the host name; a default port is left out."""
        address = BucketAddress.of(aws_endpoint("eu-west-3"), "images", "virtual")
        self.assertEqual((address.base_url, address.host, address.path("k")),
                         ("https://images.s3.eu-west-3.amazonaws.com",
                          "images.s3.eu-west-3.amazonaws.com", "/k"))
        self.assertEqual(address.path(None), "/")
        self.assertEqual(BucketAddress.of("https://minio.example:443", "b", "virtual").host,
                         "b.minio.example")

    def test_default_style(self) -> None:
        """Virtual on AWS for a name that is one DNS label; path otherwise, and off AWS."""
        self.assertEqual(default_addressing_style(None, "images-2"), "virtual")
        for bucket in ("images.example.com", "Images", "old_images"):
            self.assertEqual(default_addressing_style(None, bucket), "path", bucket)
        self.assertEqual(default_addressing_style("http://127.0.0.1:9000", "images"), "path")

    def test_bucket_names(self) -> None:
        """Letters, digits, dots, hyphens and underscores: what a path holds unencoded."""
        for bucket in ("images", "images.example.com", "Old_Images", "a1"):
            self.assertEqual(check_bucket_name(bucket), bucket)
        for bucket in ("", "a/b", "a b", "-images", "ü", "x" * 256):
            self.assertRaises(ValueError, check_bucket_name, bucket)

    def test_unknown_style(self) -> None:
        """Only path and virtual."""
        self.assertRaises(ValueError, BucketAddress.of, "https://h", "b", "dns")

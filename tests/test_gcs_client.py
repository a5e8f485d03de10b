"""
The GCS backend's requests, against small in-process servers that give
the answers an emulator never gives (403, 500, 412) and play the OAuth2
token endpoint; and the pieces under the requests: access tokens, the
streamed upload body, object names and checksums.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import parse_qs, quote, urlsplit

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.interfaces import IConsumer, IProducer
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from treq.client import HTTPClient

from nixeryd.core.errors import DigestInvalid
from nixeryd.core.threads import InlineRunner
from nixeryd.storage.gcs.auth import AccessTokenSource
from nixeryd.storage.gcs.bucket import BucketClient
from nixeryd.storage.circuit import CLOSED, OPEN, Circuit, CircuitOpen
from nixeryd.storage.errors import StorageServiceError
from nixeryd.storage.filebody import FileRegionProducer
from nixeryd.storage.gcs.http import GCSError
from nixeryd.storage.gcs.objects import file_size_and_md5, md5_base64
from nixeryd.storage.gcs.storage import build_gcs_storage
from nixeryd.storage.objectnames import blob_object_name, document_object_name
from nixeryd.storage.gcs.signing import ServiceAccountKey, format_timestamp, jwt_assertion
from nixeryd.testing.network import serve_locally
from nixeryd.testing.storage import digest_of
from tests.gcsemulator import anonymous_client
from tests.gcssupport import gcs_storage, load_key, start_pool

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@attrs.define
class Recorded:
    """One request the fake server received."""

    method: str
    uri: str
    headers: dict[str, str]
    body: bytes


class FakeServer(Resource):
    """
    Answers each request with the next scripted ``(status, body)``, or the
    default once the script is used up, and records what it received.
    """

    isLeaf = True

    def __init__(self, default: tuple[int, bytes] = (500, b"{}")) -> None:
        super().__init__()
        self.script: list[tuple[int, bytes]] = []
        self.default = default
        self.requests: list[Recorded] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        self.requests.append(Recorded(
            request.method.decode(), request.uri.decode(),
            {k.decode().lower(): v[0].decode()
             for k, v in request.requestHeaders.getAllRawHeaders()},
            request.content.read()))
        status, body = self.script.pop(0) if self.script else self.default
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return body


class ErrorStatusTests(TestCase):
    """Answers other than 200 and 404 are errors, never "missing"."""

    def setUp(self) -> None:
        self.runner = start_pool(self)
        self.fake = FakeServer()
        self.storage = gcs_storage(self, self.runner, serve_locally(self, Site(self.fake)),
                                   "bucket-1", signing_key=load_key())

    async def test_forbidden_is_not_missing(self) -> None:
        """A 403 on lookup fails has_blob and blob instead of reporting no blob."""
        self.fake.default = (403, b'{"error": {"message": "no storage.objects.get"}}')
        digest = digest_of(b"x")
        with self.assertRaises(GCSError) as caught:
            await self.storage.has_blob(digest)
        self.assertEqual(caught.exception.status, 403)
        self.assertIn("no storage.objects.get", str(caught.exception))
        with self.assertRaises(GCSError):
            await self.storage.blob(digest)

    async def test_server_error_on_reads(self) -> None:
        """A 500 fails blob and document reads rather than returning None."""
        digest = digest_of(b"x")
        with self.assertRaises(GCSError) as caught:
            await self.storage.read_small_blob(digest, 100)
        self.assertEqual(caught.exception.status, 500)
        with self.assertRaises(GCSError):
            await self.storage.get_document("ns", "key")

    async def test_failed_upload_removes_file(self) -> None:
        """When the upload fails, the error surfaces and the local file is still removed."""
        self.fake.script = [(404, b"{}")]
        path = os.path.join(self.storage.temp_directory(), "layer")
        with open(path, "wb") as f:
            f.write(b"layer")
        with self.assertRaises(GCSError) as caught:
            await self.storage.store_blob_file(path, digest_of(b"layer"))
        self.assertEqual(caught.exception.status, 500)
        self.assertFalse(os.path.exists(path))
        self.assertEqual([r.method for r in self.fake.requests], ["GET", "POST"])
        self.assertIn("ifGenerationMatch=0", self.fake.requests[1].uri)

    async def test_forbidden_bucket_check(self) -> None:
        """A bucket the credentials may not use is reported as such at start-up."""
        self.fake.default = (403, b"{}")
        with self.assertRaises(GCSError) as caught:
            await self.storage.check_bucket()
        self.assertIn("may not use gs://bucket-1", str(caught.exception))

    async def test_concurrent_index_update_retried(self) -> None:
        """
        When the index changes between read and write (412), the update is
        redone, each write guarded by the generation it read.
        """
        index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
        self.fake.script = [
            (404, b"{}"),                                    # no index yet
            (412, b"{}"),                                    # someone created it
            (200, json.dumps({"generation": "7"}).encode()),  # its metadata
            (200, index),                                    # its content
            (200, b"{}"),                                    # our write
        ]
        await self.storage.record_reference("a:b", digest_of(b"m"), MANIFEST_TYPE, 1)
        methods = [(r.method, parse_qs(urlsplit(r.uri).query).get("ifGenerationMatch"))
                   for r in self.fake.requests]
        self.assertEqual(methods, [("GET", None), ("POST", ["0"]), ("GET", None),
                                   ("GET", ["7"]), ("POST", ["7"])])
        self.assertIn(b'"a:b"', self.fake.requests[-1].body)


class ListingAndRemovalTests(TestCase):
    """Listings page by page, and removals guarded by the version listed."""

    def setUp(self) -> None:
        self.runner = start_pool(self)
        self.fake = FakeServer(default=(200, b"{}"))
        self.storage = gcs_storage(self, self.runner, serve_locally(self, Site(self.fake)),
                                   "bucket-1", signing_key=load_key())

    def query(self, index: int) -> dict[str, list[str]]:
        """The query of the request received ``index``-th."""
        return parse_qs(urlsplit(self.fake.requests[index].uri).query)

    async def test_listing_follows_pages(self) -> None:
        """Every page of objects.list is asked for, with the token of the one before."""
        first, second = digest_of(b"1"), digest_of(b"2")

        def item(digest: str, generation: str) -> dict[str, str]:
            return {"name": blob_object_name(digest), "size": "3", "generation": generation,
                    "metageneration": "1", "updated": "2024-05-01T00:00:00.000Z"}

        self.fake.script = [
            (200, json.dumps({"items": [item(first, "5"), {"name": "blobs/sha256/x"}],
                              "nextPageToken": "page-2"}).encode()),
            (200, json.dumps({"items": [item(second, "6")]}).encode()),
        ]
        blobs = await self.storage.list_blobs()
        self.assertEqual([(b.digest, b.size, b.version) for b in blobs],
                         [(first, 3, "5/1"), (second, 3, "6/1")])
        self.assertEqual(blobs[0].modified,
                         datetime(2024, 5, 1, tzinfo=timezone.utc).timestamp())
        self.assertEqual(urlsplit(self.fake.requests[0].uri).path,
                         "/storage/v1/b/bucket-1/o")
        self.assertEqual(self.query(0)["prefix"], ["blobs/sha256/"])
        self.assertEqual(self.query(0)["maxResults"], ["1000"])
        self.assertNotIn("pageToken", self.query(0))
        self.assertEqual(self.query(1)["pageToken"], ["page-2"])
        self.assertEqual(len(self.fake.requests), 2)

    async def test_custom_time_counts(self) -> None:
        """A blob's time is the later of its update and its custom time."""
        self.fake.script = [(200, json.dumps({"items": [{
            "name": blob_object_name(digest_of(b"1")), "size": "1", "generation": "1",
            "metageneration": "2", "updated": "2024-05-01T00:00:00Z",
            "customTime": "2024-06-01T00:00:00.000Z"}]}).encode())]
        [blob] = await self.storage.list_blobs()
        self.assertEqual(blob.modified, datetime(2024, 6, 1, tzinfo=timezone.utc).timestamp())

    async def test_removal_guarded_by_version(self) -> None:
        """A removal names the generation and metageneration; 412 and 404 are refusals."""
        digest = digest_of(b"1")
        self.fake.script = [(204, b""), (412, b"{}"), (404, b"{}")]
        self.assertTrue(await self.storage.remove_blob(digest, "17/3"))
        self.assertFalse(await self.storage.remove_document("pulls", "k", "18/1"))
        self.assertFalse(await self.storage.remove_blob(digest, "17/3"))
        self.assertEqual([r.method for r in self.fake.requests], ["DELETE"] * 3)
        self.assertEqual(urlsplit(self.fake.requests[0].uri).path,
                         "/storage/v1/b/bucket-1/o/" + quote(blob_object_name(digest), safe=""))
        self.assertEqual((self.query(0)["ifGenerationMatch"],
                          self.query(0)["ifMetagenerationMatch"]), (["17"], ["3"]))
        self.assertIn("nixeryd%2Fpulls%2Fk.json", self.fake.requests[1].uri)
        self.assertEqual(self.query(1)["ifGenerationMatch"], ["18"])

    async def test_removal_error(self) -> None:
        """Any other answer to a removal is an error, not a refusal."""
        self.fake.script = [(403, b'{"error": "no storage.objects.delete"}')]
        with self.assertRaises(GCSError) as caught:
            await self.storage.remove_blob(digest_of(b"1"), "1/1")
        self.assertEqual(caught.exception.status, 403)

    async def test_stored_again_refreshed(self) -> None:
        """A blob that exists is not uploaded again: its custom time is set to now."""
        data = b"again"
        self.fake.script = [
            (200, json.dumps({"size": "5", "md5Hash": md5_base64(data),
                              "generation": "1"}).encode()),
            (200, b"{}")]
        await self.storage.store_blob_bytes(data, digest_of(data))
        self.assertEqual([r.method for r in self.fake.requests], ["GET", "PATCH"])
        sent = json.loads(self.fake.requests[1].body)
        sent_time = datetime.fromisoformat(sent["customTime"]).timestamp()
        self.assertLess(abs(sent_time - reactor.seconds()), 60)

    async def test_refresh_failure_is_not_fatal(self) -> None:
        """A refresh the key may not make is logged; the store succeeds."""
        data = b"again"
        self.fake.script = [
            (200, json.dumps({"size": "5", "md5Hash": md5_base64(data),
                              "generation": "1"}).encode()),
            (403, b"{}")]
        with capturedLogs() as events:
            await self.storage.store_blob_bytes(data, digest_of(data))
        self.assertTrue(any("Could not refresh" in e["log_format"] for e in events))


class FakeTokenEndpoint(Resource):
    """An OAuth2 token endpoint that checks the JWT bearer assertion."""

    isLeaf = True

    def __init__(self, key: ServiceAccountKey) -> None:
        super().__init__()
        self.key = key
        self.issued = 0
        #: The ``expires_in`` of the tokens issued.
        self.lifetime = 3600

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        form = parse_qs(request.content.read().decode())
        assertion = form["assertion"][0]
        signing_input, _, signature = assertion.rpartition(".")
        self.key.private_key.public_key().verify(
            base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
            signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
        self.issued += 1
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"access_token": "token-%d" % (self.issued,),
                           "expires_in": self.lifetime, "token_type": "Bearer"}).encode()


class AccessTokenTests(TestCase):
    """Access tokens from a service-account key."""

    def setUp(self) -> None:
        self.runner = start_pool(self)
        self.endpoint = FakeTokenEndpoint(load_key())
        self.key = attrs.evolve(load_key(), token_uri=serve_locally(
            self, Site(self.endpoint)) + "/token")
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.tokens = AccessTokenSource(self.clock, self.runner, self.key,
                                        anonymous_client(reactor))

    async def test_token_cached_until_near_expiry(self) -> None:
        """A token is reused while valid and renewed five minutes before it expires."""
        self.assertEqual(await self.tokens.token(), "token-1")
        self.clock.advance(3000)
        self.assertEqual(await self.tokens.token(), "token-1")
        self.clock.advance(301)
        self.assertEqual(await self.tokens.token(), "token-2")
        self.assertEqual(self.endpoint.issued, 2)

    async def test_concurrent_callers_share_a_refresh(self) -> None:
        """Callers waiting during a refresh all get the token of one request."""
        tokens = await gatherResults([self.tokens.token() for _ in range(5)])
        self.assertEqual(tokens, ["token-1"] * 5)
        self.assertEqual(self.endpoint.issued, 1)

    async def test_refused_grant(self) -> None:
        """A token endpoint refusing the grant fails with its answer."""
        refusing = FakeServer(default=(400, b'{"error": "invalid_grant"}'))
        key = attrs.evolve(self.key, token_uri=serve_locally(self, Site(refusing)) + "/token")
        tokens = AccessTokenSource(self.clock, self.runner, key, anonymous_client(reactor))
        with self.assertRaises(GCSError) as caught:
            await tokens.token()
        self.assertIn("invalid_grant", str(caught.exception))

    async def test_storage_sends_bearer_token(self) -> None:
        """With a token source, every storage request carries the bearer token."""
        fake = FakeServer(default=(404, b"{}"))
        storage = gcs_storage(self, self.runner, serve_locally(self, Site(fake)), "bucket-1",
                              signing_key=self.key, token_source=self.tokens)
        self.assertFalse(await storage.has_blob(digest_of(b"a")))
        self.assertIsNone(await storage.get_document("ns", "k"))
        self.assertEqual([r.headers["authorization"] for r in fake.requests],
                         ["Bearer token-1"] * 2)

    async def test_token_renewed_while_circuit_probes(self) -> None:
        """
        A token due for renewal when the outage circuit lets its probe go
        is fetched: the probe gets through and closes the circuit (the
        token request is no second request refused by the circuit the
        probe holds, which would keep it open for good).
        """
        # Renewed 3 s after it is issued (five minutes before it expires).
        self.endpoint.lifetime = 303
        fake = FakeServer(default=(404, b"{}"))
        fake.script = [(503, b"{}")] * 2
        circuit = Circuit(reactor, backend="gcs", failures=2, sustained=0, open_for=0.2)
        storage = build_gcs_storage(reactor, self.runner, "bucket-1", self.key,
                                    spool_directory=self.mktemp(), circuit=circuit)
        self.addCleanup(storage.close)
        # Real Cloud Storage's wiring (tokens from the key), on a loopback server.
        storage.client.endpoint = serve_locally(self, Site(fake))
        with self.assertRaises(CircuitOpen):
            await storage.has_blob(digest_of(b"a"))
        self.assertEqual(circuit.state, OPEN)
        await deferLater(reactor, 3.1)
        self.assertFalse(await storage.has_blob(digest_of(b"a")))
        self.assertEqual(circuit.state, CLOSED)
        self.assertEqual([r.headers["authorization"] for r in fake.requests],
                         ["Bearer token-1", "Bearer token-1", "Bearer token-2"])


@implementer(IConsumer)
class RecordingConsumer:
    """
    A consumer that records writes and calls ``after_write`` with them
    after each one (to apply back-pressure).
    """

    def __init__(self, after_write: Callable[[list[bytes]], None] | None = None) -> None:
        self.writes: list[bytes] = []
        self._after_write = after_write

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        if self._after_write is not None:
            self._after_write(self.writes)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """Not used: the request writes the body to its consumer directly."""

    def unregisterProducer(self) -> None:
        """Not used."""


class FileRegionProducerTests(TestCase):
    """The streaming request body."""

    def setUp(self) -> None:
        self.runner = start_pool(self)
        self.path = self.mktemp()
        self.data = os.urandom(100_000)
        with open(self.path, "wb") as f:
            f.write(self.data)

    async def test_region_in_pieces(self) -> None:
        """Exactly the region is written, in pieces no larger than the read size."""
        producer = FileRegionProducer(self.runner, self.path, 1000, 50_000, read_size=4096)
        consumer = RecordingConsumer()
        await producer.startProducing(consumer)
        self.assertEqual(b"".join(consumer.writes), self.data[1000:51000])
        self.assertEqual(max(len(w) for w in consumer.writes), 4096)
        self.assertEqual(producer.pieces_read, len(consumer.writes))

    async def test_pause_stops_reading(self) -> None:
        """While paused nothing more is read; resuming finishes the region."""
        producer = FileRegionProducer(self.runner, self.path, 0, 100_000, read_size=1000)

        def pause_after_three(writes: list[bytes]) -> None:
            if len(writes) == 3:
                producer.pauseProducing()

        consumer = RecordingConsumer(pause_after_three)
        finished = producer.startProducing(consumer)
        for _ in range(20):
            await self.runner.run(lambda: None)
        self.assertEqual(len(consumer.writes), 3)
        self.assertFalse(finished.called)
        producer.resumeProducing()
        await finished
        self.assertEqual(b"".join(consumer.writes), self.data)

    async def test_stop_never_fires(self) -> None:
        """After stopProducing, the producer writes nothing more and never fires."""
        producer = FileRegionProducer(self.runner, self.path, 0, 100_000, read_size=1000)
        consumer = RecordingConsumer()
        finished = producer.startProducing(consumer)
        producer.stopProducing()
        for _ in range(20):
            await self.runner.run(lambda: None)
        self.assertLessEqual(len(consumer.writes), 1)
        self.assertFalse(finished.called)

    async def test_short_file_fails(self) -> None:
        """A file shorter than the announced region fails the body instead of hanging."""
        producer = FileRegionProducer(self.runner, self.path, 90_000, 20_000)
        with self.assertRaises(StorageServiceError):
            await producer.startProducing(RecordingConsumer())


class NamingTests(SynchronousTestCase):
    """Object names and hashes."""

    def test_names(self) -> None:
        """Blobs and documents map to their documented object names."""
        digest = digest_of(b"n")
        self.assertEqual(blob_object_name(digest), "blobs/sha256/" + digest[7:])
        self.assertEqual(document_object_name("closures", "k-1.x"),
                         "nixeryd/closures/k-1.x.json")
        self.assertRaises(DigestInvalid, blob_object_name, "sha256:zz")
        self.assertRaises(ValueError, document_object_name, "closures", "a/../b")

    def test_file_md5(self) -> None:
        """The file MD5 is the base64 digest Cloud Storage reports as md5Hash."""
        path = self.mktemp()
        data = os.urandom(3 * 1024 * 1024 + 1)
        with open(path, "wb") as f:
            f.write(data)
        self.assertEqual(file_size_and_md5(path),
                         (len(data), base64.b64encode(hashlib.md5(data).digest()).decode()))

    def test_chunk_size_checked(self) -> None:
        """Resumable chunks that are not multiples of 256 KiB are refused."""
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.assertRaises(ValueError, BucketClient, reactor, InlineRunner(),
                          HTTPClient(Agent(reactor, pool=pool)), pool, "b1", chunk_size=1000)

    def test_assertion_time(self) -> None:
        """Token assertions use the injected time, not the wall clock."""
        token = jwt_assertion(load_key(), issued_at=42)
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        self.assertEqual((claims["iat"], claims["exp"]), (42, 3642))
        self.assertEqual(format_timestamp(datetime.fromtimestamp(0, timezone.utc)),
                         "19700101T000000Z")

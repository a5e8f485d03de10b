"""
Credentials without a key file (:mod:`nixeryd.storage.gcs.metadata`,
:mod:`nixeryd.storage.gcs.signers`): tokens from a fake metadata server,
blob URLs signed by a fake IAM ``signBlob``, both served by the tests on
loopback, with the storage on a Cloud Storage emulator; a public bucket's
plain URLs; signed URLs reused for part of their lifetime.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import treq
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest
from twisted.web.client import Agent, HTTPConnectionPool

from treq.client import HTTPClient

from nixeryd.core.documents import RedirectBlob
from nixeryd.storage.gcs.http import GCSError
from nixeryd.storage.gcs.metadata import MetadataServer
from nixeryd.storage.gcs.signers import IAMSigner, SignedUrls
from nixeryd.storage.gcs.signing import unsigned_url_v4
from nixeryd.storage.gcs.storage import GCSStorage, build_gcs_storage
from nixeryd.testing.storage import digest_of
from tests.daemon import Daemon
from tests.daemoncases import DaemonTestCase
from tests.e2e import PACKAGE_SET, require_root, require_tools, run
from tests.fakegoogle import DEFAULT_ACCOUNT, FakeGoogle, serve_fake_google
from tests.gcssupport import EmulatorTestCase, load_key


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def http_client() -> HTTPClient:
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


class KeylessTests(EmulatorTestCase):
    """The storage on the emulator with the fake metadata server and IAM API."""

    def started(self) -> None:
        self.key = load_key()
        d = Deferred.fromCoroutine(serve_fake_google(reactor, self.key))

        def served(result: tuple[FakeGoogle, str, str, Any]) -> None:
            self.google, self.metadata_host, self.iam_endpoint, port = result
            self.addCleanup(port.stopListening)

        d.addCallback(served)
        self.successResultOf(d)

    def keyless_storage(self, **kwargs: Any) -> GCSStorage:
        storage = build_gcs_storage(
            reactor, self.runner, self.emulator.bucket, None, self.emulator.endpoint,
            spool_directory=self.mktemp(), metadata_host=self.metadata_host,
            iam_endpoint=self.iam_endpoint, **kwargs)
        self.addCleanup(storage.close)
        return storage

    async def stored_blob(self, storage: GCSStorage) -> tuple[str, bytes]:
        data = b"a layer" * 100
        digest = digest_of(data)
        await storage.store_blob_bytes(data, digest)
        return digest, data

    async def test_signature_from_sign_blob_in_url(self) -> None:
        """
        Requests carry the metadata server's token; a blob's URL is signed
        by ``signBlob`` for the default account: the signature it returned
        is the URL's, over the URL's own V4 string to sign, and the
        emulator serves the URL.
        """
        storage = self.keyless_storage()
        digest, data = await self.stored_blob(storage)
        blob = await storage.blob(digest)
        assert isinstance(blob, RedirectBlob)
        self.assertEqual(len(self.google.signed), 1)
        [call] = self.google.signed
        self.assertEqual(call.account, DEFAULT_ACCOUNT)
        self.assertEqual(call.token, self.google.tokens[-1])
        query = query_of(blob.url)
        self.assertEqual(query["X-Goog-Signature"], call.signature.hex())
        self.assertTrue(query["X-Goog-Credential"].startswith(DEFAULT_ACCOUNT + "/"))
        when = datetime.strptime(query["X-Goog-Date"], "%Y%m%dT%H%M%SZ").replace(
            tzinfo=timezone.utc)
        expected = unsigned_url_v4(
            DEFAULT_ACCOUNT, bucket=self.emulator.bucket,
            object_name="blobs/sha256/" + digest.split(":")[1], method="GET",
            expiration=int(query["X-Goog-Expires"]), timestamp=when,
            endpoint=self.emulator.endpoint)
        self.assertEqual(call.payload, expected.string_to_sign.encode())
        self.assertEqual(blob.url, expected.signed(call.signature).url)
        self.key.private_key.public_key().verify(
            call.signature, call.payload, padding.PKCS1v15(), hashes.SHA256())
        response = await treq.get(blob.url, pool=HTTPConnectionPool(reactor, persistent=False))
        self.assertEqual((response.code, await response.content()), (200, data))
        self.assertEqual(self.google.refused, [])
        self.assertEqual(self.google.emails_asked, 1)

    async def test_signing_account_configured(self) -> None:
        """A configured signing account signs, and the URL names it; no e-mail is asked."""
        account = "url-signer@other-project.iam.gserviceaccount.com"
        storage = self.keyless_storage(signing_account=account)
        digest, _ = await self.stored_blob(storage)
        blob = await storage.blob(digest)
        assert isinstance(blob, RedirectBlob)
        self.assertEqual([call.account for call in self.google.signed], [account])
        self.assertTrue(query_of(blob.url)["X-Goog-Credential"].startswith(account + "/"))
        self.assertEqual(self.google.emails_asked, 0)

    async def test_account_that_may_not_sign_fails_the_check(self) -> None:
        """
        A signing account the caller may not sign for is found by the
        start-up check (one URL signed), with IAM's reason.
        """
        account = "no-grant@test-project.iam.gserviceaccount.com"
        self.google.forbidden.add(account)
        storage = self.keyless_storage(signing_account=account)
        with self.assertRaises(GCSError) as caught:
            await storage.check_bucket()
        self.assertIn("iam.serviceAccounts.signBlob", str(caught.exception))
        self.assertIn(account, str(caught.exception))
        await self.keyless_storage().check_bucket()

    async def test_public_bucket_unsigned(self) -> None:
        """``--gcs-public`` gives plain URLs: nothing is signed."""
        storage = self.keyless_storage(public=True)
        digest, _ = await self.stored_blob(storage)
        blob = await storage.blob(digest)
        assert isinstance(blob, RedirectBlob)
        self.assertEqual(blob.url, "%s/%s/blobs/sha256/%s" % (
            self.emulator.endpoint, self.emulator.bucket, digest.split(":")[1]))
        self.assertEqual(self.google.signed, [])

    async def test_token_refreshed_before_expiry(self) -> None:
        """
        A token is reused until ``margin`` seconds before it expires, then a
        new one is fetched and the next ``signBlob`` carries it.
        """
        self.google.lifetime = 400
        clock = Clock()
        metadata = MetadataServer(clock, http_client(), self.metadata_host, margin=300)
        self.assertEqual(await metadata.token(), "ya29.fake-1")
        clock.advance(99)
        self.assertEqual(await metadata.token(), "ya29.fake-1")
        self.assertEqual(len(self.google.tokens), 1)
        clock.advance(2)
        self.assertEqual(await metadata.token(), "ya29.fake-2")
        signer = IAMSigner(clock, http_client(), metadata, metadata.email,
                           self.iam_endpoint)
        await signer.sign(bucket="b", object_name="o", method="GET", expiration=300,
                          timestamp=datetime.now(timezone.utc), endpoint="http://x")
        self.assertEqual(self.google.signed[-1].token, "ya29.fake-2")

    async def test_signed_urls_reused_for_part_of_their_lifetime(self) -> None:
        """
        A URL is handed out again while less than half its lifetime has
        passed (one ``signBlob`` call), and signed anew after.
        """
        clock = Clock()
        clock.advance(1_700_000_000)
        metadata = MetadataServer(clock, http_client(), self.metadata_host)
        urls = SignedUrls(IAMSigner(clock, http_client(), metadata, metadata.email,
                                    self.iam_endpoint), clock, lifetime=300)

        async def url() -> str:
            signed: str = await urls.url(bucket="b", object_name="blobs/x", method="GET",
                                         endpoint="https://storage.googleapis.com")
            return signed

        first = await url()
        clock.advance(149)
        self.assertEqual(await url(), first)
        self.assertEqual(len(self.google.signed), 1)
        clock.advance(2)
        second = await url()
        self.assertNotEqual(second, first)
        self.assertEqual(len(self.google.signed), 2)
        self.assertEqual(query_of(second)["X-Goog-Date"],
                         datetime.fromtimestamp(clock.seconds(), timezone.utc).strftime(
                             "%Y%m%dT%H%M%SZ"))
        self.assertEqual(base64.b64encode(self.google.signed[-1].signature).decode()[:8],
                         base64.b64encode(bytes.fromhex(
                             query_of(second)["X-Goog-Signature"])).decode()[:8])


class KeylessDaemonEndToEnd(DaemonTestCase):
    """
    The daemon without a key file, told where the fake metadata server and
    IAM API are (``GCE_METADATA_HOST``, ``GCS_IAM_ENDPOINT``), on the
    emulator: skopeo follows its redirects, whose signatures ``signBlob``
    made.
    """

    async def test_pull_through_iam_signed_redirects(self) -> None:
        from tests.gcsemulator import MISSING_REASON, start_emulator
        if MISSING_REASON is not None:
            raise SkipTest(MISSING_REASON)
        require_root()
        require_tools("skopeo", "nix-build")
        emulator = await start_emulator(reactor, os.path.abspath(self.mktemp()),
                                        bucket="nixeryd-keyless")
        self.addCleanup(lambda: Deferred.fromCoroutine(emulator.stop()))
        google, metadata_host, iam_endpoint, port = await serve_fake_google(
            reactor, load_key())
        self.addCleanup(port.stopListening)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        registry = Daemon(workdir, "--pkgs-path", PACKAGE_SET, "--storage-backend", "gcs",
                          "--gcs-bucket", "nixeryd-keyless", "--gcs-endpoint",
                          emulator.endpoint,
                          env={"GCE_METADATA_HOST": metadata_host,
                               "GCS_IAM_ENDPOINT": iam_endpoint})
        self.addCleanup(registry.stop)
        await deferToThread(registry.start)
        status, _, body = await deferToThread(registry.request,
                                              "/v2/hello/manifests/latest")
        self.assertEqual(status, 200, body)
        layer = json.loads(body)["layers"][0]["digest"]
        location = await deferToThread(redirect_location, registry, layer)
        self.assertIsNotNone(location)
        assert location is not None
        signatures = {call.signature.hex() for call in google.signed}
        self.assertIn(query_of(location)["X-Goog-Signature"], signatures)
        self.assertTrue(query_of(location)["X-Goog-Credential"].startswith(DEFAULT_ACCOUNT))
        layout = os.path.abspath(self.mktemp())
        await deferToThread(run, [
            "skopeo", "copy", "--src-tls-verify=false",
            "docker://%s/hello" % (registry.address,), "oci:%s:img" % (layout,)])
        self.assertEqual({call.account for call in google.signed}, {DEFAULT_ACCOUNT})
        self.assertTrue(google.tokens)
        self.assertEqual(google.refused, [])


def redirect_location(registry: Daemon, digest: str) -> str | None:
    """Where the daemon redirects a blob GET (not followed)."""
    connection = http.client.HTTPConnection(registry.address, timeout=30)
    try:
        connection.request("GET", "/v2/hello/blobs/" + digest)
        response = connection.getresponse()
        response.read()
        location: str | None = response.getheader("Location")
        return location
    finally:
        connection.close()

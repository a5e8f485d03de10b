"""
:mod:`nixeryd.storage.s3.credentials`: the environment, the shared files
and profiles, container credentials and IMDSv2, each against fake
endpoints served by the test on loopback; renewal before expiry; and the
whole chain signing for ``rclone serve s3``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from treq.client import HTTPClient

from nixeryd.core.threads import InlineRunner
from nixeryd.storage.gcs.retry import NO_RETRY, Retrier
from nixeryd.storage.s3.credentials import (
    MetadataFetcher, NoCredentials, RefreshingCredentials, StaticCredentials,
    find_credentials)
from nixeryd.storage.s3.http import S3Error
from nixeryd.storage.s3.signing import Credentials
from nixeryd.testing.network import serve_locally
from nixeryd.testing.storage import digest_of
from tests.rclones3 import ACCESS_KEY, SECRET_KEY, RcloneTestCase, s3_client, s3_storage

EXPIRATION = "2031-01-01T00:00:00Z"


def http_client() -> HTTPClient:
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


def find(environ: dict[str, str], **kwargs: Any) -> Any:
    return find_credentials(environ, reactor, InlineRunner(), http_client(), **kwargs)


class CredentialEndpoint(Resource):
    """
    A container credentials endpoint: the key for requests carrying
    ``token`` in ``Authorization``, 401 for others.
    """

    isLeaf = True

    def __init__(self, token: str | None, key: str = "ASIAFAKE", secret: str = "s") -> None:
        super().__init__()
        self.token = token
        self.key, self.secret = key, secret
        self.requests = 0

    def render_GET(self, request: Request) -> bytes:
        self.requests += 1
        if self.token is not None and request.getHeader("authorization") != self.token:
            request.setResponseCode(401)
            return b"{}"
        return json.dumps({"AccessKeyId": self.key, "SecretAccessKey": self.secret,
                           "Token": "session-token", "Expiration": EXPIRATION}).encode()


class InstanceMetadata(Resource):
    """IMDSv2: a session token first (PUT), then the role and its credentials."""

    isLeaf = True
    role = "nixeryd-role"
    session = "imds-session-token"

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def render_PUT(self, request: Request) -> bytes:
        self.paths.append("PUT " + request.path.decode())
        if (request.path != b"/latest/api/token"
                or not request.getHeader("x-aws-ec2-metadata-token-ttl-seconds")):
            request.setResponseCode(400)
            return b""
        return self.session.encode()

    def render_GET(self, request: Request) -> bytes:
        self.paths.append("GET " + request.path.decode())
        if request.getHeader("x-aws-ec2-metadata-token") != self.session:
            request.setResponseCode(401)
            return b""
        listing = b"/latest/meta-data/iam/security-credentials/"
        if request.path == listing:
            return self.role.encode() + b"\n"
        if request.path == listing + self.role.encode():
            return json.dumps({"Code": "Success", "AccessKeyId": "ASIAINSTANCE",
                               "SecretAccessKey": "instance-secret", "Token": "t",
                               "Expiration": EXPIRATION}).encode()
        request.setResponseCode(404)
        return b""


class ChainTests(TestCase):
    """Where credentials are found, in AWS's order."""

    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.home, ".aws"))

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.home, ".aws", name)
        with open(path, "w") as f:
            f.write(text)
        return path

    async def test_environment(self) -> None:
        """The key in the environment comes first, with its session token."""
        self.write("credentials", "[default]\naws_access_key_id = FILE\n"
                                  "aws_secret_access_key = f\n")
        source = find({"AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "e",
                       "AWS_SESSION_TOKEN": "tok", "HOME": self.home})
        self.assertIsInstance(source, StaticCredentials)
        self.assertEqual(await source.credentials(), Credentials("AKIAENV", "e", "tok"))
        self.assertEqual(source.description, "AWS_ACCESS_KEY_ID AKIAENV")

    def test_half_a_key(self) -> None:
        """An id without a secret is refused, not ignored."""
        self.assertRaises(NoCredentials, find, {"AWS_ACCESS_KEY_ID": "AKIA"})

    async def test_shared_file_profiles(self) -> None:
        """The default profile, or AWS_PROFILE's, of the credentials file."""
        path = self.write("credentials",
                          "[default]\naws_access_key_id = DEFAULTKEY\n"
                          "aws_secret_access_key = d\n\n[ci]\naws_access_key_id = CIKEY\n"
                          "aws_secret_access_key = c\naws_session_token = ci-token\n")
        source = find({"HOME": self.home})
        self.assertEqual(await source.credentials(), Credentials("DEFAULTKEY", "d"))
        self.assertEqual(source.description, "profile default in %s" % (path,))
        source = find({"HOME": self.home, "AWS_PROFILE": "ci"})
        self.assertEqual(await source.credentials(), Credentials("CIKEY", "c", "ci-token"))

    async def test_shared_file_elsewhere(self) -> None:
        """AWS_SHARED_CREDENTIALS_FILE names the file."""
        path = os.path.join(self.home, "elsewhere")
        with open(path, "w") as f:
            f.write("[default]\naws_access_key_id = ELSEWHERE\naws_secret_access_key = x\n")
        source = find({"HOME": self.home, "AWS_SHARED_CREDENTIALS_FILE": path})
        self.assertEqual((await source.credentials()).access_key_id, "ELSEWHERE")

    async def test_config_file_profile(self) -> None:
        """A key in the config file's ``[profile NAME]`` section."""
        self.write("config", "[profile build]\nregion = eu-west-3\n"
                             "aws_access_key_id = CONFIGKEY\naws_secret_access_key = k\n")
        source = find({"HOME": self.home, "AWS_PROFILE": "build"})
        self.assertEqual((await source.credentials()).access_key_id, "CONFIGKEY")

    def test_missing_profile(self) -> None:
        """A profile named but not found is an error, not a fall-through to metadata."""
        self.write("credentials", "[default]\naws_access_key_id = A\naws_secret_access_key = b\n")
        error = self.assertRaises(NoCredentials, find, {"HOME": self.home, "AWS_PROFILE": "x"})
        self.assertIn("AWS_PROFILE x has no key", str(error))

    def test_broken_profile(self) -> None:
        """Half a key in a profile, or a file that does not parse, is an error."""
        self.write("credentials", "[default]\naws_access_key_id = A\n")
        self.assertRaises(NoCredentials, find, {"HOME": self.home})
        self.write("credentials", "not an ini file")
        self.assertRaises(NoCredentials, find, {"HOME": self.home})

    def test_nothing_and_no_metadata(self) -> None:
        """With instance metadata disabled and nothing else, no credentials."""
        error = self.assertRaises(NoCredentials, find, {
            "HOME": self.home, "AWS_EC2_METADATA_DISABLED": "true"})
        self.assertIn("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", str(error))

    async def test_container_full_uri(self) -> None:
        """AWS_CONTAINER_CREDENTIALS_FULL_URI, with the authorization token from the environment."""
        endpoint = CredentialEndpoint("Bearer secret-token")
        url = serve_locally(self, Site(endpoint)) + "/v1/credentials"
        source = find({"HOME": self.home, "AWS_CONTAINER_CREDENTIALS_FULL_URI": url,
                       "AWS_CONTAINER_AUTHORIZATION_TOKEN": "Bearer secret-token"})
        self.assertIsInstance(source, RefreshingCredentials)
        got = await source.credentials()
        self.assertEqual((got.access_key_id, got.secret_access_key, got.session_token),
                         ("ASIAFAKE", "s", "session-token"))
        self.assertEqual(got.expires, 1924992000.0)
        await source.credentials()
        self.assertEqual(endpoint.requests, 1)

    def test_container_full_uri_in_clear(self) -> None:
        """A full URI over plain HTTP to anything but the agents or loopback is refused."""
        for url in ("http://203.0.113.9/creds", "ftp://127.0.0.1/creds", "http:///x"):
            error = self.assertRaises(NoCredentials, find, {
                "HOME": self.home, "AWS_CONTAINER_CREDENTIALS_FULL_URI": url})
            self.assertIn("must be https, or http to the container agent or loopback",
                          str(error))
        for url in ("https://creds.example/x", "http://169.254.170.23/v1/credentials",
                    "http://[::1]:8080/c", "http://127.0.0.2/c"):
            self.assertIsInstance(find({"HOME": self.home,
                                        "AWS_CONTAINER_CREDENTIALS_FULL_URI": url}),
                                  RefreshingCredentials)

    async def test_container_relative_uri_and_token_file(self) -> None:
        """The relative URI on the container host, the token read from its file."""
        endpoint = CredentialEndpoint("from-file")
        base = serve_locally(self, Site(endpoint))
        token_file = os.path.join(self.home, "token")
        with open(token_file, "w") as f:
            f.write("from-file\n")
        source = find({"HOME": self.home,
                       "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc",
                       "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": token_file},
                      container_host=base)
        self.assertEqual(source.description,
                         "container credentials at %s/v2/credentials/abc" % (base,))
        self.assertEqual((await source.credentials()).access_key_id, "ASIAFAKE")

    async def test_container_refusal(self) -> None:
        """A refusal of the endpoint is an S3Error saying where."""
        url = serve_locally(self, Site(CredentialEndpoint("right"))) + "/c"
        fetcher = MetadataFetcher(reactor, InlineRunner(), http_client(),
                                  retrier=Retrier(reactor, NO_RETRY))
        with self.assertRaises(S3Error) as caught:
            await fetcher.container(url, "wrong", None)
        self.assertIn("fetching AWS credentials from %s: S3 answered HTTP 401" % (url,),
                      str(caught.exception))

    async def test_instance_metadata(self) -> None:
        """IMDSv2: a session token, then the role, then its credentials."""
        metadata = InstanceMetadata()
        endpoint = serve_locally(self, Site(metadata))
        source = find({"HOME": self.home, "AWS_EC2_METADATA_SERVICE_ENDPOINT": endpoint})
        self.assertEqual(source.description, "instance metadata at %s" % (endpoint,))
        got = await source.credentials()
        self.assertEqual((got.access_key_id, got.session_token), ("ASIAINSTANCE", "t"))
        self.assertEqual(metadata.paths, [
            "PUT /latest/api/token", "GET /latest/meta-data/iam/security-credentials/",
            "GET /latest/meta-data/iam/security-credentials/nixeryd-role"])


    async def test_no_instance_metadata(self) -> None:
        """Where nothing answers for instance metadata, the error says what to set."""
        from tests.daemon import free_port

        endpoint = "http://127.0.0.1:%d" % (free_port(),)
        source = find({"HOME": self.home, "AWS_EC2_METADATA_SERVICE_ENDPOINT": endpoint})
        with self.assertRaises(S3Error) as caught:
            await source.credentials()
        self.assertIn("no AWS credentials in the environment or the shared files, and the"
                      " instance metadata service gives none (cannot reach %s/latest/api/token"
                      % (endpoint,), str(caught.exception))
        self.assertIn("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
                      str(caught.exception))


class RefreshTests(SynchronousTestCase):
    """Temporary credentials are renewed before they expire, by one fetch."""

    def test_renewed_before_expiry(self) -> None:
        clock = Clock()
        fetched: list[Deferred[Credentials]] = []

        def fetch() -> Deferred[Credentials]:
            fetched.append(Deferred())
            return fetched[-1]

        source = RefreshingCredentials(clock, fetch, "test", margin=300)
        first, second = source.credentials(), source.credentials()
        self.assertEqual(len(fetched), 1)
        fetched[0].callback(Credentials("K1", "s", "t", expires=3600))
        self.assertEqual(self.successResultOf(first).access_key_id, "K1")
        self.assertEqual(self.successResultOf(second).access_key_id, "K1")
        clock.advance(3299)
        self.assertEqual(self.successResultOf(source.credentials()).access_key_id, "K1")
        self.assertEqual(len(fetched), 1)
        clock.advance(2)
        renewed = source.credentials()
        self.assertEqual(len(fetched), 2)
        fetched[1].callback(Credentials("K2", "s", "t", expires=7200))
        self.assertEqual(self.successResultOf(renewed).access_key_id, "K2")

    def test_failure_not_kept(self) -> None:
        """A failed fetch fails its callers; the next call fetches again."""
        calls = []

        def fetch() -> Deferred[Credentials]:
            calls.append(1)
            if len(calls) == 1:
                return Deferred.fromCoroutine(self._fail())
            return succeed(Credentials("K", "s"))

        source = RefreshingCredentials(Clock(), fetch, "test")
        self.failureResultOf(source.credentials(), S3Error)
        self.assertEqual(self.successResultOf(source.credentials()).access_key_id, "K")

    async def _fail(self) -> Credentials:
        raise S3Error("down")


class ContainerCredentialsOnS3Tests(RcloneTestCase):
    """The chain end to end: container credentials sign requests rclone accepts."""

    async def test_storage_with_container_credentials(self) -> None:
        endpoint = CredentialEndpoint("tok", key=ACCESS_KEY, secret=SECRET_KEY)
        url = serve_locally(self, Site(endpoint)) + "/creds"
        source = find({"AWS_CONTAINER_CREDENTIALS_FULL_URI": url,
                       "AWS_CONTAINER_AUTHORIZATION_TOKEN": "tok", "HOME": self.mktemp()})
        storage = s3_storage(self, self.runner, self.server,
                             client=s3_client(self, self.runner, self.server,
                                              credentials=source))
        await storage.check_bucket()
        await storage.store_blob_bytes(b"signed with a session", digest_of(b"signed with a session"))
        self.assertEqual(await storage.read_small_blob(digest_of(b"signed with a session"), 100),
                         b"signed with a session")
        self.assertEqual(endpoint.requests, 1)

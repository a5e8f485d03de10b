"""
Tests for :mod:`nixeryd.storage.gcs.signing`: V4 signed URLs checked against Google's
conformance vectors (the path-style ones: the only style the signer makes)
and against google-cloud-storage's own signer, and the JWT assertions used
to obtain access tokens.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.storage.gcs.signing import (
    READ_WRITE_SCOPE, ServiceAccountKey, SignedUrl, canonical_headers,
    canonical_query, format_timestamp, host_header_value, jwt_assertion,
    sign_url_v4)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "gcs-v4")
KEY_FILE = os.path.join(FIXTURES, "service-account.json")
#: How many of the fixture's signed-URL cases there are, and how many of
#: them are path style (the others are virtual-hosted or bucket-bound).
ALL_CASES = 29
PATH_STYLE_CASES = 25

Vector = dict[str, Any]


def load_key() -> ServiceAccountKey:
    """The conformance vectors' dummy service-account key."""
    with open(KEY_FILE, "rb") as f:
        return ServiceAccountKey.from_json(f.read())


def load_vectors() -> list[Vector]:
    """The ``signingV4Tests`` cases."""
    with open(os.path.join(FIXTURES, "v4_signatures.json"), "rb") as f:
        vectors: list[Vector] = json.load(f)["signingV4Tests"]
    return vectors


def is_path_style(case: Vector) -> bool:
    """Whether a vector signs a path-style URL (the default style)."""
    return bool(case.get("urlStyle", "PATH_STYLE") == "PATH_STYLE")


def vector_endpoint(case: Vector) -> str:
    """
    The endpoint a vector signs for, from its overrides in precedence order
    (``hostname``, ``clientEndpoint``, ``emulatorHostname``, universe
    domain, default).
    """
    host: str = (case.get("hostname") or case.get("clientEndpoint")
                 or case.get("emulatorHostname")
                 or "storage." + case.get("universeDomain", "googleapis.com"))
    return host if "://" in host else case.get("scheme", "https") + "://" + host


def has_non_default_port(endpoint: str) -> bool:
    """Whether the endpoint names a port other than its scheme's default."""
    parts = urlsplit(endpoint)
    return parts.port is not None and parts.port != {"http": 80, "https": 443}[parts.scheme]


def sign_vector(key: ServiceAccountKey, case: Vector) -> SignedUrl:
    """
    Sign what a vector describes.

    The vectors on a non-default port (``localhost:8080``) sign the host
    without its port, where the signer (like google-cloud-storage and the
    ``Host`` header clients send) keeps it: those are signed with the host
    they name passed as ``Host``, the way a caller asks for that form.
    """
    endpoint = vector_endpoint(case)
    headers = dict(case.get("headers") or {})
    if has_non_default_port(endpoint):
        headers["Host"] = urlsplit(endpoint).hostname or ""
    return sign_url_v4(
        key, bucket=case["bucket"], object_name=case.get("object"),
        method=case["method"], expiration=case["expiration"],
        timestamp=datetime.fromisoformat(case["timestamp"].replace("Z", "+00:00")),
        endpoint=endpoint,
        headers=headers or None, query_parameters=case.get("queryParameters"))


def verify(key: ServiceAccountKey, signed: SignedUrl) -> None:
    """Raise unless the URL's signature is the key's over the string to sign."""
    signature = bytes.fromhex(dict(parse_qsl(urlsplit(signed.url).query))["X-Goog-Signature"])
    key.private_key.public_key().verify(
        signature, signed.string_to_sign.encode("ascii"), padding.PKCS1v15(),
        hashes.SHA256())


class ConformanceVectorTests(SynchronousTestCase):
    """The signer against Google's published V4 signing vectors."""

    def setUp(self) -> None:
        self.key = load_key()
        self.all_vectors = load_vectors()
        self.vectors = [case for case in self.all_vectors if is_path_style(case)]

    def test_vector_count(self) -> None:
        """The copied fixture holds the 29 signed-URL cases, 25 of them path style."""
        self.assertEqual(len(self.all_vectors), ALL_CASES)
        self.assertEqual(len(self.vectors), PATH_STYLE_CASES)

    def test_default_port_vector_signed_without_help(self) -> None:
        """
        ``storage.googleapis.com:443`` is signed as the vector expects with
        no explicit ``Host``: the scheme's default port is left out.
        """
        [case] = [case for case in self.vectors
                  if case["description"] == "Simple GET with endpoint on client"]
        self.assertFalse(has_non_default_port(vector_endpoint(case)))
        self.assertEqual(sign_vector(self.key, case).url, case["expectedUrl"])

    def test_non_default_port_vectors(self) -> None:
        """
        Exactly three vectors sign for ``localhost:8080``; without an
        explicit ``Host`` the signer keeps the port in the signed host.
        """
        ported = [case for case in self.vectors
                  if has_non_default_port(vector_endpoint(case))]
        self.assertEqual(len(ported), 3)
        for case in ported:
            signed = sign_url_v4(
                self.key, bucket=case["bucket"], object_name=case.get("object"),
                method=case["method"], expiration=case["expiration"],
                timestamp=datetime.fromisoformat(case["timestamp"].replace("Z", "+00:00")),
                endpoint=vector_endpoint(case), headers=case.get("headers"))
            self.assertIn("\nhost:localhost:8080\n", signed.canonical_request)

    def test_urls_and_strings_to_sign(self) -> None:
        """Every vector's URL and string to sign are reproduced exactly."""
        mismatches = []
        for case in self.vectors:
            signed = sign_vector(self.key, case)
            if signed.url != case["expectedUrl"]:
                mismatches.append((case["description"], "url", signed.url))
            if signed.string_to_sign != case["expectedStringToSign"]:
                mismatches.append((case["description"], "string to sign",
                                   signed.string_to_sign))
        self.assertEqual(mismatches, [])

    def test_canonical_requests(self) -> None:
        """Every vector's canonical request is reproduced, and hashes as signed."""
        mismatches = []
        for case in self.vectors:
            ours = sign_vector(self.key, case).canonical_request
            if ours != case["expectedCanonicalRequest"]:
                mismatches.append(case["description"])
            expected_hash = case["expectedStringToSign"].rsplit("\n", 1)[1]
            self.assertEqual(hashlib.sha256(ours.encode()).hexdigest(), expected_hash)
        self.assertEqual(mismatches, [])

    def test_signatures_verify(self) -> None:
        """Each URL's signature verifies with the key's public half."""
        for case in self.vectors:
            verify(self.key, sign_vector(self.key, case))

    def test_tampered_signature_fails(self) -> None:
        """Verification catches a string to sign that differs from the signed one."""
        signed = sign_vector(self.key, self.vectors[0])
        tampered = SignedUrl(url=signed.url, canonical_request=signed.canonical_request,
                             string_to_sign=signed.string_to_sign + "x")
        self.assertRaises(InvalidSignature, verify, self.key, tampered)


class LibraryComparisonTests(SynchronousTestCase):
    """The signer against google-cloud-storage's ``generate_signed_url_v4``."""

    def setUp(self) -> None:
        try:
            from google.cloud.storage._signing import (  # type: ignore[import-untyped]
                generate_signed_url_v4)
            from google.oauth2 import service_account
        except ImportError:
            self.skipTest("google-cloud-storage is not installed")
        self.library_sign = generate_signed_url_v4
        self.credentials = service_account.Credentials.from_service_account_file(KEY_FILE)
        self.key = load_key()
        self.when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    def compare(self, bucket: str, name: str, method: str, expiration: int,
                endpoint: str = "https://storage.googleapis.com",
                headers: dict[str, str] | None = None,
                query: dict[str, str] | None = None) -> None:
        expected = self.library_sign(
            self.credentials, "/%s/%s" % (bucket, quote(name, safe=b"/~")),
            expiration=expiration, api_access_endpoint=endpoint, method=method,
            headers=dict(headers) if headers is not None else None,
            query_parameters=dict(query) if query is not None else None,
            _request_timestamp=format_timestamp(self.when))
        ours = sign_url_v4(self.key, bucket=bucket, object_name=name, method=method,
                           expiration=expiration, timestamp=self.when,
                           endpoint=endpoint, headers=headers, query_parameters=query)
        self.assertEqual(ours.url, expected)

    def test_blob_get(self) -> None:
        """A five-minute GET of a blob object is signed as the library signs it."""
        self.compare("layers", "blobs/sha256/" + "ab" * 32, "GET", 300)

    def test_head_and_put(self) -> None:
        """HEAD and PUT URLs match the library (the method is signed)."""
        self.compare("layers", "blobs/sha256/" + "cd" * 32, "HEAD", 60)
        self.compare("layers", "blobs/sha256/" + "cd" * 32, "PUT", 600)

    def test_resumable_with_headers_and_query(self) -> None:
        """A resumable start with extra headers and parameters matches the library."""
        self.compare("my-bucket", "dir/ob ject é+~.txt", "RESUMABLE", 3600,
                     headers={"Content-Type": "application/octet-stream",
                              "X-Goog-Meta-Owner": "  nix  ery  "},
                     query={"userProject": "p q", "generation": "17"})

    def test_query_sort_rule(self) -> None:
        """Names where one prefixes the other sort as whole ``name=value`` strings."""
        self.compare("bucket-1", "o", "GET", 10, query={"a": "1", "a-b": "2"})

    def test_endpoint_with_port_and_explicit_host(self) -> None:
        """
        With a port in the endpoint and the same explicit ``Host`` given to
        both, the URLs match.
        """
        self.compare("bucket-1", "x/y", "GET", 300, endpoint="http://127.0.0.1:9023",
                     headers={"Host": "127.0.0.1:9023"})

    def test_non_default_port_signed_as_library(self) -> None:
        """
        Without an explicit ``Host``, an endpoint on a non-default port is
        signed with ``host:port``, as the library signs it and as clients
        send it; IPv6 and a named host on a port match too.
        """
        for endpoint in ("http://127.0.0.1:9023", "https://gcs.example:8443",
                         "http://[::1]:4443"):
            self.compare("bucket-1", "blobs/sha256/" + "ef" * 32, "GET", 300,
                         endpoint=endpoint)
        signed = sign_url_v4(self.key, bucket="b1", object_name="o", method="GET",
                             expiration=10, timestamp=self.when,
                             endpoint="http://127.0.0.1:9023")
        self.assertIn("\nhost:127.0.0.1:9023\n", signed.canonical_request)
        self.assertTrue(signed.url.startswith("http://127.0.0.1:9023/b1/o?"))

    def test_default_port_left_out(self) -> None:
        """A scheme's default port is not signed (clients do not send it)."""
        for endpoint, host in (("https://storage.googleapis.com:443",
                                "storage.googleapis.com"),
                               ("http://127.0.0.1:80", "127.0.0.1")):
            signed = sign_url_v4(self.key, bucket="b1", object_name="o", method="GET",
                                 expiration=10, timestamp=self.when, endpoint=endpoint)
            self.assertIn("\nhost:%s\n" % (host,), signed.canonical_request)


class SignerRulesTests(SynchronousTestCase):
    """The signer's own rules and input checks."""

    def setUp(self) -> None:
        self.key = load_key()
        self.when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    def test_expiration_bounds(self) -> None:
        """Lifetimes outside 1..604800 seconds are refused; the bounds are accepted."""
        for bad in (0, -1, 604801):
            self.assertRaises(ValueError, sign_url_v4, self.key, bucket="b1",
                              object_name="o", method="GET", expiration=bad,
                              timestamp=self.when)
        for good in (1, 604800):
            sign_url_v4(self.key, bucket="b1", object_name="o", method="GET",
                        expiration=good, timestamp=self.when)

    def test_naive_timestamp_refused(self) -> None:
        """A timestamp without a time zone is refused rather than guessed."""
        self.assertRaises(ValueError, sign_url_v4, self.key, bucket="b1",
                          object_name="o", method="GET", expiration=10,
                          timestamp=datetime(2025, 1, 2))

    def test_timestamp_converted_to_utc(self) -> None:
        """Aware timestamps in other zones are signed in UTC."""
        plus_two = timezone(timedelta(hours=2))
        self.assertEqual(format_timestamp(datetime(2025, 1, 2, 5, 4, 5, tzinfo=plus_two)),
                         "20250102T030405Z")

    def test_canonical_headers(self) -> None:
        """Header names are lowercased, values collapsed and repeats joined."""
        self.assertEqual(
            canonical_headers([("X-B", " 1 \t 2 "), ("x-a", "z"), ("X-b", "3")]),
            [("x-a", "z"), ("x-b", "1 2,3")])

    def test_canonical_query_encoding(self) -> None:
        """Only unreserved characters stay literal; space is %20, never +."""
        self.assertEqual(canonical_query({"k y": "a/b@c;d+e é"}),
                         "k%20y=a%2Fb%40c%3Bd%2Be%20%C3%A9")

    def test_host_header_value(self) -> None:
        """
        The signed host keeps a non-default port, drops the scheme's
        default one, and keeps IPv6 brackets.
        """
        self.assertEqual(host_header_value("http://LOCALHOST:8080"), "localhost:8080")
        self.assertEqual(host_header_value("http://[::1]:9000"), "[::1]:9000")
        self.assertEqual(host_header_value("http://[::1]"), "[::1]")
        self.assertEqual(host_header_value("https://h.example:443"), "h.example")
        self.assertEqual(host_header_value("http://h.example:80"), "h.example")
        self.assertEqual(host_header_value("https://h.example:80"), "h.example:80")
        self.assertRaises(ValueError, host_header_value, "not a url")

    def test_caller_headers_not_modified(self) -> None:
        """The caller's header mapping is left as it was."""
        headers = {"X-Goog-Meta-A": "1"}
        sign_url_v4(self.key, bucket="b1", object_name="o", method="GET",
                    expiration=10, timestamp=self.when, headers=headers)
        self.assertEqual(headers, {"X-Goog-Meta-A": "1"})

    def test_key_file_errors(self) -> None:
        """Key files that are not service-account keys are refused with a reason."""
        with open(KEY_FILE, "rb") as f:
            info = json.load(f)
        self.assertRaises(ValueError, ServiceAccountKey.from_json, b"{not json")
        self.assertRaises(ValueError, ServiceAccountKey.from_json,
                          json.dumps(dict(info, type="authorized_user")))
        without_email = {k: v for k, v in info.items() if k != "client_email"}
        error = self.assertRaises(ValueError, ServiceAccountKey.from_json,
                                  json.dumps(without_email))
        self.assertIn("client_email", str(error))
        self.assertRaises(ValueError, ServiceAccountKey.from_json,
                          json.dumps(dict(info, private_key="garbage")))

    def test_key_file_fields(self) -> None:
        """The key's e-mail, id and token URI are read from the file."""
        with open(KEY_FILE, "rb") as f:
            info = json.load(f)
        self.assertEqual(self.key.client_email, info["client_email"])
        self.assertEqual(self.key.private_key_id, info["private_key_id"])
        self.assertEqual(self.key.token_uri, info["token_uri"])


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class JwtAssertionTests(SynchronousTestCase):
    """The signed JWT exchanged for access tokens."""

    def test_assertion(self) -> None:
        """The JWT is RS256-signed by the key and claims the account, scope and times."""
        key = load_key()
        token = jwt_assertion(key, issued_at=1700000000, lifetime=3600)
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(_unb64(header_b64))
        claims = json.loads(_unb64(claims_b64))
        self.assertEqual(header, {"alg": "RS256", "typ": "JWT", "kid": key.private_key_id})
        self.assertEqual(claims, {"iss": key.client_email, "scope": READ_WRITE_SCOPE,
                                  "aud": key.token_uri, "iat": 1700000000,
                                  "exp": 1700003600})
        key.private_key.public_key().verify(
            _unb64(signature_b64), (header_b64 + "." + claims_b64).encode(),
            padding.PKCS1v15(), hashes.SHA256())

"""
:mod:`nixeryd.storage.s3.signing` against AWS's published SigV4 test
vectors (``tests/fixtures/sigv4``: the cases of the signing test suite
that S3 requests meet, signed in headers and in the query), the worked
examples of the S3 documentation, and botocore's signer for awkward keys.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.storage.canonical import uri_encode_path
from nixeryd.storage.s3.signing import (
    Credentials, presign_query, presign_url, sign, signed_headers)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "sigv4")
CASES = sorted(name for name in os.listdir(FIXTURES)
               if os.path.isdir(os.path.join(FIXTURES, name)))


def _read(case: str, name: str) -> str:
    with open(os.path.join(FIXTURES, case, name), encoding="utf-8") as f:
        return f.read()


def parse_request(text: str) -> tuple[str, str, list[tuple[str, str]], list[tuple[str, str]], bytes]:
    """Method, raw path, query pairs, headers and body of a ``request.txt``."""
    head, _, body = text.partition("\n\n")
    lines = [line for line in head.split("\n") if line]
    # The target may hold a space ("GET /example space/ HTTP/1.1").
    method, rest = lines[0].split(" ", 1)
    target = rest.rsplit(" ", 1)[0]
    path, _, query_text = target.partition("?")
    query = [(unquote(name), unquote(value)) for name, _, value in
             (item.partition("=") for item in query_text.split("&") if item)]
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value))
    return method, path, query, headers, body.encode("utf-8")


def vector_context(case: str) -> dict[str, Any]:
    context: dict[str, Any] = json.loads(_read(case, "context.json"))
    return context


def credentials_of(context: dict[str, Any]) -> Credentials:
    given = context["credentials"]
    return Credentials(given["access_key_id"], given["secret_access_key"], given.get("token"))


class SigV4VectorTests(SynchronousTestCase):
    """AWS's SigV4 test suite, the cases that apply to S3."""

    def test_cases_present(self) -> None:
        """Every copied case is here (a vanished fixture fails, not skips)."""
        self.assertEqual(len(CASES), 11)

    def test_header_signatures(self) -> None:
        """Canonical request, string to sign and signature of each case, signed in headers."""
        for case in CASES:
            context = vector_context(case)
            credentials = credentials_of(context)
            method, path, query, headers, body = parse_request(_read(case, "request.txt"))
            request_time = datetime.fromisoformat(
                context["timestamp"].replace("Z", "+00:00")).strftime("%Y%m%dT%H%M%SZ")
            payload = hashlib.sha256(body).hexdigest()
            headers.append(("X-Amz-Date", request_time))
            if credentials.session_token:
                headers.append(("X-Amz-Security-Token", credentials.session_token))
            if context["sign_body"]:
                headers.append(("X-Amz-Content-SHA256", payload))
            signature = sign(credentials, region=context["region"],
                             service=context["service"], request_time=request_time,
                             method=method, path=uri_encode_path(path), query=query,
                             headers=headers, payload_hash=payload)
            self.assertEqual(signature.canonical_request,
                             _read(case, "header-canonical-request.txt"), case)
            self.assertEqual(signature.string_to_sign,
                             _read(case, "header-string-to-sign.txt"), case)
            self.assertEqual(signature.signature,
                             _read(case, "header-signature.txt").strip(), case)

    def test_query_signatures(self) -> None:
        """The same cases presigned: the signature travels in the query."""
        for case in CASES:
            context = vector_context(case)
            credentials = credentials_of(context)
            method, path, query, headers, body = parse_request(_read(case, "request.txt"))
            host = [value for name, value in headers if name.lower() == "host"][0]
            others = [(name, value) for name, value in headers if name.lower() != "host"]
            timestamp = datetime.fromisoformat(context["timestamp"].replace("Z", "+00:00"))
            text, signature = presign_query(
                credentials, region=context["region"], method=method, host=host,
                path=uri_encode_path(path), query=query,
                expiration=context["expiration_in_seconds"], timestamp=timestamp,
                headers=others, service=context["service"],
                payload_hash=hashlib.sha256(body).hexdigest())
            self.assertEqual(signature.canonical_request,
                             _read(case, "query-canonical-request.txt"), case)
            self.assertEqual(signature.string_to_sign,
                             _read(case, "query-string-to-sign.txt"), case)
            expected = _read(case, "query-signature.txt").strip()
            self.assertEqual(signature.signature, expected, case)
            self.assertEqual(dict(parse_qsl(text))["X-Amz-Signature"], expected)


#: The S3 documentation's example key ("Signature Calculations for the
#: Authorization Header" and "Authenticating Requests: Using Query
#: Parameters").
S3_DOCS = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
S3_DOCS_TIME = datetime(2013, 5, 24, tzinfo=timezone.utc)


class S3DocumentationTests(SynchronousTestCase):
    """The worked examples of the S3 API reference."""

    def test_presigned_get(self) -> None:
        """GET examplebucket/test.txt for a day: the published URL, byte for byte."""
        signed = presign_url(S3_DOCS, region="us-east-1", method="GET",
                             base_url="https://examplebucket.s3.amazonaws.com",
                             host="examplebucket.s3.amazonaws.com", path="/test.txt",
                             expiration=86400, timestamp=S3_DOCS_TIME)
        self.assertEqual(
            signed.url,
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
            "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
            "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
        self.assertEqual(signed.signature.string_to_sign.split("\n")[-1],
                         "3bfa292879f6447bbcda7001decf97f4a54dc650c8942174ae0a9121cf58ad04")

    def _header_signature(self, method: str, path: str, query: list[tuple[str, str]],
                          headers: dict[str, str], payload: str) -> str:
        sent = signed_headers(S3_DOCS, region="us-east-1", method=method,
                              host="examplebucket.s3.amazonaws.com", path=path, query=query,
                              headers=headers, payload_hash=payload, timestamp=S3_DOCS_TIME)
        return sent["Authorization"].rsplit("Signature=", 1)[1]

    def test_get_object(self) -> None:
        """GET /test.txt with a Range header."""
        self.assertEqual(
            self._header_signature("GET", "/test.txt", [], {"Range": "bytes=0-9"},
                                   hashlib.sha256(b"").hexdigest()),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")

    def test_put_object(self) -> None:
        """PUT /test$file.text with a body and a storage class."""
        body = b"Welcome to Amazon S3."
        self.assertEqual(
            self._header_signature(
                "PUT", uri_encode_path("/test$file.text"), [],
                {"Date": "Fri, 24 May 2013 00:00:00 GMT",
                 "x-amz-storage-class": "REDUCED_REDUNDANCY"},
                hashlib.sha256(body).hexdigest()),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")

    def test_get_bucket_lifecycle(self) -> None:
        """GET /?lifecycle: a parameter without a value."""
        self.assertEqual(
            self._header_signature("GET", "/", [("lifecycle", "")], {},
                                   hashlib.sha256(b"").hexdigest()),
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")

    def test_list_objects(self) -> None:
        """GET /?max-keys=2&prefix=J."""
        self.assertEqual(
            self._header_signature("GET", "/", [("max-keys", "2"), ("prefix", "J")], {},
                                   hashlib.sha256(b"").hexdigest()),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")

    def test_authorization_header(self) -> None:
        """The header names the key, the scope and the signed headers."""
        sent = signed_headers(S3_DOCS, region="us-east-1", method="GET",
                              host="examplebucket.s3.amazonaws.com", path="/test.txt",
                              query=[], headers={}, payload_hash="x" * 64,
                              timestamp=S3_DOCS_TIME)
        self.assertTrue(sent["Authorization"].startswith(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"
            "aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="))
        self.assertNotIn("X-Amz-Security-Token", sent)

    def test_secret_not_in_repr(self) -> None:
        """Credentials never show their secret or token."""
        text = repr(Credentials("AKID", "very-secret", "session-token"))
        self.assertNotIn("very-secret", text)
        self.assertNotIn("session-token", text)

    def test_lifetime_bounds(self) -> None:
        """A presigned URL lives 1 s to 7 days."""
        for expiration in (0, 604801):
            self.assertRaises(ValueError, presign_url, S3_DOCS, region="us-east-1",
                              method="GET", base_url="https://h", host="h", path="/k",
                              expiration=expiration, timestamp=S3_DOCS_TIME)


#: Keys that exercise the encoding: spaces, reserved and non-ASCII
#: characters, plus signs, tildes and slashes in a row.
AWKWARD_KEYS = ("a b/c+d", "~tilde/%percent", "ሴ/ü/日本", "x=y&z", "dots/../and/./more",
                "trailing/", "colon:semi;comma,", "quote'\"star*", "a//b")


class BotocoreCrossCheckTests(SynchronousTestCase):
    """The same presigned URLs as botocore's signer, key for key."""

    def setUp(self) -> None:
        try:
            from botocore.auth import S3SigV4QueryAuth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials as BotoCredentials
        except ImportError:  # pragma: no cover - botocore is a test dependency
            self.fail("botocore is not installed (pip install -e .[test])")
        self.query_auth = S3SigV4QueryAuth
        self.request_class = AWSRequest
        self.credentials_class = BotoCredentials

    def botocore_url(self, url: str, credentials: Credentials, region: str,
                     expiration: int) -> str:
        from unittest import mock

        request = self.request_class(method="GET", url=url)
        auth = self.query_auth(self.credentials_class(
            credentials.access_key_id, credentials.secret_access_key,
            credentials.session_token), "s3", region, expires=expiration)
        with mock.patch("botocore.auth.get_current_datetime",
                        return_value=datetime(2024, 2, 29, 23, 59, 58)):
            auth.add_auth(request)
        prepared: str = request.prepare().url
        return prepared

    def test_awkward_keys(self) -> None:
        """Every awkward key, path and virtual style, with and without a session token."""
        when = datetime(2024, 2, 29, 23, 59, 58, tzinfo=timezone.utc)
        checked = 0
        for credentials in (Credentials("AKIDEXAMPLE", "secret/with+chars"),
                            Credentials("ASIAEXAMPLE", "s", "token/with=+chars")):
            for base, prefix in (("http://127.0.0.1:9000", "/bucket"),
                                 ("https://bucket.s3.eu-west-3.amazonaws.com", "")):
                for key in AWKWARD_KEYS:
                    path = uri_encode_path(prefix + "/" + key)
                    ours = presign_url(credentials, region="eu-west-3", method="GET",
                                       base_url=base, host=urlsplit(base).netloc,
                                       path=path, expiration=300, timestamp=when).url
                    theirs = self.botocore_url(base + path, credentials, "eu-west-3", 300)
                    self.assertEqual(dict(parse_qsl(urlsplit(ours).query)),
                                     dict(parse_qsl(urlsplit(theirs).query)), key)
                    self.assertEqual(urlsplit(ours).path, urlsplit(theirs).path, key)
                    checked += 1
        self.assertEqual(checked, 2 * 2 * len(AWKWARD_KEYS))

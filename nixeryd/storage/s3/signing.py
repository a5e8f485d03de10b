"""
AWS Signature Version 4 (``AWS4-HMAC-SHA256``) for S3 requests and
presigned URLs, computed locally from an access key.

The scheme is Cloud Storage's V4 with an HMAC key chain instead of an RSA
key: the canonical request (:mod:`nixeryd.storage.canonical`, shared with
:mod:`nixeryd.storage.gcs.signing`) is hashed with SHA-256 into
``AWS4-HMAC-SHA256\\n<time>\\n<date>/<region>/<service>/aws4_request\\n<hash>``,
which is signed with a key derived from the secret by HMAC-SHA256 over the
date, the region, the service and ``aws4_request``.  A request carries the
signature in its ``Authorization`` header; a presigned URL carries it, with
the credential, time and lifetime, in its query.

S3 signs the path as sent, each segment percent-encoded once, without
removing dot segments (other AWS services encode twice and normalise).

Everything here is pure computation (no I/O and no clock), so it is
checked against AWS's published test vectors and botocore's signer.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Iterable, Sequence

from attrs import field, frozen

from nixeryd.storage.canonical import (
    HeaderInput, canonical_headers, canonical_query_by_name, canonical_request,
    format_timestamp, header_pairs, sha256_hex, signed_header_names, uri_encode)

ALGORITHM = "AWS4-HMAC-SHA256"
#: The payload hash of a presigned URL (the body is not known when signing).
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: The longest lifetime S3 accepts for a presigned URL (7 days).
MAX_EXPIRATION_SECONDS = 7 * 24 * 3600


@frozen
class Credentials:
    """
    An access key, with its session token when it is temporary.

    :ivar access_key_id: the key's id (``AKIA...``, ``ASIA...``), named in
        every credential scope.
    :ivar secret_access_key: the secret; never logged or shown.
    :ivar session_token: the token of temporary credentials, sent as
        ``X-Amz-Security-Token``.
    :ivar expires: when temporary credentials expire (seconds since the
        epoch), or ``None``.
    """

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires: float | None = None


@frozen
class Signature:
    """
    A signature with the texts it was computed from, which tests compare
    with what AWS publishes.

    :ivar canonical_request: the canonical request that was hashed.
    :ivar string_to_sign: the text the signing key signed.
    :ivar signature: the hexadecimal HMAC.
    :ivar signed_headers: the signed header names, ``host;x-amz-date``.
    :ivar scope: ``<date>/<region>/<service>/aws4_request``.
    """

    canonical_request: str
    string_to_sign: str
    signature: str
    signed_headers: str
    scope: str


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The key of one day, region and service, derived from the secret by HMAC."""
    key = ("AWS4" + secret).encode("utf-8")
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def sign(credentials: Credentials, *, region: str, service: str, request_time: str,
         method: str, path: str, query: Iterable[tuple[str, str]],
         headers: HeaderInput, payload_hash: str) -> Signature:
    """
    The SigV4 signature of a request.

    :param request_time: ``20150830T123600Z``, as sent in ``X-Amz-Date``.
    :param path: the path as sent: already percent-encoded.
    :param query: the query parameters, not encoded.
    :param headers: every header to sign, ``Host`` included.
    :param payload_hash: the body's hexadecimal SHA-256, or
        :data:`UNSIGNED_PAYLOAD`.
    """
    scope = "%s/%s/%s/aws4_request" % (request_time[:8], region, service)
    signed = canonical_headers(headers)
    canonical = canonical_request(method.upper(), path, canonical_query_by_name(query),
                                  signed, payload_hash)
    string_to_sign = "\n".join([ALGORITHM, request_time, scope, sha256_hex(canonical)])
    key = signing_key(credentials.secret_access_key, request_time[:8], region, service)
    signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return Signature(canonical, string_to_sign, signature, signed_header_names(signed), scope)


def authorization(credentials: Credentials, signature: Signature) -> str:
    """The ``Authorization`` header carrying ``signature``."""
    return "%s Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
        ALGORITHM, credentials.access_key_id, signature.scope, signature.signed_headers,
        signature.signature)


def signed_headers(credentials: Credentials, *, region: str, method: str, host: str,
                   path: str, query: Sequence[tuple[str, str]], headers: HeaderInput,
                   payload_hash: str, timestamp: datetime,
                   service: str = "s3") -> dict[str, str]:
    """
    The headers to send with an S3 request so that it is authenticated:
    those given, ``Host``, ``X-Amz-Date``, ``X-Amz-Content-SHA256``, the
    session token if any, and ``Authorization``.

    :param host: the ``Host`` header the client sends (with a port that is
        not the scheme's default).
    :param path: the path as sent (percent-encoded).
    :param payload_hash: the hexadecimal SHA-256 of the body.
    """
    request_time = format_timestamp(timestamp)
    all_headers = dict(header_pairs(headers))
    all_headers.update({"Host": host, "X-Amz-Date": request_time,
                        "X-Amz-Content-SHA256": payload_hash})
    if credentials.session_token is not None:
        all_headers["X-Amz-Security-Token"] = credentials.session_token
    signature = sign(credentials, region=region, service=service, request_time=request_time,
                     method=method, path=path, query=query, headers=all_headers,
                     payload_hash=payload_hash)
    all_headers["Authorization"] = authorization(credentials, signature)
    return all_headers


@frozen
class PresignedUrl:
    """
    A presigned URL and the signature it carries.

    :ivar url: the URL to hand out.
    :ivar signature: how it was signed.
    """

    url: str
    signature: Signature


def presign_query(credentials: Credentials, *, region: str, method: str, host: str,
                  path: str, query: Sequence[tuple[str, str]], expiration: int,
                  timestamp: datetime, headers: HeaderInput | None = None,
                  service: str = "s3",
                  payload_hash: str = UNSIGNED_PAYLOAD) -> tuple[str, Signature]:
    """
    The query string of a presigned request (the given parameters, the
    ``X-Amz-*`` ones and the signature), and the signature.

    :param host: the ``Host`` header the client will send.
    :param path: the path as sent (percent-encoded).
    :param expiration: the URL's lifetime in seconds, 1 to 604800.
    :param headers: other headers the client must send, signed too.
    :raises ValueError: for an out-of-range lifetime or a naive timestamp.
    """
    if not 1 <= int(expiration) <= MAX_EXPIRATION_SECONDS:
        raise ValueError("a presigned URL lives 1 to %d seconds, not %r"
                         % (MAX_EXPIRATION_SECONDS, expiration))
    request_time = format_timestamp(timestamp)
    all_headers = header_pairs(headers)
    all_headers.append(("Host", host))
    scope = "%s/%s/%s/aws4_request" % (request_time[:8], region, service)
    parameters = list(query) + [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", credentials.access_key_id + "/" + scope),
        ("X-Amz-Date", request_time),
        ("X-Amz-Expires", str(int(expiration))),
        ("X-Amz-SignedHeaders", signed_header_names(canonical_headers(all_headers))),
    ]
    if credentials.session_token is not None:
        parameters.append(("X-Amz-Security-Token", credentials.session_token))
    signature = sign(credentials, region=region, service=service, request_time=request_time,
                     method=method, path=path, query=parameters, headers=all_headers,
                     payload_hash=payload_hash)
    text = canonical_query_by_name(parameters) + "&X-Amz-Signature=" + uri_encode(
        signature.signature)
    return text, signature


def presign_url(credentials: Credentials, *, region: str, method: str, base_url: str,
                host: str, path: str, expiration: int, timestamp: datetime,
                query: Sequence[tuple[str, str]] = ()) -> PresignedUrl:
    """
    A presigned S3 URL: ``<base_url><path>?<query>``.

    :param base_url: ``scheme://host[:port]`` the URL points to.
    :param host: its ``Host`` header, as the client will send it.
    """
    text, signature = presign_query(credentials, region=region, method=method, host=host,
                                    path=path, query=query, expiration=expiration,
                                    timestamp=timestamp)
    return PresignedUrl(base_url.rstrip("/") + path + "?" + text, signature)

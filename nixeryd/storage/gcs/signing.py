"""
Google Cloud Storage V4 signed URLs and OAuth2 JWT assertions, computed
locally from a service-account key.

A signed URL lets a registry client download a blob straight from the bucket
without credentials of its own: the daemon answers a blob request with a
redirect to such a URL.  Everything here is pure computation (no I/O and no
clock): the caller passes the key, the signing time and the request to sign,
which keeps the signer deterministic and testable against the published
conformance vectors.  RSA signing costs about a millisecond, so callers on
the reactor thread run it in the thread pool.

The V4 algorithm, in short: build a *canonical request* from the method, the
resource path, the sorted and percent-encoded query (which carries the
credential, date, lifetime and signed header names), the canonical headers
and the payload hash; hash it with SHA-256; sign
``GOOG4-RSA-SHA256\\n<time>\\n<scope>\\n<hash>`` with RSA PKCS#1 v1.5 and
SHA-256; append the hexadecimal signature to the query as
``X-Goog-Signature``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from typing import Mapping

from attrs import frozen
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from nixeryd.storage.canonical import HeaderInput as HeaderInput
from nixeryd.storage.canonical import canonical_headers as canonical_headers
from nixeryd.storage.canonical import canonical_query as canonical_query
from nixeryd.storage.canonical import canonical_request
from nixeryd.storage.canonical import format_timestamp as format_timestamp
from nixeryd.storage.canonical import header_pairs, host_with_port, uri_encode_path

#: Where real Cloud Storage answers XML-style (and signed-URL) requests.
DEFAULT_SIGNING_ENDPOINT = "https://storage.googleapis.com"
#: The longest lifetime Cloud Storage accepts for a V4 signed URL (7 days).
MAX_EXPIRATION_SECONDS = 7 * 24 * 3600
ALGORITHM = "GOOG4-RSA-SHA256"
#: The OAuth2 scope that allows reading and writing objects.
READ_WRITE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
#: The grant type of a service account's signed JWT (RFC 7523).
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@frozen
class ServiceAccountKey:
    """
    The parts of a service-account JSON key file that signing needs.

    :ivar client_email: the account's e-mail, named in every credential.
    :ivar private_key: the loaded RSA key.
    :ivar private_key_id: the key's id (sent as ``kid`` in JWT headers), or
        ``None`` when the file has none.
    :ivar token_uri: where access tokens are obtained.
    """

    client_email: str
    private_key: rsa.RSAPrivateKey
    private_key_id: str | None
    token_uri: str

    @classmethod
    def from_json(cls, data: bytes | str) -> "ServiceAccountKey":
        """
        Parse the contents of a service-account key file.

        :raises ValueError: when it is not a service-account key with an RSA
            private key.
        """
        try:
            info = json.loads(data)
        except (TypeError, ValueError) as e:
            raise ValueError("the service account key is not JSON: %s" % (e,)) from None
        if not isinstance(info, dict) or info.get("type") != "service_account":
            raise ValueError("the key file is not a service account key "
                             '(expected "type": "service_account")')
        missing = [field for field in ("client_email", "private_key", "token_uri")
                   if not isinstance(info.get(field), str)]
        if missing:
            raise ValueError("the service account key lacks " + ", ".join(missing))
        return cls(client_email=info["client_email"],
                   private_key=load_private_key(info["private_key"]),
                   private_key_id=info.get("private_key_id") or None,
                   token_uri=info["token_uri"])


@frozen
class SignedUrl:
    """
    A V4 signed URL together with the intermediate texts, which tests and
    debugging compare with what Cloud Storage computes.

    :ivar url: the URL to hand out.
    :ivar canonical_request: the canonical request that was hashed.
    :ivar string_to_sign: the text whose RSA signature the URL carries.
    """

    url: str
    canonical_request: str
    string_to_sign: str


def load_private_key(pem: bytes | str) -> rsa.RSAPrivateKey:
    """
    Load an unencrypted PEM (PKCS#1 or PKCS#8) RSA private key.

    :raises ValueError: when it is not an RSA private key.
    """
    if isinstance(pem, str):
        pem = pem.encode("ascii")
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the private key is not an RSA key")
    return key


def rsa_sha256_sign(private_key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """The RSA PKCS#1 v1.5 signature of ``message`` with SHA-256."""
    return private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())


def host_header_value(endpoint: str) -> str:
    """
    The ``Host`` value to sign for ``endpoint``: what an HTTP client sends
    when it follows the URL, the host name (lowercase; IPv6 addresses
    bracketed) and the port unless it is the scheme's default
    (:func:`~nixeryd.storage.canonical.host_with_port`).

    A client that downloads ``http://127.0.0.1:9023/b/o`` sends
    ``Host: 127.0.0.1:9023``, and google-cloud-storage signs the port too;
    a server that checks the signature against the request sees the same
    host.  ``https://storage.googleapis.com:443`` signs
    ``storage.googleapis.com``, as clients send it.  (Some of Google's
    conformance vectors leave a non-default port out of the signed host; a
    caller that needs that passes ``Host`` itself.)
    """
    return host_with_port(endpoint)


def _path_style_resource(bucket: str, object_name: str | None) -> str:
    """
    The resource path to sign, path style (``/<bucket>/<object>``): the
    style that works with any endpoint, emulators on an IP address and
    port included.
    """
    resource = "/" + bucket
    if object_name is not None:
        resource += "/" + uri_encode_path(object_name)
    return resource


@frozen
class UnsignedUrl:
    """
    A V4 URL before its signature: what a signer (a local key, or the IAM
    Credentials ``signBlob`` API) signs, and the URL the signature ends.

    :ivar url: the URL without ``X-Goog-Signature``.
    :ivar canonical_request: the canonical request that was hashed.
    :ivar string_to_sign: the text to sign with RSA PKCS#1 v1.5 and SHA-256.
    """

    url: str
    canonical_request: str
    string_to_sign: str

    def signed(self, signature: bytes) -> SignedUrl:
        """The URL carrying ``signature`` (raw bytes, written in hexadecimal)."""
        return SignedUrl(url=self.url + "&X-Goog-Signature=" + signature.hex(),
                         canonical_request=self.canonical_request,
                         string_to_sign=self.string_to_sign)


def sign_url_v4(key: ServiceAccountKey, *, bucket: str, object_name: str | None,
                method: str, expiration: int, timestamp: datetime,
                endpoint: str = DEFAULT_SIGNING_ENDPOINT,
                headers: HeaderInput | None = None,
                query_parameters: Mapping[str, object] | None = None) -> SignedUrl:
    """
    Sign a request for an object with a local key (see
    :func:`unsigned_url_v4` for the parameters).

    :param key: the service account whose key signs.
    """
    unsigned = unsigned_url_v4(
        key.client_email, bucket=bucket, object_name=object_name, method=method,
        expiration=expiration, timestamp=timestamp, endpoint=endpoint, headers=headers,
        query_parameters=query_parameters)
    return unsigned.signed(rsa_sha256_sign(key.private_key,
                                           unsigned.string_to_sign.encode("ascii")))


def unsigned_url_v4(client_email: str, *, bucket: str, object_name: str | None,
                    method: str, expiration: int, timestamp: datetime,
                    endpoint: str = DEFAULT_SIGNING_ENDPOINT,
                    headers: HeaderInput | None = None,
                    query_parameters: Mapping[str, object] | None = None) -> UnsignedUrl:
    """
    Prepare a request for an object (or, with ``object_name=None``, for
    the bucket itself) for its signature.

    :param client_email: the service account that signs, named in the
        credential.
    :param method: the HTTP method the URL is valid for (``GET``, ``HEAD``,
        ``PUT``, ...); ``RESUMABLE`` signs ``POST`` with
        ``x-goog-resumable: start``, which starts a resumable upload.
    :param expiration: the URL's lifetime in seconds, 1 to 604800.
    :param timestamp: the signing time (time-zone aware); the URL is valid
        from then on for ``expiration`` seconds.
    :param endpoint: ``scheme://host[:port]`` of the storage service; the
        URL is ``<endpoint>/<bucket>/<object>`` (path style).
    :param headers: headers the client must send with exactly these values;
        ``Host`` is added (:func:`host_header_value`) unless given.
    :param query_parameters: extra query parameters the URL carries.
    :raises ValueError: for an out-of-range lifetime, a naive timestamp or
        an endpoint without a host.
    """
    if not 1 <= int(expiration) <= MAX_EXPIRATION_SECONDS:
        raise ValueError("a V4 signed URL lives 1 to %d seconds, not %r"
                         % (MAX_EXPIRATION_SECONDS, expiration))
    request_time = format_timestamp(timestamp)
    scope = request_time[:8] + "/auto/storage/goog4_request"
    base = endpoint.rstrip("/")
    resource = _path_style_resource(bucket, object_name)

    header_list = header_pairs(headers)
    method = method.upper()
    if method == "RESUMABLE":
        method = "POST"
        header_list.append(("x-goog-resumable", "start"))
    if not any(name.strip().lower() == "host" for name, _ in header_list):
        header_list.append(("host", host_header_value(base)))
    signed = canonical_headers(header_list)
    signed_names = ";".join(name for name, _ in signed)

    query: dict[str, object] = dict(query_parameters or {})
    query.update({
        "X-Goog-Algorithm": ALGORITHM,
        "X-Goog-Credential": client_email + "/" + scope,
        "X-Goog-Date": request_time,
        "X-Goog-Expires": int(expiration),
        "X-Goog-SignedHeaders": signed_names,
    })
    query_string = canonical_query(query)
    payload = dict(signed).get("x-goog-content-sha256", "UNSIGNED-PAYLOAD")
    canonical = canonical_request(method, resource, query_string, signed, payload)
    string_to_sign = "\n".join([
        ALGORITHM,
        request_time,
        scope,
        hashlib.sha256(canonical.encode("ascii")).hexdigest(),
    ])
    return UnsignedUrl(url=base + resource + "?" + query_string,
                       canonical_request=canonical, string_to_sign=string_to_sign)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt_assertion(key: ServiceAccountKey, *, issued_at: int,
                  lifetime: int = 3600, scope: str = READ_WRITE_SCOPE) -> str:
    """
    A signed JWT (RS256) that a service account exchanges at its
    ``token_uri`` for an OAuth2 access token (grant type
    :data:`JWT_BEARER_GRANT`).

    :param issued_at: the issue time, in seconds since the epoch.
    :param lifetime: how long the assertion is valid; Google accepts at most
        one hour.
    """
    header: dict[str, str] = {"alg": "RS256", "typ": "JWT"}
    if key.private_key_id:
        header["kid"] = key.private_key_id
    claims = {"iss": key.client_email, "scope": scope, "aud": key.token_uri,
              "iat": int(issued_at), "exp": int(issued_at) + int(lifetime)}
    signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode())
                     + "." + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
    signature = rsa_sha256_sign(key.private_key, signing_input.encode("ascii"))
    return signing_input + "." + _b64url(signature)

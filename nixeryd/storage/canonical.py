"""
The canonical request both V4 signing schemes hash: Cloud Storage's
(``GOOG4-RSA-SHA256``, :mod:`nixeryd.storage.gcs.signing`) and AWS's
SigV4 (``AWS4-HMAC-SHA256``, :mod:`nixeryd.storage.s3.signing`).

The two differ in the key (an RSA signature against an HMAC chain), in
the names of their query parameters, and in one detail of the query's
order (Cloud Storage's clients sort the ``name=value`` strings as a whole,
AWS sorts by name, then by value); the rest is the same text, built here
once.  Everything is pure computation.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Iterable, Mapping, Union
from urllib.parse import quote, urlsplit

HeaderInput = Union[Mapping[str, str], Iterable[tuple[str, str]]]

#: The SHA-256 of an empty body, the payload hash of bodiless requests.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def format_timestamp(when: datetime) -> str:
    """
    ``when`` in the basic ISO 8601 form V4 signing uses, ``20190201T090000Z``.

    :raises ValueError: for a naive datetime (its time zone is unknown).
    """
    if when.tzinfo is None:
        raise ValueError("the signing time must carry a time zone")
    return when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def uri_encode(text: str) -> str:
    """Percent-encode everything but ``A-Za-z0-9-_.~`` (UTF-8, ``%20`` for space)."""
    return quote(text, safe="~")


def uri_encode_path(path: str) -> str:
    """A path with each segment percent-encoded as :func:`uri_encode` does, ``/`` kept."""
    return quote(path, safe="/~")


def header_pairs(headers: HeaderInput | None) -> list[tuple[str, str]]:
    """Headers given as a mapping or as pairs, as a list of pairs."""
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def canonical_headers(headers: HeaderInput) -> list[tuple[str, str]]:
    """
    Headers as V4 signs them: names lowercased and stripped, runs of
    whitespace in values collapsed to one space, repeated names joined with
    ``,``, sorted by name.
    """
    merged: dict[str, list[str]] = {}
    for name, value in header_pairs(headers):
        merged.setdefault(name.strip().lower(), []).append(" ".join(str(value).split()))
    return [(name, ",".join(merged[name])) for name in sorted(merged)]


def canonical_query(parameters: Mapping[str, object]) -> str:
    """
    The query string as Cloud Storage's V4 signing sorts it.

    Each name and value is percent-encoded, then the ``name=value`` strings
    are sorted as a whole, which is what Cloud Storage's own clients do (it
    differs from sorting by name only for names where one is a prefix of
    another followed by a character below ``=``, e.g. ``a`` and ``a-b``).
    """
    return "&".join(sorted(
        uri_encode(str(name)) + "=" + uri_encode("" if value is None else str(value))
        for name, value in parameters.items()))


def canonical_query_by_name(parameters: Iterable[tuple[str, str]]) -> str:
    """
    The query string as AWS SigV4 sorts it: percent-encoded names and
    values, sorted by name, then by value (a name without a value, such as
    S3's ``?uploads``, is ``uploads=``).
    """
    encoded = sorted((uri_encode(name), uri_encode(value)) for name, value in parameters)
    return "&".join(name + "=" + value for name, value in encoded)


def host_with_port(endpoint: str) -> str:
    """
    The ``Host`` header a client sends for ``endpoint``: the host name
    (IPv6 addresses bracketed) with the port when it is not the scheme's
    default.
    """
    parts = urlsplit(endpoint)
    hostname = parts.hostname
    if not hostname:
        raise ValueError("the endpoint %r has no host" % (endpoint,))
    host = "[%s]" % (hostname,) if ":" in hostname else hostname
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if parts.port is not None and parts.port != default:
        host += ":%d" % (parts.port,)
    return host


def canonical_request(method: str, path: str, query: str,
                      headers: list[tuple[str, str]], payload_hash: str) -> str:
    """
    The canonical request: the method, the encoded path, the canonical
    query, the canonical headers (from :func:`canonical_headers`), the
    signed header names and the payload's hash, one per line.
    """
    return "\n".join([
        method,
        path,
        query,
        "".join("%s:%s\n" % (name, value) for name, value in headers),
        signed_header_names(headers),
        payload_hash,
    ])


def signed_header_names(headers: list[tuple[str, str]]) -> str:
    """The names of canonical headers as the signature lists them, ``host;x-amz-date``."""
    return ";".join(name for name, _ in headers)


def sha256_hex(text: str | bytes) -> str:
    """The hexadecimal SHA-256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()

"""
The HTTP methods, header names and header values of the registry's
responses, as the bytes Twisted wants.

Shared so that every module spells them the same way; importing a name
binds it in the importing module, so using one costs no more than a
module-private constant.
"""

from __future__ import annotations

GET = b"GET"
HEAD = b"HEAD"
ALLOWED_METHODS = b"GET, HEAD"
"""The ``Allow`` value: this registry is read-only."""

API_VERSION_HEADER = b"Docker-Distribution-API-Version"
API_VERSION = b"registry/2.0"
CONTENT_TYPE = b"Content-Type"
CONTENT_LENGTH = b"Content-Length"
DIGEST_HEADER = b"Docker-Content-Digest"

JSON = b"application/json"
OCTET_STREAM = b"application/octet-stream"
IMMUTABLE = b"public, max-age=31536000, immutable"
"""``Cache-Control`` of content-addressed responses (blobs, manifests by digest)."""

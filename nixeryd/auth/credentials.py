"""
What an ``Authorization`` header holds: Basic credentials or a bearer
token.  Pure; the header's value is never logged or echoed.
"""

from __future__ import annotations

import base64
import binascii

from attrs import field, frozen

#: Longest ``Authorization`` value read; anything longer is no credential.
MAX_AUTHORIZATION = 16 * 1024


@frozen
class BasicCredentials:
    """A user name and password (``repr`` leaves the password out)."""

    user: str
    password: str = field(repr=False)


@frozen
class BearerToken:
    """A bearer token (``repr`` leaves it out)."""

    token: str = field(repr=False)


Credentials = BasicCredentials | BearerToken


def parse_authorization(value: bytes | None) -> Credentials | None:
    """
    The credentials of an ``Authorization`` header; ``None`` when there is
    none or it is malformed (too long, not Basic or Bearer, bad base64, no
    ``:``).
    """
    if not value or len(value) > MAX_AUTHORIZATION:
        return None
    scheme, _, rest = value.strip().partition(b" ")
    rest = rest.strip()
    if not rest:
        return None
    if scheme.lower() == b"basic":
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            return None
        return BasicCredentials(user, password)
    if scheme.lower() == b"bearer":
        try:
            return BearerToken(rest.decode("ascii"))
        except UnicodeDecodeError:
            return None
    return None

"""
``WWW-Authenticate`` challenges (RFC 9110 section 11.6.1; the
distribution token specification for ``Bearer``).  Pure.
"""

from __future__ import annotations

from nixeryd.auth.scopes import Scope

#: The realm of the Basic challenge, as clients show it.
BASIC_REALM = "nixeryd"


def _quoted(value: str) -> str:
    """A quoted-string: ``"`` and ``\\`` escaped, control characters left out."""
    cleaned = "".join(c for c in value if c >= " " and c != "\x7f")
    return '"%s"' % (cleaned.replace("\\", "\\\\").replace('"', '\\"'),)


def basic_challenge(realm: str = BASIC_REALM) -> bytes:
    """The challenge that asks for a user name and password."""
    return ("Basic realm=%s, charset=\"UTF-8\"" % (_quoted(realm),)).encode("utf-8")


def bearer_challenge(realm: str, service: str, scope: Scope | None = None,
                     error: str | None = None) -> bytes:
    """
    The challenge that sends the client to the token service at ``realm``
    for a token for ``service`` with ``scope`` (none for ``/v2/`` itself);
    ``error`` is ``invalid_token`` or ``insufficient_scope`` (RFC 6750).
    """
    parts = ["realm=%s" % (_quoted(realm),), "service=%s" % (_quoted(service),)]
    if scope is not None:
        parts.append("scope=%s" % (_quoted(str(scope)),))
    if error is not None:
        parts.append("error=%s" % (_quoted(error),))
    return ("Bearer " + ",".join(parts)).encode("utf-8")

"""
Text for people, the same everywhere it is shown: byte counts, URLs with
their credentials left out, and the package source named in a few words.

Logs, build pages, error messages, the start-up line and ``nixeryd build``
all say these things through these functions, so one size reads the same
in each and a token in a repository URL is left out of all of them; every
log line also goes through :func:`without_secrets`.
Pure functions of their arguments.
"""

from __future__ import annotations

import re

#: The user information of a URL (``https://user:token@host``).
_URL_CREDENTIALS = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")

#: Credentials of an ``Authorization`` header's value, wherever it shows:
#: eight characters or more, past the first not all lower-case letters (so
#: that "Basic authentication" stays as it is).
_AUTHORIZATION = re.compile(
    r"\b((?i:basic|bearer))(\s+)[A-Za-z0-9._~+/=-](?=[A-Za-z0-9._~+/=-]*[A-Z0-9._~+/=-])"
    r"[A-Za-z0-9._~+/=-]{7,}")
#: A JSON Web Token (header and payload are base64url JSON objects).
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
#: Query or form values that are secrets: a signed URL's signature and
#: credential, passwords and tokens.
_SECRET_VALUES = re.compile(
    r"\b(X-Goog-Signature|X-Goog-Credential|X-Amz-Signature|X-Amz-Credential|password|"
    r"access_token|refresh_token|token)=[^&\s\"']+", re.IGNORECASE)

#: How each kind of configured source is named: a repository is a git one.
_SOURCE_KINDS = {"channel": "channel", "repo": "git", "path": "path"}


def without_credentials(text: str) -> str:
    """
    ``text`` without the user information of any URL in it
    (``https://token@host/x`` becomes ``https://host/x``): what people are
    shown (logs, pages, messages) may name a package repository whose URL
    holds a token.
    """
    return _URL_CREDENTIALS.sub(r"\1", text)


def may_hold_secret(text: str) -> bool:
    """
    Whether :func:`without_secrets` could change ``text``, or any value
    that JSON encodes into ``text``: a test far cheaper than the patterns,
    so that the usual log line (a request's access line) passes untouched.

    Every pattern needs ``@``, ``=``, ``eyJ`` or ``basic``/``bearer`` in
    some case, and JSON escapes none of them.  Text that is not ASCII
    (where case-blind matching reaches beyond ASCII letters) and escaped
    non-ASCII (``\\u``) always count as possible, and so does a ``str``
    subclass: its own ``in``, ``lower`` or ``isascii`` may speak of something
    other than the characters JSON and the patterns see.
    """
    if type(text) is not str:
        return True
    if not text.isascii() or "@" in text or "=" in text or "eyJ" in text or "\\u" in text:
        return True
    lowered = text.lower()
    return "basic" in lowered or "bearer" in lowered


def without_secrets(text: str) -> str:
    """
    ``text`` without anything that may be a secret: URL credentials (see
    :func:`without_credentials`), the credentials of ``Basic`` and
    ``Bearer`` authorizations, JSON Web Tokens, and the values of signed
    URLs' signatures and credentials, passwords and tokens in queries or
    forms, each replaced by ``(hidden)``.  Every log line goes through it
    (:mod:`nixeryd.app.logs`), whatever a caller put in its fields.
    """
    if not may_hold_secret(text):
        return text
    return hide_secret_patterns(text)


def hide_secret_patterns(text: str) -> str:
    """:func:`without_secrets` without its quick test: every pattern applied."""
    text = without_credentials(text)
    text = _AUTHORIZATION.sub(r"\1\2(hidden)", text)
    text = _JWT.sub("(hidden)", text)
    return _SECRET_VALUES.sub(r"\1=(hidden)", text)


def human_size(size: int) -> str:
    """
    A byte count for people, in decimal units as Nix and the container
    tools print them: ``512 B``, ``4.1 kB``, ``12.3 MB``, ``1.2 GB``.
    """
    if size < 1000:
        return "%d B" % (size,)
    for unit, scale in (("kB", 1e3), ("MB", 1e6)):
        if size < scale * 999.95:
            return "%.1f %s" % (size / scale, unit)
    return "%.1f GB" % (size / 1e9,)


def describe_source_setting(kind: str, location: str) -> str:
    """
    A configured package source in a few words: ``channel <name>``,
    ``git <url>`` (credentials left out) or ``path <directory>``.

    :param kind: ``"channel"``, ``"repo"`` or ``"path"``, as configured.
    """
    return "%s %s" % (_SOURCE_KINDS.get(kind, kind), without_credentials(location))

"""
Text for people, the same everywhere it is shown: byte counts, URLs with
their credentials left out, and the package source named in a few words.

Logs, build pages, error messages, the start-up line and ``nixeryd build``
all say these things through these functions, so one size reads the same
in each and a token in a repository URL is left out of all of them.
Pure functions of their arguments.
"""

from __future__ import annotations

import re

#: The user information of a URL (``https://user:token@host``).
_URL_CREDENTIALS = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")

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

"""
The name clients use for this registry, taken from a request's ``Host``
header only when it is a plain ``host[:port]``.

Pages and messages that show people how to pull (``docker pull
HOST/shell/git``) repeat the host they were reached at; anything else in
that header (markup, spaces, paths, user information) is client input
that must never be echoed, so it is refused here, in one place.
"""

from __future__ import annotations

import re
from typing import Protocol

_PLAIN_HOST = re.compile(
    rb"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
    rb"|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?\Z")


def plain_host(value: bytes | None) -> str | None:
    """
    ``value`` as text when it is a host name, an IPv4 address or a
    bracketed IPv6 address, with an optional port; else ``None``.
    """
    if value is None or _PLAIN_HOST.match(value) is None:
        return None
    return value.decode("ascii")


class HeaderSource(Protocol):
    """The part of a request the host is read from."""

    def getHeader(self, key: bytes) -> bytes | None:
        """A request header's value."""


def request_host(request: HeaderSource) -> str | None:
    """The request's ``Host`` header when it is plain (:func:`plain_host`)."""
    return plain_host(request.getHeader(b"host"))

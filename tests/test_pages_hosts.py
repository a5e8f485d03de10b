"""
Tests for :mod:`nixeryd.registry.hosts`: which ``Host`` values may be
shown to people.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from nixeryd.registry.hosts import plain_host, request_host


class PlainHostTests(SynchronousTestCase):
    """Plain host names and addresses pass; everything else is refused."""

    def test_plain(self) -> None:
        """Names, IPv4 and bracketed IPv6, each with an optional port."""
        for value in [b"registry.test", b"registry.test:5000", b"127.0.0.1:8080",
                      b"[::1]:5000", b"[2001:db8::1]", b"localhost"]:
            self.assertEqual(plain_host(value), value.decode("ascii"))

    def test_refused(self) -> None:
        """Markup, spaces, paths, user information and bad ports are refused."""
        for value in [None, b"", b"<script>x</script>", b"a b", b"host/path",
                      b"user@host", b"host:", b"host:123456", b"-host", b"host.",
                      b"[::1", b"host\n", "h\u00e9te".encode("utf-8"), b"a" * 300]:
            self.assertIsNone(plain_host(value), value)

    def test_request_host(self) -> None:
        """The request's own Host header is judged."""
        request = Request(DummyChannel())
        request.requestHeaders.setRawHeaders(b"host", [b"registry.test:5000"])
        self.assertEqual(request_host(request), "registry.test:5000")
        request.requestHeaders.setRawHeaders(b"host", [b"x\"><b>"])
        self.assertIsNone(request_host(request))

"""
Tests for :mod:`nixeryd.registry.indexpage`: the pages outside ``/v2``.
"""

from __future__ import annotations

from tests.registrycases import StubRegistryTestCase, header


class IndexTests(StubRegistryTestCase):
    """Pages outside ``/v2``."""

    def test_root(self) -> None:
        """/ is a plain-text page showing how to pull, with the request's host."""
        response, body = self.fetch(b"GET", "/", {b"Host": [b"registry.test:5000"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, b"content-type"), b"text/plain; charset=utf-8")
        self.assertEqual(header(response, b"x-content-type-options"), b"nosniff")
        self.assertIn(b"docker pull registry.test:5000/shell/git", body)

    def test_host_not_reflected(self) -> None:
        """A Host header that is no plain host name is not repeated."""
        response, body = self.fetch(b"GET", "/", {b"Host": [b"<script>x</script>"]})
        self.assertEqual(response.code, 200)
        self.assertNotIn(b"<script>", body)
        self.assertIn(b"docker pull <registry host>/shell/git", body)

    def test_other_path(self) -> None:
        """Other paths are a plain-text 404 that does not repeat the path."""
        response, body = self.fetch(b"GET", "/<b>x</b>")
        self.assertEqual(response.code, 404)
        self.assertEqual(header(response, b"content-type"), b"text/plain; charset=utf-8")
        self.assertNotIn(b"<b>", body)

    def test_head(self) -> None:
        """HEAD / has the page's length and no body."""
        got, got_body = self.fetch(b"GET", "/")
        response, body = self.fetch(b"HEAD", "/")
        self.assertEqual(body, b"")
        self.assertEqual(header(response, b"content-length"), b"%d" % (len(got_body),))

    def test_post(self) -> None:
        """Other methods on pages are 405."""
        response, _ = self.fetch(b"POST", "/")
        self.assertEqual(response.code, 405)
        self.assertEqual(header(response, b"allow"), b"GET, HEAD")


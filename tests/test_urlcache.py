"""Tests for :mod:`nixeryd.storage.gcs.urlcache`."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.storage.gcs.urlcache import RedirectCache


class RedirectCacheTests(SynchronousTestCase):
    """Reuse of signed blob URLs."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.cache = RedirectCache(self.clock.seconds, lifetime=300)

    def test_unknown(self) -> None:
        """Nothing is known before a URL is kept."""
        self.assertIsNone(self.cache.get("blobs/sha256/ab"))

    def test_reused_for_half_the_lifetime(self) -> None:
        """
        A URL is handed out again until half its lifetime has passed since
        it was signed, so every client gets at least half of it; then it is
        gone.
        """
        self.cache.put("blobs/a", "https://storage/a?sig=1", signed_at=1000)
        self.clock.advance(149.9)
        self.assertEqual(self.cache.get("blobs/a"), "https://storage/a?sig=1")
        self.clock.advance(0.1)
        self.assertIsNone(self.cache.get("blobs/a"))
        self.assertIsNone(self.cache.get("blobs/a"))

    def test_signing_time_counts(self) -> None:
        """The half lifetime runs from the signing, not from when the URL was kept."""
        self.cache.put("blobs/a", "https://storage/a?sig=1", signed_at=849)
        self.assertIsNone(self.cache.get("blobs/a"))
        self.cache.put("blobs/a", "https://storage/a?sig=1", signed_at=851)
        self.assertIsNotNone(self.cache.get("blobs/a"))
        self.clock.advance(1)
        self.assertIsNone(self.cache.get("blobs/a"))

    def test_replaced(self) -> None:
        """A newer URL replaces the older one."""
        self.cache.put("blobs/a", "https://storage/a?sig=1", signed_at=1000)
        self.clock.advance(100)
        self.cache.put("blobs/a", "https://storage/a?sig=2", signed_at=1100)
        self.clock.advance(100)
        self.assertEqual(self.cache.get("blobs/a"), "https://storage/a?sig=2")

    def test_forget(self) -> None:
        """A removed object's URL is forgotten; others stay."""
        self.cache.put("blobs/a", "https://storage/a", signed_at=1000)
        self.cache.put("blobs/b", "https://storage/b", signed_at=1000)
        self.cache.forget("blobs/a")
        self.cache.forget("blobs/never")
        self.assertIsNone(self.cache.get("blobs/a"))
        self.assertEqual(self.cache.get("blobs/b"), "https://storage/b")

    def test_bounded(self) -> None:
        """Past its size the least recently used URL goes first."""
        cache = RedirectCache(self.clock.seconds, lifetime=300, entries=2)
        cache.put("a", "https://storage/a", signed_at=1000)
        cache.put("b", "https://storage/b", signed_at=1000)
        self.assertEqual(cache.get("a"), "https://storage/a")
        cache.put("c", "https://storage/c", signed_at=1000)
        self.assertIsNone(cache.get("b"))
        self.assertEqual(cache.get("a"), "https://storage/a")
        self.assertEqual(cache.get("c"), "https://storage/c")

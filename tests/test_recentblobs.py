"""Tests for :mod:`nixeryd.storage.gcs.recentblobs`."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.storage.gcs.recentblobs import RecentBlobs


class RecentBlobsTests(SynchronousTestCase):
    """Blobs seen intact lately."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.recent = RecentBlobs(self.clock.seconds, window=150)

    def test_unknown(self) -> None:
        """A blob never seen has no size known."""
        self.assertIsNone(self.recent.size("blobs/sha256/ab"))

    def test_fresh_for_the_window(self) -> None:
        """A sighting (and its size) is trusted for the window, then forgotten."""
        self.recent.saw("blobs/a", 7)
        self.clock.advance(149.9)
        self.assertEqual(self.recent.size("blobs/a"), 7)
        self.clock.advance(0.1)
        self.assertIsNone(self.recent.size("blobs/a"))
        self.assertIsNone(self.recent.size("blobs/a"))

    def test_seen_again(self) -> None:
        """A later sighting starts the window again."""
        self.recent.saw("blobs/a", 7)
        self.clock.advance(100)
        self.recent.saw("blobs/a", 7)
        self.clock.advance(100)
        self.assertEqual(self.recent.size("blobs/a"), 7)

    def test_forget(self) -> None:
        """A forgotten blob is unknown; others stay."""
        self.recent.saw("blobs/a", 7)
        self.recent.saw("blobs/b", 7)
        self.recent.forget("blobs/a")
        self.recent.forget("blobs/never")
        self.assertIsNone(self.recent.size("blobs/a"))
        self.assertEqual(self.recent.size("blobs/b"), 7)

    def test_bounded(self) -> None:
        """Past its size the least recently used blob goes first."""
        recent = RecentBlobs(self.clock.seconds, window=150, entries=2)
        recent.saw("a", 7)
        recent.saw("b", 7)
        self.assertEqual(recent.size("a"), 7)
        recent.saw("c", 7)
        self.assertIsNone(recent.size("b"))
        self.assertEqual(recent.size("a"), 7)
        self.assertEqual(recent.size("c"), 7)

    def test_lookup_older_than_a_forgetting(self) -> None:
        """
        A sighting by a lookup that began before some blob was forgotten is
        not remembered; one that began after is.
        """
        started = self.recent.lookup_started()
        self.recent.forget("blobs/a")
        self.recent.saw("blobs/a", 7, started)
        self.assertIsNone(self.recent.size("blobs/a"))
        self.recent.saw("blobs/a", 7, self.recent.lookup_started())
        self.assertEqual(self.recent.size("blobs/a"), 7)

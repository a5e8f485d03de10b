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
        """A blob never seen is not fresh."""
        self.assertFalse(self.recent.fresh("blobs/sha256/ab"))

    def test_fresh_for_the_window(self) -> None:
        """A sighting is trusted for the window, then forgotten."""
        self.recent.saw("blobs/a")
        self.clock.advance(149.9)
        self.assertTrue(self.recent.fresh("blobs/a"))
        self.clock.advance(0.1)
        self.assertFalse(self.recent.fresh("blobs/a"))
        self.assertFalse(self.recent.fresh("blobs/a"))

    def test_seen_again(self) -> None:
        """A later sighting starts the window again."""
        self.recent.saw("blobs/a")
        self.clock.advance(100)
        self.recent.saw("blobs/a")
        self.clock.advance(100)
        self.assertTrue(self.recent.fresh("blobs/a"))

    def test_forget(self) -> None:
        """A forgotten blob is not fresh; others stay."""
        self.recent.saw("blobs/a")
        self.recent.saw("blobs/b")
        self.recent.forget("blobs/a")
        self.recent.forget("blobs/never")
        self.assertFalse(self.recent.fresh("blobs/a"))
        self.assertTrue(self.recent.fresh("blobs/b"))

    def test_bounded(self) -> None:
        """Past its size the least recently used blob goes first."""
        recent = RecentBlobs(self.clock.seconds, window=150, entries=2)
        recent.saw("a")
        recent.saw("b")
        self.assertTrue(recent.fresh("a"))
        recent.saw("c")
        self.assertFalse(recent.fresh("b"))
        self.assertTrue(recent.fresh("a"))
        self.assertTrue(recent.fresh("c"))

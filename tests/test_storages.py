"""
The storage a failed or cancelled start-up made is closed: nothing of it
(a filesystem storage's temporary directory) is left behind.
"""

from __future__ import annotations

import os

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.app.storages import closed_when_abandoned
from nixeryd.app.wiring import close_unstarted_storages
from nixeryd.core.threads import InlineRunner
from nixeryd.storage.filesystem import FilesystemStorage
from nixeryd.storage.interface import IStorage
from nixeryd.storage.service import StorageService


def temporary_entries(root: str) -> list[str]:
    """What a filesystem storage's temporary directory holds."""
    return sorted(os.listdir(os.path.join(root, "nixeryd", "tmp")))


class ClosedWhenAbandonedTests(SynchronousTestCase):
    """A storage made after its waiter was cancelled is closed."""

    def test_made_in_time(self) -> None:
        """The storage reaches its waiter, open."""
        root = self.mktemp()
        storage = FilesystemStorage(root, InlineRunner())
        self.addCleanup(storage.close)
        made: Deferred[IStorage] = Deferred()
        waiter = closed_when_abandoned(made)
        made.callback(storage)
        self.assertIs(self.successResultOf(waiter), storage)
        self.assertNotEqual(temporary_entries(root), [])

    def test_made_after_cancel(self) -> None:
        """Cancelled first: the waiter fails at once, the storage is closed when made."""
        root = self.mktemp()
        made: Deferred[IStorage] = Deferred()
        waiter = closed_when_abandoned(made)
        waiter.cancel()
        self.failureResultOf(waiter, CancelledError)
        storage = FilesystemStorage(root, InlineRunner())
        self.assertNotEqual(temporary_entries(root), [])
        made.callback(storage)
        self.assertEqual(temporary_entries(root), [])

    def test_failure(self) -> None:
        """A storage that could not be made fails its waiter."""
        made: Deferred[IStorage] = Deferred()
        waiter = closed_when_abandoned(made)
        made.errback(OSError("no room"))
        self.assertEqual(str(self.failureResultOf(waiter, OSError).value), "no room")


class CloseUnstartedTests(SynchronousTestCase):
    """A tree that never started closes every storage in it, however deep."""

    def test_closed(self) -> None:
        """Storages at two depths are both closed; an empty tree is nothing to do."""
        roots = [self.mktemp(), self.mktemp()]
        top = MultiService()
        middle = MultiService()
        middle.setServiceParent(top)
        StorageService(FilesystemStorage(roots[0], InlineRunner())).setServiceParent(top)
        StorageService(FilesystemStorage(roots[1], InlineRunner())).setServiceParent(middle)
        self.assertTrue(all(temporary_entries(root) for root in roots))
        self.assertIsNone(self.successResultOf(close_unstarted_storages(top)))
        self.assertEqual([temporary_entries(root) for root in roots], [[], []])
        self.assertIsNone(self.successResultOf(close_unstarted_storages(MultiService())))

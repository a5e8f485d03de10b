"""
The local spool of :class:`~nixeryd.storage.gcs.storage.GCSStorage`: a
directory of its own for each open storage, what dead writers left
removed when a storage opens, and the default spool shared by every user
(:mod:`nixeryd.storage.tempdirs`).
"""

from __future__ import annotations

import os
import stat
import tempfile

from twisted.internet import reactor
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from treq.client import HTTPClient

from nixeryd.core.threads import InlineRunner
from nixeryd.storage import tempdirs
from nixeryd.storage.gcs.bucket import BucketClient
from nixeryd.storage.gcs.storage import GCSStorage


class SpoolTests(TestCase):
    """The spool, on a storage that never reaches Cloud Storage."""

    def storage(self, spool: str | None) -> GCSStorage:
        """A GCS storage spooling into ``spool`` (the default when ``None``)."""
        pool = HTTPConnectionPool(reactor, persistent=False)
        client = BucketClient(reactor, InlineRunner(), HTTPClient(Agent(reactor, pool=pool)),
                              pool, "bucket", endpoint="http://127.0.0.1:9")
        return GCSStorage(reactor, InlineRunner(), client, signing_key=None,
                          spool_directory=spool)

    def dead_writer(self, spool: str, size: int) -> str:
        """
        A writer directory holding a layer file and GC roots, whose writer
        is gone (its lock released as the kernel releases a dead
        process's).
        """
        writer = tempdirs.claim(spool)
        with open(os.path.join(writer.path, "tmpabcd.layer.tmp"), "wb") as f:
            f.write(b"x" * size)
        os.mkdir(os.path.join(writer.path, "tmpefgh.gcroots"))
        os.close(writer.fd)
        return writer.path

    async def test_own_directory_and_leftovers_swept(self) -> None:
        """
        A storage spools into a private directory of its own; opening one
        removes what dead writers left and keeps a live writer's; closing
        it leaves nothing of its own.
        """
        spool = os.path.abspath(self.mktemp())
        os.makedirs(spool)
        dead = self.dead_writer(spool, 4096)
        live = tempdirs.claim(spool)
        self.addCleanup(tempdirs.release, live)
        with capturedLogs() as events:
            storage = self.storage(spool)
        own = storage.temp_directory()
        self.assertEqual(os.path.dirname(own), spool)
        self.assertTrue(os.path.basename(own).startswith(tempdirs.WRITER_PREFIX))
        self.assertEqual(stat.S_IMODE(os.stat(own).st_mode), 0o700)
        self.assertFalse(os.path.exists(dead))
        self.assertFalse(os.path.exists(dead + tempdirs.LOCK_SUFFIX))
        self.assertTrue(os.path.isdir(live.path))
        [removal] = [e for e in events if "entries" in e]
        self.assertEqual((removal["entries"], removal["bytes"], removal["live"]),
                         ([os.path.basename(dead)], 4096, 1))
        await storage.close()
        self.assertFalse(os.path.exists(own))
        self.assertEqual(sorted(os.listdir(spool)),
                         sorted([os.path.basename(live.path),
                                 os.path.basename(live.lock_path)]))

    async def test_default_spool_shared(self) -> None:
        """
        The default spool, under ``$TMPDIR``, is sticky and writable by
        all, as ``/tmp``; each storage's directory in it stays private.
        """
        temporary = os.path.abspath(self.mktemp())
        os.makedirs(temporary)
        self.patch(tempfile, "tempdir", temporary)
        spool = os.path.join(temporary, "nixeryd-spool")
        os.mkdir(spool, 0o700)  # As an earlier version made it.
        storage = self.storage(None)
        self.addCleanup(storage.close)
        self.assertEqual(stat.S_IMODE(os.stat(spool).st_mode), 0o1777)
        self.assertEqual(os.path.dirname(storage.temp_directory()), spool)
        self.assertEqual(stat.S_IMODE(os.stat(storage.temp_directory()).st_mode), 0o700)

    def test_other_users_leftovers_left(self) -> None:
        """A sweep judging one user's entries leaves the others' alone."""
        spool = os.path.abspath(self.mktemp())
        os.makedirs(spool)
        dead = self.dead_writer(spool, 10)
        swept = tempdirs.sweep(spool, owner=os.getuid() + 1)
        self.assertEqual(swept.removed, ())
        self.assertTrue(os.path.isdir(dead))
        self.assertEqual(tempdirs.sweep(spool, owner=os.getuid()).removed,
                         (os.path.basename(dead),))

    def test_shared_spool_never_a_link(self) -> None:
        """A shared spool that is a symbolic link is refused."""
        target = os.path.abspath(self.mktemp())
        os.makedirs(target)
        link = os.path.abspath(self.mktemp())
        os.symlink(target, link)
        self.assertRaises(OSError, tempdirs.shared_directory, link)
        self.assertRaises(OSError, tempdirs.claim_swept, link, True)

"""
Tests for :mod:`nixeryd.app.gccmd`: ``nixeryd gc`` reads the daemon's
storage settings from options and the environment alike, checks its own,
and prints its report; the end-to-end run is in ``test_gc_e2e``.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys

from twisted.internet import reactor
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nixeryd.__main__ import main as nixeryd_main
from nixeryd.app.gccmd import EXIT_FAILED, EXIT_OK, EXIT_USAGE, MIN_GRACE_HOURS, collect, parse
from nixeryd.core import defaults


class ParseTests(SynchronousTestCase):
    """The command line and the environment."""

    def test_environment(self) -> None:
        """The daemon's variables name the storage; options win over them."""
        request = parse([], {"STORAGE_PATH": "/srv/images"})
        self.assertEqual((request.storage.storage_backend, request.storage.storage_path),
                         ("filesystem", "/srv/images"))
        self.assertEqual((request.keep_days, request.grace_hours, request.dry_run),
                         (None, defaults.GC_GRACE_HOURS, False))
        request = parse(["--storage-path", "/other", "--keep-days", "30", "--grace", "1.5",
                         "--dry-run", "-v"], {"STORAGE_PATH": "/srv/images"})
        self.assertEqual((request.storage.storage_path, request.keep_days,
                          request.grace_hours, request.dry_run, request.verbose),
                         ("/other", 30, 1.5, True, True))

    def test_short_grace_needs_unsafe_grace(self) -> None:
        """
        A grace period under an hour, which would remove the layers of
        builds in progress, is refused unless ``--unsafe-grace`` is given.
        """
        environ = {"STORAGE_PATH": "/s"}
        for grace in ("0", "0.99"):
            error = self.assertRaises(UsageError, parse, ["--grace", grace], environ)
            self.assertIn("--unsafe-grace", str(error))
            self.assertEqual(parse(["--grace", grace, "--unsafe-grace"], environ).grace_hours,
                             float(grace))
        self.assertEqual(parse(["--grace", "1"], environ).grace_hours, MIN_GRACE_HOURS)

    def test_gcs(self) -> None:
        """A bucket and an emulator come from the same variables as the daemon's."""
        request = parse([], {"NIXERY_STORAGE_BACKEND": "gcs", "GCS_BUCKET": "images",
                             "STORAGE_EMULATOR_HOST": "127.0.0.1:9023",
                             "GOOGLE_APPLICATION_CREDENTIALS": "/keys/sa.json"})
        self.assertEqual((request.storage.gcs_bucket, request.storage.gcs_endpoint,
                          request.storage.google_credentials),
                         ("images", "http://127.0.0.1:9023", "/keys/sa.json"))

    def test_refused(self) -> None:
        """Bad values are one line naming the setting."""
        for argv, environ, words in (
                (["--keep-days", "0"], {"STORAGE_PATH": "/s"}, "--keep-days"),
                (["--keep-days", "soon"], {"STORAGE_PATH": "/s"}, "--keep-days"),
                (["--grace", "-1"], {"STORAGE_PATH": "/s"}, "--grace"),
                (["--grace", "nan"], {"STORAGE_PATH": "/s"}, "--grace"),
                ([], {}, "STORAGE_PATH"),
                ([], {"NIXERY_STORAGE_BACKEND": "gcs"}, "GCS_BUCKET"),
                (["extra"], {"STORAGE_PATH": "/s"}, "")):
            error = self.assertRaises(UsageError, parse, argv, environ)
            self.assertIn(words, str(error))

    def test_main_usage_error(self) -> None:
        """``nixeryd gc`` with a bad option exits 2 with one line on stderr."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.assertEqual(nixeryd_main(["gc", "--keep-days", "0"]), EXIT_USAGE)
        self.assertEqual(stderr.getvalue().count("\n"), 1)
        self.assertTrue(stderr.getvalue().startswith("nixeryd gc: --keep-days"))


class CollectTests(TestCase):
    """One pass, as the command makes it, on a filesystem storage."""

    async def test_report_printed(self) -> None:
        """The pass removes an old unreferenced blob and prints what it removed."""
        root = os.path.abspath(self.mktemp())
        blobs = os.path.join(root, "blobs", "sha256")
        os.makedirs(blobs)
        data = b"unreferenced"
        path = os.path.join(blobs, hashlib.sha256(data).hexdigest())
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (0, 0))
        out = io.StringIO()
        code = await collect(reactor, parse(["--storage-path", root], {}), out)
        self.assertEqual(code, EXIT_OK)
        self.assertFalse(os.path.exists(path))
        self.assertIn("removed 1 unreferenced blob (12 B)\n", out.getvalue())
        self.assertTrue(out.getvalue().startswith("kept 0 images (no --keep-days given)"))

    async def test_unusable_storage(self) -> None:
        """A storage that cannot be opened is one line on stderr and exit code 1."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        out = io.StringIO()
        code = await collect(reactor, parse(["--storage-path", "/etc/passwd"], {}), out)
        self.assertEqual(code, EXIT_FAILED)
        self.assertEqual(out.getvalue(), "")
        self.assertEqual(stderr.getvalue(), "nixeryd gc: STORAGE_PATH /etc/passwd is not a"
                         " directory: no storage to collect\n")
        missing = os.path.abspath(self.mktemp())
        self.assertEqual(await collect(reactor, parse(["--storage-path", missing], {}), out),
                         EXIT_FAILED)
        self.assertFalse(os.path.exists(missing))

    async def test_storage_that_cannot_be_opened(self) -> None:
        """A storage the command cannot open is one line saying what to set."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        with open(os.path.join(root, "blobs"), "w"):
            pass
        code = await collect(reactor, parse(["--storage-path", root], {}), io.StringIO())
        self.assertEqual(code, EXIT_FAILED)
        self.assertTrue(stderr.getvalue().startswith(
            "nixeryd gc: STORAGE_PATH %s cannot be used: " % (root,)), stderr.getvalue())
        self.assertEqual(stderr.getvalue().count("\n"), 1)

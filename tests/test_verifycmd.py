"""
Tests for ``nixeryd verify`` (:mod:`nixeryd.app.verifycmd`,
:mod:`nixeryd.gc.verifier`): damaged blobs found on the filesystem and on
a Cloud Storage emulator, reported, and removed with ``--repair``.
"""

from __future__ import annotations

import io
import os
import sys

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nixeryd.__main__ import main as nixeryd_main
from nixeryd.app.verifycmd import EXIT_DAMAGED, EXIT_FAILED, EXIT_OK, EXIT_USAGE, parse, verify
from nixeryd.build.builder import LAYER_NAMESPACE
from nixeryd.core.threads import InlineRunner
from nixeryd.gc import verifier
from nixeryd.storage.filesystem import FilesystemStorage
from nixeryd.storage.interface import IStorage
from nixeryd.testing.storage import digest_of, write_temporary
from tests.gcssupport import EmulatorTestCase

#: Blobs over this size are checked without being read, in these tests.
SMALL = 4096


class ParseTests(SynchronousTestCase):
    """The command line."""

    def test_options(self) -> None:
        """The storage comes from the daemon's settings; ``--repair`` and ``-v`` are read."""
        request = parse([], {"STORAGE_PATH": "/srv/images"})
        self.assertEqual((request.storage.storage_path, request.repair, request.verbose),
                         ("/srv/images", False, False))
        request = parse(["--repair", "-v", "--storage-path", "/s"], {})
        self.assertEqual((request.storage.storage_path, request.repair, request.verbose),
                         ("/s", True, True))

    def test_usage_error(self) -> None:
        """A storage not named is one line on stderr and exit code 2."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.patch(os, "environ", {})
        self.assertEqual(nixeryd_main(["verify"]), EXIT_USAGE)
        self.assertTrue(stderr.getvalue().startswith("nixeryd verify: "), stderr.getvalue())
        self.assertEqual(stderr.getvalue().count("\n"), 1)


async def store(storage: IStorage, data: bytes) -> str:
    """Store ``data`` as a blob, as the builder stores a layer; its digest."""
    digest = digest_of(data)
    await storage.store_blob_file(write_temporary(storage, data), digest)
    return digest


class VerifyCase:
    """What the filesystem and the emulator tests share."""

    def setUp(self) -> None:
        self.patch(verifier, "READ_LIMIT", SMALL)  # type: ignore[attr-defined]

    async def run_verify(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = await verify(reactor, parse(list(argv) + self.storage_options(), {}), out)
        return code, out.getvalue()

    def storage_options(self) -> list[str]:
        raise NotImplementedError()


class FilesystemVerifyTests(VerifyCase, TestCase):
    """``nixeryd verify`` on a filesystem storage."""

    def setUp(self) -> None:
        VerifyCase.setUp(self)
        self.root = os.path.abspath(self.mktemp())
        self.storage = FilesystemStorage(self.root, InlineRunner())
        self.addCleanup(self.storage.close)

    def storage_options(self) -> list[str]:
        return ["--storage-path", self.root]

    def damage(self, digest: str, data: bytes) -> None:
        with open(os.path.join(self.root, "blobs", "sha256", digest.split(":")[1]),
                  "r+b") as f:
            f.write(data)

    async def test_damage_found_and_repaired(self) -> None:
        """
        A damaged small blob and a damaged large one (other bytes of the
        same size) are reported, exit code 3; ``--repair`` removes them
        and only them; the next pass finds nothing.
        """
        small, large = os.urandom(100), os.urandom(3 * SMALL)
        digests = [await store(self.storage, data) for data in (small, large)]
        intact = await store(self.storage, os.urandom(2 * SMALL))
        code, text = await self.run_verify()
        self.assertEqual(code, EXIT_OK, text)
        self.assertTrue(text.startswith("Checked 3 blobs"), text)
        self.assertIn("3 intact, 0 damaged", text)
        self.damage(digests[0], os.urandom(100))
        self.damage(digests[1], os.urandom(3 * SMALL))
        code, text = await self.run_verify()
        self.assertEqual(code, EXIT_DAMAGED, text)
        self.assertIn("1 intact, 2 damaged", text)
        for digest in digests:
            self.assertIn("damaged: " + digest, text)
        self.assertIn("--repair", text)
        code, text = await self.run_verify("--repair")
        self.assertEqual(code, EXIT_OK, text)
        self.assertIn("Removed 2 damaged blobs", text)
        listed = {blob.digest for blob in await self.storage.list_blobs()}
        self.assertEqual(listed, {intact})
        code, text = await self.run_verify()
        self.assertEqual((code, text.splitlines()[0]), (
            EXIT_OK, "Checked 1 blobs (8.2 kB): 1 intact, 0 damaged, 0 not checked"
            " (no checksum recorded)"))

    async def test_unusable_storage(self) -> None:
        """A storage path that is not a directory is one line and exit code 1."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        out = io.StringIO()
        code = await verify(reactor, parse(["--storage-path", "/etc/passwd"], {}), out)
        self.assertEqual(code, EXIT_FAILED)
        self.assertEqual(stderr.getvalue(), "nixeryd verify: STORAGE_PATH /etc/passwd is"
                         " not a directory: no storage to verify\n")


class GCSVerifyTests(VerifyCase, EmulatorTestCase):
    """``nixeryd verify`` on a bucket of the emulator."""

    def setUp(self):  # type: ignore[no-untyped-def]
        VerifyCase.setUp(self)
        return EmulatorTestCase.setUp(self)

    def storage_options(self) -> list[str]:
        return ["--storage-backend", "gcs", "--gcs-bucket", self.emulator.bucket,
                "--gcs-endpoint", self.emulator.endpoint]

    async def test_damage_found_and_repaired(self) -> None:
        """
        A layer whose object was replaced by other bytes of its size is
        found by its MD5 against the checksum its layer cache document
        records, a small blob by its hash; a large blob no document
        records is reported as not checked; ``--repair`` removes the
        damaged ones.
        """
        storage = self.emulator_storage()
        layer_data, small_data = os.urandom(3 * SMALL), os.urandom(200)
        layer = await store(storage, layer_data)
        small = await store(storage, small_data)
        unrecorded = await store(storage, os.urandom(2 * SMALL))
        checksum = (await storage.check_blob(layer)).checksum
        self.assertIsNotNone(checksum)
        await storage.put_document(LAYER_NAMESPACE, "a" * 64,
                                   {"digest": layer, "checksum": checksum})
        code, text = await self.run_verify("-v")
        self.assertEqual(code, EXIT_OK, text)
        self.assertIn("Checked 3 blobs", text)
        self.assertIn("2 intact, 0 damaged, 1 not checked", text)
        self.assertIn("not checked: " + unrecorded, text)
        await self.emulator.put("blobs/sha256/" + layer.split(":")[1], os.urandom(3 * SMALL))
        await self.emulator.put("blobs/sha256/" + small.split(":")[1], os.urandom(200))
        code, text = await self.run_verify()
        self.assertEqual(code, EXIT_DAMAGED, text)
        self.assertIn("0 intact, 2 damaged, 1 not checked", text)
        code, text = await self.run_verify("--repair")
        self.assertEqual(code, EXIT_OK, text)
        names = await self.emulator.object_names()
        self.assertNotIn("blobs/sha256/" + layer.split(":")[1], names)
        self.assertNotIn("blobs/sha256/" + small.split(":")[1], names)
        self.assertIn("blobs/sha256/" + unrecorded.split(":")[1], names)

"""
Tests for :mod:`nixeryd.build.tarstream`: the tar headers it writes.
"""

from __future__ import annotations

import tarfile

from twisted.trial.unittest import TestCase

from nixeryd.build import tarstream


class HeaderTests(TestCase):
    """The pax fallbacks of :func:`nixeryd.build.tarstream.member_header`."""

    def test_pax_record_length(self) -> None:
        """A pax record's length prefix counts the whole record."""
        for size in (1, 5, 90, 94, 95, 96, 994, 995, 996, 5000):
            record = tarstream._pax_record(b"path", b"p" * size)
            length, _, _ = record.partition(b" ")
            self.assertEqual(int(length), len(record))
            self.assertTrue(record.endswith(b"p\n"))

    def test_short_name_has_no_pax_header(self) -> None:
        """A short ASCII member takes exactly one block."""
        header = tarstream.member_header(b"nix/store/x", b"0", 0o444, 10)
        self.assertEqual(len(header), tarstream.BLOCK_SIZE)
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        self.assertEqual((info.name, info.size, info.mode), ("nix/store/x", 10, 0o444))

    def test_huge_size_uses_pax(self) -> None:
        """A size beyond eleven octal digits is carried by a pax record."""
        header = tarstream.member_header(b"big", b"0", 0o444, 8 ** 11)
        self.assertIn(b" size=%d\n" % (8 ** 11,), header)
        self.assertEqual(len(header) % tarstream.BLOCK_SIZE, 0)

"""
Tests for :mod:`nixeryd.build.tarstream`: the tar headers it writes, and
the gzip stream around them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import struct
import tarfile
import zlib

from isal import isal_zlib
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


def reference_gzip(tar: bytes, level: int) -> bytes:
    """
    The gzip stream of a layer built piece by piece, independently of
    :class:`tarstream.TarGzipWriter`: the fixed header, a raw deflate stream
    fed in chunks of :data:`tarstream.CHUNK_SIZE`, and a trailer of
    zlib's CRC-32 and the size.  Layers have had exactly these bytes since
    their format began; the layer cache keys assume they still do.
    """
    compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
    body = b"".join(compressor.compress(tar[start:start + tarstream.CHUNK_SIZE])
                    for start in range(0, len(tar), tarstream.CHUNK_SIZE))
    body += compressor.flush(isal_zlib.Z_FINISH)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body
            + struct.pack("<II", zlib.crc32(tar), len(tar) & 0xFFFFFFFF))


class GzipStreamTests(TestCase):
    """The gzip bytes of :class:`tarstream.TarGzipWriter`."""

    def written(self, sizes: list[int], level: int) -> tuple[bytes, tarstream.StreamDigests]:
        """A stream of members of ``sizes`` bytes, and its digests."""
        output = io.BytesIO()
        writer = tarstream.TarGzipWriter(output, level)
        rng = random.Random(sum(sizes))
        for index, size in enumerate(sizes):
            # Half random, half repeated: both stored and matched blocks.
            noise = rng.randbytes(size // 2)
            writer.add_bytes(b"member-%d" % (index,), 0o444,
                             noise + b"nix" * ((size - len(noise)) // 3 + 1))
        digests = writer.finish()
        return output.getvalue(), digests

    def test_bytes_match_reference(self) -> None:
        """
        Whatever the members and the chunking (one chunk, a member ending on
        a chunk boundary, several chunks), the stream is the reference one
        and the digests are those of its bytes.  Level 0 is left out: isal's
        gzip wrapper deflates it differently from a raw stream, and layers
        are never written at level 0 (the cache keys name the level).
        """
        cases = [[0], [5], [100000], [tarstream.CHUNK_SIZE - 1024, 7],
                 [3 * tarstream.CHUNK_SIZE + 11, 400, 2 * tarstream.CHUNK_SIZE]]
        for level in (tarstream.DEFAULT_COMPRESS_LEVEL, 2, 3):
            for sizes in cases:
                compressed, digests = self.written(sizes, level)
                tar = gzip.decompress(compressed)
                self.assertEqual(compressed, reference_gzip(tar, level), (level, sizes))
                self.assertEqual(digests.digest,
                                 "sha256:" + hashlib.sha256(compressed).hexdigest())
                self.assertEqual(digests.diff_id, "sha256:" + hashlib.sha256(tar).hexdigest())
                self.assertEqual((digests.size, digests.tar_size),
                                 (len(compressed), len(tar)))

    def test_known_digest(self) -> None:
        """
        One fixed member gives the layer digest it always has: a change of
        the tar or gzip bytes (of isal's output too) must come with a new
        layer format version, or cached layers would disagree with new ones.
        """
        output = io.BytesIO()
        writer = tarstream.TarGzipWriter(output)
        writer.add_bytes(b"f", 0o644, b"hello")
        digests = writer.finish()
        self.assertEqual(digests.digest, "sha256:134889d47d55fefd76ca4829727a91a108b4b"
                                         "7614b4186d224da7c8abcb9fdb4")
        self.assertEqual(digests.diff_id, "sha256:f6196daf01534477d70155e33fe1e56cff688"
                                          "f41aa10247ac7ce132651c52a35")

"""
A deterministic tar stream, gzip-compressed and hashed as it is written.

This module knows the byte format of a layer and nothing about where its
members come from: :mod:`nixeryd.build.archive` decides what goes into a layer
and in which order, and feeds the members to a :class:`TarGzipWriter`.

The tar format is POSIX pax: a plain ustar header for every member whose
names fit, preceded by a pax extended header only when a name or link
target is longer than the ustar field, is not ASCII, or a size does not fit
in eleven octal digits.  Every metadata field that could vary between
hosts (owner, group, user and group names, times) is fixed, so the same
members always give the same bytes.

The tar bytes are gathered in one reusable buffer and handed on in chunks of
exactly :data:`CHUNK_SIZE` bytes (the last one shorter).  Each chunk is added
to the sha256 of the uncompressed stream (the layer's ``diff_id``) and to the
gzip compressor from ``isal``, which computes the gzip CRC in the same pass
over the bytes as the deflate stream; the compressed output
goes to the sha256 of the gzip stream (the layer's ``digest``) and to the
output file.  Because the chunking depends only on the tar bytes, the gzip
stream is a function of the tar stream and the compression level.  hashlib
and isal release the GIL on buffers this large, so several layers can be
written on several cores at once.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import BinaryIO

from attrs import frozen
from isal import isal_zlib

#: Size of the tar buffer, and of every chunk given to the hashes and the
#: compressor.  Large enough that the per-chunk Python overhead vanishes
#: and hashlib and isal run without the GIL; small enough to bound memory.
CHUNK_SIZE = 1 << 20

#: Modification time of every member: the one Nix gives every store file.
MEMBER_MTIME = 1

#: isal level used unless the caller chooses another.  On a closure of
#: binaries, libraries and a Python standard library, level 1 writes layers
#: as fast as level 0 with 11% smaller output; level 2 is 2-5% slower for
#: 1.4% smaller output and level 3 about 40% slower for 2.7% smaller output
#: (figures in ``bench/README.md``).
DEFAULT_COMPRESS_LEVEL = 1

BLOCK_SIZE = 512

_REGULAR = b"0"
_HARD_LINK = b"1"
_SYMLINK = b"2"
_DIRECTORY = b"5"
_PAX_HEADER = b"x"

_PAX_HEADER_NAME = b"././@PaxHeader"
_NAME_FIELD = 100
_MAX_OCTAL_SIZE = 8 ** 11 - 1

_HEADER = struct.Struct(
    "100s"  # name
    "8s"    # mode
    "8s"    # uid
    "8s"    # gid
    "12s"   # size
    "12s"   # mtime
    "8s"    # checksum
    "1s"    # type flag
    "100s"  # link name
    "6s"    # magic
    "2s"    # version
    "32s"   # user name
    "32s"   # group name
    "8s"    # device major
    "8s"    # device minor
    "155s"  # name prefix
    "12x"   # padding
)

_ZERO_ID = b"0000000\x00"
_MTIME_FIELD = b"%011o\x00" % (MEMBER_MTIME,)
_BLANK_CHECKSUM = b" " * 8
_ZEROS = bytes(CHUNK_SIZE)
_END_OF_ARCHIVE = bytes(2 * BLOCK_SIZE)

# Fixed 10-byte gzip header: deflate, no flags, mtime 0, no extra flags,
# operating system "unknown".  No file name, so the header never varies.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

# zlib's window bits for a gzip stream with the largest window.
_GZIP_WBITS = 16 + isal_zlib.MAX_WBITS


class SourceChanged(OSError):
    """
    A file gave fewer bytes than its size said while being archived.

    The header already announced the size, so the stream cannot be
    completed; the layer must be abandoned.
    """


@frozen
class StreamDigests:
    """
    What a finished layer stream measured.

    :ivar diff_id: ``sha256:<hex>`` of the uncompressed tar stream.
    :ivar digest: ``sha256:<hex>`` of the gzip stream.
    :ivar size: length of the gzip stream in bytes.
    :ivar tar_size: length of the uncompressed tar stream in bytes.
    """

    diff_id: str
    digest: str
    size: int
    tar_size: int


def _pax_record(keyword: bytes, value: bytes) -> bytes:
    """
    One pax extended header record, ``"<length> <keyword>=<value>\\n"``,
    where the length counts the whole record including its own digits.
    """
    body = b" " + keyword + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % (length,)) + len(body) != length:
        length += 1
    return b"%d" % (length,) + body


def _is_utf8(value: bytes) -> bool:
    """Whether ``value`` decodes as UTF-8 (pax values should)."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fits_ustar(value: bytes) -> bool:
    """Whether a name can go in a 100-byte ustar field as it is."""
    return len(value) <= _NAME_FIELD and value.isascii()


def _header(name: bytes, type_flag: bytes, mode: int, size: int,
            linkname: bytes = b"") -> bytes:
    """
    The ustar header block of one member with our fixed metadata.

    The caller has made sure ``name`` and ``linkname`` fit and ``size`` is
    representable; fields that do not fit are written truncated or zero
    and carried by a pax header instead.
    """
    block = _HEADER.pack(
        name[:_NAME_FIELD],
        b"%07o\x00" % (mode & 0o7777,),
        _ZERO_ID,
        _ZERO_ID,
        b"%011o\x00" % (size if size <= _MAX_OCTAL_SIZE else 0,),
        _MTIME_FIELD,
        _BLANK_CHECKSUM,
        type_flag,
        linkname[:_NAME_FIELD],
        b"ustar\x00",
        b"00",
        b"",
        b"",
        _ZERO_ID,
        _ZERO_ID,
        b"",
    )
    checksum = b"%06o\x00 " % (sum(block),)
    return block[:148] + checksum + block[156:]


def member_header(name: bytes, type_flag: bytes, mode: int, size: int = 0,
                  linkname: bytes = b"") -> bytes:
    """
    Every header byte of one member: a pax extended header when needed,
    then the ustar header.

    :param name: the member name as stored (directories end in ``/``).
    :param type_flag: one of the ustar type flags.
    :param mode: permission bits (``0o7777`` is kept).
    :param size: bytes of content that follow (regular files only).
    :param linkname: target of a symlink or hard link.
    """
    if _fits_ustar(name) and _fits_ustar(linkname) and size <= _MAX_OCTAL_SIZE:
        return _header(name, type_flag, mode, size, linkname)
    records = []
    binary = not (_is_utf8(name) and _is_utf8(linkname))
    if binary:
        records.append(_pax_record(b"hdrcharset", b"BINARY"))
    if not _fits_ustar(name):
        records.append(_pax_record(b"path", name))
    if not _fits_ustar(linkname):
        records.append(_pax_record(b"linkpath", linkname))
    if size > _MAX_OCTAL_SIZE:
        records.append(_pax_record(b"size", b"%d" % (size,)))
    payload = b"".join(records)
    padding = -len(payload) % BLOCK_SIZE
    return (_header(_PAX_HEADER_NAME, _PAX_HEADER, 0o644, len(payload))
            + payload + _ZEROS[:padding]
            + _header(name, type_flag, mode, size, linkname))


class TarGzipWriter:
    """
    Writes tar members into a gzip file, hashing both streams on the way.

    Members are written in the order the caller gives them; the caller is
    responsible for the order being deterministic.  Call :meth:`finish`
    once, after the last member, to end the archive and obtain the digests.
    The output file is not closed.

    :param output: a binary file open for writing, positioned at its start.
    :param compress_level: the isal deflate level, 0 to 3.
    """

    def __init__(self, output: BinaryIO, compress_level: int = DEFAULT_COMPRESS_LEVEL
                 ) -> None:
        self._output = output
        self._buffer = bytearray(CHUNK_SIZE)
        self._view = memoryview(self._buffer)
        self._used = 0
        self._tar_hash = hashlib.sha256()
        self._tar_size = 0
        # isal writes the gzip header and trailer itself, computing the CRC
        # in the same pass as the deflate stream.  Its header is replaced
        # by the fixed one, which differs at most in the extra flags (isal
        # marks level 0 "fastest"), so every level gives the same header.
        self._compressor = isal_zlib.compressobj(
            compress_level, isal_zlib.DEFLATED, _GZIP_WBITS)
        self._gzip_hash = hashlib.sha256()
        self._gzip_size = 0
        self._header: bytes | None = b""

    def add_directory(self, name: bytes, mode: int) -> None:
        """Add a directory member; ``name`` is given without a trailing slash."""
        self._write(member_header(name + b"/", _DIRECTORY, mode))

    def add_symlink(self, name: bytes, mode: int, target: bytes) -> None:
        """Add a symbolic link pointing at ``target``, verbatim."""
        self._write(member_header(name, _SYMLINK, mode, 0, target))

    def add_hard_link(self, name: bytes, mode: int, target: bytes) -> None:
        """Add a hard link to the earlier member named ``target``."""
        self._write(member_header(name, _HARD_LINK, mode, 0, target))

    def add_bytes(self, name: bytes, mode: int, content: bytes) -> None:
        """Add a regular file whose content is in memory."""
        self._write(member_header(name, _REGULAR, mode, len(content)))
        self._write(content)
        self._pad(len(content))

    def add_file(self, name: bytes, mode: int, size: int, fd: int) -> None:
        """
        Add a regular file of ``size`` bytes read from the open descriptor
        ``fd``, straight into the stream buffer.

        :raises SourceChanged: if the file ends before ``size`` bytes.
        """
        self._write(member_header(name, _REGULAR, mode, size))
        view = self._view
        remaining = size
        while remaining:
            used = self._used
            wanted = min(remaining, CHUNK_SIZE - used)
            got = os.readv(fd, [view[used:used + wanted]])
            if not got:
                raise SourceChanged(
                    "%r ended %d bytes before its size of %d"
                    % (name, remaining, size))
            remaining -= got
            self._used = used + got
            if self._used == CHUNK_SIZE:
                self._flush_chunk()
        self._pad(size)

    def finish(self) -> StreamDigests:
        """
        End the archive, flush the compressor, write the gzip trailer and
        return the digests.  Nothing may be added afterwards.
        """
        self._write(_END_OF_ARCHIVE)
        self._flush_chunk()
        self._emit(self._compressor.flush(isal_zlib.Z_FINISH))
        self._output.flush()
        return StreamDigests(
            diff_id="sha256:" + self._tar_hash.hexdigest(),
            digest="sha256:" + self._gzip_hash.hexdigest(),
            size=self._gzip_size,
            tar_size=self._tar_size,
        )

    def _pad(self, size: int) -> None:
        """Zero-fill the content of a member up to the next block."""
        padding = -size % BLOCK_SIZE
        if padding:
            self._write(_ZEROS[:padding])

    def _write(self, data: bytes) -> None:
        """Append tar bytes, flushing every full chunk."""
        length = len(data)
        used = self._used
        if used + length < CHUNK_SIZE:
            self._buffer[used:used + length] = data
            self._used = used + length
            return
        source = memoryview(data)
        offset = 0
        while offset < length:
            used = self._used
            taken = min(length - offset, CHUNK_SIZE - used)
            self._view[used:used + taken] = source[offset:offset + taken]
            self._used = used + taken
            offset += taken
            if self._used == CHUNK_SIZE:
                self._flush_chunk()

    def _flush_chunk(self) -> None:
        """Hash, checksum and compress the buffered tar bytes."""
        if not self._used:
            return
        chunk = self._view[:self._used]
        self._tar_hash.update(chunk)
        self._tar_size += self._used
        self._emit(self._compressor.compress(chunk))
        chunk.release()
        self._used = 0

    def _emit(self, compressed: bytes) -> None:
        """Write gzip bytes to the output and to their hash."""
        if self._header is not None:
            compressed = self._replace_header(compressed)
        if compressed:
            self._gzip_hash.update(compressed)
            self._output.write(compressed)
            self._gzip_size += len(compressed)

    def _replace_header(self, compressed: bytes) -> bytes:
        """
        Hold isal's output until its 10-byte gzip header is whole, then
        give it back with :data:`_GZIP_HEADER` in the header's place.
        """
        assert self._header is not None
        pending = self._header + compressed
        size = len(_GZIP_HEADER)
        if len(pending) < size:
            self._header = pending
            return b""
        header = pending[:size]
        if header[:8] != _GZIP_HEADER[:8] or header[9:] != _GZIP_HEADER[9:]:
            raise RuntimeError("isal wrote an unexpected gzip header: %r" % (header,))
        self._header = None
        return _GZIP_HEADER + pending[size:]

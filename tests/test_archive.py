"""
Tests for :mod:`nixeryd.build.archive`: store and tree layers written from
real files and read back with ``tarfile``, ``gzip`` and GNU tar.  Hard
links decided by content are tested in ``tests.test_contentlinks``.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import os
import random
import stat
import subprocess
import sys
from typing import TYPE_CHECKING, Sequence

from twisted.trial.unittest import TestCase

from nixeryd.build import tarstream
from nixeryd.build.archive import (
    DEFAULT_COMPRESS_LEVEL,
    MEMBER_MTIME,
    STORE_PARENT_MODE,
    LayerBlob,
    TreeEntry,
    hash_file,
    write_store_layer,
    write_tree_layer,
)
from tests.layerfiles import (BIG_SIZE, HASH_A, PATH_A, PATH_B, file_bytes,
                              make_tree_writable, read_content, read_members)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

LONG_NAME = "deeply/" * 12 + "a-file-whose-name-is-long-enough.txt"
LONG_TARGET = "../" * 40 + "target"


class StoreLayerTests(TestCase):
    """
    :func:`write_store_layer` on store paths laid out under a temporary
    root, with store-like modes, links and a fifo.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.output = os.path.abspath(self.mktemp())
        os.makedirs(self.output)
        self.big = random.Random(7).randbytes(BIG_SIZE)
        self.make_alpha()
        self.make_beta()
        os.chmod(os.path.join(self.source(PATH_A), "bin", "tool"), 0o555)
        self.addCleanup(make_tree_writable, self.root)

    def source(self, store_path: str) -> str:
        """Where a store path lives under the temporary root."""
        return os.path.join(self.root, store_path.lstrip("/"))

    def make_alpha(self) -> None:
        """A store path with dirs, an executable, links, a fifo and long names."""
        top = self.source(PATH_A)
        os.makedirs(os.path.join(top, "bin"))
        os.makedirs(os.path.join(top, "lib", "empty"))
        os.makedirs(os.path.join(top, os.path.dirname(LONG_NAME)))
        with open(os.path.join(top, "bin", "tool"), "wb") as out:
            out.write(b"#!/bin/sh\necho tool\n")
        with open(os.path.join(top, "lib", "libbig.so"), "wb") as out:
            out.write(self.big)
        with open(os.path.join(top, LONG_NAME), "wb") as out:
            out.write(b"long\n")
        os.link(os.path.join(top, "lib", "libbig.so"),
                os.path.join(top, "lib", "libbig.so.1"))
        os.symlink("libbig.so.1", os.path.join(top, "lib", "libbig.so.1.0"))
        os.symlink(LONG_TARGET, os.path.join(top, "lib", "far"))
        os.mkfifo(os.path.join(top, "lib", "pipe"))
        self.make_store_like(top)

    def make_beta(self) -> None:
        """A second store path sharing an inode with the first."""
        top = self.source(PATH_B)
        os.makedirs(os.path.join(top, "share"))
        os.link(os.path.join(self.source(PATH_A), "bin", "tool"),
                os.path.join(top, "share", "tool-copy"))
        with open(os.path.join(top, "share", "readme"), "wb") as out:
            out.write(b"beta\n")
        self.make_store_like(top)

    def make_store_like(self, top: str) -> None:
        """Give a tree the modes Nix gives store paths (0444/0555)."""
        for directory, subdirectories, files in os.walk(top):
            for name in files:
                path = os.path.join(directory, name)
                if stat.S_ISREG(os.lstat(path).st_mode):
                    os.chmod(path, 0o444)
            os.chmod(directory, 0o555)

    def write(self, paths: Sequence[str] = (PATH_A, PATH_B), *,
              compress_level: int = DEFAULT_COMPRESS_LEVEL) -> LayerBlob:
        """Write a layer of ``paths`` from the temporary root."""
        return write_store_layer(list(paths), self.output, root=self.root,
                                 compress_level=compress_level)

    def test_byte_identical_across_runs_and_orders(self) -> None:
        """The same paths give the same gzip bytes, whatever their order."""
        first = self.write((PATH_A, PATH_B))
        second = self.write((PATH_B, PATH_A))
        third = self.write((PATH_A, PATH_B, PATH_A))
        self.assertNotEqual(first.path, second.path)
        self.assertEqual(file_bytes(first.path), file_bytes(second.path))
        self.assertEqual(file_bytes(first.path), file_bytes(third.path))
        self.assertEqual((first.digest, first.diff_id, first.size),
                         (second.digest, second.diff_id, second.size))

    def test_byte_identical_across_processes(self) -> None:
        """Processes with different hash seeds write the same layer."""
        here = self.write()
        program = (
            "import sys\n"
            "from nixeryd.build.archive import write_store_layer\n"
            "blob = write_store_layer(sys.argv[1:3], sys.argv[3], root=sys.argv[4])\n"
            "print(blob.digest, blob.path)\n")
        project = os.path.dirname(os.path.dirname(os.path.abspath(tarstream.__file__)))
        for seed in ("1", "2"):
            environment = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=project)
            result = subprocess.run(
                [sys.executable, "-c", program, PATH_B, PATH_A, self.output,
                 self.root],
                env=environment, capture_output=True, check=True, text=True)
            digest, path = result.stdout.split()
            self.assertEqual(digest, here.digest)
            self.assertEqual(file_bytes(path), file_bytes(here.path))

    def test_parallel_writers_agree(self) -> None:
        """Layers written on several threads at once equal those written alone."""
        alone = [self.write((path,)) for path in (PATH_A, PATH_B)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            together = list(pool.map(lambda path: self.write((path,)),
                                     [PATH_A, PATH_B] * 2))
        for index, blob in enumerate(together):
            self.assertEqual(blob.digest, alone[index % 2].digest)
            self.assertEqual(file_bytes(blob.path), file_bytes(alone[index % 2].path))

    def test_blob_file_is_in_directory(self) -> None:
        """The blob is a new file inside the requested directory."""
        blob = self.write()
        self.assertEqual(os.path.dirname(blob.path), self.output)
        self.assertEqual(os.listdir(self.output), [os.path.basename(blob.path)])

    def test_digests_match_recomputation(self) -> None:
        """digest, diff_id and size match an independent computation."""
        blob = self.write()
        compressed = file_bytes(blob.path)
        self.assertEqual(blob.size, len(compressed))
        self.assertEqual(blob.digest,
                         "sha256:" + hashlib.sha256(compressed).hexdigest())
        self.assertEqual(blob.diff_id, "sha256:" + hashlib.sha256(
            gzip.decompress(compressed)).hexdigest())
        self.assertEqual(hash_file(blob.path),
                         (blob.digest.split(":")[1], blob.size))

    def test_gzip_header_is_fixed(self) -> None:
        """The gzip header has mtime 0, no file name and no flags."""
        header = file_bytes(self.write().path)[:10]
        self.assertEqual(header[:3], b"\x1f\x8b\x08")
        self.assertEqual(header[3], 0)
        self.assertEqual(header[4:8], b"\x00\x00\x00\x00")

    def test_sorted_with_directories(self) -> None:
        """Members are sorted by name and every directory has an entry."""
        names = [member.name for member in read_members(self.write())]
        encoded = [os.fsencode(name) for name in names]
        self.assertEqual(encoded, sorted(encoded))
        self.assertEqual(len(names), len(set(names)))
        self.assertEqual(names[:2], ["nix", "nix/store"])
        prefix_a = PATH_A.lstrip("/")
        for directory in ("", "/bin", "/lib", "/lib/empty", "/deeply"):
            self.assertIn(prefix_a + directory, names)
        self.assertIn(PATH_B.lstrip("/") + "/share", names)
        self.assertIn(prefix_a + "/" + LONG_NAME, names)

    def test_fixed_metadata(self) -> None:
        """Every member has owner 0:0, empty owner names and the fixed mtime."""
        for member in read_members(self.write()):
            self.assertEqual((member.uid, member.gid, member.uname, member.gname,
                              member.mtime),
                             (0, 0, "", "", MEMBER_MTIME), member.name)

    def test_modes(self) -> None:
        """Modes keep the store's permission bits; parents get the fixed mode."""
        members = {member.name: member for member in read_members(self.write())}
        prefix = PATH_A.lstrip("/")
        self.assertEqual(members["nix"].mode, STORE_PARENT_MODE)
        self.assertEqual(members["nix/store"].mode, STORE_PARENT_MODE)
        self.assertEqual(members[prefix].mode, 0o555)
        self.assertTrue(members[prefix].isdir())
        self.assertEqual(members[prefix + "/bin/tool"].mode, 0o555)
        self.assertEqual(members[prefix + "/lib/libbig.so"].mode, 0o444)

    def test_hard_links(self) -> None:
        """Later names of a shared inode become hard links to the first."""
        blob = self.write()
        members = {member.name: member for member in read_members(blob)}
        prefix_a = PATH_A.lstrip("/")
        first = members[prefix_a + "/lib/libbig.so"]
        second = members[prefix_a + "/lib/libbig.so.1"]
        self.assertTrue(first.isreg())
        self.assertEqual(first.size, BIG_SIZE)
        self.assertTrue(second.islnk())
        self.assertEqual(second.linkname, first.name)
        across = members[PATH_B.lstrip("/") + "/share/tool-copy"]
        self.assertTrue(across.islnk())
        self.assertEqual(across.linkname, prefix_a + "/bin/tool")
        self.assertTrue(members[prefix_a + "/bin/tool"].isreg())

    def test_hard_link_alone_is_a_file(self) -> None:
        """A linked inode whose first name is in another layer is written in full."""
        blob = self.write((PATH_B,))
        member = {member.name: member for member in read_members(blob)}[
            PATH_B.lstrip("/") + "/share/tool-copy"]
        self.assertTrue(member.isreg())
        self.assertEqual(read_content(blob, member.name), b"#!/bin/sh\necho tool\n")

    def test_symlinks(self) -> None:
        """Symlinks keep their targets verbatim, long ones included."""
        members = {member.name: member for member in read_members(self.write())}
        prefix = PATH_A.lstrip("/")
        self.assertTrue(members[prefix + "/lib/libbig.so.1.0"].issym())
        self.assertEqual(members[prefix + "/lib/libbig.so.1.0"].linkname,
                         "libbig.so.1")
        self.assertEqual(members[prefix + "/lib/far"].linkname, LONG_TARGET)

    def test_special_files_skipped(self) -> None:
        """Fifos are left out of the layer."""
        names = [member.name for member in read_members(self.write())]
        self.assertNotIn(PATH_A.lstrip("/") + "/lib/pipe", names)

    def test_contents(self) -> None:
        """File contents, across chunk boundaries, come back unchanged."""
        blob = self.write()
        prefix = PATH_A.lstrip("/")
        self.assertEqual(read_content(blob, prefix + "/lib/libbig.so"), self.big)
        self.assertEqual(read_content(blob, prefix + "/" + LONG_NAME), b"long\n")
        self.assertEqual(read_content(blob, PATH_B.lstrip("/") + "/share/readme"),
                         b"beta\n")

    def test_non_utf8_name(self) -> None:
        """A file name that is not UTF-8 keeps its bytes."""
        top = self.source(PATH_B)
        os.chmod(top, 0o755)
        with open(os.path.join(os.fsencode(top), b"caf\xe9"), "wb") as out:
            out.write(b"x")
        names = [os.fsencode(member.name) for member in read_members(self.write())]
        self.assertIn(os.fsencode(PATH_B.lstrip("/")) + b"/caf\xe9", names)

    def test_gnu_tar_accepts(self) -> None:
        """GNU tar lists the layer without complaint, links and all."""
        blob = self.write()
        listing = subprocess.run(["tar", "-tzvf", blob.path], capture_output=True,
                                 check=True)
        self.assertEqual(listing.stderr, b"")
        lines = listing.stdout.decode("utf-8", "replace").splitlines()
        self.assertEqual(len(lines), len(read_members(blob)))
        prefix = PATH_A.lstrip("/")
        self.assertIn(" %s/lib/libbig.so.1 link to %s/lib/libbig.so"
                      % (prefix, prefix), listing.stdout.decode())
        self.assertIn(" %s/lib/far -> %s" % (prefix, LONG_TARGET),
                      listing.stdout.decode())
        self.assertTrue(any(line.startswith("-r-xr-xr-x 0/0")
                            and line.endswith("/bin/tool") for line in lines))

    def test_gnu_tar_extracts(self) -> None:
        """GNU tar extracts the same bytes that were archived."""
        blob = self.write()
        target = self.mktemp()
        os.makedirs(target)
        subprocess.run(["tar", "-xzf", blob.path, "-C", target], check=True)
        self.addCleanup(make_tree_writable, target)
        prefix = PATH_A.lstrip("/")
        extracted = os.path.join(target, prefix, "lib")
        self.assertEqual(file_bytes(os.path.join(extracted, "libbig.so.1")), self.big)
        self.assertEqual(os.stat(os.path.join(extracted, "libbig.so")).st_ino,
                         os.stat(os.path.join(extracted, "libbig.so.1")).st_ino)

    def test_levels_share_tar_stream(self) -> None:
        """Compression levels change the gzip stream but never the tar stream."""
        fast = self.write(compress_level=0)
        small = self.write(compress_level=3)
        self.assertEqual(fast.diff_id, small.diff_id)
        self.assertNotEqual(fast.digest, small.digest)
        self.assertEqual(gzip.decompress(file_bytes(fast.path)),
                         gzip.decompress(file_bytes(small.path)))

    def test_missing_path_leaves_nothing(self) -> None:
        """A path that does not exist fails the layer and leaves no file."""
        missing = "/nix/store/%s-missing" % ("2" * 32,)
        self.assertRaises(FileNotFoundError, self.write, (PATH_A, missing))
        self.assertEqual(os.listdir(self.output), [])

    def test_read_error_mid_stream_leaves_nothing(self) -> None:
        """A read failing after output was written removes the partial file."""
        real_readv = os.readv
        calls: list[int] = []

        def failing_readv(fd: int, buffers: Sequence[WriteableBuffer]) -> int:
            calls.append(fd)
            if len(calls) == 4:
                raise PermissionError(13, "injected")
            return real_readv(fd, buffers)

        self.patch(os, "readv", failing_readv)
        self.assertRaises(PermissionError, self.write)
        self.assertEqual(len(calls), 4)
        self.assertEqual(os.listdir(self.output), [])

    def test_shrunk_file_fails(self) -> None:
        """A file giving fewer bytes than its size fails the layer cleanly."""
        real_readv = os.readv

        def short_readv(fd: int, buffers: Sequence[WriteableBuffer]) -> int:
            if os.fstat(fd).st_size == BIG_SIZE:
                return 0
            return real_readv(fd, buffers)

        self.patch(os, "readv", short_readv)
        self.assertRaises(tarstream.SourceChanged, self.write)
        self.assertEqual(os.listdir(self.output), [])

    def test_nested_paths_rejected(self) -> None:
        """A path inside another given path is refused."""
        self.assertRaises(ValueError, self.write, (PATH_A, PATH_A + "/bin"))
        self.assertRaises(ValueError, self.write, ("nix/store/relative",))
        self.assertRaises(ValueError, self.write, (PATH_A + "/../x",))
        self.assertEqual(os.listdir(self.output), [])


class TreeLayerTests(TestCase):
    """:func:`write_tree_layer` on in-memory trees."""

    def setUp(self) -> None:
        self.output = self.mktemp()
        os.makedirs(self.output)
        self.entries = [
            TreeEntry("usr/bin/env", "symlink", 0o777,
                      target="/nix/store/%s-coreutils/bin/env" % (HASH_A,)),
            TreeEntry("tmp", "dir", 0o1777),
            TreeEntry("usr", "dir", 0o755),
            TreeEntry("usr/bin", "dir", 0o755),
            TreeEntry("etc", "dir", 0o755),
            TreeEntry("etc/passwd", "file", 0o644,
                      content=b"root:x:0:0::/root:/bin/sh\n"),
        ]

    def test_members(self) -> None:
        """Entries come back sorted, with their kinds, modes and contents."""
        blob = write_tree_layer(self.entries, self.output)
        members = read_members(blob)
        self.assertEqual([member.name for member in members],
                         ["etc", "etc/passwd", "tmp", "usr", "usr/bin",
                          "usr/bin/env"])
        by_name = {member.name: member for member in members}
        self.assertTrue(by_name["tmp"].isdir())
        self.assertEqual(by_name["tmp"].mode, 0o1777)
        self.assertEqual(by_name["usr/bin/env"].linkname,
                         "/nix/store/%s-coreutils/bin/env" % (HASH_A,))
        self.assertEqual(read_content(blob, "etc/passwd"),
                         b"root:x:0:0::/root:/bin/sh\n")
        for member in members:
            self.assertEqual((member.uid, member.gid, member.mtime),
                             (0, 0, MEMBER_MTIME))

    def test_sticky_directory_in_gnu_tar(self) -> None:
        """GNU tar shows the ``tmp`` directory as world-writable and sticky."""
        blob = write_tree_layer(self.entries, self.output)
        listing = subprocess.run(["tar", "-tzvf", blob.path], capture_output=True,
                                 check=True, text=True).stdout
        self.assertIn("drwxrwxrwt 0/0", [line[:14] for line in listing.splitlines()
                                         if line.endswith(" tmp/")][0])

    def test_deterministic(self) -> None:
        """The same entries in another order give the same bytes and digests."""
        first = write_tree_layer(self.entries, self.output)
        second = write_tree_layer(list(reversed(self.entries)), self.output)
        self.assertEqual(file_bytes(first.path), file_bytes(second.path))
        self.assertEqual(first.digest, second.digest)
        self.assertEqual(first.diff_id, "sha256:" + hashlib.sha256(
            gzip.decompress(file_bytes(first.path))).hexdigest())

    def test_invalid_names(self) -> None:
        """Bad names, duplicates and misplaced targets or content leave no file."""
        for name in ("/etc", "etc/../x", "./etc", "", "etc//x"):
            self.assertRaises(ValueError, write_tree_layer,
                              [TreeEntry(name, "dir", 0o755)], self.output)
        self.assertRaises(ValueError, write_tree_layer,
                          [TreeEntry("etc", "dir", 0o755),
                           TreeEntry("etc", "file", 0o644)], self.output)
        self.assertRaises(ValueError, TreeEntry, "x", "fifo", 0o644)
        for misfit in (TreeEntry("x", "symlink", 0o777),
                       TreeEntry("x", "dir", 0o755, target="y"),
                       TreeEntry("x", "dir", 0o755, content=b"y")):
            self.assertRaises(ValueError, write_tree_layer, [misfit], self.output)
        self.assertEqual(os.listdir(self.output), [])


class HashFileTests(TestCase):
    """:func:`hash_file`."""

    def test_multi_chunk_file(self) -> None:
        """The digest and size of a file larger than one chunk are right."""
        path = self.mktemp()
        content = random.Random(3).randbytes(2 * tarstream.CHUNK_SIZE + 17)
        with open(path, "wb") as out:
            out.write(content)
        self.assertEqual(hash_file(path),
                         (hashlib.sha256(content).hexdigest(), len(content)))

    def test_empty_file(self) -> None:
        """An empty file hashes to the sha256 of nothing."""
        path = self.mktemp()
        open(path, "wb").close()
        self.assertEqual(hash_file(path), (hashlib.sha256(b"").hexdigest(), 0))

"""
Tests for the hard links of :func:`nixeryd.build.archive.write_store_layer`:
decided by content, so that a path built by Nix (with hard links on disk)
and a copy restored from its NAR (with none) give the same layer, and on
real store paths built by Nix.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tarfile
from typing import TYPE_CHECKING, Sequence

from twisted.trial.unittest import TestCase

from nixeryd.build import tarstream
from nixeryd.build.archive import write_store_layer
from tests.layerfiles import (BIG_SIZE, PATH_A, canonicalise_like_nix,
                              file_bytes, make_tree_writable, read_content,
                              read_members)

if TYPE_CHECKING:
    from _typeshed import StrOrBytesPath, WriteableBuffer


class ContentLinkTests(TestCase):
    """
    :func:`write_store_layer` deciding hard links by content: files that
    are separate on disk but equal in mode, size and content.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.output = os.path.abspath(self.mktemp())
        os.makedirs(self.output)
        self.top = os.path.join(self.root, PATH_A.lstrip("/"))
        self.prefix = PATH_A.lstrip("/")
        self.big = random.Random(11).randbytes(BIG_SIZE)
        self.addCleanup(make_tree_writable, self.root)
        files = {
            "a/same": (b"identical\n", 0o444),
            "b/same-too": (b"identical\n", 0o444),
            "c/same-exec": (b"identical\n", 0o555),
            "d/other": (b"different\n", 0o444),
            "e/big": (self.big, 0o444),
            "f/big-copy": (self.big, 0o444),
            "g/big-tail": (self.big[:-1] + bytes([self.big[-1] ^ 1]), 0o444),
            "h/empty": (b"", 0o444),
            "i/empty-too": (b"", 0o444),
            "j/unique": (b"only one of this size\n", 0o444),
        }
        for name, (content, mode) in files.items():
            path = os.path.join(self.top, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as out:
                out.write(content)
            os.chmod(path, mode)
        for directory, subdirectories, names in os.walk(self.top):
            os.chmod(directory, 0o555)

    def members(self) -> dict[str, tarfile.TarInfo]:
        """The members of the layer of the test path, by name."""
        blob = write_store_layer([PATH_A], self.output, root=self.root)
        self.blob = blob
        return {member.name: member for member in read_members(blob)}

    def test_identical_files_become_links(self) -> None:
        """Separate files of equal mode and content become links to the first."""
        members = self.members()
        self.assertTrue(members[self.prefix + "/a/same"].isreg())
        linked = members[self.prefix + "/b/same-too"]
        self.assertTrue(linked.islnk())
        self.assertEqual(linked.linkname, self.prefix + "/a/same")
        self.assertEqual(linked.mode, 0o444)
        big_copy = members[self.prefix + "/f/big-copy"]
        self.assertTrue(big_copy.islnk())
        self.assertEqual(big_copy.linkname, self.prefix + "/e/big")

    def test_different_content_or_mode_stays_separate(self) -> None:
        """Equal size with other content, or equal content with another mode, is a file."""
        members = self.members()
        for name, content in (("c/same-exec", b"identical\n"),
                              ("d/other", b"different\n"),
                              ("g/big-tail", None)):
            member = members[self.prefix + "/" + name]
            self.assertTrue(member.isreg(), name)
            if content is not None:
                self.assertEqual(read_content(self.blob, member.name), content)
        self.assertEqual(members[self.prefix + "/c/same-exec"].mode, 0o555)
        tail = read_content(self.blob, self.prefix + "/g/big-tail")
        self.assertEqual(tail[:-1], self.big[:-1])
        self.assertNotEqual(tail, self.big)

    def test_empty_files_stay_files(self) -> None:
        """Empty files are never turned into links."""
        members = self.members()
        for name in ("h/empty", "i/empty-too"):
            member = members[self.prefix + "/" + name]
            self.assertTrue(member.isreg(), name)
            self.assertEqual(member.size, 0)

    def test_gnu_tar_extracts_links(self) -> None:
        """GNU tar extracts content-linked files as one inode with the right bytes."""
        self.members()
        target = os.path.abspath(self.mktemp())
        os.makedirs(target)
        self.addCleanup(make_tree_writable, target)
        subprocess.run(["tar", "-xzf", self.blob.path, "-C", target], check=True)
        extracted = os.path.join(target, self.prefix)
        self.assertEqual(file_bytes(os.path.join(extracted, "f", "big-copy")),
                         self.big)
        self.assertEqual(os.stat(os.path.join(extracted, "e", "big")).st_ino,
                         os.stat(os.path.join(extracted, "f", "big-copy")).st_ino)
        self.assertNotEqual(
            os.stat(os.path.join(extracted, "a", "same")).st_ino,
            os.stat(os.path.join(extracted, "c", "same-exec")).st_ino)

    def test_only_colliding_files_are_hashed(self) -> None:
        """A file whose mode and size no other file shares is opened only to be written."""
        opened: list[bytes] = []
        real_open = os.open

        def counting_open(path: StrOrBytesPath, flags: int, mode: int = 0o777, *,
                          dir_fd: int | None = None) -> int:
            if isinstance(path, bytes):
                opened.append(path)
            return real_open(path, flags, mode, dir_fd=dir_fd)

        self.patch(os, "open", counting_open)
        self.members()
        counts = {os.fsdecode(path)[len(self.top) + 1:]: opened.count(path)
                  for path in set(opened)}
        self.assertEqual(counts, {
            "a/same": 2, "b/same-too": 1, "c/same-exec": 1, "d/other": 2,
            "e/big": 2, "f/big-copy": 1, "g/big-tail": 2, "h/empty": 1,
            "i/empty-too": 1, "j/unique": 1})

    def test_disk_links_do_not_change_bytes(self) -> None:
        """Linking identical files on disk leaves the layer bytes unchanged."""
        separate = self.members()
        separate_bytes = file_bytes(self.blob.path)
        os.chmod(os.path.join(self.top, "f"), 0o755)
        os.chmod(os.path.join(self.top, "i"), 0o755)
        os.unlink(os.path.join(self.top, "f", "big-copy"))
        os.link(os.path.join(self.top, "e", "big"),
                os.path.join(self.top, "f", "big-copy"))
        os.unlink(os.path.join(self.top, "i", "empty-too"))
        os.link(os.path.join(self.top, "h", "empty"),
                os.path.join(self.top, "i", "empty-too"))
        os.chmod(os.path.join(self.top, "f"), 0o555)
        os.chmod(os.path.join(self.top, "i"), 0o555)
        linked = self.members()
        self.assertEqual(file_bytes(self.blob.path), separate_bytes)
        self.assertEqual(sorted(linked), sorted(separate))

    def test_shrinking_while_hashed_leaves_nothing(self) -> None:
        """A file ending early while it is hashed fails the layer cleanly."""
        real_readv = os.readv

        def short_readv(fd: int, buffers: Sequence[WriteableBuffer]) -> int:
            if os.fstat(fd).st_size == BIG_SIZE:
                return 0
            return real_readv(fd, buffers)

        self.patch(os, "readv", short_readv)
        self.assertRaises(tarstream.SourceChanged, write_store_layer, [PATH_A],
                          self.output, root=self.root)
        self.assertEqual(os.listdir(self.output), [])


class RestoredCopyTests(TestCase):
    """
    The layer of a store path built by Nix, with hard links on disk, against
    the layer of a copy restored from its NAR, which has none.
    """

    def setUp(self) -> None:
        if shutil.which("nix-build") is None:
            self.skipTest("nix-build is not installed")
        packages = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pkgs")
        built = subprocess.run(
            ["nix-build", "--option", "substituters", "", "--no-out-link",
             packages, "-A", "hardlinks"],
            capture_output=True, check=True, text=True)
        self.store_path = built.stdout.strip()
        self.root = os.path.abspath(self.mktemp())
        store = os.path.join(self.root, "nix", "store")
        os.makedirs(store)
        self.addCleanup(make_tree_writable, self.root)
        self.copy = os.path.join(store, os.path.basename(self.store_path))
        dump = subprocess.Popen(["nix-store", "--dump", self.store_path],
                                stdout=subprocess.PIPE)
        subprocess.run(["nix-store", "--restore", self.copy], stdin=dump.stdout,
                       check=True)
        assert dump.stdout is not None
        dump.stdout.close()
        self.assertEqual(dump.wait(), 0)
        canonicalise_like_nix(self.copy)
        self.output = self.mktemp()
        os.makedirs(self.output)

    def test_restored_copy_gives_same_bytes(self) -> None:
        """A restored copy without hard links gives the built path's exact layer."""
        data = os.path.join("share", "data")
        built_first = os.stat(os.path.join(self.store_path, data, "first"))
        built_second = os.stat(os.path.join(self.store_path, data, "second"))
        copy_first = os.stat(os.path.join(self.copy, data, "first"))
        copy_second = os.stat(os.path.join(self.copy, data, "second"))
        self.assertEqual(built_first.st_ino, built_second.st_ino)
        self.assertNotEqual(copy_first.st_ino, copy_second.st_ino)
        built = write_store_layer([self.store_path], self.output)
        restored = write_store_layer([self.store_path], self.output, root=self.root)
        self.assertEqual(file_bytes(built.path), file_bytes(restored.path))
        self.assertEqual((built.digest, built.diff_id, built.size),
                         (restored.digest, restored.diff_id, restored.size))
        members = {member.name: member for member in read_members(restored)}
        second = members[self.store_path.lstrip("/") + "/share/data/second"]
        self.assertTrue(second.islnk())
        self.assertEqual(second.linkname,
                         self.store_path.lstrip("/") + "/share/data/first")


class RealStorePathTests(TestCase):
    """:func:`write_store_layer` on a path built by Nix."""

    def setUp(self) -> None:
        if shutil.which("nix-build") is None:
            self.skipTest("nix-build is not installed")
        script = ("mkdir -p $out/d; echo hi > $out/f; ln $out/f $out/g; "
                  "ln -s f $out/s; printf '#!/bin/sh\\n' > $out/d/x; "
                  "chmod +x $out/d/x")
        expression = (
            'derivation { name = "nixeryd-archive-test"; '
            'system = builtins.currentSystem; builder = "/bin/busybox"; '
            'args = ["sh" "-c" "%s"]; }' % (script,))
        built = subprocess.run(
            ["nix-build", "--option", "substituters", "", "--no-out-link",
             "-E", expression],
            capture_output=True, check=True, text=True)
        self.store_path = built.stdout.strip()
        self.output = self.mktemp()
        os.makedirs(self.output)

    def test_store_path_layer(self) -> None:
        """Store modes, hard links and symlinks of a real path are kept."""
        blob = write_store_layer([self.store_path], self.output)
        members = {member.name: member for member in read_members(blob)}
        top = self.store_path.lstrip("/")
        self.assertEqual(sorted(members),
                         ["nix", "nix/store", top, top + "/d", top + "/d/x",
                          top + "/f", top + "/g", top + "/s"])
        self.assertEqual(members[top + "/f"].mode, 0o444)
        self.assertEqual(members[top + "/d/x"].mode, 0o555)
        self.assertEqual(members[top + "/d"].mode, 0o555)
        self.assertTrue(members[top + "/g"].islnk())
        self.assertEqual(members[top + "/g"].linkname, top + "/f")
        self.assertEqual(members[top + "/s"].linkname, "f")
        self.assertEqual(read_content(blob, top + "/f"), b"hi\n")
        again = write_store_layer([self.store_path], self.output)
        self.assertEqual(file_bytes(blob.path), file_bytes(again.path))

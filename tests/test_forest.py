"""
Tests for :mod:`nixeryd.build.forest`: the customisation layer built from real
directories standing in for store paths.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.build.archive import TreeEntry, write_tree_layer
from nixeryd.testing.nix import FakeStore, Symlink
from nixeryd.build.forest import CA_BUNDLE, Customisation, build_customisation


def by_name(custom: Customisation) -> dict[str, TreeEntry]:
    """The customisation's entries keyed by name."""
    return {entry.name: entry for entry in custom.entries}


class CustomisationTests(SynchronousTestCase):
    """:func:`build_customisation`."""

    def setUp(self) -> None:
        self.store = FakeStore(os.path.abspath(self.mktemp()))

    def test_merges_directories(self) -> None:
        """Directories of several packages merge; files become links to their store location."""
        git = self.store.add("git", {"bin/git": b"g", "share/man/git.1": b"m"})
        htop = self.store.add("htop", {"bin/htop": b"h", "share/doc/htop": b"d"})
        entries = by_name(build_customisation([git, htop]))
        for directory in ("bin", "share", "share/man", "share/doc"):
            self.assertEqual((entries[directory].kind, entries[directory].mode),
                             ("dir", 0o755), directory)
        self.assertEqual(entries["bin/git"],
                         TreeEntry("bin/git", "symlink", 0o777, target=git + "/bin/git"))
        self.assertEqual(entries["bin/htop"].target, htop + "/bin/htop")
        self.assertEqual(entries["share/doc/htop"].target, htop + "/share/doc/htop")

    def test_first_package_wins(self) -> None:
        """When two packages provide the same file, the first one given owns it."""
        first = self.store.add("first", {"bin/tool": b"1", "lib": Symlink("x")})
        second = self.store.add("second", {"bin/tool": b"2", "lib/libz.so": b"z"})
        entries = by_name(build_customisation([first, second]))
        self.assertEqual(entries["bin/tool"].target, first + "/bin/tool")
        self.assertEqual(entries["lib"].target, first + "/lib")
        self.assertNotIn("lib/libz.so", entries)
        entries = by_name(build_customisation([second, first]))
        self.assertEqual(entries["bin/tool"].target, second + "/bin/tool")
        self.assertEqual(entries["lib"].kind, "dir")
        self.assertIn("lib/libz.so", entries)

    def test_symlinks_are_leaves(self) -> None:
        """A symlink in a package, even to a directory, becomes one link, not merged into."""
        package = self.store.add("pkg", {"real/file": b"f", "alias": Symlink("real"),
                                         "bin/sh": Symlink("busybox")})
        entries = by_name(build_customisation([package]))
        self.assertEqual(entries["alias"].kind, "symlink")
        self.assertEqual(entries["alias"].target, package + "/alias")
        self.assertEqual(entries["bin/sh"].target, package + "/bin/sh")
        self.assertNotIn("alias/file", entries)

    def test_tmp(self) -> None:
        """The image has a world-writable, sticky ``/tmp`` directory."""
        package = self.store.add("pkg", {"bin/tool": b"t"})
        for custom in (build_customisation([package]), build_customisation([])):
            self.assertEqual(by_name(custom)["tmp"], TreeEntry("tmp", "dir", 0o1777))

    def test_tmp_from_package(self) -> None:
        """``/tmp`` stays a 1777 directory when a package ships its own ``tmp``."""
        as_directory = self.store.add("a", {"tmp/note": b"n"})
        as_link = self.store.add("b", {"tmp": Symlink("/elsewhere")})
        for package in (as_directory, as_link):
            entries = by_name(build_customisation([package]))
            self.assertEqual(entries["tmp"], TreeEntry("tmp", "dir", 0o1777))
        self.assertIn("tmp/note", by_name(build_customisation([as_directory])))

    def test_usr_bin_env(self) -> None:
        """``/usr/bin/env`` links to the image's own ``bin/env`` when there is one."""
        coreutils = self.store.add("coreutils", {"bin/env": b"e", "bin/ls": b"l"})
        entries = by_name(build_customisation([coreutils]))
        self.assertEqual(entries["usr/bin/env"],
                         TreeEntry("usr/bin/env", "symlink", 0o777,
                                   target=coreutils + "/bin/env"))
        self.assertEqual((entries["usr"].kind, entries["usr/bin"].kind), ("dir", "dir"))

    def test_no_usr_bin_env_without_env(self) -> None:
        """Without a ``bin/env`` in the image there is no ``/usr/bin/env`` at all."""
        hello = self.store.add("hello", {"bin/hello": b"h"})
        entries = by_name(build_customisation([hello]))
        self.assertNotIn("usr/bin/env", entries)
        self.assertNotIn("usr", entries)

    def test_no_usr_bin_env_to_dangling_env(self) -> None:
        """A package's dangling ``bin/env`` link is not linked again from ``/usr/bin/env``."""
        broken = self.store.add("broken", {"bin/env": Symlink("../libexec/missing")})
        self.assertNotIn("usr/bin/env", by_name(build_customisation([broken])))

    def test_usr_bin_env_through_links(self) -> None:
        """A ``bin/env`` that is a link resolving inside its package is used."""
        busybox = self.store.add("busybox", {"bin/busybox": b"b",
                                             "bin/env": Symlink("busybox")})
        self.assertEqual(by_name(build_customisation([busybox]))["usr/bin/env"].target,
                         busybox + "/bin/env")

    def test_package_usr_bin_env_kept(self) -> None:
        """A package's own ``usr/bin/env`` is kept rather than replaced."""
        package = self.store.add("pkg", {"bin/env": b"e", "usr/bin/env": b"u"})
        entries = by_name(build_customisation([package]))
        self.assertEqual(entries["usr/bin/env"].target, package + "/usr/bin/env")

    def test_usr_link_not_written_through(self) -> None:
        """A package's ``usr`` symlink is left alone: no ``usr/bin/env`` below it."""
        package = self.store.add("pkg", {"bin/env": b"e", "usr": Symlink(".")})
        entries = by_name(build_customisation([package]))
        self.assertEqual(entries["usr"].kind, "symlink")
        self.assertNotIn("usr/bin", entries)
        self.assertNotIn("usr/bin/env", entries)

    def test_passwd_and_group_added(self) -> None:
        """Minimal ``/etc/passwd`` and ``/etc/group`` with root are added when missing."""
        hello = self.store.add("hello", {"bin/hello": b"h"})
        entries = by_name(build_customisation([hello]))
        self.assertEqual(entries["etc"].kind, "dir")
        self.assertEqual((entries["etc/passwd"].kind, entries["etc/passwd"].mode),
                         ("file", 0o644))
        self.assertTrue(entries["etc/passwd"].content.startswith(b"root:x:0:0:"))
        self.assertTrue(entries["etc/group"].content.startswith(b"root:x:0:"))

    def test_passwd_from_package(self) -> None:
        """A package's ``etc/passwd`` is used; only the missing ``etc/group`` is added."""
        users = self.store.add("users", {"etc/passwd": b"me:x:1:1::/:/bin/sh\n"})
        entries = by_name(build_customisation([users]))
        self.assertEqual(entries["etc/passwd"].kind, "symlink")
        self.assertEqual(entries["etc/passwd"].target, users + "/etc/passwd")
        self.assertEqual(entries["etc/group"].kind, "file")

    def test_path(self) -> None:
        """PATH lists only the candidate directories the image has, in order."""
        tools = self.store.add("tools", {"sbin/init": b"i", "bin/sh": b"s"})
        linked = self.store.add("linked", {"real/tool": b"t", "usr/bin": Symlink("../real")})
        self.assertEqual(build_customisation([tools]).path, ("/bin", "/sbin"))
        self.assertEqual(build_customisation([self.store.add("none", {"lib/x": b""})]).path,
                         ())
        self.assertEqual(build_customisation([tools, linked]).path,
                         ("/bin", "/sbin", "/usr/bin"))

    def test_path_ignores_dangling_links(self) -> None:
        """A ``bin`` symlink that does not lead to a directory is not on the PATH."""
        package = self.store.add("pkg", {"bin": Symlink("missing")})
        self.assertEqual(build_customisation([package]).path, ())

    def test_ca_bundle(self) -> None:
        """The CA bundle is found when a package provides it, and only then."""
        cacert = self.store.add("nss-cacert", {CA_BUNDLE: b"-----BEGIN"})
        hello = self.store.add("hello", {"bin/hello": b"h"})
        self.assertEqual(build_customisation([hello, cacert]).ca_bundle,
                         "/etc/ssl/certs/ca-bundle.crt")
        self.assertIsNone(build_customisation([hello]).ca_bundle)

    def test_file_output_ignored(self) -> None:
        """A package whose output is a single file adds nothing to the tree."""
        single = self.store.add_file("single", b"content")
        hello = self.store.add("hello", {"bin/hello": b"h"})
        self.assertEqual(build_customisation([single, hello]),
                         build_customisation([hello]))

    def test_sorted_and_writable(self) -> None:
        """Entries are sorted, unique, and form a valid tree layer."""
        git = self.store.add("git", {"bin/git": b"g", "bin/env": b"e"})
        cacert = self.store.add("nss-cacert", {CA_BUNDLE: b"c"})
        custom = build_customisation([git, cacert])
        names = [entry.name for entry in custom.entries]
        self.assertEqual(names, sorted(set(names)))
        output = os.path.abspath(self.mktemp())
        os.makedirs(output)
        blob = write_tree_layer(custom.entries, output)
        self.assertTrue(os.path.exists(blob.path))

    def test_deterministic(self) -> None:
        """The same packages give the same customisation."""
        git = self.store.add("git", {"bin/git": b"g", "share/a/b": b"", "share/c": b""})
        self.assertEqual(build_customisation([git]), build_customisation([git]))

"""
Tests for :mod:`nixeryd.build.names`: image names to package lists, and the
name and tag grammars.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.core.errors import ManifestUnknown, NameInvalid
from nixeryd.build.names import (
    AMD64,
    ARM64,
    MAX_NAME_LENGTH,
    SHELL_PACKAGES,
    parse_image_name,
    validate_name,
    validate_tag,
)


class MetaPackageTests(SynchronousTestCase):
    """The ``shell`` and ``arm64`` components."""

    def test_shell_expands(self) -> None:
        """``shell`` adds the interactive shell packages and sets the shell flag."""
        request = parse_image_name("shell")
        self.assertEqual(request.packages,
                         ("bashInteractive", "coreutils", "moreutils", "nano"))
        self.assertTrue(request.shell)
        self.assertEqual(request.arch, AMD64)

    def test_shell_with_packages(self) -> None:
        """``shell`` merges with other packages into one sorted list."""
        request = parse_image_name("shell/htop/git")
        self.assertEqual(request.packages, tuple(sorted(SHELL_PACKAGES + ("git", "htop"))))
        self.assertTrue(request.shell)

    def test_no_shell(self) -> None:
        """A name without ``shell`` has no shell flag and only its packages."""
        request = parse_image_name("git")
        self.assertEqual(request.packages, ("git",))
        self.assertFalse(request.shell)

    def test_arm64_any_position(self) -> None:
        """``arm64`` selects ARM64 at the start, middle or end, and is no package."""
        for name in ("arm64/hello/git", "hello/arm64/git", "hello/git/arm64"):
            request = parse_image_name(name)
            self.assertEqual(request.arch, ARM64, name)
            self.assertEqual(request.packages, ("git", "hello"), name)

    def test_default_arch(self) -> None:
        """Without ``arm64`` the image is for amd64."""
        self.assertEqual(parse_image_name("hello").arch, AMD64)
        self.assertEqual(AMD64.nix_system, "x86_64-linux")
        self.assertEqual(ARM64.oci_arch, "arm64")

    def test_only_meta_packages(self) -> None:
        """A name made only of meta-packages is valid."""
        request = parse_image_name("arm64")
        self.assertEqual(request.packages, ())
        self.assertEqual(request.arch, ARM64)
        self.assertEqual(parse_image_name("shell/arm64").packages,
                         tuple(sorted(SHELL_PACKAGES)))


class OrderingTests(SynchronousTestCase):
    """Sorting, de-duplication and the request key."""

    def test_order_does_not_matter(self) -> None:
        """``a/b`` and ``b/a`` ask for the same packages and have the same key."""
        first, second = parse_image_name("a/b"), parse_image_name("b/a")
        self.assertEqual(first.packages, ("a", "b"))
        self.assertEqual(first.packages, second.packages)
        self.assertEqual(first.key(), second.key())

    def test_name_is_kept(self) -> None:
        """The request keeps the name exactly as written."""
        self.assertEqual(parse_image_name("b/a").name, "b/a")

    def test_duplicates_removed(self) -> None:
        """``git/git`` asks for git once."""
        self.assertEqual(parse_image_name("git/git").packages, ("git",))
        self.assertEqual(parse_image_name("git/git").key(), parse_image_name("git").key())

    def test_key_differs_by_arch(self) -> None:
        """The same packages for arm64 have a different key."""
        self.assertNotEqual(parse_image_name("hello").key(),
                            parse_image_name("arm64/hello").key())

    def test_key_differs_by_packages(self) -> None:
        """Different package sets have different keys."""
        self.assertNotEqual(parse_image_name("a/b").key(), parse_image_name("a").key())
        self.assertNotEqual(parse_image_name("a.b").key(), parse_image_name("a/b").key())

    def test_key_differs_for_shell(self) -> None:
        """``shell`` (which runs bash) and its spelled-out packages are different images."""
        self.assertNotEqual(
            parse_image_name("shell").key(),
            parse_image_name("bashinteractive/coreutils/moreutils/nano").key())


class NameGrammarTests(SynchronousTestCase):
    """What :func:`validate_name` accepts and refuses."""

    def test_valid_components(self) -> None:
        """Dotted, digit-leading and separated components are accepted."""
        for name in ("xorg.libx11", "7zz", "python3packages.pyyaml", "a-b", "a--b",
                     "a_b", "a__b", "0", "a/b/c", "x" * MAX_NAME_LENGTH):
            self.assertEqual(validate_name(name), name.split("/"), name)

    def test_refused(self) -> None:
        """Empty names and components, dot components, uppercase and odd characters are refused."""
        for name in ("", "a//b", "/a", "a/", "..", ".", "a/../b", "a/./b",
                     "Hello", "gtk+", "a_-b", "a.", ".a", "-a", "a_", "a___b",
                     "a b", "a:b", "a@b", "caf\u00e9", "\u0661", "a\n"):
            self.assertRaises(NameInvalid, validate_name, name)
            self.assertRaises(NameInvalid, parse_image_name, name)

    def test_too_long(self) -> None:
        """A name of 256 characters is refused, even if every component is valid."""
        name = "/".join(["abc"] * 64)
        self.assertEqual(len(name), MAX_NAME_LENGTH)
        validate_name(name)
        self.assertRaises(NameInvalid, validate_name, name + "d")

    def test_error_code(self) -> None:
        """The refusal carries the registry's NAME_INVALID code and status 400."""
        error = self.assertRaises(NameInvalid, validate_name, "a//b")
        self.assertEqual((error.code, error.status), ("NAME_INVALID", 400))


class TagGrammarTests(SynchronousTestCase):
    """What :func:`validate_tag` accepts and refuses."""

    def test_valid(self) -> None:
        """Common tags and a 128-character tag are accepted and returned."""
        for tag in ("latest", "v1.2-rc_3", "_x", "0", "A" * 128,
                    "0123456789abcdef0123456789abcdef01234567"):
            self.assertEqual(validate_tag(tag), tag)

    def test_invalid(self) -> None:
        """Empty, too long, dot- or dash-led tags and foreign characters are unknown manifests."""
        for tag in ("", "a" * 129, ".a", "-a", "a:b", "a/b", "a b", "caf\u00e9",
                    "latest\n"):
            self.assertRaises(ManifestUnknown, validate_tag, tag)

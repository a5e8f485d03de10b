"""
Tests for :mod:`nixeryd.registry.routes`.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.core.errors import DigestInvalid, ManifestUnknown, NameInvalid
from nixeryd.build.names import MAX_NAME_LENGTH
from nixeryd.registry.routes import (
    Blob,
    ManifestByDigest,
    ManifestByTag,
    Ping,
    RouteUnknown,
    TagsList,
    check_name,
    is_tag,
    parse_v2_path,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4


def segments(path: str) -> list[bytes]:
    """Split a path after /v2 the way Twisted fills ``postpath``."""
    return [part.encode("utf-8") for part in path.split("/")]


class PingTests(SynchronousTestCase):
    """The version check."""

    def test_slash(self) -> None:
        """``/v2/`` (postpath ``[b""]``) is the ping."""
        self.assertEqual(parse_v2_path([b""]), Ping())

    def test_no_slash(self) -> None:
        """``/v2`` (postpath ``[]``) is the ping too."""
        self.assertEqual(parse_v2_path([]), Ping())


class RouteTests(SynchronousTestCase):
    """Paths are read from the right; the rest is the name."""

    def test_manifest_by_tag(self) -> None:
        """A multi-component name and a tag give a tag route."""
        self.assertEqual(parse_v2_path(segments("shell/git/manifests/latest")),
                         ManifestByTag("shell/git", "latest"))

    def test_manifest_by_digest(self) -> None:
        """A sha256 reference gives a digest route."""
        self.assertEqual(parse_v2_path(segments("hello/manifests/" + DIGEST)),
                         ManifestByDigest("hello", DIGEST))

    def test_blob(self) -> None:
        """``blobs/<digest>`` gives a blob route."""
        self.assertEqual(parse_v2_path(segments("a/b/c/blobs/" + DIGEST)),
                         Blob("a/b/c", DIGEST))

    def test_tags_list(self) -> None:
        """``tags/list`` gives a tags route."""
        self.assertEqual(parse_v2_path(segments("shell/tags/list")),
                         TagsList("shell"))

    def test_keyword_names(self) -> None:
        """Name components equal to route keywords are still names."""
        self.assertEqual(parse_v2_path(segments("manifests/blobs/manifests/tags")),
                         ManifestByTag("manifests/blobs", "tags"))

    def test_unknown_routes(self) -> None:
        """Paths naming no operation are RouteUnknown (404 UNSUPPORTED)."""
        for path in ("_catalog", "x/y", "shell/git/tags/list/",
                     "shell/blobs/uploads/", "shell/tags/all"):
            with self.subTest(path=path):
                error = self.assertRaises(RouteUnknown, parse_v2_path, segments(path))
                self.assertEqual((error.code, error.status), ("UNSUPPORTED", 404))

    def test_missing_name(self) -> None:
        """A route keyword with an empty name is an invalid name."""
        self.assertRaises(NameInvalid, parse_v2_path, segments("/manifests/latest"))

    def test_not_utf8(self) -> None:
        """Segments that are not UTF-8 are refused as an invalid name."""
        self.assertRaises(NameInvalid, parse_v2_path,
                          [b"\xff", b"manifests", b"latest"])


class NameTests(SynchronousTestCase):
    """The spec's name grammar, checked per component."""

    def test_valid(self) -> None:
        """Separators ., _, __ and runs of - are allowed between alphanumerics."""
        for name in ("a", "shell/git", "xorg.xev", "a_b", "a__b", "a---b",
                     "python3.pkgs/numpy", "1password"):
            with self.subTest(name=name):
                self.assertEqual(check_name(name.split("/")), name)

    def test_invalid(self) -> None:
        """Uppercase, leading/trailing/double separators and dots are refused."""
        for name in ("Shell", "a..b", ".a", "a.", "-a", "a-", "a___b", "a+b",
                     "..", ".", "a/../b", "a//b", "a/", "a b", "é"):
            with self.subTest(name=name):
                self.assertRaises(NameInvalid, check_name, name.split("/"))

    def test_encoded_slash(self) -> None:
        """A segment holding a decoded %2F is refused, not split."""
        error = self.assertRaises(
            NameInvalid, parse_v2_path, [b"shell", b"a/b", b"manifests", b"latest"])
        self.assertEqual(error.status, 400)

    def test_length_limit(self) -> None:
        """Names up to the limit pass; one character more is refused."""
        longest = "/".join(["a" * 63] * 4)
        self.assertEqual(len(longest), MAX_NAME_LENGTH)
        self.assertEqual(check_name(longest.split("/")), longest)
        self.assertRaises(NameInvalid, check_name, (longest + "b").split("/"))

    def test_error_fields(self) -> None:
        """The error is NAME_INVALID with status 400."""
        error = self.assertRaises(NameInvalid, check_name, ["A"])
        self.assertEqual((error.code, error.status), ("NAME_INVALID", 400))


class ReferenceTests(SynchronousTestCase):
    """Tags and digests."""

    def test_tags(self) -> None:
        """The tag grammar: 1-128 of [A-Za-z0-9_.-], not starting with . or -."""
        for tag in ("latest", "v1.2", "_x", "A-b_c.d", "a" * 128):
            with self.subTest(tag=tag):
                self.assertTrue(is_tag(tag))
        for tag in ("", ".x", "-x", "a" * 129, "a:b", "a/b", "a b"):
            with self.subTest(tag=tag):
                self.assertFalse(is_tag(tag))

    def test_digests(self) -> None:
        """Only sha256 with 64 lowercase hex characters is a valid blob digest."""
        self.assertEqual(parse_v2_path(segments("a/blobs/" + DIGEST)), Blob("a", DIGEST))
        for bad in ("sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha256:" + "a" * 65,
                    "sha512:" + "a" * 128, "sha256", "a" * 64, "sha256:" + "g" * 64,
                    DIGEST + "\n"):
            with self.subTest(digest=bad):
                error = self.assertRaises(DigestInvalid, parse_v2_path,
                                          segments("a/blobs/" + bad))
                self.assertEqual((error.code, error.status), ("DIGEST_INVALID", 400))

    def test_blob_needs_digest(self) -> None:
        """A blob path with a non-digest is DIGEST_INVALID."""
        self.assertRaises(DigestInvalid, parse_v2_path, segments("a/blobs/latest"))

    def test_bad_manifest_digest(self) -> None:
        """A manifest reference with an algorithm prefix must be a valid digest."""
        for reference in ("sha256:abc", "sha512:" + "a" * 128, "md5:x"):
            with self.subTest(reference=reference):
                self.assertRaises(DigestInvalid, parse_v2_path,
                                  segments("a/manifests/" + reference))

    def test_invalid_tag(self) -> None:
        """A reference that is neither tag nor digest is MANIFEST_UNKNOWN (404)."""
        error = self.assertRaises(ManifestUnknown, parse_v2_path,
                                  segments("a/manifests/.hidden"))
        self.assertEqual((error.code, error.status), ("MANIFEST_UNKNOWN", 404))

    def test_name_checked_before_reference(self) -> None:
        """A bad name is reported even when the reference is bad too."""
        self.assertRaises(NameInvalid, parse_v2_path, segments("A/blobs/nope"))

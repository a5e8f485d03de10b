"""
Tests for :mod:`nixeryd.registry.ranges`.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.registry.ranges import ByteRange, RangeNotSatisfiable, etag_matches, parse_range


class RangeParsingTests(SynchronousTestCase):
    """:func:`parse_range`."""

    def test_forms(self) -> None:
        """a-b, a- and -n select the expected bytes, clipped to the size."""
        self.assertEqual(parse_range(b"bytes=0-9", 100), ByteRange(0, 9))
        self.assertEqual(parse_range(b"bytes=10-", 100), ByteRange(10, 99))
        self.assertEqual(parse_range(b"bytes=-7", 100), ByteRange(93, 99))
        self.assertEqual(parse_range(b"bytes=-700", 100), ByteRange(0, 99))
        self.assertEqual(parse_range(b"bytes=90-1000", 100), ByteRange(90, 99))
        self.assertEqual(parse_range(b"Bytes = 1 - 1", 100), ByteRange(1, 1))

    def test_ignored(self) -> None:
        """Malformed, multiple and other-unit ranges mean the whole blob."""
        for value in (b"bytes=5-1", b"bytes=0-1,5-6", b"items=0-1", b"bytes=-",
                      b"bytes=a-b", b"bytes=0-1x", b""):
            with self.subTest(value=value):
                self.assertIsNone(parse_range(value, 100))

    def test_unsatisfiable(self) -> None:
        """Ranges starting at or past the end, or empty suffixes, are refused."""
        for value, size in ((b"bytes=100-", 100), (b"bytes=100-200", 100),
                            (b"bytes=-0", 100), (b"bytes=-5", 0), (b"bytes=0-", 0)):
            with self.subTest(value=value, size=size):
                self.assertRaises(RangeNotSatisfiable, parse_range, value, size)



class EtagMatchingTests(SynchronousTestCase):
    """:func:`etag_matches`."""

    def test_matches(self) -> None:
        """The tag itself, its weak form and ``*`` match, in any list position."""
        for value in (b'"d"', b'W/"d"', b"*", b'"x", "d"', b' "x" , W/"d" '):
            with self.subTest(value=value):
                self.assertTrue(etag_matches(value, b'"d"'))

    def test_no_match(self) -> None:
        """Other tags, and the tag without its quotes, do not match."""
        for value in (b'"x"', b"d", b"", b'"d', b'"x", "y"'):
            with self.subTest(value=value):
                self.assertFalse(etag_matches(value, b'"d"'))

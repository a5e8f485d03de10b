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


    def test_positions_of_any_length(self) -> None:
        """
        Positions of thousands of digits are read without converting them
        (Python refuses more than 4300): past the end of any blob, or the
        number their leading zeros hide.
        """
        huge = b"9" * 5000
        zeros = b"0" * 5000
        self.assertRaises(RangeNotSatisfiable, parse_range, b"bytes=" + huge + b"-", 100)
        self.assertRaises(RangeNotSatisfiable, parse_range,
                          b"bytes=" + huge + b"-" + huge, 100)
        self.assertEqual(parse_range(b"bytes=5-" + huge, 100), ByteRange(5, 99))
        self.assertEqual(parse_range(b"bytes=-" + huge, 100), ByteRange(0, 99))
        self.assertIsNone(parse_range(b"bytes=" + huge + b"-5", 100))
        self.assertEqual(parse_range(b"bytes=" + zeros + b"7-" + zeros + b"9", 100),
                         ByteRange(7, 9))
        self.assertRaises(RangeNotSatisfiable, parse_range, b"bytes=-" + zeros, 100)
        self.assertEqual(parse_range(b"bytes=%d-" % (10 ** 18 - 1,), 10 ** 18),
                         ByteRange(10 ** 18 - 1, 10 ** 18 - 1))


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

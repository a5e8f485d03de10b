"""
Tests for ``tags/list`` and :mod:`nixeryd.registry.pagination`.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IResponse

from nixeryd.registry.pagination import paginate
from tests.registrycases import StubRegistryTestCase, content_length, header


class TagsTests(StubRegistryTestCase):
    """``tags/list`` and its pagination."""

    def setUp(self) -> None:
        super().setUp()
        self.images.tag_lists["shell/git"] = ["latest", "b", "a", "c"]

    def get(self, query: str = "") -> tuple[IResponse, dict[str, Any]]:
        response, body = self.fetch(b"GET", "/v2/shell/git/tags/list" + query)
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, b"content-type"), b"application/json")
        self.assertEqual(content_length(response), len(body))
        return response, json.loads(body)

    def test_all(self) -> None:
        """Without n, every tag is listed, sorted, and no Link is sent."""
        response, document = self.get()
        self.assertEqual(document, {"name": "shell/git",
                                    "tags": ["a", "b", "c", "latest"]})
        self.assertIsNone(header(response, b"link"))

    def test_pages(self) -> None:
        """n limits the page and Link names the next one until the end."""
        response, document = self.get("?n=2")
        self.assertEqual(document["tags"], ["a", "b"])
        self.assertEqual(header(response, b"link"),
                         b'</v2/shell/git/tags/list?n=2&last=b>; rel="next"')
        response, document = self.get("?n=2&last=b")
        self.assertEqual(document["tags"], ["c", "latest"])
        self.assertIsNone(header(response, b"link"))

    def test_zero(self) -> None:
        """n=0 gives an empty list."""
        response, document = self.get("?n=0")
        self.assertEqual(document["tags"], [])
        self.assertIsNone(header(response, b"link"))

    def test_last_only(self) -> None:
        """last alone lists the tags after it."""
        _, document = self.get("?last=bb")
        self.assertEqual(document["tags"], ["c", "latest"])

    def test_bad_n(self) -> None:
        """An n that is not a non-negative integer is a 400 error."""
        for query in ("?n=-1", "?n=x", "?n=1.5"):
            with self.subTest(query=query):
                response, body = self.fetch(b"GET", "/v2/shell/git/tags/list" + query)
                self.assert_error(response, body, 400, "UNSUPPORTED")


class PaginateTests(SynchronousTestCase):
    """:func:`paginate` on its own."""

    def test_exact_fit(self) -> None:
        """A page that ends exactly at the last tag has no next page."""
        self.assertEqual(paginate(["a", "b"], "2", None), (["a", "b"], None))

    def test_next_query(self) -> None:
        """The next query carries n and the last tag of the page."""
        self.assertEqual(paginate(["a", "b", "c"], "1", "a"), (["b"], "n=1&last=b"))

    def test_next_query_quoted(self) -> None:
        """The last tag is percent-encoded in the next query."""
        self.assertEqual(paginate(["a+b", "c"], "1", None), (["a+b"], "n=1&last=a%2Bb"))

    def test_huge_n(self) -> None:
        """An ``n`` of thousands of digits means every tag, not an error."""
        self.assertEqual(paginate(["a", "b"], "9" * 5000, None), (["a", "b"], None))

    def test_leading_zeros(self) -> None:
        """Leading zeros count for nothing, however many there are."""
        self.assertEqual(paginate(["a", "b"], "0" * 5000, None), ([], None))
        self.assertEqual(paginate(["a", "b"], "0" * 5000 + "1", None), (["a"], "n=1&last=a"))

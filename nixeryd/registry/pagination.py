"""
Pages of a ``tags/list`` answer: :func:`paginate` applies the ``n`` and
``last`` query parameters as the distribution spec describes.  Pure.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Optional
from urllib.parse import quote

from nixeryd.core.errors import Unsupported


class PaginationInvalid(Unsupported):
    """A ``tags/list`` ``n`` parameter that is not a non-negative integer."""

    status = 400


def paginate(tags: list[str], n: Optional[str],
             last: Optional[str]) -> tuple[list[str], Optional[str]]:
    """
    One page of a sorted tag list.

    :param tags: every tag, sorted.
    :param n: the ``n`` query parameter (page size), if given; ``0`` gives
        an empty page.
    :param last: the ``last`` query parameter: the page starts after it.
    :return: the page, and the query string of the next page if there are
        more tags after it.
    :raises PaginationInvalid: if ``n`` is not a non-negative integer.
    """
    start = bisect_right(tags, last) if last is not None else 0
    remaining = tags[start:]
    if n is None:
        return remaining, None
    if not n.isdigit() or not n.isascii():
        raise PaginationInvalid("n must be a non-negative integer", {"n": n[:50]})
    # Any n past the number of tags means "all of them"; capping the digits
    # (after leading zeros) keeps int() cheap and within Python's
    # conversion limit.
    significant = n.lstrip("0")
    size = int(significant or "0") if len(significant) <= 9 else 10 ** 9
    page = remaining[:size]
    if size and len(remaining) > size:
        return page, "n=%d&last=%s" % (size, quote(page[-1], safe=""))
    return page, None

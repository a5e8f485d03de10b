"""
What every request to S3 shares: the error raised for an unexpected
answer, with S3's error code (``SignatureDoesNotMatch``, ``NoSuchBucket``,
...), and the reading of S3's XML answers.

The body limit for small answers, the request timeout and the retry
policy are those of the Cloud Storage backend
(:func:`~nixeryd.storage.gcs.http.drain`,
:func:`~nixeryd.storage.gcs.http.cancel_after`,
:class:`~nixeryd.storage.gcs.retry.Retrier`): the two backends retry and
time out alike.

Only a 404 means "missing" to the callers; any other unexpected status
(403 for a wrong key or missing permissions, 5xx, ...) becomes an
:class:`S3Error`, so that a misconfigured bucket never looks empty.
"""

from __future__ import annotations

from typing import Iterator
from xml.etree import ElementTree

from twisted.web.iweb import IResponse

from nixeryd.core.httpbody import BodyTooLarge
from nixeryd.storage.gcs.http import drain

#: S3 error codes that say the credentials themselves are wrong: a
#: configuration error, not an outage.
CREDENTIAL_ERRORS = frozenset({"SignatureDoesNotMatch", "InvalidAccessKeyId",
                               "InvalidToken", "InvalidSecurity", "AuthorizationHeaderMalformed"})


class S3Error(Exception):
    """
    S3 (or a credential endpoint) answered something unexpected.

    :ivar status: the HTTP status, or ``None`` for a failure without one.
    :ivar code: S3's error code from the XML body, when there was one.
    """

    def __init__(self, message: str, status: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class PreconditionFailed(Exception):
    """An ``If-Match``/``If-None-Match`` condition did not hold (HTTP 412 or 409)."""


def local_name(tag: str) -> str:
    """An XML tag without its namespace, ``{ns}Key`` → ``Key``."""
    return tag.rpartition("}")[2]


def parse_xml(body: bytes) -> ElementTree.Element:
    """
    An S3 XML answer's root element.

    :raises S3Error: when it is not XML.
    """
    try:
        return ElementTree.fromstring(body)
    except ElementTree.ParseError as e:
        raise S3Error("S3 answered with malformed XML: %s" % (e,)) from None


def children(element: ElementTree.Element, name: str) -> Iterator[ElementTree.Element]:
    """The child elements called ``name``, whatever their namespace."""
    return (child for child in element if local_name(child.tag) == name)


def child_text(element: ElementTree.Element, name: str, default: str = "") -> str:
    """The text of the first child called ``name``, or ``default``."""
    for child in children(element, name):
        return child.text or ""
    return default


def error_from_xml(body: bytes) -> tuple[str | None, str]:
    """S3's error code and message in an ``<Error>`` body, if it is one."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None, ""
    if local_name(root.tag) != "Error":
        return None, ""
    return child_text(root, "Code") or None, child_text(root, "Message")


async def error_for(response: IResponse, what: str) -> S3Error:
    """An :class:`S3Error` describing an unexpected answer (body drained)."""
    try:
        body = await drain(response)
    except BodyTooLarge:
        body = b""
    code, detail = error_from_xml(body)
    message = "%s: S3 answered HTTP %d" % (what, response.code)
    if code is not None:
        message += ": " + code
        if detail:
            message += " (%s)" % (" ".join(detail.split())[:300],)
    elif body.strip():
        message += ": " + " ".join(body.decode("utf-8", "replace").split())[:300]
    return S3Error(message, response.code, code)

"""
Property-based tests of the whole resource tree: generated requests (names,
tags, digests, ranges, query strings, headers, methods, paths of the pages)
sent as raw bytes to a real channel of the real site, over an image service
holding a sample image and a build history holding a running build.

Whatever the request, no response is a 5xx and nothing is logged as an
error: a malformed request is the client's mistake, told with a 4xx.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from nixeryd.registry.connections import ConnectionLimits
from nixeryd.service.builds import BuildHistory, BuildPhase
from nixeryd.testing.images import FakeImageService, write_sample_image
from tests.connectioncases import connect, limited_site, statuses

GONE = Failure(ConnectionDone())

#: Hypothesis's own settings for these tests: no example database (the
#: tests run from a temporary directory), no deadline per example (the
#: machine may be busy), a few hundred requests per property.
EXAMPLES = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

LIMITS = ConnectionLimits(head_timeout=10.0, idle_timeout=30.0, stall_timeout=60.0,
                          per_client=1000, total=1000)

_HEX = "0123456789abcdef"
_HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=255,
                                     exclude_characters="\r\n"), max_size=60)
#: Numbers as text: small, around 2**63, and longer than Python converts
#: (4300 digits), also as leading zeros before a small number.
_LENGTHS = st.one_of(st.integers(1, 40), st.sampled_from([4299, 4300, 4301, 5000]))
_DIGITS = st.one_of(st.integers(0, 10 ** 20).map(str),
                    _LENGTHS.map(lambda n: "9" * n),
                    _LENGTHS.map(lambda n: "0" * n + "7"))
_ANY_TEXT = st.text(max_size=40)

COMPONENTS = st.from_regex(r"[a-z0-9]+(?:[._-][a-z0-9]+)*", fullmatch=True)
NAMES = st.one_of(
    st.just("shell/git"),
    st.lists(COMPONENTS, min_size=1, max_size=4).map("/".join),
    st.text(alphabet="aZ09/._-:%~", max_size=40),
    _ANY_TEXT,
    st.integers(200, 400).map(lambda n: "a" * n),
)
TAGS = st.one_of(
    st.just("latest"),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True),
    st.integers(129, 300).map(lambda n: "t" * n),
    _ANY_TEXT,
)


def digests(real: list[str]) -> st.SearchStrategy[str]:
    """Digests: real ones, well-formed unknown ones, malformed ones."""
    return st.one_of(
        st.sampled_from(real),
        st.text(alphabet=_HEX, min_size=64, max_size=64).map(lambda h: "sha256:" + h),
        st.text(alphabet=_HEX + "ABCDEFXYZ", max_size=130).map(lambda h: "sha256:" + h),
        st.tuples(st.sampled_from(["sha512", "md5", "SHA256", "", "sha256+x"]),
                  st.text(alphabet=_HEX, max_size=128)).map(":".join),
        _ANY_TEXT,
    )


RANGES = st.one_of(
    st.tuples(_DIGITS | st.just(""), _DIGITS | st.just("")).map(
        lambda r: "bytes=%s-%s" % r),
    st.tuples(st.sampled_from(["bytes", "Bytes", "items", " bytes "]), _HEADER_TEXT).map(
        "=".join),
    _HEADER_TEXT,
)

QUERIES = st.lists(
    st.tuples(st.sampled_from(["n", "last", "after", "x", "n[]", ""]),
              st.one_of(_DIGITS, _ANY_TEXT, st.just("-1"), st.just("1e9"))),
    max_size=4,
).map(lambda pairs: "&".join(quote(k, safe="") + "=" + quote(v, safe="") for k, v in pairs))

HEADER_NAMES = st.sampled_from([
    "Range", "If-None-Match", "If-Range", "Accept", "Host", "Last-Event-ID",
    "Connection", "Content-Length", "Accept-Encoding", "Authorization", "X-Anything",
])

HEADERS = st.lists(
    st.tuples(HEADER_NAMES, st.one_of(_HEADER_TEXT, RANGES, _DIGITS)), max_size=6)

METHODS = st.sampled_from(["GET", "GET", "GET", "HEAD", "HEAD", "POST", "PUT", "DELETE",
                           "OPTIONS", "PATCH", "TRACE", "BREW"])


def encode_path(text: str) -> str:
    """Percent-encode a generated path part as a client would."""
    return quote(text, safe="/:@!$&'()*+,;=")


def observe_errors(testcase: SynchronousTestCase) -> list[LogEvent]:
    """Every error or critical event, or event with a failure, until the test ends."""
    errors: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if "log_failure" in event or event.get("log_level") in (LogLevel.error,
                                                                   LogLevel.critical):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return errors


class RequestPropertyTests(SynchronousTestCase):
    """No generated request gets a 5xx or logs an error."""

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.images = FakeImageService()
        sample = write_sample_image(directory, {"bin/hello": os.urandom(2048)})
        self.images.add_sample_image("shell/git", "latest", sample)
        self.images.warm.add(("shell/git", "latest"))
        self.images.tag_lists["shell/git"] = ["latest", "1.0", "2.0", "a", "b"]
        self.real_digests = [blob.digest for blob in sample.blobs] + [
            sample.image.docker.digest, sample.image.oci.digest]
        self.clock = Clock()
        history = BuildHistory(self.clock)
        self.record = history.start(image="shell/git", tag="latest", packages=("git",),
                                    system="x86_64-linux", source="path /srv/pkgs",
                                    revision=None)
        self.record.enter(BuildPhase.BUILDING)
        self.record.add_log_line("building <git> & more")
        self.site, _ = limited_site(self.images, LIMITS, builds=history, clock=self.clock)
        self.errors = observe_errors(self)

    def answer(self, request: bytes) -> list[int]:
        """Send ``request`` on a new connection; the statuses answered."""
        channel, transport = connect(self.site, "10.0.0.9")
        try:
            channel.dataReceived(request)
            self.clock.advance(1)
            return statuses(transport.value())
        finally:
            channel.connectionLost(GONE)

    def check(self, request: bytes) -> None:
        """No 5xx, nothing logged as an error, no connection left counted."""
        codes = self.answer(request)
        self.assertEqual([code for code in codes if code >= 500], [], request[:300])
        self.assertEqual(self.errors, [], request[:300])
        self.assertEqual(self.site.connections.open, 0)

    def request(self, method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
        """A raw HTTP/1.1 request (a Host header unless one is given)."""
        lines = ["%s %s HTTP/1.1" % (method, target)]
        if not any(name.lower() == "host" for name, _ in headers):
            lines.append("Host: registry.test")
        lines += ["%s: %s" % (name, value) for name, value in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    @EXAMPLES
    @given(st.data())
    def test_manifests(self, data: st.DataObject) -> None:
        """Any name and tag or digest, any method and headers."""
        name = data.draw(NAMES)
        reference = data.draw(st.one_of(TAGS, digests(self.real_digests)))
        self.check(self.request(
            data.draw(METHODS), "/v2/%s/manifests/%s" % (encode_path(name),
                                                         encode_path(reference)),
            data.draw(HEADERS)))

    @EXAMPLES
    @given(st.data())
    def test_blobs(self, data: st.DataObject) -> None:
        """Any name and digest, with ranges and conditions of any shape."""
        name = data.draw(NAMES)
        digest = data.draw(digests(self.real_digests))
        headers = data.draw(HEADERS) + [("Range", data.draw(RANGES))]
        if data.draw(st.booleans()):
            headers.append(("If-Range", data.draw(st.one_of(
                st.sampled_from(['"%s"' % (d,) for d in self.real_digests]), _HEADER_TEXT))))
        self.check(self.request(
            data.draw(METHODS), "/v2/%s/blobs/%s" % (encode_path(name), encode_path(digest)),
            headers))

    @EXAMPLES
    @given(st.data())
    def test_blob_ranges(self, data: st.DataObject) -> None:
        """A blob that exists, asked for with any Range and conditions."""
        digest = data.draw(st.sampled_from(self.real_digests[:2]))
        headers = [("Range", data.draw(RANGES))]
        conditions = st.one_of(st.just('"%s"' % (digest,)), _HEADER_TEXT)
        for name in ("If-Range", "If-None-Match"):
            if data.draw(st.booleans()):
                headers.append((name, data.draw(conditions)))
        self.check(self.request(data.draw(st.sampled_from(["GET", "HEAD"])),
                                "/v2/shell/git/blobs/%s" % (digest,), headers))

    @EXAMPLES
    @given(st.data())
    def test_tags(self, data: st.DataObject) -> None:
        """Any name and query string."""
        name = data.draw(NAMES)
        query = data.draw(QUERIES)
        self.check(self.request(
            data.draw(METHODS), "/v2/%s/tags/list?%s" % (encode_path(name), query),
            data.draw(HEADERS)))

    @EXAMPLES
    @given(st.data())
    def test_pages(self, data: st.DataObject) -> None:
        """The pages, build pages and event streams, with any query and headers."""
        build = data.draw(st.one_of(st.just(self.record.id), _ANY_TEXT))
        target = data.draw(st.sampled_from([
            "/", "/builds/%s", "/builds/%s/log", "/builds/%s/events", "/builds/%s/x",
            "/v2/", "/v2", "/v2/_catalog", "/%s"]))
        if "%s" in target:
            target = target % (encode_path(build),)
        query = data.draw(QUERIES)
        headers = data.draw(HEADERS)
        if data.draw(st.booleans()):
            headers.append(("Last-Event-ID", data.draw(_DIGITS | _HEADER_TEXT)))
        self.check(self.request(data.draw(METHODS), target + ("?" + query if query else ""),
                                headers))

    @EXAMPLES
    @given(st.binary(max_size=300), st.booleans())
    def test_raw_bytes(self, raw: bytes, prefixed: bool) -> None:
        """Bytes that are barely, or not at all, HTTP."""
        if prefixed:
            raw = b"GET /v2/shell/git/" + raw
        self.check(raw + b"\r\n\r\n")

    def test_properties_can_fail(self) -> None:
        """The check sees a 5xx: a service failing unexpectedly is one."""
        self.images.failures["blob"] = RuntimeError("boom")
        digest = self.real_digests[0]
        self.assertRaises(self.failureException, self.check, self.request(
            "GET", "/v2/shell/git/blobs/%s" % (digest,), []))
        self.flushLoggedErrors(RuntimeError)
        del self.errors[:]

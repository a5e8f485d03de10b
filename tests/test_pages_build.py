"""
Tests for a build's page (:mod:`nixeryd.registry.pages.buildpage`) and
its plain-text log: what it shows, escaping, headers, 404s and HEAD.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.registry.pages import formats
from nixeryd.registry.pages.assets import SCRIPT, STYLE
from nixeryd.registry.pages.buildpage import phase_rows, state_document
from nixeryd.service.builds import BuildPhase
from tests.pagefixtures import PagesTestCase
from tests.registrycases import header


def element_text(body: bytes, element_id: str) -> str:
    """The text of the element with ``element_id``, as a browser shows it."""
    match = re.search(r'<(\w+)[^>]* id="%s"[^>]*>(.*?)</\1>' % (element_id,),
                      body.decode("utf-8"), re.DOTALL)
    assert match is not None, element_id
    return html.unescape(re.sub(r"<[^>]*>", "", match.group(2)))


class BuildPageTests(PagesTestCase):
    """``/builds/<id>``."""

    def test_running(self) -> None:
        """A running build: its facts, phase, log so far and the live script."""
        record = self.start(revision="abc1234")
        self.clock.advance(2)
        record.enter(BuildPhase.BUILDING)
        record.add_log_line("building '/nix/store/x-hello-1.0.drv'...")
        record.add_log_line("hello: compiling")
        self.clock.advance(1)
        response, body = self.fetch(b"GET", "/builds/" + record.id)
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, b"content-type"), b"text/html; charset=utf-8")
        text = body.decode("utf-8")
        self.assertIn("<h1>shell/hello:latest</h1>", text)
        self.assertEqual(element_text(body, "phase"), "building")
        self.assertEqual(element_text(body, "log"),
                         "building '/nix/store/x-hello-1.0.drv'...\nhello: compiling\n")
        self.assertEqual(element_text(body, "duration"), "3.0 s so far")
        self.assertIn("<dt>Packages</dt><dd><code>bashInteractive hello</code></dd>", text)
        self.assertIn("<dt>Source</dt><dd>path /srv/pkgs</dd>", text)
        self.assertIn("<dt>Revision</dt><dd><code>abc1234</code></dd>", text)
        self.assertIn("<dt>System</dt><dd>x86_64-linux</dd>", text)
        self.assertIn("<dt>Created</dt><dd>2023-11-14 22:13:20 UTC</dd>", text)
        self.assertIn('data-events="/builds/%s/events" data-lines="2" data-finished="false"'
                      ' data-elapsed="3.000"' % (record.id,), text)
        self.assertIn("<script>" + SCRIPT + "</script>", text)

    def test_succeeded(self) -> None:
        """An ended build: outcome, timings, layers, sizes, digest; no script."""
        record = self.start()
        self.finish(record)
        _, body = self.fetch(b"GET", "/builds/" + record.id)
        text = body.decode("utf-8")
        self.assertEqual(element_text(body, "phase"), "succeeded")
        self.assertEqual(element_text(body, "message"), "built in 5.0 s")
        self.assertEqual(element_text(body, "digest"), "sha256:" + "c" * 64)
        self.assertEqual(element_text(body, "duration"), "5.0 s")
        self.assertEqual(element_text(body, "finished-at"), "2023-11-14 22:13:25 UTC")
        self.assertEqual(element_text(body, "layer-summary"),
                         "2 layers, 3.1 MB in all; 1 reused (3.1 MB).")
        layers = element_text(body, "layers")
        self.assertIn("sha256:aaaaaaaaaaaa3.1 MBreusedhello-1.0", layers)
        self.assertIn("sha256:bbbbbbbbbbbb2.0 kBbuiltcustomisation layer", layers)
        self.assertIn("waiting+0.0 s1.5 s", element_text(body, "phases"))
        self.assertNotIn("<script>", text)
        self.assertIn('data-finished="true"', text)

    def test_escaped(self) -> None:
        """Names, log lines and messages from builds stay text."""
        record = self.start(image="shell/<script>alert(1)</script>", tag='"><b>')
        record.add_log_line("<script>alert(2)</script>")
        record.add_log_line("a & b </pre><img src=x>")
        record.fail("<script>alert(3)</script>")
        _, body = self.fetch(b"GET", "/builds/" + record.id)
        self.assertEqual(body.count(b"<script"), 0)
        self.assertNotIn(b"<img", body)
        self.assertNotIn(b'"><b>', body)
        self.assertEqual(element_text(body, "log"),
                         "<script>alert(2)</script>\na & b </pre><img src=x>\n")
        self.assertEqual(element_text(body, "message"), "<script>alert(3)</script>")
        self.assertIn(b"<h1>shell/&lt;script&gt;alert(1)&lt;/script&gt;:&quot;&gt;&lt;b&gt;</h1>",
                      body)

    def test_lines_not_kept(self) -> None:
        """Past the kept lines, the page says how many are gone."""
        record = self.start()
        for n in range(25):
            record.add_log_line("line %d" % (n,))
        _, body = self.fetch(b"GET", "/builds/" + record.id)
        log = element_text(body, "log").splitlines()
        self.assertEqual(log[0], "[15 lines not kept]")
        self.assertEqual(log[1:], ["line %d" % (n,) for n in range(15, 25)])
        self.assertEqual(element_text(body, "log-count"), "25")

    def test_security_headers(self) -> None:
        """Only the page's own style and script may run; nothing is loaded from elsewhere."""
        record = self.start()
        response, body = self.fetch(b"GET", "/builds/" + record.id)
        policy = header(response, b"content-security-policy")
        assert policy is not None
        directives = dict(d.strip().split(" ", 1) for d in policy.decode().split(";"))
        for name, text in [("script-src", SCRIPT), ("style-src", STYLE)]:
            digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
            self.assertEqual(directives[name], "'sha256-%s'" % (digest,))
        self.assertEqual(directives["default-src"], "'none'")
        self.assertEqual(directives["connect-src"], "'self'")
        self.assertEqual(header(response, b"x-content-type-options"), b"nosniff")
        self.assertNotIn(b"http://", body)
        self.assertNotIn(b"https://", body)
        self.assertNotIn(b" src=", body)
        self.assertNotIn(b" style=", body)
        self.assertEqual(body.count(b"<style>"), 1)

    def test_head(self) -> None:
        """HEAD of a build page: its headers and length, no body."""
        record = self.start()
        record.add_log_line("one")
        _, got_body = self.fetch(b"GET", "/builds/" + record.id)
        response, body = self.fetch(b"HEAD", "/builds/" + record.id)
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(header(response, b"content-length"), b"%d" % (len(got_body),))

    def test_unknown(self) -> None:
        """Unknown, forgotten or malformed ids, and other sub-paths, are 404 pages."""
        record = self.start()
        forgotten = self.start()
        forgotten.fail("x")
        for n in range(6):
            self.start(image="n%d" % (n,)).fail("x")
        self.assertIsNone(self.history.get(forgotten.id))
        for path in ["/builds/0123456789ab", "/builds/" + forgotten.id, "/builds/%ff",
                     "/builds/" + record.id + "/other", "/builds/" + record.id + "/log/x",
                     "/builds/<script>"]:
            response, body = self.fetch(b"GET", path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(header(response, b"content-type"), b"text/html; charset=utf-8")
            self.assertNotIn(b"<script", body)
        response, body = self.fetch(b"HEAD", "/builds/0123456789ab/events")
        self.assertEqual((response.code, body), (404, b""))

    def test_post(self) -> None:
        """Build pages answer GET and HEAD only."""
        record = self.start()
        response, _ = self.fetch(b"POST", "/builds/" + record.id)
        self.assertEqual(response.code, 405)


class PlainLogTests(PagesTestCase):
    """``/builds/<id>/log``."""

    def test_log(self) -> None:
        """The kept lines as plain text, as they were (no escaping needed)."""
        record = self.start()
        for n in range(12):
            record.add_log_line("<b>%d</b>" % (n,))
        response, body = self.fetch(b"GET", "/builds/%s/log" % (record.id,))
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, b"content-type"), b"text/plain; charset=utf-8")
        self.assertEqual(header(response, b"x-content-type-options"), b"nosniff")
        self.assertEqual(body.decode().splitlines(),
                         ["[2 lines not kept]"] + ["<b>%d</b>" % (n,) for n in range(2, 12)])

    def test_head(self) -> None:
        """HEAD of the log: its length, no body."""
        record = self.start()
        record.add_log_line("one")
        response, body = self.fetch(b"HEAD", "/builds/%s/log" % (record.id,))
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(header(response, b"content-length"), b"4")


class StateTests(PagesTestCase):
    """The facts sent to the page's script, and the phase timings."""

    def test_state_document(self) -> None:
        """Formatted as the page shows them."""
        record = self.start()
        self.finish(record)
        state = state_document(record)
        self.assertEqual(state["phase"], "succeeded")
        self.assertTrue(state["finished"])
        self.assertEqual(state["duration"], "5.0 s")
        self.assertEqual(state["layers"][1],
                         ["sha256:bbbbbbbbbbbb", "2.0 kB", "built", "customisation layer"])

    def test_phase_rows(self) -> None:
        """Each phase entered, when it started and how long it took; the last has no length."""
        record = self.start()
        self.clock.advance(2)
        record.enter(BuildPhase.EVALUATING)
        self.clock.advance(0.25)
        record.fail("evaluation failed")
        self.assertEqual(phase_rows(record), [
            ["waiting", "+0.0 s", "2.0 s"],
            ["evaluating", "+2.0 s", "0.2 s"],
            ["failed", "+2.2 s", ""]])


class FormatTests(SynchronousTestCase):
    """Sizes and durations."""

    def test_size(self) -> None:
        """Bytes, then binary units with one decimal."""
        self.assertEqual([formats.size(n) for n in [0, 999, 1000, 1536, 5 * 10 ** 9]],
                         ["0 B", "999 B", "1.0 kB", "1.5 kB", "5.0 GB"])

    def test_seconds(self) -> None:
        """Seconds, minutes, hours."""
        self.assertEqual([formats.seconds(s) for s in [0.04, 59.9, 65, 3725]],
                         ["0.0 s", "59.9 s", "1 min 05 s", "1 h 02 min"])

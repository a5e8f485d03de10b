"""
Tests for the front page (:mod:`nixeryd.registry.pages.index`): pull
commands for plain-HTTP and TLS requests, the package source and its
revision, the builds, and the pages outside ``/v2`` that are not found.
"""

from __future__ import annotations

import html
import re


from nixeryd.service.builds import BuildPhase
from tests.pagefixtures import PagesTestCase
from tests.registrycases import header

HOST = {b"Host": [b"registry.test:5000"]}


def pre(body: bytes, element_id: str) -> str:
    """The text of the ``<pre>`` with ``element_id``, unescaped as a browser shows it."""
    match = re.search(r'<pre id="%s">(.*?)</pre>' % (element_id,), body.decode("utf-8"),
                      re.DOTALL)
    assert match is not None, element_id
    return html.unescape(match.group(1))


class PullCommandTests(PagesTestCase):
    """The commands shown work against the instance that shows them."""

    def test_plain_http(self) -> None:
        """A plain-HTTP request gets --tls-verify=false and Docker's insecure-registries."""
        response, body = self.fetch(b"GET", "/", HOST)
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, b"content-type"), b"text/html; charset=utf-8")
        self.assertEqual(pre(body, "pull").splitlines(), [
            "skopeo inspect --tls-verify=false docker://registry.test:5000/shell/hello",
            "podman pull --tls-verify=false registry.test:5000/shell/hello"])
        self.assertEqual(pre(body, "docker-config"),
                         '{\n  "insecure-registries": ["registry.test:5000"]\n}')
        self.assertEqual(pre(body, "docker-pull"),
                         "docker pull registry.test:5000/shell/hello\n")
        self.assertIn(b"/etc/docker/daemon.json", body)

    def test_tls(self) -> None:
        """A TLS request gets the plain commands, and nothing about insecure registries."""
        response, body = self.fetch(b"GET", "/", HOST, scheme="https")
        self.assertEqual(response.code, 200)
        self.assertEqual(pre(body, "pull").splitlines(), [
            "docker pull registry.test:5000/shell/hello",
            "podman pull registry.test:5000/shell/hello",
            "skopeo inspect docker://registry.test:5000/shell/hello"])
        self.assertNotIn(b"tls-verify", body)
        self.assertNotIn(b"insecure-registries", body)

    def test_host_not_reflected(self) -> None:
        """A Host header that is no plain host name is not repeated."""
        response, body = self.fetch(b"GET", "/", {b"Host": [b"<script>x</script>"]})
        self.assertEqual(response.code, 200)
        self.assertNotIn(b"<script>x", body)
        self.assertNotIn(b"&lt;script&gt;x", body)
        self.assertIn("podman pull --tls-verify=false <registry host>/shell/hello",
                      pre(body, "pull"))

    def test_head(self) -> None:
        """HEAD / has the page's headers and length and no body."""
        _, got_body = self.fetch(b"GET", "/", HOST)
        response, body = self.fetch(b"HEAD", "/", HOST)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"")
        self.assertEqual(header(response, b"content-length"), b"%d" % (len(got_body),))
        self.assertEqual(header(response, b"content-type"), b"text/html; charset=utf-8")

    def test_post(self) -> None:
        """Other methods on pages are 405."""
        response, _ = self.fetch(b"POST", "/")
        self.assertEqual(response.code, 405)
        self.assertEqual(header(response, b"allow"), b"GET, HEAD")

    def test_v2_unchanged(self) -> None:
        """/v2/ is still the registry's version check."""
        response, body = self.fetch(b"GET", "/v2/")
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, b"docker-distribution-api-version"),
                         b"registry/2.0")
        self.assertEqual(body, b"{}")


class NotFoundTests(PagesTestCase):
    """Paths outside ``/v2`` with no page."""

    def test_other_path(self) -> None:
        """An HTML 404 that does not repeat the path, with the pages' headers."""
        for path in ["/<b>x</b>", "/index.html", "/builds", "/builds/", "/v3/x"]:
            response, body = self.fetch(b"GET", path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(header(response, b"content-type"), b"text/html; charset=utf-8")
            self.assertEqual(header(response, b"x-content-type-options"), b"nosniff")
            self.assertNotIn(b"<b>x", body)
            self.assertNotIn(b"&lt;b&gt;", body)
            self.assertIn(b"<h1>Not found</h1>", body)

    def test_head(self) -> None:
        """HEAD of a missing page is a 404 with its length and no body."""
        _, got_body = self.fetch(b"GET", "/nothing")
        response, body = self.fetch(b"HEAD", "/nothing")
        self.assertEqual((response.code, body), (404, b""))
        self.assertEqual(header(response, b"content-length"), b"%d" % (len(got_body),))


class SourceTests(PagesTestCase):
    """The package source and the newest revision a build recorded."""

    def test_source_without_revision(self) -> None:
        """The configured source is shown; no revision before a build has one."""
        _, body = self.fetch(b"GET", "/")
        self.assertIn(b"<dt>Source</dt><dd>path /srv/pkgs</dd>", body)
        self.assertIn(b"none seen yet", body)

    def test_latest_revision(self) -> None:
        """The newest recorded revision is shown, linking to its build."""
        self.finish(self.start(revision="1111111"))
        newer = self.start(revision="2222222")
        self.start(revision=None)
        _, body = self.fetch(b"GET", "/")
        self.assertIn(('<dt>Revision</dt><dd><code>2222222</code> (build <a href="/builds/%s">'
                       % (newer.id,)).encode(), body)
        self.assertNotIn(b"1111111", body)


class BuildListTests(PagesTestCase):
    """Builds running, waiting and ended, each linking to its page."""

    def section(self, body: bytes, element_id: str) -> str:
        """The element with ``element_id`` (a table or its empty note)."""
        match = re.search(r'<(table|p) id="%s".*?</\1>' % (element_id,),
                          body.decode("utf-8"), re.DOTALL)
        assert match is not None, element_id
        return match.group(0)

    def test_lists(self) -> None:
        """Each build is in exactly one list, with its facts."""
        waiting = self.start(image="shell/git")
        running = self.start(image="shell/htop")
        running.enter(BuildPhase.BUILDING)
        for n in range(3):
            running.add_log_line("line %d" % (n,))
        ended = self.start(image="hello")
        self.finish(ended)
        failed = self.start(image="failing")
        failed.fail("the build of failing-1.0 failed")
        _, body = self.fetch(b"GET", "/")
        text = body.decode("utf-8")
        self.assertIn("<h3>Running (1)</h3>", text)
        self.assertIn("<h3>Waiting for a slot (1)</h3>", text)
        running_table = self.section(body, "running")
        self.assertIn('<a href="/builds/%s">shell/htop:latest</a>' % (running.id,),
                      running_table)
        self.assertIn('<span class="phase building">building</span>', running_table)
        self.assertIn("<td>3</td>", running_table)
        self.assertIn('<a href="/builds/%s">shell/git:latest</a>' % (waiting.id,),
                      self.section(body, "waiting"))
        recent = self.section(body, "recent")
        # Newest first: the failure, then the success.
        self.assertLess(recent.index(failed.id), recent.index(ended.id))
        self.assertIn("the build of failing-1.0 failed", recent)
        row = recent[recent.index(ended.id):].split("</tr>")[0]
        self.assertEqual(re.findall(r"<td>([^<]*)</td>", row)[:3],
                         ["5.0 s", "2", "3.1 MB"])
        self.assertIn('<span class="phase succeeded">succeeded</span>', row)
        for record in (waiting, ended):
            self.assertNotIn(record.id, running_table)

    def test_empty(self) -> None:
        """Without builds, the lists say so."""
        _, body = self.fetch(b"GET", "/")
        self.assertIn(b'<p id="running" class="muted">None.</p>', body)
        self.assertIn(b"No build has ended yet.", body)

    def test_names_escaped(self) -> None:
        """Image names, tags and messages from builds stay text."""
        record = self.start(image="<script>alert(1)</script>", tag="<i>t</i>")
        record.fail("<img src=x onerror=alert(2)>")
        _, body = self.fetch(b"GET", "/")
        self.assertNotIn(b"<script>alert", body)
        self.assertNotIn(b"<img", body)
        self.assertNotIn(b"<i>t", body)
        self.assertIn(b"&lt;script&gt;alert(1)&lt;/script&gt;:&lt;i&gt;t&lt;/i&gt;", body)

"""
Tests for :mod:`nixeryd.app.buildprogress`: what ``nixeryd build`` shows
of a build, driven through a real build record on a fake clock, written
to a fake stream (plain lines) or a fake terminal (with the status line).
"""

from __future__ import annotations

import io
import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.app.buildprogress import BuildDisplay, layer_sizes
from nixeryd.core.text import human_size
from nixeryd.core.documents import ManifestDocument
from nixeryd.service.builds import BuildHistory, BuildPhase, BuildRecord, LayerSummary
from tests.e2e import build_command, child_environment, require_root, require_tools, run

#: What erases the status line.
ERASE = "\r\x1b[K"


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def layer(n: int, size: int, reused: bool = False) -> LayerSummary:
    return LayerSummary("sha256:%064x" % (n,), size, "layer-%d-1.0" % (n,), reused)


class Fixture:
    """A build history on a fake clock, shown by a display on ``stream``."""

    def __init__(self, stream: io.StringIO, *, progress: bool = True,
                 columns: int | None = None) -> None:
        self.clock = Clock()
        self.history = BuildHistory(self.clock)
        self.stream = stream
        self.display = BuildDisplay(stream, self.clock, progress=progress, columns=columns)
        self.unfollow = self.display.follow(self.history)

    def start(self) -> BuildRecord:
        return self.history.start(image="shell/hello", tag="latest",
                                  packages=("bashInteractive", "coreutils", "hello"),
                                  system="x86_64-linux", source="path /srv/pkgs",
                                  revision=None)

    def build(self, record: BuildRecord) -> None:
        """Every step of a build that writes two layers and reuses one."""
        record.enter(BuildPhase.EVALUATING)
        record.add_log_line("evaluating 3 names")
        self.clock.advance(2)
        record.enter(BuildPhase.BUILDING)
        record.add_log_line("building '/nix/store/abc-hello-1.0.drv'...")
        self.clock.advance(10)
        record.enter(BuildPhase.LAYERING)
        record.add_layer(layer(1, 12_300_000))
        record.add_layer(layer(2, 5_000_000, reused=True))
        record.add_layer(layer(3, 1_100))
        self.clock.advance(0.5)
        record.succeed("sha256:" + "d" * 64, "built")


class PlainTests(SynchronousTestCase):
    """Plain lines, for a file or a pipe."""

    def test_lines(self) -> None:
        """The start, each step, each layer and the summary; no log lines."""
        fixture = Fixture(io.StringIO())
        fixture.build(fixture.start())
        self.assertEqual(fixture.stream.getvalue().splitlines(), [
            "nixeryd: shell/hello:latest: 3 packages (bashInteractive, coreutils, hello)"
            " from path /srv/pkgs, for x86_64-linux",
            "nixeryd: [1/3] evaluating the package names (nix-instantiate)",
            "nixeryd: [2/3] building the packages (nix-build)",
            "nixeryd: [3/3] layering: writing and storing the layers",
            "nixeryd: layer 1 written: 12.3 MB, layer-1-1.0",
            "nixeryd: layer 2 reused: 5.0 MB, layer-2-1.0",
            "nixeryd: layer 3 written: 1.1 kB, layer-3-1.0",
            "nixeryd: built shell/hello:latest in 12.5 s: 3 layers, 2 written (12.3 MB),"
            " 1 reused (5.0 MB)",
        ])
        self.assertNotIn("\r", fixture.stream.getvalue())
        self.assertIsNotNone(fixture.display.built)
        self.assertEqual(fixture.clock.getDelayedCalls(), [])

    def test_many_packages(self) -> None:
        """A long package list is cut short."""
        fixture = Fixture(io.StringIO())
        fixture.history.start(image="x", tag="latest",
                              packages=tuple("p%d" % (n,) for n in range(9)),
                              system="x86_64-linux", source="channel c", revision=None)
        self.assertIn("9 packages (p0, p1, p2, p3, ...)", fixture.stream.getvalue())

    def test_already_built(self) -> None:
        """An image found built after evaluation: no summary of a build, none recorded."""
        fixture = Fixture(io.StringIO())
        record = fixture.start()
        record.enter(BuildPhase.EVALUATING)
        record.succeed("sha256:" + "d" * 64, "served from the cache")
        self.assertNotIn("built", fixture.stream.getvalue().splitlines()[-1])
        self.assertIsNone(fixture.display.built)

    def test_failed(self) -> None:
        """A failed build ends without a summary (the command says why)."""
        fixture = Fixture(io.StringIO())
        record = fixture.start()
        record.enter(BuildPhase.BUILDING)
        record.fail("hello failed to build")
        self.assertEqual(fixture.stream.getvalue().splitlines()[-1],
                         "nixeryd: [2/3] building the packages (nix-build)")
        self.assertIsNone(fixture.display.built)

    def test_quiet(self) -> None:
        """Without progress nothing of the build is written; said lines still are."""
        fixture = Fixture(io.StringIO(), progress=False)
        fixture.build(fixture.start())
        self.assertEqual(fixture.stream.getvalue(), "")
        self.assertIsNotNone(fixture.display.built)
        fixture.display.say("unknown packages: nope")
        self.assertEqual(fixture.stream.getvalue(), "nixeryd: unknown packages: nope\n")

    def test_unfollow(self) -> None:
        """Builds started after unfollowing are not shown."""
        fixture = Fixture(io.StringIO())
        fixture.unfollow()
        fixture.start().enter(BuildPhase.EVALUATING)
        self.assertEqual(fixture.stream.getvalue(), "")

    def test_say_prefix(self) -> None:
        """Lines of a log tail are written with their own prefix."""
        fixture = Fixture(io.StringIO())
        fixture.display.say("error: builder failed", prefix="  | ")
        self.assertEqual(fixture.stream.getvalue(), "  | error: builder failed\n")


class TerminalTests(SynchronousTestCase):
    """On a terminal: the same lines, and a status line redrawn in place."""

    def setUp(self) -> None:
        self.fixture = Fixture(FakeTerminal(), columns=100)
        self.record = self.fixture.start()

    def status(self) -> str:
        """The status line drawn last."""
        return self.fixture.stream.getvalue().rsplit(ERASE, 1)[1]

    def test_status_line(self) -> None:
        """The bar, the step, the time, the layers so far and the last log line."""
        self.record.enter(BuildPhase.BUILDING)
        self.record.add_log_line("building '/nix/store/abc-hello-1.0.drv'...")
        self.fixture.clock.advance(7)
        self.assertEqual(self.status(),
                         "[####--------] building 7s, 0 layers, 0 B written"
                         " | building '/nix/store/abc-hello-1.0.drv'...")
        self.record.enter(BuildPhase.LAYERING)
        self.record.add_layer(layer(1, 2_000_000))
        self.record.add_layer(layer(2, 1_000, reused=True))
        self.assertEqual(self.status(),
                         "[##########--] layering 7s, 2 layers, 2.0 MB written"
                         " | building '/nix/store/abc-hello-1.0.drv'...")

    def test_lines_above_the_status(self) -> None:
        """Each line erases the status line first and is followed by it again."""
        self.record.enter(BuildPhase.EVALUATING)
        output = self.fixture.stream.getvalue()
        self.assertIn(ERASE + "nixeryd: [1/3] evaluating the package names (nix-instantiate)\n"
                      + ERASE + "[------------] evaluating 0s", output)

    def test_ticks(self) -> None:
        """While nothing happens, the time still moves on, once a second."""
        self.record.enter(BuildPhase.BUILDING)
        self.fixture.clock.advance(1)
        self.assertIn(" building 1s,", self.status())
        self.fixture.clock.advance(1)
        self.assertIn(" building 2s,", self.status())

    def test_no_redraw_without_change(self) -> None:
        """The same status line is not drawn twice."""
        self.record.enter(BuildPhase.BUILDING)
        before = self.fixture.stream.getvalue()
        self.record.add_log_line("x")
        self.record.add_log_line("x")
        self.assertEqual(self.fixture.stream.getvalue().count(ERASE + "[####"),
                         before.count(ERASE + "[####") + 1)

    def test_width(self) -> None:
        """A status line never wraps: it is cut to the terminal's width."""
        fixture = Fixture(FakeTerminal(), columns=40)
        record = fixture.start()
        record.add_log_line("x" * 200)
        self.assertEqual(len(fixture.display.status()), 39)
        self.assertTrue(fixture.display.status().endswith("..."))

    def test_end(self) -> None:
        """At the end the status line is erased, the summary stays, no timer is left."""
        self.fixture.build(self.record)
        output = self.fixture.stream.getvalue()
        self.assertTrue(output.endswith(
            ERASE + "nixeryd: built shell/hello:latest in 12.5 s: 3 layers, 2 written"
            " (12.3 MB), 1 reused (5.0 MB)\n"), output[-300:])
        self.assertEqual(self.fixture.clock.getDelayedCalls(), [])

    def test_close(self) -> None:
        """Closing (the command ends) erases the status line and stops the ticks."""
        self.record.enter(BuildPhase.BUILDING)
        self.fixture.display.close()
        self.assertTrue(self.fixture.stream.getvalue().endswith(ERASE))
        self.assertEqual(self.fixture.clock.getDelayedCalls(), [])


class SizeTests(SynchronousTestCase):
    """Sizes for people, and a manifest's layer sizes."""

    def test_human_size(self) -> None:
        for size, text in ((0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (12_345, "12.3 kB"),
                           (999_949, "999.9 kB"), (999_950, "1.0 MB"),
                           (1_234_567_890, "1.2 GB")):
            with self.subTest(size=size):
                self.assertEqual(human_size(size), text)

    def test_layer_sizes(self) -> None:
        body = json.dumps({"layers": [{"size": 10}, {"size": 32}]}).encode()
        self.assertEqual(layer_sizes(ManifestDocument("x", body, "sha256:x")), [10, 32])


class BuildCommandProgressEndToEnd(SynchronousTestCase):
    """The real ``nixeryd build`` with real Nix, its stderr a pipe: plain lines."""

    def setUp(self) -> None:
        require_root()
        require_tools("nix-build")
        self.env = child_environment()

    def test_progress_and_summary(self) -> None:
        """Steps, layers and a summary; built again, the image is found already built."""
        out = self.mktemp()
        first = run(build_command("hello", out), env=self.env)
        lines = first.stderr.splitlines()
        for expected in ("nixeryd: [1/3] evaluating the package names (nix-instantiate)",
                         "nixeryd: [2/3] building the packages (nix-build)",
                         "nixeryd: [3/3] layering: writing and storing the layers"):
            self.assertIn(expected, lines)
        self.assertTrue(any(line.startswith("nixeryd: layer 1 written: ") for line in lines),
                        first.stderr)
        self.assertTrue(any(line.startswith("nixeryd: built hello:latest in ")
                            for line in lines), first.stderr)
        self.assertTrue(lines[-1].startswith(
            "nixeryd: printed the digest of the Docker manifest, what `docker pull` gets;"
            " the OCI manifest is sha256:"), lines[-1])
        self.assertNotIn("\r", first.stderr)
        again = run(build_command("hello", out), env=self.env)
        self.assertEqual(again.stdout, first.stdout)
        self.assertIn("nixeryd: hello:latest was already built in %s: " % (out,), again.stderr)
        quiet = run(build_command("hello", out, "--quiet"), env=self.env)
        self.assertEqual((quiet.stdout, quiet.stderr), (first.stdout, ""))


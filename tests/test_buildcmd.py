"""
Tests for the command line of ``nixeryd build`` (:mod:`nixeryd.app.buildcmd`)
and of ``nixeryd`` itself (:mod:`nixeryd.__main__`); building real images
is tested end to end in ``tests/test_build_e2e.py``.
"""

from __future__ import annotations

import io
import os
import sys

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.__main__ import main as nixeryd_main
from nixeryd.app.buildcmd import (DOCKER_PULL_ACCEPT, EXIT_INVALID, BuildOptions, BuildRequest,
                                  main, parse, printed_manifest)
from nixeryd.app.settings import IMAGE_SETTINGS, SourceSetting
from nixeryd.app.tap import Options
from nixeryd.core import defaults
from nixeryd.core.documents import Image, ManifestDocument
from nixeryd.core.mediatypes import DOCKER_MANIFEST, OCI_MANIFEST

#: The options every build needs.
REQUIRED = ["--pkgs-path", "/srv/pkgs", "--out", "/srv/out"]


class ParseTests(SynchronousTestCase):
    """Parsing and checking the command line."""

    def test_defaults(self) -> None:
        """Options not given take the defaults of nixeryd.core.defaults."""
        self.assertEqual(parse(REQUIRED + ["shell/git"]), BuildRequest(
            name="shell/git", tag=defaults.TAG, out="/srv/out", quiet=False,
            source=SourceSetting("path", "/srv/pkgs"),
            nix_timeout=defaults.NIX_TIMEOUT, nix_options=(),
            layer_budget=defaults.LAYER_BUDGET, popularity_url=None,
            layer_threads=defaults.LAYER_THREADS))

    def test_options(self) -> None:
        """Every option is read; --nix-option repeats, the last of a name wins."""
        request = parse(["--channel", "nixos-unstable", "--out", "o", "--tag", "v1",
                         "--quiet", "--nix-option", "substituters=",
                         "--nix-option", "a=1", "--nix-option", "a=2",
                         "--nix-timeout", "30", "--layer-budget", "125",
                         "--popularity", "/p.json", "--threads", "8", "hello"])
        self.assertEqual(request, BuildRequest(
            name="hello", tag="v1", out="o", quiet=True,
            source=SourceSetting("channel", "nixos-unstable"), nix_timeout=30.0,
            nix_options=(("substituters", ""), ("a", "2")), layer_budget=125,
            popularity_url="/p.json", layer_threads=8))

    def test_name_first(self) -> None:
        """The name may come before the options."""
        self.assertEqual(parse(["hello", "--out", "o", "--channel", "c"]).name, "hello")
        self.assertEqual(parse(REQUIRED + ["--", "-odd"]).name, "-odd")

    def test_popularity_url(self) -> None:
        """--popularity-url is the daemon's name for --popularity."""
        self.assertEqual(parse(REQUIRED + ["--popularity-url", "/p", "x"]).popularity_url,
                         "/p")

    def test_invalid(self) -> None:
        """Bad command lines are one-line usage errors."""
        budget = str(defaults.MAX_LAYER_BUDGET + 1)
        for argv, expected in (
                (REQUIRED + ["--layer-budget", "0", "x"], "--layer-budget (1 to "),
                (REQUIRED + ["--layer-budget", budget, "x"], "out of range"),
                (REQUIRED + ["--nix-timeout", "nan", "x"], "--nix-timeout (seconds)"),
                (REQUIRED + ["--threads", "0", "x"], "--threads"),
                (REQUIRED + ["--nix-option", "oops", "x"], "NAME=VALUE"),
                (REQUIRED, "Wrong number of arguments"),
                (REQUIRED + ["a", "b"], "Wrong number of arguments"),
                (["--pkgs-path", "/p", "x"], "--out is required"),
                (["--out", "o", "x"], "no package source: give --pkgs-path,"),
                (REQUIRED + ["--channel", "c", "x"],
                 "give only one of --channel, --pkgs-path"),
                (REQUIRED + ["--no-such-option", "x"], "no-such-option")):
            with self.subTest(argv=argv):
                error = self.assertRaises(UsageError, parse, argv)
                self.assertIn(expected, str(error))
                self.assertNotIn("\n", str(error))

    def test_environment_not_read(self) -> None:
        """The build command reads only its command line."""
        self.patch(os, "environ", {"NIXERY_PKGS_PATH": "/p", "NIX_TIMEOUT": "1"})
        self.assertRaises(UsageError, parse, ["--out", "o", "x"])
        self.assertEqual(parse(REQUIRED + ["x"]).nix_timeout, defaults.NIX_TIMEOUT)


class SharedDefinitionTests(SynchronousTestCase):
    """The build command and the daemon share their image options."""

    def test_same_options(self) -> None:
        """Both commands have every image option and --nix-option."""
        build, daemon = BuildOptions(), Options(environ={})
        for setting in IMAGE_SETTINGS:
            with self.subTest(option=setting.option):
                self.assertIn(setting.option + "=", daemon.longOpt)
                self.assertIn(setting.option + "=", build.longOpt)
        self.assertIn("nix-option=", build.longOpt)
        self.assertIn("nix-option=", daemon.longOpt)

    def test_same_checks(self) -> None:
        """A value one command refuses, the other refuses for the same reason."""
        for option, value in (("layer-budget", "0"), ("nix-timeout", "-1"),
                              ("threads", "x")):
            with self.subTest(option=option):
                build = self.assertRaises(
                    UsageError, parse, REQUIRED + ["--" + option, value, "x"])
                daemon = self.assertRaises(
                    UsageError, Options(environ={}).parseOptions,
                    ["--pkgs-path", "/p", "--storage-path", "/s", "--" + option, value])
                self.assertTrue(str(daemon).endswith(str(build)), (daemon, build))


class MainTests(SynchronousTestCase):
    """Exit codes and output of the command."""

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def test_usage_error(self) -> None:
        """A usage error is one line on stderr and exit code 2; nothing is built."""
        self.assertEqual(main(REQUIRED + ["--layer-budget", "0", "x"]), EXIT_INVALID)
        self.assertEqual(self.stderr.getvalue(),
                         "nixeryd: --layer-budget (1 to %d): '0' is out of range\n"
                         % (defaults.MAX_LAYER_BUDGET,))
        self.assertEqual(self.stdout.getvalue(), "")

    def test_version(self) -> None:
        """--version names nixeryd, not Twisted."""
        self.assertEqual(main(["--version"]), 0)
        self.assertTrue(self.stdout.getvalue().startswith("nixeryd "))

    def test_help(self) -> None:
        """--help (or -h) describes every option on stdout and exits 0."""
        self.assertEqual(main(["-h"]), 0)
        self.assertEqual(main(["--help"]), 0)
        text = self.stdout.getvalue()
        self.assertTrue(text.startswith("Usage: nixeryd build [options] NAME"), text)
        for option in ("--out", "--tag", "--quiet", "--nix-option", "--layer-budget",
                       "--pkgs-repo"):
            self.assertIn(option, text)
        self.assertIn("1 to %d" % (defaults.MAX_LAYER_BUDGET,), text)
        self.assertNotIn("NIXERY_", text)


class CommandTests(SynchronousTestCase):
    """``nixeryd`` (and ``python -m nixeryd``) dispatching to its commands."""

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def test_help(self) -> None:
        """--help names the build command as the console script spells it."""
        self.assertEqual(nixeryd_main(["--help"]), 0)
        text = self.stdout.getvalue()
        self.assertIn("nixeryd build [options] NAME", text)
        self.assertIn("nixeryd build --help", text)
        self.assertNotIn("python -m", text)

    def test_no_command(self) -> None:
        """Without a command, the usage is shown and the exit code is 2."""
        self.assertEqual(nixeryd_main([]), 2)
        self.assertIn("nixeryd build", self.stdout.getvalue())

    def test_unknown_command(self) -> None:
        """An unknown command is one line on stderr and exit code 2."""
        self.assertEqual(nixeryd_main(["serve-all"]), 2)
        self.assertEqual(self.stderr.getvalue(),
                         "nixeryd: unknown command 'serve-all'"
                         " (expected 'serve', 'build', 'gc' or 'verify')\n")

    def test_build(self) -> None:
        """``build`` runs the build command with the remaining arguments."""
        self.assertEqual(nixeryd_main(["build", "--help"]), 0)
        self.assertIn("Usage: nixeryd build", self.stdout.getvalue())


class PrintedDigestTests(SynchronousTestCase):
    """The digest printed is the one ``docker pull`` gets from the daemon."""

    def test_docker_manifest(self) -> None:
        """Docker's Accept lines get the Docker manifest; stderr names the OCI one."""
        docker = ManifestDocument(DOCKER_MANIFEST, b"{}", "sha256:" + "d" * 64)
        oci = ManifestDocument(OCI_MANIFEST, b"[]", "sha256:" + "0" * 64)
        chosen, which = printed_manifest(Image(docker=docker, oci=oci))
        self.assertIs(chosen, docker)
        self.assertEqual(which, "printed the digest of the Docker manifest, what `docker pull`"
                                " gets; the OCI manifest is sha256:" + "0" * 64)

    def test_accept_lines(self) -> None:
        """``docker pull`` accepts both formats, and so gets what the daemon prefers."""
        self.assertIn(DOCKER_MANIFEST.encode(), DOCKER_PULL_ACCEPT)
        self.assertIn(OCI_MANIFEST.encode(), DOCKER_PULL_ACCEPT)


class WarningsTests(SynchronousTestCase):
    """What of the log the command shows: warnings it does not report otherwise."""

    def test_shown(self) -> None:
        from twisted.internet.task import Clock
        from twisted.logger import Logger

        from nixeryd.app.buildcmd import _warning_observer
        from nixeryd.app.buildprogress import BuildDisplay

        stream = io.StringIO()
        log = Logger(namespace="test",
                     observer=_warning_observer(BuildDisplay(stream, Clock())))
        log.info("Resolved 3 packages")
        log.warn("Popularity data from {source} is unavailable", source="/p.json")
        log.warn("{argv0}[{pid}] {line}", argv0="nix-build", pid=1, line="error: x")
        log.warn("{image}:{tag} failed", image="hello", tag="latest")
        log.error("Storage failed")
        self.assertEqual(stream.getvalue(),
                         "nixeryd: Popularity data from /p.json is unavailable\n"
                         "nixeryd: Storage failed\n")


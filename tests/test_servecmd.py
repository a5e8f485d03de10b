"""
Tests for :mod:`nixeryd.app.servecmd`: the command line of ``nixeryd
serve`` and the one-line failures of its start-up.  The real command is
run end to end in :mod:`tests.test_serve_e2e`, and every daemon
end-to-end test (:mod:`tests.daemon`) starts its daemon through it.
"""

from __future__ import annotations

import errno
import io
import socket
import sys

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactor
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.__main__ import main as nixeryd_main
from nixeryd.app import logs
from nixeryd.app.servecmd import LOG_FORMATS, address_of, listen_failure, main, parse

ENV = {"NIXERY_PKGS_PATH": "/srv/pkgs", "STORAGE_PATH": "/srv/storage"}


class ParseTests(SynchronousTestCase):
    """The options of ``nixeryd serve``."""

    def test_json_by_default(self) -> None:
        """Production logging, one JSON object per line, is the default."""
        options = parse(["--port", "5000"], ENV)
        self.assertEqual(options["log-format"], "json")
        self.assertIsInstance(options.log_observer(), logs.JSONLinesObserver)
        self.assertEqual(options.config.listen, "tcp:5000")

    def test_text(self) -> None:
        """``--log-format text`` (either spelling) picks the text observer."""
        for argv in (["--log-format", "text", "--port", "1"],
                     ["--port", "1", "--log-format=text"]):
            with self.subTest(argv=argv):
                options = parse(argv, ENV)
                self.assertIsInstance(options.log_observer(), logs.TextLinesObserver)

    def test_bad_format(self) -> None:
        """An unknown or missing format is a usage error."""
        for argv in (["--log-format", "xml"], ["--log-format"], ["--log-format="]):
            with self.subTest(argv=argv):
                self.assertRaises(UsageError, parse, argv, ENV)

    def test_formats(self) -> None:
        """Each format makes an observer."""
        self.assertEqual(sorted(LOG_FORMATS), ["json", "text"])
        for factory in LOG_FORMATS.values():
            self.assertTrue(callable(factory()))

    def test_configuration_checked(self) -> None:
        """The daemon's configuration is checked as ``twistd nixery`` checks it."""
        error = self.assertRaises(UsageError, parse, ["--max-builds", "0"], ENV)
        self.assertEqual(str(error), "NIXERY_MAX_BUILDS/--max-builds: '0' is out of range")


class MainTests(SynchronousTestCase):
    """Usage errors end ``nixeryd serve`` before anything starts."""

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def test_bad_format_exit_code(self) -> None:
        """A bad format is one line on stderr and exit code 2."""
        self.assertEqual(nixeryd_main(["serve", "--log-format", "xml"]), 2)
        self.assertEqual(self.stderr.getvalue(),
                         "nixeryd: --log-format must be json or text, not 'xml'\n")
        self.assertEqual(self.stdout.getvalue(), "")

    def test_unknown_option(self) -> None:
        """An unknown option is one line, without the usage text."""
        self.assertEqual(main(["--no-such-option"]), 2)
        self.assertEqual(self.stderr.getvalue(),
                         "nixeryd: option --no-such-option not recognized\n")

    def test_help(self) -> None:
        """--help describes the command and its options on stdout, exit code 0."""
        self.assertEqual(main(["--help"]), 0)
        text = self.stdout.getvalue()
        self.assertTrue(text.startswith(
            "Usage: nixeryd serve [--log-format json|text] [options]"), text)
        for option in ("--log-format", "--pkgs-path", "--storage-path", "NIXERY_PKGS_PATH"):
            self.assertIn(option, text)

    def test_version(self) -> None:
        """--version names nixeryd, not Twisted."""
        self.assertEqual(main(["--version"]), 0)
        self.assertTrue(self.stdout.getvalue().startswith("nixeryd "))


class ListenTests(SynchronousTestCase):
    """The port's failure and address."""

    def test_in_use(self) -> None:
        """A port in use: one line naming the endpoint and what to set."""
        error = CannotListenError("127.0.0.1", 8080,
                                  OSError(errno.EADDRINUSE, "Address already in use"))
        self.assertEqual(
            listen_failure("tcp:8080", error).message,
            "cannot listen on tcp:8080: address already in use; set PORT (or --port)"
            " or --listen to a free port")

    def test_real_error(self) -> None:
        """The socket error of a real failed listen reads the same way."""
        from twisted.internet import reactor

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            error = self.assertRaises(CannotListenError, reactor.listenTCP,
                                      port, None, interface="127.0.0.1")
        self.assertIn(": address already in use;",
                      listen_failure("tcp:%d" % (port,), error).message)

    def test_address(self) -> None:
        """``host:port`` of a TCP port, the path of a UNIX one, nothing before listening."""
        memory = MemoryReactor()
        tcp = memory.listenTCP(8123, None, interface="127.0.0.1")
        self.assertEqual(address_of(tcp), "0.0.0.0:8123")
        self.assertIsNone(address_of(None))
        unix = memory.listenUNIX("/run/nixeryd.sock", None)
        self.assertIn("/run/nixeryd.sock", str(address_of(unix)))

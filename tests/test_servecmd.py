"""
Tests for :mod:`nixeryd.app.servecmd`: ``nixeryd serve`` as a ``twistd``
command line.  The daemon end-to-end tests (:mod:`tests.daemon`) start
every daemon through it.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.__main__ import main as nixeryd_main
from nixeryd.app.servecmd import ServeUsageError, twistd_argv

FOREGROUND = ["twistd", "--nodaemon", "--pidfile="]


class TwistdArgvTests(SynchronousTestCase):
    """The twistd command line that ``nixeryd serve`` runs."""

    def test_json_by_default(self) -> None:
        """Production logging, one JSON object per line, is the default."""
        self.assertEqual(
            twistd_argv(["--port", "5000"]),
            FOREGROUND + ["--logger=nixeryd.app.logs.json_observer", "nixery",
                          "--port", "5000"])

    def test_text(self) -> None:
        """``--log-format text`` (either spelling) picks the text observer."""
        for argv in (["--log-format", "text", "--port", "1"],
                     ["--port", "1", "--log-format=text"]):
            self.assertEqual(
                twistd_argv(argv),
                FOREGROUND + ["--logger=nixeryd.app.logs.text_observer", "nixery",
                              "--port", "1"])

    def test_bad_format(self) -> None:
        """An unknown or missing format is a usage error."""
        for argv in (["--log-format", "xml"], ["--log-format"], ["--log-format="]):
            self.assertRaises(ServeUsageError, twistd_argv, argv)

    def test_bad_format_exit_code(self) -> None:
        """``nixeryd serve`` with a bad format exits 2 before starting anything."""
        self.assertEqual(nixeryd_main(["serve", "--log-format", "xml"]), 2)

    def test_observers_exist(self) -> None:
        """Each observer named on the command line can be imported and made."""
        from twisted.python.reflect import namedAny

        for format in ("json", "text"):
            logger = twistd_argv(["--log-format", format])[3]
            factory = namedAny(logger.partition("=")[2])
            self.assertTrue(callable(factory()))

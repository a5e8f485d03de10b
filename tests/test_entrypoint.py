"""
The ``nixeryd`` console script (:func:`nixeryd.__main__.entry_point`) as a
process: a reader that goes away early ends it quietly.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.build.childenv import child_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ClosedPipeTests(SynchronousTestCase):
    """``nixeryd <command> --help | head``: no traceback, the SIGPIPE exit code."""

    def test_help_into_closed_pipe(self) -> None:
        for command in ("gc", "build", "serve"):
            with self.subTest(command=command):
                read, write = os.pipe()
                os.close(read)
                try:
                    result = subprocess.run(
                        [sys.executable, "-m", "nixeryd", command, "--help"],
                        stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                        env=child_environment(os.environ), timeout=60)
                finally:
                    os.close(write)
                self.assertEqual(result.stderr, "")
                self.assertEqual(result.returncode, 141)

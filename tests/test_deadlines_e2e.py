"""
Deadlines that hold in the real daemon: a Nix step whose descendant left
its process group (a new session, a double fork), ignores ``SIGTERM`` and
keeps Nix's stderr open.  The request is answered at the deadline, the
build slot is free for the next request, and no such process outlives the
step, the daemon's stop or the daemon's death.

``nix-instantiate`` is a stand-in (:mod:`tests.escaping`) first on the
daemon's ``PATH``; its ``--version`` is the real one's, for the start-up
check.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

from twisted.trial.unittest import TestCase

from tests import escaping
from tests.daemon import Daemon
from tests.e2e import PACKAGE_SET, require_root, require_tools
from tests.processes import is_alive

#: Seconds allowed for each Nix step in these tests.
NIX_TIMEOUT = 2


def stand_in_nix(directory: str, pid_file: str) -> str:
    """A directory holding the stand-in ``nix-instantiate``; its path."""
    real = require_tools("nix-instantiate")["nix-instantiate"]
    os.makedirs(directory)
    path = os.path.join(directory, "nix-instantiate")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n"
                'if [ "$1" = --version ]; then exec %s --version; fi\n'
                "exec %s %s sleep %s\n" % (real, sys.executable, escaping.PROGRAM, pid_file))
    os.chmod(path, 0o755)
    return directory


def wait_for(predicate: Any, seconds: float = 20.0) -> bool:
    """
    Poll ``predicate`` until it holds; whether it did within ``seconds``.
    The processes watched are the daemon's, which tells nothing of them.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


class EscapedNixDescendantEndToEnd(TestCase):
    """The real daemon with a Nix whose descendant escapes its process group."""

    def setUp(self) -> None:
        require_root()
        self.work = os.path.abspath(self.mktemp())
        self.pid_file = os.path.join(self.work, "pids")
        self.bin_dir = stand_in_nix(os.path.join(self.work, "bin"), self.pid_file)
        self.addCleanup(self.kill_leftovers)

    def start(self, *args: str) -> Daemon:
        """A daemon whose Nix is the stand-in, started."""
        daemon = Daemon(self.work, "--pkgs-path", PACKAGE_SET, *args,
                        env={"PATH": self.bin_dir + os.pathsep + os.environ["PATH"]})
        self.addCleanup(daemon.stop)
        return daemon.start()

    def kill_leftovers(self) -> None:
        """Should a test fail, the processes it started do not outlive it."""
        for pid in self.pids():
            if pid is not None and is_alive(pid):
                os.kill(pid, signal.SIGKILL)

    def pids(self) -> tuple[int | None, int | None]:
        """The escaped grandchild's and the stand-in's pids, once written."""
        return escaping.pids_in(self.pid_file)

    def pull_in_background(self, daemon: Daemon) -> None:
        """Ask for an image, without waiting for the answer, which never comes."""
        def pull() -> None:
            try:
                daemon.request("/v2/hello/manifests/latest")
            except OSError:
                pass  # The daemon went away, as the test wants.
        threading.Thread(target=pull, daemon=True).start()

    def running_step(self) -> tuple[int, int]:
        """The pids of the step that has started, once it has said them."""
        self.assertTrue(wait_for(lambda: None not in self.pids()))
        grandchild, program = self.pids()
        assert grandchild is not None and program is not None
        self.assertTrue(is_alive(grandchild))
        return grandchild, program

    def test_answered_at_the_deadline(self) -> None:
        """
        The pull is answered when the step times out, not when the
        descendant lets go of stderr (a minute later); the one slot is free
        at once for the next pull; no process of either step remains.
        """
        daemon = self.start("--nix-timeout", str(NIX_TIMEOUT), "--max-builds", "1")
        for attempt in range(2):
            if os.path.exists(self.pid_file):
                os.unlink(self.pid_file)
            started = time.monotonic()
            status, _, body = daemon.request("/v2/hello/manifests/latest")
            elapsed = time.monotonic() - started
            self.assertEqual(status, 404, body)
            [error] = json.loads(body)["errors"]
            self.assertIn("timed out after %d seconds" % (NIX_TIMEOUT,), error["message"])
            self.assertLess(elapsed, NIX_TIMEOUT + 3, "attempt %d" % (attempt,))
            grandchild, program = self.pids()
            assert grandchild is not None and program is not None
            # The step's reaper ended and reaped its tree before the answer.
            self.assertFalse(is_alive(grandchild))
            self.assertFalse(is_alive(program))

    def test_stop_ends_the_step(self) -> None:
        """Stopping the daemon while a step runs leaves no process of the step."""
        # A deadline far away: only the stop can end this step.
        daemon = self.start("--nix-timeout", "600")
        self.pull_in_background(daemon)
        grandchild, program = self.running_step()
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        self.assertEqual(daemon.process.wait(timeout=30), 0)
        self.assertFalse(is_alive(program))
        self.assertFalse(is_alive(grandchild))

    def test_daemon_killed(self) -> None:
        """A daemon killed with SIGKILL mid-step leaves no process of the step."""
        daemon = self.start("--nix-timeout", "600")
        self.pull_in_background(daemon)
        grandchild, program = self.running_step()
        assert daemon.process is not None
        daemon.process.kill()
        daemon.process.wait()
        # Nothing of the test's is their parent: poll /proc, within the
        # reaper's grace period.
        self.assertTrue(wait_for(lambda: not is_alive(program), 10))
        self.assertTrue(wait_for(lambda: not is_alive(grandchild), 10))

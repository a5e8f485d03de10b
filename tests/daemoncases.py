"""
Test cases for the daemon end-to-end tests: :class:`DaemonTestCase`
starts real daemons and stops them in the test's cleanup, and gives the
short directories that podman and containerd need; :func:`podman_command`
is podman as these tests run it (all its state in one directory, vfs
storage, no events).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

from twisted.trial.unittest import TestCase

from tests.daemon import Daemon
from tests.e2e import require_root, require_tools


class DaemonTestCase(TestCase):
    """Starts daemons in a test and stops them in its cleanup."""

    def daemon(self, *args: str, storage: str | None = None,
               tls_ca: str | None = None) -> Daemon:
        require_root()
        require_tools("nix-build")
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        daemon = Daemon(workdir, *args, storage=storage, tls_ca=tls_ca)
        self.addCleanup(daemon.stop)
        return daemon.start()

    def short_directory(self) -> str:
        """
        A new directory with a short path, right in trial's temporary
        directory (the working directory of the run, removed with it):
        unix sockets and podman's run root have length limits that the
        paths of ``mktemp()`` exceed.
        """
        return tempfile.mkdtemp(prefix="nx-", dir=os.getcwd())

    def containerd(self) -> str:
        """
        Start a containerd of the test's own (state in a short directory,
        stopped in the cleanup); the address of its socket, for ``ctr``.
        """
        tools = require_tools("containerd", "ctr")
        state = self.short_directory()
        config = os.path.join(state, "containerd.toml")
        socket_path = os.path.join(state, "containerd.sock")
        with open(config, "w") as f:
            f.write('version = 2\nroot = "%s/lib"\nstate = "%s/state"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                    '[grpc]\n  address = "%s"\n' % (state, state, socket_path))
        log = open(os.path.join(state, "containerd.log"), "wb")
        containerd = subprocess.Popen([tools["containerd"], "--config", config],
                                      stdout=log, stderr=subprocess.STDOUT)

        def stop() -> None:
            containerd.terminate()
            containerd.wait(timeout=20)
            log.close()
        self.addCleanup(stop)
        deadline = time.monotonic() + 20
        while not os.path.exists(socket_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        return socket_path

    def nix_processes(self, daemon: Daemon, argv0: str) -> int:
        """How many times the daemon started the program ``argv0``."""
        return len(daemon.events_with(process_event="started", argv0=argv0))


def podman_command(podman: str, state: str) -> list[str]:
    """
    The start of a podman command line keeping all of podman's state in
    ``state`` (a :meth:`DaemonTestCase.short_directory`), none in
    ``/run/libpod``, with vfs storage and no event log.
    """
    return [podman, "--root", state + "/root", "--runroot", state + "/run",
            "--tmpdir", state + "/libpod", "--events-backend", "none",
            "--storage-driver", "vfs"]

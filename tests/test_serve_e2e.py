"""
End-to-end tests of ``nixeryd serve``'s start-up: the real command, which
checks its package source, Nix, its storage and its port before it serves,
and on a failure says so in one line on stderr and exits non-zero (2 for a
usage error, 1 for a failed check), without ever opening its port when a
check failed first.
"""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.daemon import Daemon, free_port, json_events, serve_until_exit
from tests.e2e import PACKAGE_SET, fresh_package_set, require_tools, run


def listened(result: subprocess.CompletedProcess[str]) -> bool:
    """Whether the daemon's log says it opened its port (Twisted logs each port it opens)."""
    return any("starting on" in str(event.get("log_text", ""))
               for event in json_events(result.stdout))


class StartupFailuresEndToEnd(SynchronousTestCase):
    """Each start-up mistake, as the real daemon reports it."""

    def setUp(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.storage = os.path.join(self.workdir, "storage")
        self.port = free_port()
        self.listen = "tcp:%d:interface=127.0.0.1" % (self.port,)

    def serve(self, *args: str, storage: bool = True,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        base = ["--listen", self.listen]
        if storage:
            base += ["--storage-path", self.storage]
        return serve_until_exit(*base, *args, env=env, cwd=self.workdir)

    def assertFails(self, result: subprocess.CompletedProcess[str], code: int,
                    *expected: str) -> str:
        """
        The daemon exited with ``code``, printed one line on stderr holding
        every ``expected`` text, no traceback and no usage, and never
        opened its port.
        """
        self.assertEqual(result.returncode, code, result.stderr)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        [line] = lines
        self.assertTrue(line.startswith("nixeryd: "), line)
        for text in expected:
            self.assertIn(text, line)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertNotIn("Options:", result.stdout + result.stderr)
        self.assertFalse(listened(result), result.stdout)
        return line

    def test_missing_package_path(self) -> None:
        """A package path that does not exist."""
        missing = os.path.join(self.workdir, "nothere")
        line = self.assertFails(self.serve("--pkgs-path", missing), 1)
        self.assertEqual(
            line, "nixeryd: NIXERY_PKGS_PATH %s does not exist; set NIXERY_PKGS_PATH"
            " (or --pkgs-path) to a package set directory" % (missing,))
        # The storage the service tree made is closed: no writer's
        # temporary directory (or its lock) is left behind.
        self.assertEqual(os.listdir(os.path.join(self.storage, "nixeryd", "tmp")), [])

    def test_package_path_is_a_file(self) -> None:
        """A package path that is a file, given by its variable."""
        path = os.path.join(self.workdir, "file")
        open(path, "w").close()
        self.assertFails(self.serve(env={"NIXERY_PKGS_PATH": path}), 1,
                         "NIXERY_PKGS_PATH %s is not a directory" % (path,))

    def test_unreachable_repository(self) -> None:
        """Git repositories that do not exist or do not answer (an unused loopback port)."""
        require_tools("git")
        for url in ("file:///nonexistent",
                    "http://127.0.0.1:%d/pkgs.git" % (free_port(),)):
            with self.subTest(url=url):
                self.assertFails(self.serve("--pkgs-repo", url), 1,
                                 "NIXERY_PKGS_REPO %s cannot be reached (git exited" % (url,),
                                 "set NIXERY_PKGS_REPO (or --pkgs-repo)")

    def test_repository_credentials_not_shown(self) -> None:
        """The user part of a repository URL shows neither in the message nor in the log."""
        require_tools("git")
        url = "http://nixeryd:s3cret@127.0.0.1:%d/pkgs.git" % (free_port(),)
        result = self.serve("--pkgs-repo", url)
        self.assertFails(result, 1, "cannot be reached")
        self.assertNotIn("s3cret", result.stdout + result.stderr)

    def test_storage_path_is_a_file(self) -> None:
        """STORAGE_PATH=/etc/passwd."""
        self.assertFails(
            self.serve("--pkgs-path", PACKAGE_SET, storage=False,
                       env={"STORAGE_PATH": "/etc/passwd"}), 1,
            "STORAGE_PATH /etc/passwd cannot be used: ",
            "set STORAGE_PATH (or --storage-path) to a directory nixeryd can create and write")

    def test_storage_not_writable(self) -> None:
        """A storage directory where the probe cannot be written (a file in its way)."""
        require_tools("nix-instantiate")
        os.makedirs(os.path.join(self.storage, "nixeryd"))
        open(os.path.join(self.storage, "nixeryd", "startup"), "w").close()
        self.assertFails(self.serve("--pkgs-path", PACKAGE_SET), 1,
                         "STORAGE_PATH %s cannot be written: " % (self.storage,))

    def test_unreachable_gcs(self) -> None:
        """A GCS endpoint nothing answers on (an unused loopback port)."""
        require_tools("nix-instantiate")
        endpoint = "http://127.0.0.1:%d" % (free_port(),)
        self.assertFails(
            self.serve("--pkgs-path", PACKAGE_SET, "--storage-backend", "gcs",
                       "--gcs-bucket", "images", "--gcs-endpoint", endpoint, storage=False),
            1, "GCS bucket gs://images at %s cannot be used: " % (endpoint,),
            "check GCS_BUCKET (or --gcs-bucket)")

    def test_no_nix(self) -> None:
        """Nix not on the PATH the daemon is given."""
        empty = os.path.join(self.workdir, "bin")
        os.makedirs(empty)
        self.assertFails(self.serve("--pkgs-path", PACKAGE_SET, env={"PATH": empty}), 1,
                         "Nix cannot be run (nix-instantiate exited with status 127",
                         "PATH=%s" % (empty,))

    def test_port_in_use(self) -> None:
        """A port another program listens on."""
        require_tools("nix-instantiate")
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", self.port))
            taken.listen()
            line = self.assertFails(self.serve("--pkgs-path", PACKAGE_SET), 1)
        self.assertEqual(line, "nixeryd: cannot listen on %s: address already in use;"
                               " set PORT (or --port) or --listen to a free port"
                         % (self.listen,))

    def test_bad_option_values(self) -> None:
        """Bad values and unknown options are usage errors: exit code 2, no usage text."""
        for args, expected in (
                (["--max-builds", "0"], "NIXERY_MAX_BUILDS/--max-builds: '0' is out of range"),
                (["--no-such-option"], "option --no-such-option not recognized"),
                (["--log-format", "xml"], "--log-format must be json or text, not 'xml'"),
                (["--channel", "bad channel"],
                 "NIXERY_CHANNEL/--channel: 'bad channel' is not a nixpkgs channel")):
            with self.subTest(args=args):
                self.assertFails(self.serve("--pkgs-path", PACKAGE_SET, *args), 2, expected)

    def test_gcs_without_credentials(self) -> None:
        """
        GCS storage with neither a key file nor a metadata server (nothing
        listens where GCE_METADATA_HOST points) is a configuration error
        (exit code 2, which the systemd unit does not restart) said in one
        line naming what to set.
        """
        host = "127.0.0.1:%d" % (free_port(),)
        result = self.serve("--pkgs-path", PACKAGE_SET, "--storage-backend", "gcs",
                            "--gcs-bucket", "b", storage=False,
                            env={"GCE_METADATA_HOST": host})
        self.assertFails(result, 2, "no credentials", "GOOGLE_APPLICATION_CREDENTIALS",
                         "no metadata server answered at http://" + host)

    def test_usage_error_before_checks(self) -> None:
        """A missing setting is reported before any check runs (nothing is started)."""
        result = self.serve(storage=False)
        self.assertFails(result, 2, "no package source")
        self.assertEqual(json_events(result.stdout), [])


class StartupLineEndToEnd(SynchronousTestCase):
    """The one line a started daemon logs about what it serves."""

    def start(self, *args: str) -> Daemon:
        require_tools("nix-instantiate")
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        daemon = Daemon(workdir, *args)
        self.addCleanup(daemon.stop)
        return daemon.start()

    def serving(self, daemon: Daemon) -> dict[str, Any]:
        [event] = [e for e in daemon.events() if e.get("event") == "serving"]
        return event

    def test_path_source(self) -> None:
        """Address, source, storage and limits, in one info line."""
        daemon = self.start("--pkgs-path", PACKAGE_SET, "--max-builds", "3",
                            "--layer-budget", "50", "--nix-timeout", "90")
        event = self.serving(daemon)
        self.assertEqual(event["log_level"], "info")
        self.assertEqual(
            (event["address"], event["source"], event["storage"], event["max_builds"],
             event["nix_timeout"], event["layer_budget"], event["revision"]),
            (daemon.address, "path " + PACKAGE_SET, "filesystem " + daemon.storage, 3,
             90.0, 50, None))
        self.assertTrue(event["log_text"].startswith(
            "Serving on %s: packages from path %s for linux/amd64; storage filesystem %s;"
            " 3 Nix builds"
            " at once, Nix timeout 90 s a step, 50 layers an image (+1); " % (
                daemon.address, PACKAGE_SET, daemon.storage)), event["log_text"])
        self.assertIn("Nix", event["nix_version"])
        # What the failure tests look for to tell that no port was opened.
        self.assertTrue(any("starting on" in str(e.get("log_text", "")) for e in daemon.events()))

    def test_git_source_revision(self) -> None:
        """A git source is shown with the commit that ``latest`` is."""
        require_tools("git")
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        repo = fresh_package_set(workdir)
        git = ["git", "-C", repo, "-c", "user.name=t", "-c", "user.email=t@localhost"]
        run(git + ["init", "-q"])
        run(git + ["add", "."])
        run(git + ["commit", "-q", "-m", "package set"])
        commit = run(git + ["rev-parse", "HEAD"]).stdout.strip()
        event = self.serving(self.start("--pkgs-repo", "file://" + repo))
        self.assertEqual(event["revision"], commit)
        self.assertEqual(event["source"], "git file://%s at %s" % (repo, commit[:12]))

    def test_sigterm_exits_zero(self) -> None:
        """SIGTERM stops a serving daemon cleanly, with exit code 0."""
        daemon = self.start("--pkgs-path", PACKAGE_SET)
        process = daemon.process
        assert process is not None
        daemon.stop()
        self.assertEqual(process.returncode, 0)
        self.assertIn("Main loop terminated.", daemon.log_text())

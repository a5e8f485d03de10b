"""
A real ``twistd nixery`` for end-to-end tests: started as a child process
on a free loopback port, logging JSON lines to a file the tests read, and
stopped (by its PID) in the test's cleanup.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

from tests.e2e import OFFLINE_NIX_OPTIONS, child_environment


def serve_argv(*args: str, entry: Sequence[str] = ("-m", "nixeryd")) -> list[str]:
    """
    The argv of ``python -m nixeryd serve`` with the offline Nix options and
    ``args``; ``entry`` replaces ``-m nixeryd`` (a script that runs the same
    command line, as the benchmarks' probes do).
    """
    argv = [sys.executable, *entry, "serve"]
    for option in OFFLINE_NIX_OPTIONS:
        argv += ["--nix-option", option]
    return argv + list(args)


def serve_until_exit(*args: str, env: dict[str, str] | None = None,
                     cwd: str | None = None,
                     timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """
    Run ``nixeryd serve`` with ``args`` until it exits by itself (a daemon
    that fails a start-up check); stdout (its JSON log) and stderr as text.

    :raises subprocess.TimeoutExpired: when it is still running after
        ``timeout`` seconds (it is killed first).
    """
    return subprocess.run(serve_argv(*args), capture_output=True, text=True,
                          env=child_environment(**(env or {})), cwd=cwd, timeout=timeout)


def json_events(text: str) -> list[dict[str, Any]]:
    """The JSON log events in ``text``, one object per line; other lines are skipped."""
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def serving_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    The events from the start-up line on: those of the start-up checks
    (one Nix run, a git ls-remote for a git source) come before it.
    """
    for index, event in enumerate(events):
        if event.get("event") == "serving":
            return events[index:]
    return []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Daemon:
    """
    One ``nixeryd serve`` child process (``twistd -n nixery`` with JSON logs).

    :param workdir: where its log and (by default) storage go.
    :param args: extra plugin options (e.g. ``--pkgs-path``).
    :param tls_ca: the CA file to trust when the daemon serves TLS.
    :param entry: what Python runs instead of ``-m nixeryd`` (see
        :func:`serve_argv`).
    """

    def __init__(self, workdir: str, *args: str, storage: str | None = None,
                 env: dict[str, str] | None = None, tls_ca: str | None = None,
                 entry: Sequence[str] = ("-m", "nixeryd")) -> None:
        self.entry = tuple(entry)
        self.workdir = workdir
        self.storage = storage or os.path.join(workdir, "storage")
        self.port = free_port()
        #: With TLS (``tls_ca``: the CA that signed its certificate for
        #: ``localhost``), the daemon is reached by that name over HTTPS.
        self.tls_ca = tls_ca
        self.address = "%s:%d" % ("localhost" if tls_ca else "127.0.0.1", self.port)
        self.log_path = os.path.join(workdir, "daemon-%d.log" % (self.port,))
        self.args = list(args)
        self.env = child_environment(**(env or {}))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> "Daemon":
        """Start the daemon and wait until ``/v2/`` answers."""
        argv = serve_argv("--listen", "tcp:%d:interface=127.0.0.1" % (self.port,),
                          "--storage-path", self.storage, *self.args, entry=self.entry)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=self.env, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("daemon exited %d:\n%s" % (
                    self.process.returncode, self.log_text()))
            try:
                with urllib.request.urlopen(self.url("/v2/"), timeout=2,
                                            context=self.ssl_context()) as response:
                    if response.status == 200:
                        return self
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    # Authentication is on: it answers.
                    return self
                time.sleep(0.1)
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.stop()
        raise AssertionError("daemon did not answer /v2/ in %gs:\n%s"
                             % (timeout, self.log_text()))

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self._log.close()
        self.process = None

    def url(self, path: str) -> str:
        """The daemon's URL for ``path``."""
        return "%s://%s%s" % ("https" if self.tls_ca else "http", self.address, path)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context trusting :attr:`tls_ca`, when the daemon serves TLS."""
        return ssl.create_default_context(cafile=self.tls_ca) if self.tls_ca else None

    def request(self, path: str, method: str = "GET",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request: status, headers (lowercase names), body."""
        request = urllib.request.Request(self.url(path), method=method,
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=120,
                                        context=self.ssl_context()) as response:
                return (response.status, {k.lower(): v for k, v in response.headers.items()},
                        response.read())
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def log_text(self) -> str:
        """Everything the daemon logged so far."""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def events(self) -> list[dict[str, Any]]:
        """The daemon's log events (one JSON object per line)."""
        return json_events(self.log_text())

    def events_with(self, **fields: Any) -> list[dict[str, Any]]:
        """
        The log events whose fields have the given values, once serving:
        those of the start-up checks (one Nix run, a git ls-remote for a
        git source) are left out.
        """
        return [e for e in serving_events(self.events())
                if all(e.get(k) == v for k, v in fields.items())]

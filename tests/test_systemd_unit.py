"""
The shipped systemd unit (``systemd/nixeryd.service``), checked by
``systemd-analyze verify`` and read for what the daemon relies on.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.app.preflight import EXIT_USAGE
from nixeryd.core.defaults import MAX_CONNECTIONS_PER_CLIENT
from nixeryd.registry.connections import connections_for_descriptors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "systemd", "nixeryd.service")
#: Where the unit expects the installed program.
INSTALLED = "/opt/nixeryd/bin/nixeryd"


def read_unit() -> str:
    with open(UNIT) as f:
        return f.read()


def service_section() -> dict[str, list[str]]:
    """The ``[Service]`` settings, each with every value it is given."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in read_unit().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


class SystemdUnitTests(SynchronousTestCase):
    """The unit runs the installed entry point, as its own user, hardened."""

    def test_verify(self) -> None:
        """
        ``systemd-analyze verify`` accepts the unit without a warning, with
        its program at the path of this checkout's installed one.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            self.skipTest("systemd-analyze is not installed")
        program = os.path.join(os.path.dirname(sys.executable), "nixeryd")
        self.assertTrue(os.access(program, os.X_OK), program)
        directory = self.mktemp()
        os.makedirs(directory)
        unit = os.path.join(directory, "nixeryd.service")
        with open(unit, "w") as f:
            f.write(read_unit().replace("ExecStart=" + INSTALLED,
                                        "ExecStart=" + program))
        result = subprocess.run([analyze, "verify", unit], capture_output=True,
                                text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        complaints = [line for line in result.stderr.splitlines()
                      if "nixeryd.service" in line]
        self.assertEqual(complaints, [])

    def test_runs_installed_program(self) -> None:
        """No PATH look-up and no twistd: the venv's own ``nixeryd serve``."""
        self.assertEqual(service_section()["ExecStart"], [INSTALLED + " serve"])

    def test_own_user_and_directories(self) -> None:
        """A user of its own with systemd-made state and cache directories."""
        settings = service_section()
        self.assertEqual(settings["DynamicUser"], ["yes"])
        self.assertEqual(settings["StateDirectory"], ["nixeryd"])
        self.assertEqual(settings["CacheDirectory"], ["nixeryd"])
        environment = dict(value.partition("=")[::2] for value in settings["Environment"])
        self.assertTrue(environment["STORAGE_PATH"].startswith("/var/lib/nixeryd/"))
        # git and Nix write caches under HOME/XDG_CACHE_HOME, which must be
        # writable despite ProtectHome: the state and cache directories.
        self.assertEqual(environment["HOME"], "/var/lib/nixeryd")
        self.assertEqual(environment["XDG_CACHE_HOME"], "/var/cache/nixeryd")
        self.assertEqual(settings["ProtectHome"], ["yes"])

    def test_every_hardening_line_commented(self) -> None:
        """Each hardening setting has a comment saying why, just above its group."""
        lines = read_unit().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("# Hardening"))
        previous = lines[start]
        for line in lines[start + 1:]:
            if line.startswith("["):
                break
            if line and not line.startswith("#"):
                self.assertTrue(previous.startswith("#") or "=" in previous,
                                "no comment before " + line)
            previous = line
        self.assertIn("NoNewPrivileges=yes", lines)
        self.assertIn("LimitNOFILE=65536", lines)

    def test_open_files_carry_the_connections(self) -> None:
        """
        ``LimitNOFILE`` is one number (``nixeryd serve`` raises its soft
        limit to the hard one anyway), the same as the NixOS module's, and
        carries the connections its comment names.
        """
        [limit] = service_section()["LimitNOFILE"]
        self.assertTrue(limit.isdigit(), limit)
        descriptors = int(limit)
        carried = connections_for_descriptors(descriptors)
        # Room for 500 clients each at the per-client limit.
        self.assertGreaterEqual(carried, 500 * MAX_CONNECTIONS_PER_CLIENT)
        lines = read_unit().splitlines()
        at = lines.index("LimitNOFILE=" + limit)
        comment = " ".join(line for line in lines[at - 3:at] if line.startswith("#"))
        self.assertIn("allows %d connections" % (carried,), comment)
        with open(os.path.join(ROOT, "nix", "module.nix")) as f:
            self.assertIn("LimitNOFILE = %d;" % (descriptors,), f.read())

    def test_configuration_errors_not_restarted(self) -> None:
        """
        A configuration error (exit code 2) is not restarted, with a
        comment saying why, and the NixOS module does the same.
        """
        self.assertEqual(service_section()["Restart"], ["on-failure"])
        self.assertEqual(service_section()["RestartPreventExitStatus"], [str(EXIT_USAGE)])
        lines = read_unit().splitlines()
        at = lines.index("RestartPreventExitStatus=%d" % (EXIT_USAGE,))
        self.assertTrue(lines[at - 1].startswith("#"), lines[at - 1])
        with open(os.path.join(ROOT, "nix", "module.nix")) as f:
            self.assertIn("RestartPreventExitStatus = %d;" % (EXIT_USAGE,), f.read())

    def test_parses_as_ini(self) -> None:
        """Sections are well-formed (a sanity check beside systemd's own)."""
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment, method-assign]
        parser.read_string(read_unit())
        self.assertEqual(parser.sections(), ["Unit", "Service", "Install"])

"""
Helpers for the end-to-end tests: the project's offline package set, real
command-line tools, and running ``python -m nixeryd`` as a user would.

End-to-end test classes are named ``...EndToEnd``; they use real Nix and
real container clients, take seconds rather than milliseconds, and run in
CI like every other test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from typing import Sequence

from twisted.trial.unittest import SkipTest

#: The offline package set the tests build from.
PACKAGE_SET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pkgs")
#: Nix options for offline use: never ask a binary cache.  The offline
#: set's arm64 packages are built by this machine's builders, so no
#: ``extra-platforms`` is needed (nor wanted: a package for aarch64-linux
#: itself must fail as on any x86_64 registry).
OFFLINE_NIX_OPTIONS = ("substituters=",)
#: The repository root, so child Pythons import this checkout.
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fresh_package_set(directory: str) -> str:
    """
    A copy of the offline package set, under ``directory``, with a new
    nonce: every derivation in it has new store paths, so Nix really runs
    their builders.
    """
    path = os.path.join(os.path.abspath(directory), "pkgs")
    shutil.copytree(PACKAGE_SET, path)
    with open(os.path.join(path, "nonce"), "w") as nonce:
        nonce.write(uuid.uuid4().hex)
    return path


def require_tools(*names: str) -> dict[str, str]:
    """
    The absolute paths of command-line tools.

    :raises SkipTest: naming the missing ones (``dev/setup`` installs them).
    """
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise SkipTest("not installed: %s (dev/setup installs them)" % (", ".join(missing),))
    return found  # type: ignore[return-value]


def require_root() -> None:
    """Skip unless running as root (chroot and the Nix store need it)."""
    if os.geteuid() != 0:
        raise SkipTest("needs root")


def child_environment(**extra: str) -> dict[str, str]:
    """The environment for a child ``python -m nixeryd`` of this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPOSITORY + (os.pathsep + env["PYTHONPATH"]
                                      if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def run(argv: Sequence[str], *, timeout: float = 300, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output as text."""
    result = subprocess.run(list(argv), capture_output=True, text=True,
                            timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError("%s exited %d\nstdout:\n%s\nstderr:\n%s" % (
            " ".join(argv), result.returncode, result.stdout, result.stderr))
    return result


def build_command(name: str, out: str, *extra: str) -> list[str]:
    """The argv of ``python -m nixeryd build`` with the offline package set."""
    argv = [sys.executable, "-m", "nixeryd", "build", "--pkgs-path", PACKAGE_SET,
            "--out", out]
    for option in OFFLINE_NIX_OPTIONS:
        argv += ["--nix-option", option]
    return argv + list(extra) + [name]

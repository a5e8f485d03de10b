"""
The Nix runner against real Nix, for the tests of Nix calls and package
sources: offline options, and an environment that shares only the store
with the host.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from nixeryd.build.childenv import child_environment
from nixeryd.build.nix import NixRunner, default_nix_dir
from nixeryd.core.threads import InlineRunner
from tests.e2e import OFFLINE_NIX_OPTIONS

#: :data:`tests.e2e.OFFLINE_NIX_OPTIONS` as ``(name, value)`` pairs: no
#: binary cache (there is no network).
NIX_OPTIONS = tuple((name, value) for name, _, value in
                    (option.partition("=") for option in OFFLINE_NIX_OPTIONS))


def nix_environment(test: TestCase) -> dict[str, str]:
    """
    An environment for Nix that shares only the store with the host: a
    fresh HOME and cache directory (where fetchGit keeps its clones).
    """
    home = os.path.abspath(test.mktemp())
    os.makedirs(home)
    return child_environment(
        os.environ, ["PATH", "TMPDIR", "NIX_REMOTE"], HOME=home,
        XDG_CACHE_HOME=os.path.join(home, ".cache"))


def nix_runner(test: TestCase, timeout: float = 60, *, kill_grace: float = 5.0,
               extra_options: tuple[tuple[str, str], ...] = ()) -> NixRunner:
    """A runner of real Nix for ``test``, with ``extra_options`` after the offline ones."""
    return NixRunner(reactor, runner=InlineRunner(), nix_dir=default_nix_dir(),
                     timeout=timeout,
                     options=NIX_OPTIONS + extra_options, env=nix_environment(test),
                     kill_grace=kill_grace)

"""
The readiness checks of the daemon (for ``/readyz``, see
:mod:`nixeryd.metrics.readiness`): the start-up checks of
:mod:`nixeryd.app.preflight`, run again in the background.

- the package source, as at start-up (a directory with ``default.nix``;
  a git repository answering ``git ls-remote``);
- Nix (``nix-instantiate --version``), whose routine "Started" event is
  left out of the log (the check runs every few seconds; a failure or a
  timeout is still logged);
- the storage the daemon uses: a probe document written through it and
  read back (the start-up check opens a storage of its own instead).

Each check has the deadline of its start-up counterpart and answers with
the start-up check's one-line message when it fails.
"""

from __future__ import annotations

from typing import Any, Coroutine, Mapping, Optional

from twisted.logger import ILogObserver, LogEvent, Logger, globalLogPublisher
from zope.interface import implementer

from nixeryd.app.config import Config
from nixeryd.app.preflight import (CHECK_TIMEOUT, CHILD_SLACK, StartupFailed,
                                   check_nix, check_source, probe_storage, storage_words,
                                   within)
from nixeryd.build.process import ProcessReactor
from nixeryd.core.threads import Runner
from nixeryd.metrics.readiness import Check
from nixeryd.storage.interface import IStorage


@implementer(ILogObserver)
class _WithoutStarts:
    """Passes every event on to the global log but a process's start."""

    def __call__(self, event: LogEvent) -> None:
        """One event of a check."""
        if event.get("process_event") != "started":
            globalLogPublisher(event)


_quiet_log = Logger(namespace=__name__, observer=_WithoutStarts())


async def _problem(work: Coroutine[Any, Any, object]) -> Optional[str]:
    """``None`` when ``work`` succeeds, else the one line it failed with."""
    try:
        await work
    except StartupFailed as e:
        return e.message
    return None


def readiness_checks(config: Config, *, reactor: ProcessReactor, env: Mapping[str, str],
                     runner: Runner, storage: IStorage,
                     timeout: float = CHECK_TIMEOUT) -> list[tuple[str, Check]]:
    """
    The daemon's readiness checks, named.

    :param env: the environment of git and Nix.
    :param runner: runs the file system look-ups of a path source.
    :param storage: the daemon's storage.
    """
    what, fix = storage_words(config)
    slack = timeout + CHILD_SLACK

    def source() -> Coroutine[Any, Any, Optional[str]]:
        return _problem(within(slack, reactor, "the package source", check_source(
            config.source, reactor=reactor, env=env, runner=runner, timeout=timeout)))

    def nix() -> Coroutine[Any, Any, Optional[str]]:
        return _problem(within(slack, reactor, "nix-instantiate --version", check_nix(
            reactor=reactor, env=env, timeout=timeout, logger=_quiet_log)))

    def store() -> Coroutine[Any, Any, Optional[str]]:
        return _problem(within(timeout, reactor, what,
                               probe_storage(storage, what=what, fix=fix)))

    return [("source", source), ("nix", nix), ("storage", store)]

"""
``nixeryd gc``: remove from the daemon's storage the images nobody pulled
lately and every blob nothing references.

It reads the daemon's storage settings, options and environment variables
alike (``NIXERY_STORAGE_BACKEND``, ``STORAGE_PATH``, ``GCS_BUCKET``,
``STORAGE_EMULATOR_HOST``, ``GOOGLE_APPLICATION_CREDENTIALS``: the
definitions of :mod:`nixeryd.app.settings`), opens the storage as the
daemon does (:mod:`nixeryd.app.storages`), makes one pass
(:class:`~nixeryd.gc.collector.Collector`) and prints what it removed, by
kind, with the bytes; with ``--dry-run``, what it would remove.  It may
run while daemons build on the same storage: nothing written within the
grace period (``--grace``, hours) is removed.  A grace period shorter
than :data:`MIN_GRACE_HOURS` is refused unless ``--unsafe-grace`` says
that no daemon builds on the storage: a build's layers are referenced by
nothing until its manifest is written at its very end, and a shorter
period would remove the layers of builds in progress.

Exit codes: 0 done, 2 usage error, 1 a storage that cannot be used or a
pass that failed (nothing is removed after the failure).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, TextIO

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.python.usage import UsageError

from nixeryd.app.config import StorageConfig
from nixeryd.app.settings import GRACE, KEEP_DAYS, STORAGE_SETTINGS, flags, parameters
from nixeryd.app.commandline import EXIT_USAGE
from nixeryd.app.storagecmd import (EXIT_FAILED, EXIT_OK, StorageOptions, parse_with,
                                    report_pass, run_command)
from nixeryd.core.threads import Runner
from nixeryd.storage.interface import IStorage

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "GCRequest", "collect", "main", "parse"]
#: The shortest grace period accepted without ``--unsafe-grace``, in
#: hours: longer than a build takes from its first layer to its manifest
#: (Nix steps are bounded by ``NIX_TIMEOUT``, ten minutes by
#: default, then layers are written and stored).
MIN_GRACE_HOURS = 1.0


@frozen
class GCRequest:
    """
    One checked ``nixeryd gc`` command line.

    :ivar storage: the storage to collect.
    :ivar keep_days: the retention in days, or ``None`` to keep every image.
    :ivar grace_hours: nothing written within this many hours is removed.
    :ivar dry_run: remove nothing, say what would be removed.
    :ivar verbose: also name everything removed.
    """

    storage: StorageConfig
    keep_days: Optional[int]
    grace_hours: float
    dry_run: bool
    verbose: bool


class GCOptions(StorageOptions):
    """The options of ``nixeryd gc``; the checked result is :attr:`request`."""

    synopsis = "Usage: nixeryd gc [--keep-days N] [--grace HOURS] [--dry-run] [options]"
    longdesc = ("Remove from the storage the images not pulled (nor built) within"
                " --keep-days, and every blob no image references, except what was"
                " written within --grace hours; print what was removed. The storage"
                " is the daemon's, from the same options and environment variables."
                " --grace below %g hour is refused without --unsafe-grace: the layers"
                " of a build in progress are referenced by nothing until its manifest"
                " is written, at its end." % (MIN_GRACE_HOURS,)
                + " Exit codes: 0 done, 2 usage error, 1 storage unusable or pass failed.")

    optFlags = [["dry-run", None, "Remove nothing; print what would be removed."],
                ["unsafe-grace", None,
                 "Accept a --grace below %g hour: only when no daemon builds on the"
                 " storage during the pass." % (MIN_GRACE_HOURS,)],
                ["verbose", "v", "Also name every blob and document removed."]] + flags(
                    STORAGE_SETTINGS, variables=True)
    optParameters = parameters(STORAGE_SETTINGS, variables=True) + parameters(
        (KEEP_DAYS, GRACE), variables=True)

    request: GCRequest

    def postOptions(self) -> None:
        """Check every option, as the daemon checks its own."""
        keep_days = KEEP_DAYS.read(self, self._environ)
        grace_hours = GRACE.read(self, self._environ)
        if grace_hours < MIN_GRACE_HOURS and not self["unsafe-grace"]:
            raise UsageError(
                "--grace %g is shorter than %g hour, which removes the layers of builds"
                " in progress; add --unsafe-grace if no daemon builds on this storage"
                % (grace_hours, MIN_GRACE_HOURS))
        self.request = GCRequest(
            storage=self.storage_config(), keep_days=keep_days,
            grace_hours=grace_hours, dry_run=bool(self["dry-run"]),
            verbose=bool(self["verbose"]))


def parse(argv: Sequence[str], environ: Optional[Mapping[str, str]] = None) -> GCRequest:
    """The checked command line (:func:`~nixeryd.app.storagecmd.parse_with`)."""
    return parse_with(GCOptions(environ), argv)


async def collect(reactor: object, request: GCRequest, out: TextIO) -> int:
    """
    Open the storage, make one pass and print its report; the exit code.

    :param reactor: the running reactor: threads, TCP (GCS) and time.
    """
    from nixeryd.gc.collector import Collector
    from nixeryd.gc.report import Report

    async def make(storage: IStorage, runner: Runner) -> Report:
        return await Collector(storage, IReactorTime(reactor).seconds,
                               keep_days=request.keep_days,
                               grace=request.grace_hours * 3600,
                               dry_run=request.dry_run).collect()

    return await report_pass(reactor, request.storage, "nixeryd gc", "collect", make, out,
                             verbose=request.verbose)


def main(argv: Sequence[str]) -> int:
    """``nixeryd gc``: one pass; returns the exit code."""
    return run_command(parse, argv, "nixeryd gc", collect)

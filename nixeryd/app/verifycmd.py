"""
``nixeryd verify``: check every blob of the daemon's storage against its
digest, and with ``--repair`` remove the damaged ones so that the next
pull builds them again (:mod:`nixeryd.gc.verifier`).

It reads the daemon's storage settings, options and environment variables
alike, as ``nixeryd gc`` does, and may run while daemons serve from the
storage.

Exit codes: 0 nothing damaged left (none found, or every damaged blob
removed), 3 damaged blobs found and left, 2 usage error, 1 a storage that
cannot be used or a pass that failed.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, TextIO

from attrs import frozen

from nixeryd.app.commandline import EXIT_USAGE
from nixeryd.app.config import StorageConfig
from nixeryd.app.settings import STORAGE_SETTINGS, flags, parameters
from nixeryd.app.storagecmd import (EXIT_FAILED, EXIT_OK, StorageOptions, parse_with,
                                    report_pass, run_command)
from nixeryd.core.threads import Runner
from nixeryd.storage.interface import IStorage

#: Damaged blobs were found and are still there.
EXIT_DAMAGED = 3

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_DAMAGED", "VerifyRequest",
           "verify", "main", "parse"]


@frozen
class VerifyRequest:
    """
    One checked ``nixeryd verify`` command line.

    :ivar storage: the storage to check.
    :ivar repair: remove the damaged blobs found.
    :ivar verbose: also name the blobs that could not be checked.
    """

    storage: StorageConfig
    repair: bool
    verbose: bool


class VerifyOptions(StorageOptions):
    """The options of ``nixeryd verify``; the checked result is :attr:`request`."""

    synopsis = "Usage: nixeryd verify [--repair] [options]"
    longdesc = ("Check every blob of the storage against its digest: small blobs are read"
                " and hashed, layers hashed on the filesystem or, on GCS and S3, their MD5"
                " or ETag compared with the checksum the cache documents record. Print what is"
                " damaged; with --repair, remove it so that the next pull builds it again."
                " The storage is the daemon's, from the same options and environment"
                " variables. Exit codes: 0 nothing damaged left, 3 damaged blobs left,"
                " 2 usage error, 1 storage unusable or pass failed.")

    optFlags = [["repair", None, "Remove the damaged blobs (rebuilt on their next pull)."],
                ["verbose", "v", "Also name every blob that could not be checked."]] + flags(
                    STORAGE_SETTINGS, variables=True)
    optParameters = parameters(STORAGE_SETTINGS, variables=True)

    request: VerifyRequest

    def postOptions(self) -> None:
        """Check the storage options, as the daemon checks its own."""
        self.request = VerifyRequest(
            storage=self.storage_config(), repair=bool(self["repair"]),
            verbose=bool(self["verbose"]))


def parse(argv: Sequence[str], environ: Optional[Mapping[str, str]] = None) -> VerifyRequest:
    """The checked command line (:func:`~nixeryd.app.storagecmd.parse_with`)."""
    return parse_with(VerifyOptions(environ), argv)


async def verify(reactor: object, request: VerifyRequest, out: TextIO) -> int:
    """
    Open the storage, make one pass and print its report; the exit code.

    :param reactor: the running reactor: threads, TCP (GCS) and time.
    """
    from nixeryd.gc.verifier import Verifier, VerifyReport

    async def make(storage: IStorage, runner: Runner) -> VerifyReport:
        return await Verifier(storage, runner, repair=request.repair).verify()

    return await report_pass(
        reactor, request.storage, "nixeryd verify", "verify", make, out,
        verbose=request.verbose,
        exit_code=lambda report: EXIT_DAMAGED if report.damage_left else EXIT_OK)


def main(argv: Sequence[str]) -> int:
    """``nixeryd verify``: one pass; returns the exit code."""
    return run_command(parse, argv, "nixeryd verify", verify)

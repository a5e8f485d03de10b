"""
What the commands that work on the daemon's storage share (``nixeryd gc``,
``nixeryd verify``): the storage opened as the daemon opens it, on a
thread pool of its own, one line and an exit code when it cannot be, and
the reactor run for the one piece of work, with warnings and errors on
stderr; their options' base (:class:`StorageOptions`) and their ``main``
(:func:`run_command`).
"""

from __future__ import annotations

import os
import sys
from typing import Awaitable, Callable, Mapping, Optional, Protocol, Sequence, TextIO, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP, IReactorThreads
from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                            globalLogBeginner)
from twisted.python import usage

from nixeryd.app.commandline import parse_or_exit_code
from nixeryd.app.config import StorageConfig, storage_config_from
from nixeryd.app.settings import ImageOptions
from nixeryd.core.threads import Runner
from nixeryd.storage.interface import IStorage

EXIT_OK, EXIT_FAILED = 0, 1
#: Threads for the storage's calls.
STORAGE_COMMAND_THREADS = 4

T = TypeVar("T")


class Report(Protocol):
    """What a pass over a storage found, for people."""

    def lines(self, verbose: bool = False) -> list[str]:
        """The report's lines."""


R = TypeVar("R", bound=Report)


class CheckedOptions(Protocol[T]):
    """Command-line options whose checked result is ``request``."""

    request: T

    def parseOptions(self, options: list[str]) -> None:
        """Parse and check the command line."""


class StorageOptions(usage.Options):
    """
    The base of a storage command's options: ``--version``, and the
    environment the storage settings are read from besides the options.
    """

    opt_version = ImageOptions.opt_version

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._environ: Mapping[str, str] = os.environ if environ is None else environ

    def storage_config(self) -> StorageConfig:
        """The checked storage settings, as the daemon checks its own."""
        return storage_config_from(self, self._environ)


def parse_with(options: CheckedOptions[T], argv: Sequence[str]) -> T:
    """
    The checked command line.

    :raises UsageError: one line saying what is wrong.
    :raises SystemExit: for ``--help``, once printed.
    """
    options.parseOptions(list(argv))
    return options.request


async def report_pass(reactor: object, config: StorageConfig, command: str, purpose: str,
                      make: Callable[[IStorage, Runner], Awaitable[R]], out: TextIO, *,
                      verbose: bool, exit_code: Callable[[R], int] = lambda _: EXIT_OK
                      ) -> int:
    """
    Open the storage, make one pass (``make``) and print its report; the
    exit code (``exit_code`` of the report, :data:`EXIT_FAILED` after one
    line on stderr when the pass fails).
    """
    async def work(storage: IStorage, runner: Runner) -> int:
        try:
            report = await make(storage, runner)
        except Exception as e:
            sys.stderr.write("%s: the pass failed: %s\n"
                             % (command, " ".join((str(e) or type(e).__name__).split())))
            return EXIT_FAILED
        for line in report.lines(verbose=verbose):
            out.write(line + "\n")
        out.flush()
        return exit_code(report)

    return await on_storage(reactor, config, command, work, purpose)


async def on_storage(reactor: object, config: StorageConfig, command: str,
                     work: Callable[[IStorage, Runner], Awaitable[int]],
                     purpose: str = "work on") -> int:
    """
    Open the storage, await ``work`` on it and close it; ``work``'s exit
    code, or :data:`EXIT_FAILED` (or the start-up check's code) after one
    line on stderr when the storage cannot be opened.

    :param reactor: the running reactor: threads, TCP (GCS) and time.
    :param command: the command's name, which starts each line it writes.
    :param purpose: what it does to a storage, in "no storage to ...".
    """
    from nixeryd.app.preflight import StartupFailed
    from nixeryd.app.storages import open_storage, unusable
    from nixeryd.core.threads import ThreadPoolService

    pool = ThreadPoolService(IReactorThreads(reactor), STORAGE_COMMAND_THREADS,
                             name=command.replace(" ", "-"))
    pool.startService()
    try:
        path = config.storage_path
        if config.storage_backend == "filesystem" and path is not None and not (
                await pool.run(os.path.isdir, path)):
            sys.stderr.write("%s: STORAGE_PATH %s is not a directory: no storage"
                             " to %s\n" % (command, path, purpose))
            return EXIT_FAILED
        try:
            storage = await open_storage(config, IReactorTCP(reactor), pool)
        except Exception as e:
            failed = e if isinstance(e, StartupFailed) else unusable(config, e)
            sys.stderr.write("%s: %s\n" % (command, " ".join(failed.message.split())))
            return failed.exit_code
        try:
            return await work(storage, pool)
        finally:
            await storage.close()
    finally:
        await pool.stopService()


def react(run: Callable[[object], Awaitable[int]]) -> int:
    """
    Run the reactor for ``run(reactor)``, warnings and errors logged as
    text lines on stderr; its exit code (:data:`EXIT_FAILED` when it ended
    without one).
    """
    from twisted.internet import task

    from nixeryd.app.logs import TextLinesObserver

    globalLogBeginner.beginLoggingTo([FilteringLogObserver(
        TextLinesObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])],
        redirectStandardIO=False)
    result: list[int] = []

    async def main(reactor: object) -> None:
        result.append(await run(reactor))

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else EXIT_FAILED
    return result[0] if result else EXIT_FAILED


def run_command(parse: Callable[[Sequence[str]], T], argv: Sequence[str], command: str,
                run: Callable[[object, T, TextIO], Awaitable[int]]) -> int:
    """
    A storage command's ``main``: the checked command line (or the exit
    code of a usage error, ``--help`` or ``--version``), then
    ``run(reactor, request, stdout)`` on the reactor; the exit code.
    """
    request = parse_or_exit_code(parse, argv, command)
    if isinstance(request, int):
        return request
    return react(lambda reactor: run(reactor, request, sys.stdout))

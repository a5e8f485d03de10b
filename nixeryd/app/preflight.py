"""
Start-up checks: what the daemon makes sure of before it serves anything.

A daemon that starts with a package set that is not there, a storage it
cannot write or no Nix would accept connections and then fail every pull
with an error the client may never show.  :func:`run_checks` finds those
mistakes at start-up instead, each within a bounded time:

- the package source: a local directory exists, is a directory and has a
  ``default.nix``; a git repository answers one ``git ls-remote`` (the
  pinning of ``latest`` the source itself does, so the revision served is
  known); a channel name is well-formed (Nix downloads it later);
- Nix can be run (``nix-instantiate --version``);
- the storage can be opened (the filesystem directory created, the GCS
  or S3 bucket answering) and a probe document written and read back through
  :class:`~nixeryd.storage.interface.IStorage`.

A failed check raises :class:`StartupFailed`, whose message is one line
saying what is wrong and what to set.  ``nixeryd serve``
(:mod:`nixeryd.app.servecmd`) runs the checks before it opens its port
and exits with :attr:`StartupFailed.exit_code`; ``twistd nixery`` runs
them when the image service starts and stops the reactor on a failure.
"""

from __future__ import annotations

import os
import secrets
from typing import Any, Awaitable, Callable, Coroutine, Mapping, Optional, Protocol, TypeVar

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from nixeryd.app.config import Config, StorageConfig
from nixeryd.app.settings import (
    GCS_BUCKET,
    GCS_ENDPOINT,
    PKGS_PATH,
    PKGS_REPO,
    S3_BUCKET,
    S3_ENDPOINT,
    S3_REGION,
    STORAGE_PATH,
    Setting,
    SourceSetting,
)
from nixeryd.build.process import ProcessReactor, run_process
from nixeryd.build.processresult import ProcessFailed
from nixeryd.build.sources import LATEST, ChannelSource, GitSource
from nixeryd.core.errors import ManifestUnknown, RegistryError
from nixeryd.core.threads import Runner
from nixeryd.storage.interface import IStorage
from nixeryd.core.text import without_credentials

T = TypeVar("T")

#: Exit code of a failed check.
EXIT_FAILED = 1
#: Exit code of a usage or configuration error.
EXIT_USAGE = 2

#: Seconds each check may take (git ls-remote, Nix, the storage).
CHECK_TIMEOUT = 30.0

#: Seconds a check running git or Nix may take beyond the child's own
#: deadline (which kills it, then waits for it to end).
CHILD_SLACK = 10.0

#: Where the storage probe document goes: one fixed name, overwritten at
#: every start, so probes never pile up.
PROBE_NAMESPACE = "startup"
PROBE_KEY = "probe"

_log = Logger()


class StartupFailed(Exception):
    """
    A start-up check failed.

    :ivar message: one line: what is wrong and what to set.
    :ivar exit_code: :data:`EXIT_FAILED`, or :data:`EXIT_USAGE` for a
        value that is malformed rather than unusable.
    """

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@frozen
class Checked:
    """
    What the checks learned, for the start-up line.

    :ivar revision: the package set's revision for ``latest``, when the
        source has one (a git commit, a channel commit).
    :ivar nix_version: what ``nix-instantiate --version`` said.
    """

    revision: Optional[str]
    nix_version: str


def setting_name(setting: Setting[Any]) -> str:
    """How a message tells what to set: ``NIXERY_PKGS_PATH (or --pkgs-path)``."""
    if setting.variable is None:
        return "--" + setting.option
    return "%s (or --%s)" % (setting.variable, setting.option)


def _last_line(lines: tuple[str, ...]) -> str:
    """
    The line of a process's log that says what went wrong: the first
    ``fatal:`` or ``error:`` one (git and Nix start their reasons so, and
    may add advice after), else the last non-empty one, else nothing.
    """
    stripped = [line.strip() for line in lines if line.strip()]
    for line in stripped:
        if line.startswith(("fatal:", "error:")):
            return line
    return stripped[-1] if stripped else ""


# -- the package source ---------------------------------------------------

def _path_problem(path: str) -> Optional[str]:
    """What is wrong with a package set directory, if anything (blocking)."""
    if not os.path.exists(path):
        return "does not exist"
    if not os.path.isdir(path):
        return "is not a directory"
    if not os.path.isfile(os.path.join(path, "default.nix")):
        return "has no default.nix"
    if not os.access(path, os.R_OK | os.X_OK):
        return "cannot be read"
    return None


async def check_source(source: SourceSetting, *, reactor: ProcessReactor,
                       env: Mapping[str, str], runner: Runner,
                       timeout: float = CHECK_TIMEOUT) -> Optional[str]:
    """
    Check the package source; its revision for ``latest``, when it has one.

    :param runner: runs the file system look-ups of a path source.
    :raises StartupFailed: naming the setting to fix.
    """
    if source.kind == "path":
        problem = await runner.run(_path_problem, source.location)
        if problem is not None:
            name = setting_name(PKGS_PATH)
            raise StartupFailed("%s %s %s; set %s to a package set directory" % (
                PKGS_PATH.variable, source.location, problem, name))
        return None
    if source.kind == "channel":
        # Its name was checked with the configuration; Nix downloads it
        # when the first image needs it.
        return (await ChannelSource(source.location).pin(LATEST)).revision
    return await _check_repository(source.location, reactor=reactor, env=env,
                                   timeout=timeout)


async def _check_repository(url: str, *, reactor: ProcessReactor, env: Mapping[str, str],
                            timeout: float) -> Optional[str]:
    shown = without_credentials(url)
    fix = "set %s to a git repository nixeryd can reach" % (setting_name(PKGS_REPO),)
    repository = GitSource(url, reactor, env, timeout)
    try:
        pinned = await repository.pin(LATEST)
    except ManifestUnknown:
        raise StartupFailed("%s %s has no default branch (HEAD) for the tag latest; %s" % (
            PKGS_REPO.variable, shown, fix)) from None
    except RegistryError as e:
        # git ls-remote failed or timed out: say how, and git's last line.
        cause = e.__cause__
        how = cause.describe() if isinstance(cause, ProcessFailed) else e.message
        detail = _last_line(tuple(getattr(e, "log_tail", ())))
        raise StartupFailed("%s %s cannot be reached (%s%s); %s" % (
            PKGS_REPO.variable, shown, how, ": " + detail if detail else "", fix)) from None
    return pinned.revision


# -- Nix ------------------------------------------------------------------

async def check_nix(*, reactor: ProcessReactor, env: Mapping[str, str],
                    timeout: float = CHECK_TIMEOUT, logger: Logger = _log) -> str:
    """
    Run ``nix-instantiate --version``; what it printed.

    :param logger: where the process's events go.
    :raises StartupFailed: when it cannot be run or fails.
    """
    argv = ["nix-instantiate", "--version"]
    try:
        result = await run_process(reactor, argv, env=env, timeout=timeout, logger=logger,
                                   log_fields={"phase": "startup-check"})
    except ProcessFailed as e:
        detail = _last_line(e.tail)
        raise StartupFailed(
            "Nix cannot be run (%s%s); install Nix and put nix-instantiate on the"
            " PATH nixeryd is started with (PATH=%s)" % (
                e.describe(), ": " + detail if detail else "",
                env.get("PATH", ""))) from None
    return result.stdout.decode("utf-8", "replace").strip()


# -- the storage ----------------------------------------------------------

def storage_words(config: StorageConfig) -> tuple[str, str]:
    """
    How messages name the configured storage, and what to set when it
    cannot be used.
    """
    if config.storage_backend == "gcs":
        where = "gs://%s" % (config.gcs_bucket,)
        if config.gcs_endpoint is not None:
            where += " at %s" % (config.gcs_endpoint,)
        return ("GCS bucket " + where,
                "check %s, %s and GOOGLE_APPLICATION_CREDENTIALS" % (
                    setting_name(GCS_BUCKET), setting_name(GCS_ENDPOINT)))
    if config.storage_backend == "s3" and config.s3 is not None:
        where = "s3://%s" % (config.s3.bucket,)
        if config.s3.endpoint is not None:
            where += " at %s" % (config.s3.endpoint,)
        return ("S3 bucket " + where,
                "check %s, %s, %s and the AWS credentials (AWS_ACCESS_KEY_ID and"
                " AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)" % (
                    setting_name(S3_BUCKET), setting_name(S3_ENDPOINT),
                    setting_name(S3_REGION)))
    return ("%s %s" % (STORAGE_PATH.variable, config.storage_path),
            "set %s to a directory nixeryd can create and write" % (
                setting_name(STORAGE_PATH),))


async def check_storage(open_storage: Callable[[], Awaitable[IStorage]], *,
                        what: str, fix: str) -> None:
    """
    Open the storage, write a probe document through it and read it back,
    then close it.

    :param open_storage: makes a storage of the configured kind, ready to
        use (:func:`nixeryd.app.wiring.open_storage`).
    :param what: how messages name the storage (:func:`storage_words`).
    :param fix: what to set when it cannot be used.
    :raises StartupFailed: when any step fails.
    """
    try:
        storage = await open_storage()
    except (CancelledError, StartupFailed):
        raise
    except Exception as e:
        raise StartupFailed("%s cannot be used: %s; %s" % (what, _reason(e), fix)) from None
    try:
        await probe_storage(storage, what=what, fix=fix)
    finally:
        await storage.close()


async def probe_storage(storage: IStorage, *, what: str, fix: str) -> None:
    """
    Write a probe document through ``storage`` and read it back.

    :raises StartupFailed: when either fails.
    """
    token = secrets.token_hex(8)
    try:
        await storage.put_document(PROBE_NAMESPACE, PROBE_KEY, {"probe": token})
        back = await storage.get_document(PROBE_NAMESPACE, PROBE_KEY)
    except CancelledError:
        raise
    except Exception as e:
        raise StartupFailed("%s cannot be written: %s; %s" % (
            what, _reason(e), fix)) from None
    # Another daemon sharing the storage may have written its own probe
    # in between: any probe read back shows that writes are kept.
    if not (isinstance(back, dict) and "probe" in back):
        raise StartupFailed("%s does not keep what is written to it (a probe document"
                            " read back as %r); %s" % (what, back, fix))


def _reason(error: BaseException) -> str:
    """An exception as a short phrase, on one line."""
    text = str(error) or type(error).__name__
    return " ".join(text.split())


# -- all of them ----------------------------------------------------------

class Timer(Protocol):
    """What :func:`within` needs of the reactor: ``callLater``."""

    def callLater(self, delay: float, callable: Callable[..., Any],
                  *args: object, **kwargs: object) -> IDelayedCall:
        """Call ``callable(*args, **kwargs)`` in ``delay`` seconds."""


async def within(seconds: float, reactor: Timer, what: str,
                 work: Coroutine[Any, Any, T]) -> T:
    """
    ``work``, cancelled after ``seconds``.

    :raises StartupFailed: saying that ``what`` did not answer in time.
    """
    running = Deferred.fromCoroutine(work)
    timer = reactor.callLater(seconds, running.cancel)
    try:
        return await running
    except CancelledError:
        if timer.active():
            raise
        raise StartupFailed("%s did not answer within %g seconds" % (what, seconds)) from None
    finally:
        if timer.active():
            timer.cancel()


async def run_checks(config: Config, *, reactor: ProcessReactor, env: Mapping[str, str],
                     runner: Runner, open_storage: Callable[[], Awaitable[IStorage]],
                     timeout: float = CHECK_TIMEOUT) -> Checked:
    """
    Run every check at once; the first failure in the order source, Nix,
    storage is the one reported, and the checks still running are
    cancelled.

    :param env: the environment of git and Nix (as the image service gives
        them).
    :param runner: runs blocking file system calls.
    :param open_storage: makes the configured storage, ready to use.
    :raises StartupFailed: for the first check that failed.
    """
    what, fix = storage_words(config)
    # git and Nix have their own deadline, which says more when it passes.
    slack = timeout + CHILD_SLACK
    source: Deferred[Optional[str]] = Deferred.fromCoroutine(within(
        slack, reactor, "the package source",
        check_source(config.source, reactor=reactor, env=env, runner=runner,
                     timeout=timeout)))
    nix = Deferred.fromCoroutine(within(
        slack, reactor, "nix-instantiate --version",
        check_nix(reactor=reactor, env=env, timeout=timeout)))
    storage = Deferred.fromCoroutine(within(
        timeout, reactor, what,
        check_storage(open_storage, what=what, fix=fix)))
    steps = (source, nix, storage)
    try:
        revision = await source
        nix_version = await nix
        await storage
    except BaseException:
        # Cancel what still runs, and wait until it has ended (a cancelled
        # child process is waited for), so that nothing outlives the checks.
        for step in steps:
            if not step.called:
                step.cancel()
        for step in steps:
            try:
                await step
            except BaseException:
                pass
        raise
    return Checked(revision, nix_version)

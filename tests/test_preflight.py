"""
Tests for :mod:`nixeryd.app.preflight`: the start-up checks, each on its
own (git and Nix as real child processes of stand-in programs, the
storage as :class:`~nixeryd.testing.storage.MemoryStorage`), and all of
them together.
"""

from __future__ import annotations

import os
import stat
import subprocess
from typing import Any, Mapping

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nixeryd.app.config import Config, config_from
from nixeryd.app.preflight import (
    EXIT_FAILED,
    PROBE_KEY,
    PROBE_NAMESPACE,
    Checked,
    StartupFailed,
    check_nix,
    check_source,
    check_storage,
    run_checks,
    within,
)
from nixeryd.app.settings import SourceSetting
from nixeryd.core.threads import InlineRunner
from nixeryd.storage.interface import IStorage
from nixeryd.testing.storage import MemoryStorage
from tests.e2e import PACKAGE_SET, require_tools

#: A commit id, as a channel may name one.
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_nix(directory: str, script: str = 'echo "nix-instantiate (Nix) 2.99"') -> str:
    """A directory for PATH with a stand-in ``nix-instantiate`` running ``script``."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "nix-instantiate")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n%s\n" % (script,))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return directory


def program_env(path: str) -> dict[str, str]:
    """The environment of a child with ``path`` as its PATH."""
    return {"PATH": path, "HOME": os.environ.get("HOME", "/")}


class PathSourceTests(SynchronousTestCase):
    """A local package set directory."""

    def check(self, path: str) -> Deferred[Any]:
        return Deferred.fromCoroutine(check_source(
            SourceSetting("path", path), reactor=reactor, env={}, runner=InlineRunner()))

    def failure(self, path: str) -> str:
        error = self.failureResultOf(self.check(path), StartupFailed).value
        assert isinstance(error, StartupFailed)
        self.assertEqual(error.exit_code, EXIT_FAILED)
        return error.message

    def test_missing(self) -> None:
        """A directory that does not exist: what and what to set."""
        missing = os.path.abspath(self.mktemp())
        self.assertEqual(
            self.failure(missing),
            "NIXERY_PKGS_PATH %s does not exist; set NIXERY_PKGS_PATH (or --pkgs-path)"
            " to a package set directory" % (missing,))

    def test_file(self) -> None:
        """A file instead of a directory."""
        path = os.path.abspath(self.mktemp())
        open(path, "w").close()
        self.assertIn("%s is not a directory;" % (path,), self.failure(path))

    def test_no_default_nix(self) -> None:
        """A directory without ``default.nix`` cannot be imported by Nix."""
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        self.assertIn("%s has no default.nix;" % (path,), self.failure(path))

    def test_package_set(self) -> None:
        """A package set directory passes, with no revision."""
        self.assertIsNone(self.successResultOf(self.check(PACKAGE_SET)))


class ChannelSourceTests(SynchronousTestCase):
    """A channel is not fetched at start-up; a commit is its revision."""

    def revision(self, channel: str) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(check_source(
            SourceSetting("channel", channel), reactor=reactor, env={},
            runner=InlineRunner())))

    def test_branch(self) -> None:
        """A branch has no fixed revision."""
        self.assertIsNone(self.revision("nixos-unstable"))

    def test_commit(self) -> None:
        """A commit is the revision."""
        self.assertEqual(self.revision(COMMIT), COMMIT)


class RepositorySourceTests(TestCase):
    """A git repository, asked with one real ``git ls-remote``."""

    def setUp(self) -> None:
        self.git_path = os.path.dirname(require_tools("git")["git"])

    async def check(self, url: str, timeout: float = 30) -> Any:
        return await check_source(SourceSetting("repo", url), reactor=reactor,
                                  env=program_env(self.git_path), runner=InlineRunner(),
                                  timeout=timeout)

    async def test_revision(self) -> None:
        """A reachable repository gives the commit of its default branch."""
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        git = ["git", "-C", work, "-c", "user.name=t", "-c", "user.email=t@localhost"]
        subprocess.run(git + ["init", "-q"], check=True)
        subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", "x"], check=True)
        commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, text=True,
                                capture_output=True).stdout.strip()
        self.assertEqual(await self.check("file://" + work), commit)

    async def test_missing(self) -> None:
        """A repository that is not there: git's reason, and what to set."""
        with self.assertRaises(StartupFailed) as caught:
            await self.check("file:///nonexistent")
        self.assertEqual(
            caught.exception.message,
            "NIXERY_PKGS_REPO file:///nonexistent cannot be reached (git exited with status"
            " 128: fatal: '/nonexistent' does not appear to be a git repository); set"
            " NIXERY_PKGS_REPO (or --pkgs-repo) to a git repository nixeryd can reach")

    async def test_empty_repository(self) -> None:
        """A repository without a default branch cannot serve ``latest``."""
        work = os.path.abspath(self.mktemp())
        subprocess.run(["git", "init", "-q", "--bare", work], check=True)
        with self.assertRaises(StartupFailed) as caught:
            await self.check("file://" + work)
        self.assertIn("has no default branch (HEAD)", caught.exception.message)

    async def test_bounded_time(self) -> None:
        """A repository that does not answer in time is given up."""
        stand_in = fake_nix(os.path.abspath(self.mktemp()), "")
        with open(os.path.join(stand_in, "git"), "w") as f:
            f.write("#!/bin/sh\nexec sleep 30\n")
        os.chmod(os.path.join(stand_in, "git"), 0o755)
        with self.assertRaises(StartupFailed) as caught:
            await check_source(SourceSetting("repo", "https://host.invalid/x.git"),
                               reactor=reactor,
                               env=program_env(stand_in + ":/bin:/usr/bin"),
                               runner=InlineRunner(), timeout=0.5)
        self.assertIn("(git timed out after 0.5 seconds)", caught.exception.message)


class NixTests(TestCase):
    """``nix-instantiate --version``, run for real on stand-in programs."""

    async def test_version(self) -> None:
        """What it prints is the version."""
        path = fake_nix(os.path.abspath(self.mktemp()))
        version = await check_nix(reactor=reactor, env=program_env(path))
        self.assertEqual(version, "nix-instantiate (Nix) 2.99")

    async def test_missing(self) -> None:
        """Not on PATH: the reason, and the PATH it was looked for on."""
        empty = os.path.abspath(self.mktemp())
        os.makedirs(empty)
        with self.assertRaises(StartupFailed) as caught:
            await check_nix(reactor=reactor, env=program_env(empty))
        message = caught.exception.message
        self.assertTrue(message.startswith(
            "Nix cannot be run (nix-instantiate exited with status 127: cannot run"
            " nix-instantiate: "), message)
        self.assertTrue(message.endswith(
            "; install Nix and put nix-instantiate on the PATH nixeryd is started with"
            " (PATH=%s)" % (empty,)), message)

    async def test_failing(self) -> None:
        """A Nix that fails says why."""
        path = fake_nix(os.path.abspath(self.mktemp()),
                        "echo 'error: cannot open the Nix database' >&2; exit 1")
        with self.assertRaises(StartupFailed) as caught:
            await check_nix(reactor=reactor, env=program_env(path))
        self.assertIn("(nix-instantiate exited with status 1: error: cannot open the Nix"
                      " database)", caught.exception.message)


class StorageTests(SynchronousTestCase):
    """The storage probe, through IStorage."""

    def setUp(self) -> None:
        self.storage = MemoryStorage(self.mktemp())

    def check(self, storage: Any = None) -> Deferred[None]:
        opened = storage if storage is not None else self.storage

        async def open_storage() -> IStorage:
            if isinstance(opened, BaseException):
                raise opened
            result: IStorage = opened
            return result

        return Deferred.fromCoroutine(check_storage(
            open_storage, what="STORAGE_PATH /s", fix="set STORAGE_PATH"))

    def message(self, d: Deferred[None]) -> str:
        error = self.failureResultOf(d, StartupFailed).value
        assert isinstance(error, StartupFailed)
        return error.message

    def test_probe(self) -> None:
        """A probe document is written, read back, and the storage closed."""
        self.assertIsNone(self.successResultOf(self.check()))
        self.assertIn((PROBE_NAMESPACE, PROBE_KEY), self.storage.documents)
        self.assertEqual((self.storage.calls["put_document"], self.storage.calls["get_document"],
                          self.storage.calls["close"]), (1, 1, 1))

    def test_cannot_open(self) -> None:
        """A storage that cannot be made: its reason on one line."""
        error = NotADirectoryError(20, "Not a directory")
        self.assertEqual(self.message(self.check(error)),
                         "STORAGE_PATH /s cannot be used: [Errno 20] Not a directory;"
                         " set STORAGE_PATH")

    def test_opening_failure_passed_on(self) -> None:
        """A start-up failure of the opening itself is passed on as it is."""
        self.assertEqual(self.message(self.check(StartupFailed("key file"))), "key file")

    def test_cannot_write(self) -> None:
        """A write that fails, and the storage is still closed."""
        self.storage.failures["put_document"] = PermissionError(13, "Permission denied")
        self.assertEqual(self.message(self.check()),
                         "STORAGE_PATH /s cannot be written: [Errno 13] Permission denied;"
                         " set STORAGE_PATH")
        self.assertEqual(self.storage.calls["close"], 1)

    def test_read_fails(self) -> None:
        """A probe that cannot be read back; the reason is made one line."""
        self.storage.failures["get_document"] = ValueError("gone\nreally")
        self.assertIn("cannot be written: gone really;", self.message(self.check()))

    def test_not_kept(self) -> None:
        """A storage that loses what is written to it."""
        self.patch(self.storage, "get_document", lambda namespace, key: succeed(None))
        self.assertEqual(self.message(self.check()),
                         "STORAGE_PATH /s does not keep what is written to it (a probe"
                         " document read back as None); set STORAGE_PATH")


class WithinTests(SynchronousTestCase):
    """:func:`within`: a check's deadline."""

    def test_timeout(self) -> None:
        """Work past its deadline is cancelled and reported."""
        clock = Clock()
        waiting: Deferred[None] = Deferred()

        async def work() -> None:
            await waiting

        d = Deferred.fromCoroutine(within(5, clock, "the bucket", work()))
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        error = self.failureResultOf(d, StartupFailed).value
        self.assertEqual(str(error), "the bucket did not answer within 5 seconds")
        self.assertTrue(waiting.called, "the work was not cancelled")

    def test_in_time(self) -> None:
        """Work done in time gives its result and leaves no timer."""
        clock = Clock()

        async def work() -> int:
            return 7

        d = Deferred.fromCoroutine(within(5, clock, "x", work()))
        self.assertEqual(self.successResultOf(d), 7)
        self.assertEqual(clock.getDelayedCalls(), [])


class RunChecksTests(TestCase):
    """All the checks together."""

    def config(self, **environ: str) -> Config:
        return config_from({}, {"STORAGE_PATH": "/s", **environ})

    async def run_checks(self, config: Config, env: Mapping[str, str],
                         storage: MemoryStorage) -> Checked:
        async def open_storage() -> IStorage:
            return storage

        return await run_checks(config, reactor=reactor, env=env,
                                runner=InlineRunner(), open_storage=open_storage, timeout=10)

    async def test_all_pass(self) -> None:
        """Every check passes: the revision and the Nix version."""
        path = fake_nix(os.path.abspath(self.mktemp()))
        storage = MemoryStorage(self.mktemp())
        checked = await self.run_checks(self.config(NIXERY_CHANNEL=COMMIT),
                                        program_env(path), storage)
        self.assertEqual(checked, Checked(COMMIT, "nix-instantiate (Nix) 2.99"))
        self.assertEqual(storage.calls["put_document"], 1)

    async def test_first_failure_in_order(self) -> None:
        """With every check failing, the source's failure is the one reported."""
        empty = os.path.abspath(self.mktemp())
        os.makedirs(empty)
        storage = MemoryStorage(self.mktemp())
        storage.failures["put_document"] = OSError("read-only")
        with self.assertRaises(StartupFailed) as caught:
            await self.run_checks(self.config(NIXERY_PKGS_PATH="/nonexistent"),
                                  program_env(empty), storage)
        self.assertIn("NIXERY_PKGS_PATH /nonexistent does not exist", caught.exception.message)

    async def test_later_failure(self) -> None:
        """The source passing, a failing storage is reported."""
        path = fake_nix(os.path.abspath(self.mktemp()))
        storage = MemoryStorage(self.mktemp())
        storage.failures["put_document"] = OSError("read-only")
        with self.assertRaises(StartupFailed) as caught:
            await self.run_checks(self.config(NIXERY_PKGS_PATH=PACKAGE_SET),
                                  program_env(path), storage)
        self.assertEqual(caught.exception.message,
                         "STORAGE_PATH /s cannot be written: read-only; set STORAGE_PATH"
                         " (or --storage-path) to a directory nixeryd can create and write")

    async def test_slow_check_cancelled(self) -> None:
        """A check still running when an earlier one fails is cancelled (its process killed)."""
        path = fake_nix(os.path.abspath(self.mktemp()), "exec sleep 30")
        storage = MemoryStorage(self.mktemp())
        with self.assertRaises(StartupFailed):
            await self.run_checks(self.config(NIXERY_PKGS_PATH="/nonexistent"),
                                  program_env(path), storage)

"""
Tests for :mod:`nixeryd.build.sources`: choosing the configured source,
what each source hands to Nix, and pinning git tags against a real
repository, built through ``builtins.fetchGit`` with real Nix.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nixeryd.core.errors import BuildFailed, ManifestUnknown, Unavailable, UnknownPackages
from nixeryd.build.sources import (
    ChannelSource, GitSource, PackageSource, PathSource, PinnedSource,
    source_from_config)
from tests.e2e import PACKAGE_SET
from tests.realnix import nix_environment, nix_runner

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class SourceFromConfigTests(SynchronousTestCase):
    """Choosing the package source from the configuration."""

    def test_channel_first(self) -> None:
        """A channel wins over a repository and a path."""
        source = source_from_config("nixos-unstable", "https://example.invalid/x.git",
                                    "/srv/pkgs", reactor=reactor, env={})
        self.assertEqual(source, ChannelSource("nixos-unstable"))

    def test_repository_before_path(self) -> None:
        """A repository wins over a path, and empty values count as unset."""
        source = source_from_config("", "https://example.invalid/x.git", "/srv/pkgs",
                                    reactor=reactor, env={"PATH": "/bin"})
        self.assertIsInstance(source, GitSource)
        assert isinstance(source, GitSource)
        self.assertEqual(source.url, "https://example.invalid/x.git")
        self.assertEqual(source.env, {"PATH": "/bin"})

    def test_path_last(self) -> None:
        """A path is used when nothing else is set."""
        self.assertEqual(source_from_config(None, "", "/srv/pkgs"),
                         PathSource("/srv/pkgs"))

    def test_nothing_set(self) -> None:
        """No source at all is an error that names the three settings."""
        with self.assertRaises(ValueError) as caught:
            source_from_config("", None, "")
        for name in ("NIXERY_CHANNEL", "NIXERY_PKGS_REPO", "NIXERY_PKGS_PATH"):
            self.assertIn(name, str(caught.exception))

    def test_malformed(self) -> None:
        """A channel or repository that could smuggle arguments is refused."""
        self.assertRaises(ValueError, ChannelSource, "nixos unstable")
        self.assertRaises(ValueError, ChannelSource, "../other")
        self.assertRaises(ValueError, GitSource, "--upload-pack=x", reactor, {})


class PinTests(SynchronousTestCase):
    """What channel and path sources hand to Nix."""

    def test_channel_branch(self) -> None:
        """A channel branch is downloaded from GitHub and is not pinned, whatever the tag."""
        pinned = self.successResultOf(_pin(ChannelSource("nixos-22.05"), "latest"))
        self.assertEqual(pinned, PinnedSource("channel", {
            "kind": "channel", "channel": "nixos-22.05",
            "url": "https://github.com/NixOS/nixpkgs/archive/nixos-22.05.tar.gz",
        }, None))
        self.assertEqual(self.successResultOf(_pin(ChannelSource("nixos-22.05"), COMMIT)),
                         pinned)

    def test_channel_commit(self) -> None:
        """A 40-hex channel is a commit, and so is the revision."""
        pinned = self.successResultOf(_pin(ChannelSource(COMMIT.upper()), "latest"))
        self.assertEqual(pinned.revision, COMMIT)
        self.assertEqual(pinned.nix_args["url"],
                         "https://github.com/NixOS/nixpkgs/archive/%s.tar.gz"
                         % (COMMIT.upper(),))

    def test_path(self) -> None:
        """A path source is made absolute, ignores the tag and is not pinned."""
        cwd = os.getcwd()
        pinned = self.successResultOf(_pin(PathSource("pkgs"), "v1"))
        self.assertEqual(pinned, PinnedSource(
            "path", {"kind": "path", "path": os.path.join(cwd, "pkgs")}, None))


def _pin(source: PackageSource, tag: str) -> Deferred[PinnedSource]:
    """The pinned source, as a Deferred."""
    return Deferred.fromCoroutine(source.pin(tag))


class GitRepository:
    """
    A bare git repository holding the offline package set:

    - ``main`` (the default branch): the package set;
    - ``feature``: one more commit, adding the package ``onFeature``;
    - tag ``v1`` (annotated) and tag ``light`` (lightweight): a commit
      reachable from no branch, adding the package ``tagged``;
    - branch ``both`` and tag ``both``, on different commits.
    """

    def __init__(self, test: TestCase) -> None:
        root = os.path.abspath(test.mktemp())
        self.work = os.path.join(root, "work")
        self.bare = os.path.join(root, "packages.git")
        self.url = "file://" + self.bare
        self.env = {
            "PATH": os.environ["PATH"], "HOME": root, "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
        }
        shutil.copytree(PACKAGE_SET, self.work)
        self.git("init", "-q", "-b", "main")
        self.git("add", ".")
        self.git("commit", "-qm", "package set")
        self.main = self.rev("HEAD")
        self.git("checkout", "-qb", "feature")
        self.add_package("onFeature")
        self.feature = self.rev("HEAD")
        self.git("checkout", "-q", "--detach", "main")
        self.add_package("tagged")
        self.tagged = self.rev("HEAD")
        self.git("tag", "-a", "v1", "-m", "version 1")
        self.git("tag", "light")
        self.git("tag", "both", self.main)
        self.git("branch", "both", self.feature)
        self.git("checkout", "-q", "main")
        subprocess.run(["git", "clone", "-q", "--bare", self.work, self.bare],
                       env=self.env, check=True)

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.work, env=self.env, check=True,
                              capture_output=True, text=True).stdout.strip()

    def rev(self, name: str) -> str:
        return self.git("rev-parse", name)

    def add_package(self, name: str) -> None:
        path = os.path.join(self.work, "default.nix")
        with open(path) as f:
            text = f.read()
        marker = "  pkgs = {\n"
        text = text.replace(marker, marker + (
            '    %s = mk "%s-1.0" \'\'\n      mkdir -p "$out"\n'
            '      echo %s > "$out/name"\n    \'\' { };\n' % (name, name, name)), 1)
        with open(path, "w") as f:
            f.write(text)
        self.git("commit", "-qam", "add " + name)


class GitPinEndToEnd(TestCase):
    """Pinning tags of a real git repository (each test well under a second)."""

    timeout = 30

    def setUp(self) -> None:
        self.repo = GitRepository(self)
        self.source = GitSource(self.repo.url, reactor, {"PATH": os.environ["PATH"]},
                                timeout=20)

    async def test_latest(self) -> None:
        """``latest`` is the commit of the default branch."""
        pinned = await self.source.pin("latest")
        self.assertEqual(pinned, PinnedSource("git", {"kind": "git", "fetchGit": {
            "url": self.repo.url, "rev": self.repo.main, "ref": "HEAD"}},
            self.repo.main))

    async def test_branch(self) -> None:
        """A branch name is that branch's commit."""
        pinned = await self.source.pin("feature")
        self.assertEqual(pinned.revision, self.repo.feature)
        self.assertEqual(pinned.nix_args["fetchGit"]["ref"], "refs/heads/feature")

    async def test_annotated_tag(self) -> None:
        """An annotated tag is the commit it points to, not the tag object."""
        pinned = await self.source.pin("v1")
        self.assertEqual(pinned.revision, self.repo.tagged)
        self.assertNotEqual(self.repo.rev("refs/tags/v1"), self.repo.tagged)
        self.assertEqual(pinned.nix_args["fetchGit"]["ref"], "refs/tags/v1")

    async def test_lightweight_tag(self) -> None:
        """A lightweight tag is its commit."""
        pinned = await self.source.pin("light")
        self.assertEqual(pinned.revision, self.repo.tagged)

    async def test_branch_wins_over_tag(self) -> None:
        """When a branch and a tag share a name, the branch is used."""
        pinned = await self.source.pin("both")
        self.assertEqual(pinned.revision, self.repo.feature)

    async def test_commit(self) -> None:
        """A 40-hex tag is that commit, fetched from any ref."""
        pinned = await self.source.pin(self.repo.tagged.upper())
        self.assertEqual(pinned.revision, self.repo.tagged)
        self.assertEqual(pinned.nix_args["fetchGit"], {
            "url": self.repo.url, "rev": self.repo.tagged, "allRefs": True})

    async def test_unknown_ref(self) -> None:
        """A tag naming no branch or tag is an unknown manifest that says so."""
        with self.assertRaises(ManifestUnknown) as caught:
            await self.source.pin("v2")
        self.assertIn("no branch or tag named 'v2'", caught.exception.message)
        self.assertEqual(caught.exception.status, 404)

    async def test_unusable_ref(self) -> None:
        """A tag that cannot be a ref name is refused without running git."""
        for tag in ("a..b", "-x", "x.lock", "a/b"):
            with self.assertRaises(ManifestUnknown):
                await self.source.pin(tag)

    async def test_unreachable_repository(self) -> None:
        """
        A repository git cannot read is a transient 503 whose message leaves
        out the URL; git's message is in the log tail.
        """
        url = "file://" + os.path.abspath(self.mktemp())
        source = GitSource(url, reactor, {"PATH": os.environ["PATH"]})
        with self.assertRaises(Unavailable) as caught:
            await source.pin("latest")
        self.assertEqual((caught.exception.status, caught.exception.retry_after), (503, 10))
        self.assertEqual(caught.exception.message, "cannot list the refs of the package"
                         " repository (git exited with status 128); try again later")
        self.assertTrue(any("does not appear to be a git repository" in line
                            for line in caught.exception.log_tail))


class GitBuildEndToEnd(TestCase):
    """Resolving and building through ``builtins.fetchGit`` (a few seconds each)."""

    timeout = 60

    def setUp(self) -> None:
        self.repo = GitRepository(self)
        self.source = GitSource(self.repo.url, reactor, nix_environment(self),
                                timeout=20)

    async def test_tag_only_commit(self) -> None:
        """A commit reachable only from a tag is fetched, resolved and built."""
        nix = nix_runner(self)
        resolution = await nix.resolve(await self.source.pin("v1"), ["tagged"],
                                       ["cacert"], "x86_64-linux")
        graph = await nix.build(resolution)
        [tagged] = [root for root in graph.roots if root.endswith("-tagged-1.0")]
        with open(os.path.join(tagged, "name")) as f:
            self.assertEqual(f.read(), "tagged\n")

    async def test_commit_on_no_branch(self) -> None:
        """A 40-hex tag naming a commit on no branch resolves."""
        nix = nix_runner(self)
        resolution = await nix.resolve(await self.source.pin(self.repo.tagged),
                                       ["tagged"], [], "x86_64-linux")
        self.assertEqual(resolution.packages[0].attr, ("tagged",))

    async def test_branches_differ(self) -> None:
        """Each tag sees its own revision of the package set."""
        nix = nix_runner(self)
        feature = await nix.resolve(await self.source.pin("feature"),
                                    ["onfeature"], [], "x86_64-linux")
        self.assertEqual(feature.packages[0].attr, ("onFeature",))
        with self.assertRaises(UnknownPackages) as caught:
            await nix.resolve(await self.source.pin("latest"),
                              ["onfeature", "tagged"], [], "x86_64-linux")
        self.assertEqual(caught.exception.packages, ("onfeature", "tagged"))

    async def test_unknown_commit(self) -> None:
        """
        A commit the repository does not have fails the evaluation, a
        permanent 404 naming the image.
        """
        nix = nix_runner(self)
        with self.assertRaises(BuildFailed) as caught:
            await nix.resolve(await self.source.pin("f" * 40), ["tagged"], [],
                              "x86_64-linux", image="tagged")
        self.assertEqual(caught.exception.status, 404)
        self.assertTrue(caught.exception.message.startswith(
            "the evaluation of image tagged failed: "), caught.exception.message)

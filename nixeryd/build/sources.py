"""
Where the Nix packages come from, and which revision of them an image uses.

The server is configured with one package source, chosen as Nixery does:
the first non-empty of a nixpkgs channel, a git repository and a local
directory (:func:`source_from_config`).  For every image, the source is
*pinned* with the image's tag: the result, a :class:`PinnedSource`, is a
JSON-able description that the Nix expressions turn into a package set,
plus the revision that identifies the package set when there is one.

Unlike Nixery, a git source resolves the tag to a commit before Nix runs
(one ``git ls-remote``, no clone), so tags and non-default branches work,
``latest`` follows the remote's default branch, and every git image is
pinned to a commit that can key the caches.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Protocol

from attrs import field, frozen
from twisted.logger import Logger

from nixeryd.build.childenv import child_environment
from nixeryd.build.process import ProcessReactor, run_process
from nixeryd.build.processresult import ProcessFailed, ProcessTimedOut
from nixeryd.core.errors import ManifestUnknown, Unavailable

#: A full git commit id.
_COMMIT = re.compile(r"[0-9a-fA-F]{40}")

#: A tag or branch name this module is willing to look up: the registry's
#: tag grammar, which also keeps option-like and path-like names out of
#: the git command line.
_REF_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

#: A channel name or commit, as it appears in a nixpkgs archive URL.
_CHANNEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

#: Where nixpkgs archives of a channel or commit are downloaded from.
NIXPKGS_ARCHIVE = "https://github.com/NixOS/nixpkgs/archive/%s.tar.gz"

#: The tag that means "the newest package set".
LATEST = "latest"

_log = Logger()


@frozen
class PinnedSource:
    """
    A package set, described for the Nix expressions.

    :ivar kind: ``path``, ``git`` or ``channel``.
    :ivar nix_args: the JSON-able description passed to Nix as the
        ``source`` argument; it includes ``kind``.
    :ivar revision: an immutable identifier of the package set (a commit),
        or ``None`` when the source can change under the same description
        (a local directory, a channel branch).
    """

    kind: str
    nix_args: dict[str, Any]
    revision: str | None


class PackageSource(Protocol):
    """A configured source of packages."""

    @property
    def tag_selects_revision(self) -> bool:
        """
        Whether the image tag chooses the package set (a git branch, tag
        or commit); when not, images that differ only by tag share one
        evaluation and one build.
        """

    async def pin(self, tag: str) -> PinnedSource:
        """The package set an image with this tag is built from."""


def _absolute(path: str) -> str:
    return os.path.abspath(path)


@frozen
class PathSource:
    """
    A directory holding a nixpkgs-like package set, imported as
    ``import path { system = ...; }``.  Image tags are ignored and the
    result is never pinned: the directory may change at any time.

    :ivar path: the directory, made absolute.
    """

    path: str = field(converter=_absolute)

    #: The tag does not choose a revision of a local directory.
    tag_selects_revision = False

    async def pin(self, tag: str) -> PinnedSource:
        """The directory's package set, whatever the tag."""
        return PinnedSource("path", {"kind": "path", "path": self.path}, None)


@frozen
class ChannelSource:
    """
    A nixpkgs channel or commit, downloaded from GitHub by Nix.  Image tags
    are ignored; a 40-hex channel is a commit and so is pinned.

    :ivar channel: a branch (``nixos-unstable``) or commit id.
    """

    channel: str

    #: A channel is one revision, whatever the tag.
    tag_selects_revision = False

    def __attrs_post_init__(self) -> None:
        if not _CHANNEL.fullmatch(self.channel):
            raise ValueError("invalid nixpkgs channel %r" % (self.channel,))

    async def pin(self, tag: str) -> PinnedSource:
        """The channel's package set, whatever the tag."""
        commit = _COMMIT.fullmatch(self.channel) is not None
        return PinnedSource(
            "channel",
            {"kind": "channel", "channel": self.channel,
             "url": NIXPKGS_ARCHIVE % (self.channel,)},
            self.channel.lower() if commit else None)


@frozen
class GitSource:
    """
    A git repository holding a nixpkgs-like package set.

    The image tag selects the revision: a 40-hex tag is that commit,
    ``latest`` is the remote's default branch (``HEAD``), and any other tag
    is a branch or, failing that, a git tag of that name.  Names are
    resolved with one ``git ls-remote``; Nix then fetches exactly that
    commit with ``builtins.fetchGit``, told which ref holds it so that
    commits outside the default branch can be fetched.

    :ivar url: the repository, as git understands it.
    :ivar reactor: runs ``git``.
    :ivar env: the environment for ``git`` (credentials such as
        ``SSH_AUTH_SOCK`` travel here); prompts are always disabled.
    :ivar timeout: seconds allowed for ``git ls-remote``.
    """

    #: The tag is a branch, a git tag or a commit of the repository.
    tag_selects_revision = True

    url: str
    reactor: ProcessReactor = field(eq=False, repr=False)
    env: Mapping[str, str] = field(eq=False, repr=False)
    timeout: float = 60.0

    def __attrs_post_init__(self) -> None:
        if not self.url or self.url.startswith("-"):
            raise ValueError("invalid git repository URL %r" % (self.url,))

    async def pin(self, tag: str) -> PinnedSource:
        """
        The commit the tag names.

        :raises ManifestUnknown: no branch or tag has that name, or the
            repository has no default branch.
        :raises Unavailable: ``git ls-remote`` failed or timed out: the
            repository cannot be reached now (the message leaves out its
            URL, which may hold credentials; git's lines are logged).
        """
        if _COMMIT.fullmatch(tag):
            rev = tag.lower()
            return self._pinned(rev, {"allRefs": True})
        if tag in ("", LATEST):
            refs = await self._ls_remote(["HEAD"])
            if "HEAD" not in refs:
                raise ManifestUnknown(
                    "the package repository has no default branch",
                    {"tag": tag})
            return self._pinned(refs["HEAD"], {"ref": "HEAD"})
        if not _REF_NAME.fullmatch(tag) or ".." in tag or tag.endswith(".lock"):
            raise ManifestUnknown(
                "%r cannot name a branch or tag of the package repository"
                % (tag,), {"tag": tag})
        branch, git_tag = "refs/heads/" + tag, "refs/tags/" + tag
        refs = await self._ls_remote([branch, git_tag, git_tag + "^{}"])
        if branch in refs:
            return self._pinned(refs[branch], {"ref": branch})
        if git_tag in refs:
            # An annotated tag lists the tag object, then the commit as ^{}.
            commit = refs.get(git_tag + "^{}", refs[git_tag])
            return self._pinned(commit, {"ref": git_tag})
        raise ManifestUnknown(
            "the package repository has no branch or tag named %r" % (tag,),
            {"tag": tag})

    def _pinned(self, rev: str, fetch: dict[str, Any]) -> PinnedSource:
        fetch_git = {"url": self.url, "rev": rev, **fetch}
        return PinnedSource("git", {"kind": "git", "fetchGit": fetch_git}, rev)

    async def _ls_remote(self, patterns: list[str]) -> dict[str, str]:
        """The remote's refs matching ``patterns``, as ``{name: commit}``."""
        argv = ["git", "ls-remote", "--", self.url, *patterns]
        env = {**self.env, "GIT_TERMINAL_PROMPT": "0"}
        try:
            result = await run_process(
                self.reactor, argv, env=env, timeout=self.timeout,
                logger=_log, log_fields={"phase": "ls-remote"})
        except ProcessTimedOut as e:
            raise Unavailable(
                "listing the refs of the package repository timed out after"
                " %g seconds; try again later" % (self.timeout,),
                log_tail=e.tail) from e
        except ProcessFailed as e:
            raise Unavailable(
                "cannot list the refs of the package repository (%s);"
                " try again later" % (e.describe(),), log_tail=e.tail) from e
        refs = {}
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            commit, _, name = line.partition("\t")
            if _COMMIT.fullmatch(commit) and name:
                refs[name] = commit.lower()
        return refs


def source_from_config(channel: str | None = None, repo: str | None = None,
                       path: str | None = None, *,
                       reactor: ProcessReactor | None = None,
                       env: Mapping[str, str] | None = None,
                       git_timeout: float = 60.0) -> PackageSource:
    """
    The package source the configuration names: the first non-empty of
    ``channel`` (``NIXERY_CHANNEL``), ``repo`` (``NIXERY_PKGS_REPO``) and
    ``path`` (``NIXERY_PKGS_PATH``), in that order.

    :param reactor: runs ``git`` for a repository source; the global
        reactor when ``None``.
    :param env: the environment for ``git``; the allow-listed variables of
        the server's environment when ``None``.
    :param git_timeout: seconds allowed for each ``git ls-remote``.
    :raises ValueError: none is set, or the chosen one is malformed.
    """
    if channel:
        return ChannelSource(channel)
    if repo:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        if env is None:
            env = child_environment(os.environ)
        return GitSource(repo, reactor, env, git_timeout)
    if path:
        return PathSource(path)
    raise ValueError(
        "no package source: set a nixpkgs channel (NIXERY_CHANNEL), a git"
        " repository (NIXERY_PKGS_REPO) or a local path (NIXERY_PKGS_PATH)")

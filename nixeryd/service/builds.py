"""
Build records: what happened to each image build, for the people waiting
on it.

Every image that needs Nix gets a :class:`BuildRecord` with a short id
when its work starts.  The record follows the build through its phases,
keeps its timings, layers and the last lines of its Nix log, and tells
listeners (a build page streaming the log) about each change as it
happens.  :class:`BuildHistory` holds the records of builds that are
running and of the most recent finished ones, bounded in number, so that
a failed pull's message can point at a page that still exists.

Records are plain state changed on the reactor thread; nothing here
blocks or touches the network.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from typing import Callable, Iterator, Protocol

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nixeryd.build.progress import BuildPhase, LayerSummary
from nixeryd.core.text import without_credentials
from nixeryd.build.sources import PinnedSource
from nixeryd.core import defaults

__all__ = ["BuildHistory", "BuildListener", "BuildPhase", "BuildRecord",
           "LayerSummary", "describe_pinned_source"]

_log = Logger()


def describe_pinned_source(pinned: PinnedSource) -> str:
    """
    A package source for people: ``path /srv/pkgs``, ``git <url>`` (any
    credentials in the URL left out) or ``channel <name>`` (else just its
    kind).
    """
    args = pinned.nix_args
    where: object = None
    if pinned.kind == "path":
        where = args.get("path")
    elif pinned.kind == "git":
        fetch = args.get("fetchGit")
        url = fetch.get("url") if isinstance(fetch, dict) else None
        where = without_credentials(url) if isinstance(url, str) else None
    elif pinned.kind == "channel":
        where = args.get("channel")
    return "%s %s" % (pinned.kind, where) if isinstance(where, str) else pinned.kind


class BuildListener(Protocol):
    """Told of every change of one build, as it happens."""

    def log_line(self, record: BuildRecord, line: str) -> None:
        """A new line of the build's log."""

    def changed(self, record: BuildRecord) -> None:
        """The phase, the layers or the outcome changed."""


@define(eq=False)
class BuildRecord:
    """
    One build of one image.

    :ivar id: a short random id, safe in a URL path (``/builds/<id>``).
    :ivar image: the image name as requested.
    :ivar tag: the tag as requested.
    :ivar packages: the packages Nix looks up (sorted, meta-packages
        expanded).
    :ivar system: the Nix system built for, e.g. ``x86_64-linux``.
    :ivar source: the package source, described for people (``path
        /srv/pkgs``, ``git https://…``, ``channel nixos-unstable``).
    :ivar revision: the package set's revision, when the source has one.
    :ivar phase: where the build is.
    :ivar created: when the record was made (reactor seconds).
    :ivar phase_started: when each phase was entered (reactor seconds).
    :ivar finished_at: when the build ended, or ``None``.
    :ivar layers: the image's layers, base first, as they are stored.
    :ivar manifest_digest: the image's manifest digest once built.
    :ivar message: one line saying how the build ended, once it has.
    :ivar log: the last lines of the build's log.
    :ivar log_lines: how many lines the log has had in all.
    """

    id: str
    image: str
    tag: str
    packages: tuple[str, ...]
    system: str
    source: str
    revision: str | None
    created: float
    _clock: IReactorTime = field(repr=False)
    _keep_lines: int = field(repr=False)
    phase: BuildPhase = BuildPhase.WAITING
    phase_started: dict[BuildPhase, float] = field(factory=dict)
    finished_at: float | None = None
    layers: list[LayerSummary] = field(factory=list)
    manifest_digest: str | None = None
    message: str | None = None
    log: deque[str] = field(init=False)
    log_lines: int = 0
    _listeners: list[BuildListener] = field(factory=list, repr=False)

    def __attrs_post_init__(self) -> None:
        self.log = deque(maxlen=self._keep_lines)
        self.phase_started[self.phase] = self.created

    @property
    def finished(self) -> bool:
        """Whether the build has ended."""
        return self.phase.finished

    def duration(self) -> float:
        """Seconds from start to end, or to now while it runs."""
        end = self.finished_at if self.finished_at is not None else self._clock.seconds()
        return max(0.0, end - self.created)

    def total_layer_bytes(self) -> int:
        """The compressed size of every layer."""
        return sum(layer.size for layer in self.layers)

    def enter(self, phase: BuildPhase) -> None:
        """Move to a running phase (no effect once the build has ended)."""
        if self.finished or phase.finished:
            return
        self.phase = phase
        self.phase_started[phase] = self._clock.seconds()
        self._changed()

    def add_log_line(self, line: str) -> None:
        """Append a line of Nix output (or of nixeryd's own account) to the log."""
        self.log.append(line)
        self.log_lines += 1
        for listener in list(self._listeners):
            try:
                listener.log_line(self, line)
            except Exception:
                _log.failure("Build listener failed on a log line")

    def add_layer(self, layer: LayerSummary) -> None:
        """Record a stored layer of the image."""
        self.layers.append(layer)
        self._changed()

    def succeed(self, manifest_digest: str, message: str) -> None:
        """The image is built and stored."""
        self.manifest_digest = manifest_digest
        self._finish(BuildPhase.SUCCEEDED, message)

    def fail(self, message: str) -> None:
        """The build failed; ``message`` says why in one line."""
        self._finish(BuildPhase.FAILED, message)

    def cancel(self, message: str) -> None:
        """The build was stopped before it ended."""
        self._finish(BuildPhase.CANCELLED, message)

    def subscribe(self, listener: BuildListener) -> Callable[[], None]:
        """
        Tell ``listener`` of every later change; returns the call that
        stops it.  Listeners of a finished build are told nothing more.
        """
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _finish(self, phase: BuildPhase, message: str) -> None:
        if self.finished:
            return
        self.phase = phase
        self.message = message
        self.finished_at = self._clock.seconds()
        self.phase_started[phase] = self.finished_at
        self._changed()
        self._listeners.clear()

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener.changed(self)
            except Exception:
                _log.failure("Build listener failed on a change")


class BuildHistory:
    """
    The builds running now and the most recent finished ones.

    :param clock: the reactor, for timings.
    :param keep_builds: how many finished builds are kept.
    :param keep_lines: how many log lines each build keeps.
    """

    def __init__(self, clock: IReactorTime, keep_builds: int = defaults.KEEP_BUILDS,
                 keep_lines: int = defaults.BUILD_LOG_LINES) -> None:
        self._clock = clock
        self._keep_builds = keep_builds
        self._keep_lines = keep_lines
        #: Every kept record by id, oldest first.
        self._records: OrderedDict[str, BuildRecord] = OrderedDict()
        self._watchers: list[Callable[[BuildRecord], None]] = []

    def watch(self, watcher: Callable[[BuildRecord], None]) -> Callable[[], None]:
        """
        Call ``watcher`` with every record started from now on (to
        subscribe to it, count it, show its progress); returns the call
        that stops it.
        """
        self._watchers.append(watcher)

        def unwatch() -> None:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

        return unwatch

    def start(self, *, image: str, tag: str, packages: tuple[str, ...], system: str,
              source: str, revision: str | None) -> BuildRecord:
        """A new record for a build that starts now."""
        build_id = secrets.token_hex(6)
        while build_id in self._records:
            build_id = secrets.token_hex(6)
        record = BuildRecord(
            id=build_id, image=image, tag=tag, packages=packages, system=system,
            source=source, revision=revision, created=self._clock.seconds(),
            clock=self._clock, keep_lines=self._keep_lines)
        self._records[build_id] = record
        self._forget_old()
        for watcher in list(self._watchers):
            try:
                watcher(record)
            except Exception:
                _log.failure("Build watcher failed")
        return record

    def get(self, build_id: str) -> BuildRecord | None:
        """The record with ``build_id``, if it is still kept."""
        return self._records.get(build_id)

    def running(self) -> list[BuildRecord]:
        """Builds not yet ended, oldest first (waiting ones included)."""
        return [r for r in self._records.values() if not r.finished]

    def waiting(self) -> list[BuildRecord]:
        """Builds waiting for a slot, oldest first."""
        return [r for r in self._records.values() if r.phase is BuildPhase.WAITING]

    def recent(self, limit: int | None = None) -> list[BuildRecord]:
        """Ended builds, newest first."""
        ended = [r for r in reversed(self._records.values()) if r.finished]
        return ended if limit is None else ended[:limit]

    def __iter__(self) -> Iterator[BuildRecord]:
        """Every kept record, oldest first."""
        return iter(list(self._records.values()))

    def _forget_old(self) -> None:
        """Drop the oldest finished records past the limit; running ones stay."""
        finished = [r.id for r in self._records.values() if r.finished]
        for build_id in finished[:max(0, len(finished) - self._keep_builds)]:
            del self._records[build_id]

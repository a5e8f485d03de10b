"""
Running Nix for an image: resolve names, build, report the closure.

An image takes three Nix calls, however many store paths it has:

1. ``nix-instantiate --eval --strict --json resolve.nix`` turns the
   requested names into attribute paths, derivations and output paths, or
   names at once every unknown package and every package whose evaluation
   throws (then one more evaluation of the first of those recovers Nix's
   own error message);
2. ``nix-build --no-out-link <drv>!<output> ...`` realises the outputs;
3. ``nix path-info --json --recursive --closure-size <outputs>`` reports
   the whole closure with references and sizes.

Inputs reach Nix only as ``--argstr`` JSON arguments.  Every call runs
through :mod:`nixeryd.build.process`: its log lines are streamed as events
(fields ``image``, ``phase``, ``line``) to the caller's logger (a build's
own, which keeps them in the build's log) and Nix's whole process tree,
descendants that left its process group included, is ended when the
deadline passes or the caller cancels; the call fails then, without
waiting for a descendant that keeps Nix's output open.  Failures become
the registry errors of :mod:`nixeryd.core.errors`, explained by
:mod:`nixeryd.build.nixfailures`.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from attrs import field, frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import ILogObserver, LogEvent, Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nixeryd.build.closure import ClosureGraph, StorePathInfo
from nixeryd.build.childenv import child_environment
from nixeryd.build.nixfailures import (build_failure, closure_failure,
                                       evaluation_failure, nix_unavailable,
                                       unusable_packages)
from nixeryd.build.process import DEFAULT_TAIL_LINES, ProcessReactor, run_process
from nixeryd.build.processresult import ProcessFailed, ProcessResult
from nixeryd.build.sources import PinnedSource
from nixeryd.core.errors import BuildFailed, RegistryError, UnknownPackages
from nixeryd.core.threads import Runner

#: The expression that resolves names, inside the Nix directory.
RESOLVE_EXPRESSION = "resolve.nix"

_log = Logger()


def default_nix_dir() -> str:
    """
    Where the Nix expressions live: the ``nix`` folder of this package,
    shipped as package data (Nix reads them by path, so the package must be
    installed as files, not as a zip).
    """
    return str(resources.files("nixeryd.build") / "nix")


@frozen
class ResolvedPackage:
    """
    One package of an image, as the package set defines it.

    :ivar requested: the name as the client wrote it (or an optional name).
    :ivar attr: the attribute path it resolved to, e.g.
        ``("xorg", "libX11")``.
    :ivar out_paths: the store paths of its default outputs, in the order
        of ``output_names``.
    :ivar drv_path: its store derivation, which builds the outputs.
    :ivar output_names: the names of those outputs (``out``, ``bin``...).
    """

    requested: str
    attr: tuple[str, ...] = field(converter=tuple[str, ...])
    out_paths: tuple[str, ...] = field(converter=tuple[str, ...])
    drv_path: str | None = None
    output_names: tuple[str, ...] = field(converter=tuple[str, ...], default=())

    def installables(self) -> tuple[str, ...]:
        """What ``nix-build`` is given to realise this package's outputs."""
        if self.drv_path is None or not self.output_names:
            return self.out_paths
        return tuple("%s!%s" % (self.drv_path, name) for name in self.output_names)


@frozen
class Resolution:
    """
    The packages an image holds, resolved against one package set.

    :ivar source: the package set.
    :ivar system: the Nix system, e.g. ``x86_64-linux``.
    :ivar packages: requested packages first, then optional ones found.
    """

    source: PinnedSource
    system: str
    packages: tuple[ResolvedPackage, ...] = field(converter=tuple[ResolvedPackage, ...])

    @property
    def out_paths(self) -> tuple[str, ...]:
        """Every top-level output path, sorted and without duplicates."""
        return tuple(sorted({path for package in self.packages
                             for path in package.out_paths}))


class NixReactor(ProcessReactor, Protocol):
    """
    What the Nix runner needs of the reactor: running children, and the
    time, so that the calls of one step share its deadline.
    """

    def seconds(self) -> float:
        """The current time, in seconds."""


class NixRunner:
    """
    Runs the Nix calls of an image build.

    :param reactor: spawns processes and keeps time.
    :param runner: decodes the closure report (``nix path-info`` JSON,
        which grows with the closure) off the reactor thread.
    :param nix_dir: the directory holding the Nix expressions
        (:func:`default_nix_dir`).
    :param timeout: seconds allowed for :meth:`resolve`, and for
        :meth:`build` (both of its calls together); when it passes, Nix's
        process tree is ended and the call fails.
    :param options: ``(name, value)`` pairs passed to every call as
        ``--option name value``, e.g. ``("substituters", "")``.
    :param env: the environment of Nix; the allow-listed variables of the
        server's environment when ``None``.
    :param kill_grace: seconds between ``SIGTERM`` and ``SIGKILL``.
    :param tail_lines: log lines kept for error reports.
    """

    def __init__(self, reactor: NixReactor, *, runner: Runner, nix_dir: str,
                 timeout: float, options: Iterable[tuple[str, str]] = (),
                 env: Mapping[str, str] | None = None, kill_grace: float = 5.0,
                 tail_lines: int = DEFAULT_TAIL_LINES) -> None:
        self._reactor = reactor
        self._runner = runner
        self._nix_dir = nix_dir
        self._timeout = timeout
        self._option_args: list[str] = []
        for name, value in options:
            self._option_args += ["--option", name, value]
        self._env = dict(env) if env is not None else child_environment(os.environ)
        self._kill_grace = kill_grace
        self._tail_lines = tail_lines

    async def resolve(self, source: PinnedSource, packages: Sequence[str],
                      optional: Sequence[str] = (), system: str = "x86_64-linux",
                      *, image: str | None = None,
                      log: Logger | None = None) -> Resolution:
        """
        Resolve package names in the package set of ``source``.

        :param packages: the requested names.
        :param optional: names added when the package set has them.
        :param system: the Nix system the image is for.
        :param image: the image name, for log events and messages.
        :param log: where this runner's events and Nix's log lines go (a
            build's own logger); this module's logger when ``None``.
        :raises UnknownPackages: naming every requested name that is not a
            package; its ``detail["unusable"]`` lists the requested names
            whose evaluation throws.
        :raises BuildFailed: some requested names throw when evaluated
            (removed aliases, broken, unfree or insecure packages): the
            message names each, ``package`` is the first and the log tail
            is Nix's error for it; or evaluation failed.
        :raises BuildTimedOut: evaluation ran past the timeout.
        :raises Unavailable: Nix cannot run (no daemon, no program).
        """
        log = log or _log
        argv = self._resolve_argv(source, system, [
            "--argstr", "packages", _to_json(list(packages)),
            "--argstr", "optional", _to_json(list(optional)),
        ])
        started = self._reactor.seconds()
        result = await self._run(
            argv, "resolve", image, log, self._timeout,
            lambda e: evaluation_failure(e, self._timeout, image))
        document = _decode_json(result, "evaluation")
        if not isinstance(document, dict):
            raise BuildFailed("evaluation returned unexpected JSON", None,
                              result.tail)
        unknown = _names(document, "unknown", result.tail)
        unusable = _names(document, "unusable", result.tail)
        if unknown:
            error = UnknownPackages(unknown)
            error.detail["unusable"] = unusable
            raise error
        if unusable:
            remaining = started + self._timeout - self._reactor.seconds()
            raise await self._explain_unusable(
                source, system, unusable, image, log, max(remaining, 0.001))
        try:
            resolved = tuple(_resolved_package(entry)
                             for entry in document["packages"])
        except (KeyError, TypeError, AttributeError) as e:
            raise BuildFailed("evaluation returned unexpected JSON", None,
                              result.tail) from e
        log.info("Resolved {count} packages for {image} in {seconds} s",
                 count=len(resolved), image=image, phase="resolve",
                 seconds=round(self._reactor.seconds() - started, 3))
        return Resolution(source, system, resolved)

    def _resolve_argv(self, source: PinnedSource, system: str,
                      arguments: list[str]) -> list[str]:
        """The ``nix-instantiate`` call of the resolve expression."""
        return [
            "nix-instantiate", "--eval", "--strict", "--json",
            "--read-write-mode", *self._option_args,
            os.path.join(self._nix_dir, RESOLVE_EXPRESSION),
            "--argstr", "source", _to_json(source.nix_args),
            "--argstr", "system", system,
            *arguments,
        ]

    async def _explain_unusable(self, source: PinnedSource, system: str,
                                unusable: Sequence[str], image: str | None,
                                log: Logger, timeout: float) -> BuildFailed:
        """
        The error for requested names whose evaluation throws.

        The resolve expression catches those errors to name every such
        package, which loses Nix's message; one more evaluation of just the
        first package, uncaught, recovers it for the log tail.
        """
        argv = self._resolve_argv(source, system,
                                  ["--argstr", "strict", unusable[0]])
        try:
            result = await self._run(argv, "resolve", image, log, timeout,
                                     lambda e: BuildFailed("", None, e.tail))
            tail = result.tail
        except BuildFailed as e:
            tail = e.log_tail
        return unusable_packages(unusable, tail, image)

    async def build(self, resolution: Resolution, *,
                    image: str | None = None,
                    gc_root: str | None = None,
                    log: Logger | None = None) -> ClosureGraph:
        """
        Realise the outputs of ``resolution`` and report their closure.

        :param image: the image name, for log events and messages.
        :param gc_root: a path for Nix's out-link (``result``, ``result-2``,
            ... next to it): garbage-collector roots that keep the closure
            alive while the caller packs it; the caller removes them.
            Without it the outputs are unrooted once ``nix-build`` exits.
        :param log: where this runner's events and Nix's log lines go (a
            build's own logger); this module's logger when ``None``.
        :returns: the closure, whose roots are the resolution's output
            paths, sorted.
        :raises BuildFailed: naming the failed package when the log does.
        :raises BuildTimedOut: realising and querying ran past the timeout.
        :raises Unavailable: Nix cannot run (no daemon, no program).
        """
        log = log or _log
        roots = resolution.out_paths
        if not roots:
            return ClosureGraph((), {})
        started = self._reactor.seconds()
        deadline = started + self._timeout
        installables = list(dict.fromkeys(
            item for package in resolution.packages
            for item in package.installables()))
        requested = {package.drv_path: package.requested
                     for package in resolution.packages if package.drv_path}
        link = ["--out-link", gc_root] if gc_root else ["--no-out-link"]
        build = ["nix-build", *link, *self._option_args, *installables]
        query = ["nix", "--extra-experimental-features", "nix-command",
                 "path-info", "--json", "--recursive", "--closure-size",
                 *self._option_args, *roots]
        # When the outputs are already in the store (an image that differs
        # from one built before by packages built before), the closure can
        # be queried while nix-build only adds the roots: one Nix start-up
        # less to wait for.  The early query fails quietly when an output
        # is not valid yet, and is asked again once the build is done.
        early: Deferred[ProcessResult | None] = Deferred.fromCoroutine(self._run(
            query, "path-info", image, _QUIET, self._timeout,
            lambda e: closure_failure(e, self._timeout, image)))
        early.addErrback(_not_yet)
        try:
            await self._run(build, "build", image, log, self._timeout,
                            lambda e: build_failure(e, self._timeout, image, requested))
        except BaseException:
            early.cancel()
            raise
        result = await early
        if result is None:
            remaining = max(deadline - self._reactor.seconds(), 0.001)
            result = await self._run(query, "path-info", image, log, remaining,
                                     lambda e: closure_failure(e, self._timeout, image))
        paths = await self._runner.run(_reported_closure, result)
        missing = [root for root in roots if root not in paths]
        if missing:
            raise BuildFailed("Nix did not report the built paths: "
                              + ", ".join(missing), None, result.tail)
        log.info("Built {count} store paths for {image} in {seconds} s",
                 count=len(paths), image=image, phase="build",
                 seconds=round(self._reactor.seconds() - started, 3))
        return ClosureGraph(roots, paths)

    async def _run(self, argv: list[str], phase: str, image: str | None,
                   log: Logger, timeout: float,
                   explain: Callable[[ProcessFailed], RegistryError]) -> ProcessResult:
        """
        Run one Nix call.  A failure becomes :class:`Unavailable` when Nix
        could not work at all, else the error ``explain`` makes of it.
        """
        try:
            return await run_process(
                self._reactor, argv, env=self._env, timeout=timeout,
                kill_grace=self._kill_grace, tail_lines=self._tail_lines,
                logger=log, log_fields={"image": image, "phase": phase})
        except ProcessFailed as e:
            raise (nix_unavailable(e) or explain(e)) from e


@implementer(ILogObserver)
class _Discard:
    """Drops every event: the early closure query's lines, whose failure is
    expected whenever something had to be built."""

    def __call__(self, event: LogEvent) -> None:
        """One event, dropped."""


_QUIET = Logger(namespace=__name__, observer=_Discard())


def _not_yet(failure: Failure) -> None:
    """The early closure query failed: the closure is asked for after the build."""
    if not isinstance(failure.value, (RegistryError, CancelledError)):
        _log.failure("Early closure query failed unexpectedly", failure)
    return None


def _to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _decode_json(result: ProcessResult, what: str) -> Any:
    try:
        return json.loads(result.stdout)
    except ValueError as e:
        raise BuildFailed("%s returned invalid JSON" % (what,), None,
                          result.tail) from e


def _names(document: Mapping[str, Any], key: str,
           tail: Sequence[str]) -> list[str]:
    """The list of package names under ``key`` of the resolve result."""
    names = document.get(key) or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BuildFailed("evaluation returned unexpected JSON", None, tail)
    return names


def _resolved_package(entry: Mapping[str, Any]) -> ResolvedPackage:
    outputs = entry["outputs"]
    names = tuple(outputs)
    return ResolvedPackage(
        requested=entry["requested"], attr=entry["attr"],
        out_paths=[outputs[name] for name in names],
        drv_path=entry["drvPath"], output_names=names)


def _reported_closure(result: ProcessResult) -> dict[str, StorePathInfo]:
    """The store path infos in the output of ``nix path-info --json``."""
    return _closure(_decode_json(result, "path-info"), result.tail)


def _closure(document: Any, tail: Sequence[str]) -> dict[str, StorePathInfo]:
    """
    Store path infos from ``nix path-info --json``: a list of objects with
    a ``path`` (Nix 2.8), or an object keyed by path (newer Nix).
    """
    if isinstance(document, dict):
        entries = [dict(info or {}, path=path) for path, info in document.items()]
    elif isinstance(document, list):
        entries = document
    else:
        raise BuildFailed("path-info returned unexpected JSON", None, tail)
    paths = {}
    for entry in entries:
        try:
            if entry.get("valid", True) is False or "narSize" not in entry:
                raise BuildFailed("store path %s is not valid" % (entry["path"],),
                                  None, tail)
            info = StorePathInfo(entry["path"], int(entry["narSize"]),
                                 int(entry["closureSize"]),
                                 tuple(entry.get("references") or ()))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BuildFailed("path-info returned unexpected JSON", None,
                              tail) from e
        paths[info.path] = info
    return paths

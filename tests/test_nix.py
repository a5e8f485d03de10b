"""
Tests for :mod:`nixeryd.build.nix` against real Nix and the offline package set
in ``tests/pkgs``, plus the pure parts (JSON decoding, failure reports).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Callable, ParamSpec, Sequence, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import provider

import nixeryd.build.nix
from nixeryd.build.closure import ClosureGraph, StorePathInfo
from nixeryd.build.nix import NixRunner, Resolution, ResolvedPackage, default_nix_dir
from nixeryd.build.process import ProcessReactor, run_process
from nixeryd.build.processresult import ProcessResult
from nixeryd.build.sources import PinnedSource
from nixeryd.core.errors import BuildFailed, BuildTimedOut, Unavailable, UnknownPackages
from nixeryd.core.threads import InlineRunner
from tests import e2e
from tests.e2e import PACKAGE_SET
from tests.processes import wait_until_gone
from tests.realnix import NIX_OPTIONS, nix_environment, nix_runner

T = TypeVar("T")
P = ParamSpec("P")


def fresh_package_set(test: TestCase) -> str:
    """A fresh copy of the package set for ``test`` (see :mod:`tests.e2e`)."""
    return e2e.fresh_package_set(test.mktemp())


def capture_events(test: TestCase, **match: Any) -> list[dict[str, Any]]:
    """
    Log events whose fields include ``match``, collected until the end of
    ``test``.
    """
    events: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if all(event.get(key) == value for key, value in match.items()):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return events


async def attribute_out_path(test: TestCase, package_set: str, attr: str,
                             system: str = "x86_64-linux") -> str:
    """The output path of ``attr`` as plain ``nix-instantiate`` computes it."""
    result = await run_process(
        reactor, ["nix-instantiate", "--eval", "--json", "--read-write-mode",
                  "--option", "substituters", "", package_set, "-A",
                  attr + ".outPath", "--argstr", "system", system],
        env=nix_environment(test), timeout=30)
    path: str = json.loads(result.stdout)
    return path


def path_source(path: str = PACKAGE_SET) -> PinnedSource:
    """The pinned form of a local package set."""
    return PinnedSource("path", {"kind": "path", "path": path}, None)


class DefaultNixDirTests(SynchronousTestCase):
    """Finding the Nix expressions."""

    def test_package_data(self) -> None:
        """The expressions are package data beside the module that runs them."""
        expected = os.path.join(os.path.dirname(
            os.path.abspath(nixeryd.build.nix.__file__)), "nix")
        self.assertEqual(default_nix_dir(), expected)
        self.assertTrue(os.path.isfile(os.path.join(expected, "resolve.nix")))
        self.assertTrue(os.path.isfile(os.path.join(expected, "package-set.nix")))


class ResolutionTests(SynchronousTestCase):
    """The plain data a resolution holds."""

    def test_out_paths_sorted_unique(self) -> None:
        """A resolution's output paths are sorted and each appears once."""
        resolution = Resolution(path_source(), "x86_64-linux", [
            ResolvedPackage("b", ["b"], ["/nix/store/b-b", "/nix/store/a-b-man"]),
            ResolvedPackage("a", ["a"], ["/nix/store/c-a", "/nix/store/b-b"]),
        ])
        self.assertEqual(resolution.out_paths, (
            "/nix/store/a-b-man", "/nix/store/b-b", "/nix/store/c-a"))

    def test_installables(self) -> None:
        """A package is built as derivation!output for each default output."""
        package = ResolvedPackage("multi", ["multi"], ["/nix/store/x-bin", "/nix/store/x-man"],
                                  "/nix/store/x.drv", ["bin", "man"])
        self.assertEqual(package.installables(),
                         ("/nix/store/x.drv!bin", "/nix/store/x.drv!man"))


class ResolveEndToEnd(TestCase):
    """Resolving names with real Nix (each test takes under a second)."""

    timeout = 60

    def setUp(self) -> None:
        self.nix = nix_runner(self)

    async def resolve(self, *names: str, optional: Sequence[str] = (),
                      system: str = "x86_64-linux") -> Resolution:
        return await self.nix.resolve(path_source(), names, optional, system)

    async def test_exact_name(self) -> None:
        """An exact name resolves to its attribute, derivation and output path."""
        resolution = await self.resolve("hello")
        [hello] = resolution.packages
        self.assertEqual(hello.requested, "hello")
        self.assertEqual(hello.attr, ("hello",))
        self.assertEqual(hello.output_names, ("out",))
        self.assertEqual(hello.out_paths,
                         (await attribute_out_path(self, PACKAGE_SET, "hello"),))
        assert hello.drv_path is not None
        self.assertTrue(hello.drv_path.endswith("-hello-1.0.drv"))
        self.assertTrue(os.path.exists(hello.drv_path))
        self.assertEqual(resolution.system, "x86_64-linux")
        self.assertEqual(resolution.source, path_source())

    async def test_case_insensitive_at_every_level(self) -> None:
        """Lowercase names find mixed-case attributes at every level of a dotted path."""
        resolution = await self.resolve(
            "xorg.libx11", "python3packages.pyyaml", "HELLO")
        attrs = {p.requested: p.attr for p in resolution.packages}
        self.assertEqual(attrs, {
            "xorg.libx11": ("xorg", "libX11"),
            "python3packages.pyyaml": ("python3Packages", "pyyaml"),
            "HELLO": ("hello",),
        })
        libx11 = resolution.packages[0]
        self.assertEqual(libx11.out_paths, (await attribute_out_path(
            self, PACKAGE_SET, "xorg.libX11"),))

    async def test_leading_digit(self) -> None:
        """A name starting with a digit finds the underscore-prefixed attribute."""
        resolution = await self.resolve("7zz")
        self.assertEqual(resolution.packages[0].attr, ("_7zz",))

    async def test_unknown_names_reported_together(self) -> None:
        """Every unknown name is reported at once, as requested, including non-derivations."""
        with self.assertRaises(UnknownPackages) as caught:
            await self.resolve("hello", "nope", "xorg.nothere", "xorg",
                               "xorg.notapackage")
        self.assertEqual(caught.exception.packages,
                         ("nope", "xorg.nothere", "xorg", "xorg.notapackage"))
        self.assertEqual(caught.exception.status, 404)

    async def test_names_are_not_code(self) -> None:
        """A name holding Nix syntax is looked up as a name, never evaluated."""
        name = 'hello"; x = builtins.abort "injected'
        with self.assertRaises(UnknownPackages) as caught:
            await self.resolve(name)
        self.assertEqual(caught.exception.packages, (name,))

    async def test_optional_packages(self) -> None:
        """Optional names are added when present, once, and never reported unknown."""
        resolution = await self.resolve(
            "cacert", "hello", optional=["cacert", "iana-etc", "not-in-the-set"])
        self.assertEqual([p.requested for p in resolution.packages],
                         ["cacert", "hello", "iana-etc"])
        self.assertEqual(len(resolution.out_paths), 3)

    async def test_default_outputs(self) -> None:
        """A multi-output package gives its outputsToInstall, and naming an output gives only that one."""
        resolution = await self.resolve("multi", "multi.man")
        multi, man = resolution.packages
        self.assertEqual(multi.output_names, ("bin", "man"))
        self.assertTrue(multi.out_paths[0].endswith("-multi-1.0-bin"))
        self.assertEqual(man.attr, ("multi", "man"))
        self.assertEqual(man.output_names, ("man",))
        self.assertEqual(man.drv_path, multi.drv_path)
        self.assertEqual(resolution.out_paths, tuple(sorted(multi.out_paths)))

    async def test_system(self) -> None:
        """The system argument selects the package set's platform."""
        resolution = await self.resolve("hello", system="aarch64-linux")
        self.assertEqual(resolution.packages[0].out_paths, (await attribute_out_path(
            self, PACKAGE_SET, "hello", "aarch64-linux"),))
        native = await self.resolve("hello")
        self.assertNotEqual(resolution.out_paths, native.out_paths)

    async def test_throwing_package(self) -> None:
        """A package that throws fails the evaluation, naming it, with Nix's message."""
        with self.assertRaises(BuildFailed) as caught:
            await self.resolve("broken")
        self.assertNotIsInstance(caught.exception, UnknownPackages)
        self.assertEqual(caught.exception.package, "broken")
        self.assertEqual((caught.exception.status, caught.exception.code),
                         (404, "MANIFEST_UNKNOWN"))
        self.assertEqual(caught.exception.message, "package broken cannot be evaluated:"
                         " broken: this package was removed from the set")
        self.assertTrue(any("broken: this package was removed" in line
                            for line in caught.exception.log_tail))

    async def test_unusable_and_unknown(self) -> None:
        """Unknown names are reported as such, with the names that throw in the detail."""
        with self.assertRaises(UnknownPackages) as caught:
            await self.resolve("brokenpkg", "nosuch", "hello")
        error = caught.exception
        self.assertEqual(error.packages, ("nosuch",))
        self.assertEqual(error.message, "unknown Nix packages: nosuch")
        self.assertEqual(error.detail, {"packages": ["nosuch"],
                                        "unusable": ["brokenpkg"]})
        self.assertEqual(error.status, 404)

    async def test_unknown_without_unusable(self) -> None:
        """With no package that throws, the unknown-packages detail lists none."""
        with self.assertRaises(UnknownPackages) as caught:
            await self.resolve("hello", "nosuch")
        self.assertEqual(caught.exception.detail["unusable"], [])

    async def test_unusable_packages_named(self) -> None:
        """Every package that throws is named at once; the first is explained by Nix's error."""
        with self.assertRaises(BuildFailed) as caught:
            await self.resolve("brokenpkg", "removedpkg", "hello")
        error = caught.exception
        self.assertNotIsInstance(error, UnknownPackages)
        self.assertEqual(error.status, 404)
        self.assertEqual(error.package, "brokenpkg")
        self.assertIn("brokenpkg, removedpkg", error.message)
        self.assertIn("marked as broken", error.message)
        self.assertTrue(any("'brokenpkg-1.0' is marked as broken" in line
                            for line in error.log_tail), error.log_tail)
        self.assertFalse(any("removedpkg has been removed" in line
                             for line in error.log_tail), error.log_tail)
        self.assertEqual(error.to_json()["detail"], {"package": "brokenpkg"})

    async def test_removed_alias(self) -> None:
        """A removed alias is named, as requested, with its throw text in the log tail."""
        with self.assertRaises(BuildFailed) as caught:
            await self.resolve("RemovedPkg", "brokenpkg")
        error = caught.exception
        self.assertEqual(error.package, "RemovedPkg")
        self.assertIn("RemovedPkg, brokenpkg", error.message)
        self.assertTrue(any("removedpkg has been removed: use hello" in line
                            for line in error.log_tail), error.log_tail)

    async def test_unusable_optional_left_out(self) -> None:
        """Optional names that throw are left out without failing the image."""
        resolution = await self.resolve(
            "hello", optional=["brokenpkg", "removedpkg", "cacert", "broken"])
        self.assertEqual([p.requested for p in resolution.packages],
                         ["hello", "cacert"])

    async def test_diagnosis_only_on_failure(self) -> None:
        """A resolution runs Nix once; packages that throw cost exactly one more evaluation."""
        calls: list[list[str]] = []

        def counting(reactor: ProcessReactor, argv: Sequence[str],
                     **kwargs: Any) -> Deferred[ProcessResult]:
            calls.append(list(argv))
            return run_process(reactor, argv, **kwargs)

        self.patch(nixeryd.build.nix, "run_process", counting)
        await self.resolve("hello", optional=["brokenpkg"])
        self.assertEqual(len(calls), 1)
        with self.assertRaises(BuildFailed):
            await self.resolve("brokenpkg", "removedpkg")
        self.assertEqual(len(calls), 3)
        self.assertEqual(calls[2][calls[2].index("strict") + 1], "brokenpkg")

    async def test_throwing_package_set(self) -> None:
        """A package set that cannot be evaluated fails with the log tail."""
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        with open(os.path.join(path, "default.nix"), "w") as f:
            f.write('{ system }: throw "this package set is broken"\n')
        with self.assertRaises(BuildFailed) as caught:
            await self.nix.resolve(path_source(path), ["hello"], (), "x86_64-linux",
                                   image="hello")
        self.assertEqual(caught.exception.message, "package hello cannot be evaluated:"
                         " this package set is broken")
        self.assertEqual(caught.exception.status, 404)

    async def test_package_set_syntax_error(self) -> None:
        """A package set that does not parse fails the evaluation, with Nix's message."""
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        with open(os.path.join(path, "default.nix"), "w") as f:
            f.write("{ system }: {\n")
        with self.assertRaises(BuildFailed) as caught:
            await self.nix.resolve(path_source(path), ["hello"], (), "x86_64-linux",
                                   image="shell/hello")
        message = caught.exception.message
        self.assertTrue(message.startswith("the evaluation of image shell/hello failed:"
                                           " syntax error"), message)
        self.assertEqual(caught.exception.status, 404)

    async def test_unfree_package(self) -> None:
        """An unfree package is named with nixpkgs' refusal, in one line."""
        with self.assertRaises(BuildFailed) as caught:
            await self.nix.resolve(path_source(), ["unfreepkg", "hello"], (),
                                   "x86_64-linux", image="hello/unfreepkg")
        self.assertEqual(caught.exception.message,
                         "package unfreepkg in image hello/unfreepkg cannot be evaluated:"
                         " Package \u2018unfreepkg-1.0\u2019 has an unfree license"
                         " (\u2018unfree\u2019), refusing to evaluate.")

    async def test_evaluation_timeout(self) -> None:
        """An evaluation past the timeout says so, and which setting sets it."""
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        os.mkfifo(os.path.join(path, "fifo"))
        with open(os.path.join(path, "default.nix"), "w") as f:
            # Reading a pipe nobody writes to: an evaluation that never ends.
            f.write("{ system }: { hello = builtins.readFile ./fifo; }\n")
        nix = nix_runner(self, timeout=0.5, kill_grace=1)
        with self.assertRaises(BuildTimedOut) as caught:
            await nix.resolve(path_source(path), ["hello"], (), "x86_64-linux",
                              image="shell/hello")
        self.assertEqual((caught.exception.step, caught.exception.status), ("evaluation", 404))
        self.assertEqual(caught.exception.message,
                         "the evaluation of image shell/hello timed out after 0.5 seconds"
                         " (NIX_TIMEOUT sets the limit)")

    async def test_daemon_unavailable(self) -> None:
        """Nix that cannot reach its daemon is a transient 503, not a build failure."""
        env = dict(nix_environment(self),
                   NIX_REMOTE="unix://" + os.path.abspath(self.mktemp()))
        nix = NixRunner(reactor, runner=InlineRunner(), nix_dir=default_nix_dir(),
                        timeout=30, options=NIX_OPTIONS, env=env)
        with self.assertRaises(Unavailable) as caught:
            await nix.resolve(path_source(), ["hello"], (), "x86_64-linux")
        self.assertEqual((caught.exception.status, caught.exception.code),
                         (503, "UNAVAILABLE"))
        self.assertEqual(caught.exception.message,
                         "the Nix daemon is unavailable; try again later")
        self.assertTrue(any("cannot connect to" in line
                            for line in caught.exception.log_tail))

    async def test_nix_missing(self) -> None:
        """A host without the Nix programs is a transient 503 too."""
        env = dict(nix_environment(self), PATH=os.path.abspath(self.mktemp()))
        nix = NixRunner(reactor, runner=InlineRunner(), nix_dir=default_nix_dir(),
                        timeout=30, env=env)
        with self.assertRaises(Unavailable) as caught:
            await nix.resolve(path_source(), ["hello"], (), "x86_64-linux")
        self.assertEqual(caught.exception.message, "Nix is unavailable on the registry"
                         " (nix-instantiate cannot be run); try again later")

    async def test_own_logger(self) -> None:
        """Given a logger, every event of the step goes there and not to the global one."""
        own: list[dict[str, Any]] = []
        elsewhere = capture_events(self, image="own-logger")

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            own.append(event)

        log = Logger(namespace="test", observer=observe)
        with self.assertRaises(BuildFailed):
            await self.nix.resolve(path_source(), ["broken"], (), "x86_64-linux",
                                   image="own-logger", log=log)
        self.assertEqual(elsewhere, [])
        lines = [e["line"] for e in own if e.get("stream") == "stderr"]
        self.assertTrue(any("broken: this package was removed" in line for line in lines),
                        own)
        self.assertTrue(any(e.get("process_event") == "started" for e in own))

    async def test_log_events(self) -> None:
        """Nix's log lines become events with the image, the phase and the line."""
        events = capture_events(self, image="broken-image", phase="resolve")
        with self.assertRaises(BuildFailed):
            await self.nix.resolve(path_source(), ["broken"], (), "x86_64-linux",
                                   image="broken-image")
        self.assertTrue(any("broken: this package was removed" in e.get("line", "")
                            for e in events), events)


class BuildEndToEnd(TestCase):
    """Building with real Nix (each test takes a few seconds at most)."""

    timeout = 60

    async def resolve_and_build(self, names: Sequence[str], *,
                                package_set: str = PACKAGE_SET,
                                system: str = "x86_64-linux",
                                nix: NixRunner | None = None,
                                image: str | None = None) -> tuple[Resolution, ClosureGraph]:
        nix = nix or nix_runner(self)
        resolution = await nix.resolve(path_source(package_set), names, (), system,
                                       image=image)
        return resolution, await nix.build(resolution, image=image)

    async def test_hello_closure(self) -> None:
        """Building hello gives a closure of hello and busybox with references and sizes."""
        resolution, graph = await self.resolve_and_build(["hello"])
        [hello] = resolution.out_paths
        self.assertEqual(graph.roots, (hello,))
        self.assertEqual(len(graph.paths), 2)
        [busybox] = [p for p in graph.paths if p != hello]
        self.assertTrue(busybox.endswith("-busybox-1.0"))
        self.assertEqual(graph.paths[hello].references, (busybox,))
        self.assertEqual(graph.paths[busybox].references, ())
        self.assertGreater(graph.paths[busybox].nar_size,
                           os.path.getsize("/bin/busybox"))
        self.assertEqual(graph.paths[hello].closure_size,
                         graph.paths[hello].nar_size + graph.paths[busybox].nar_size)
        self.assertEqual(graph.total_size(), graph.paths[hello].closure_size)
        output = await run_process(reactor, [hello + "/bin/hello"], env={},
                                   timeout=10)
        self.assertEqual(output.stdout, b"Hello, world!\n")

    async def test_shared_library(self) -> None:
        """Two tools that use one library share it in the closure graph."""
        resolution, graph = await self.resolve_and_build(["toolA", "toolB"])
        self.assertEqual(graph.roots, resolution.out_paths)
        [libfoo] = [p for p in graph.paths if p.endswith("-libfoo-1.0")]
        for root in graph.roots:
            self.assertIn(libfoo, graph.paths[root].references)
        self.assertEqual(len(graph.paths), 4)

    async def test_multi_output(self) -> None:
        """Every default output of a package is built and is a root."""
        resolution, graph = await self.resolve_and_build(["multi"])
        self.assertEqual(len(graph.roots), 2)
        for root in graph.roots:
            self.assertTrue(os.path.isdir(root))

    async def test_failing_package(self) -> None:
        """A failing build names the requested package and carries its last log lines."""
        with self.assertRaises(BuildFailed) as caught:
            await self.resolve_and_build(["hello", "failing"])
        error = caught.exception
        self.assertEqual(error.package, "failing")
        self.assertEqual(error.message, "the build of package failing failed"
                         " (builder exited with status 1)")
        self.assertIn("failing: compiling", error.log_tail)
        self.assertIn("failing: error: this package never builds", error.log_tail)
        self.assertEqual(error.to_json()["detail"], {"package": "failing"})

    async def test_failing_dependency(self) -> None:
        """A failing dependency is named by its derivation name."""
        with self.assertRaises(BuildFailed) as caught:
            await self.resolve_and_build(["needsFailing"])
        self.assertEqual(caught.exception.package, "failing-1.0")
        self.assertEqual(caught.exception.message, "the build of failing-1.0, a dependency"
                         " of the image, failed (builder exited with status 1)")

    async def test_timeout_kills_builders(self) -> None:
        """A build past the timeout fails with BuildTimedOut and leaves no builder running."""
        nix = nix_runner(self, timeout=2, kill_grace=2)
        events = capture_events(self, image="slow-image", phase="build")
        started = reactor.seconds()
        with self.assertRaises(BuildTimedOut) as caught:
            await self.resolve_and_build(["slow"], nix=nix, image="slow-image")
        self.assertLess(reactor.seconds() - started, 10)
        self.assertEqual(caught.exception.seconds, 2)
        self.assertEqual(caught.exception.message,
                         "the build of package slow in image slow-image timed out after"
                         " 2 seconds (NIX_TIMEOUT sets the limit)")
        self.assertEqual(caught.exception.package, "slow")
        pids = [int(e["line"].rsplit(" ", 1)[1]) for e in events
                if e.get("line", "").startswith("slow: ") and " pid " in e["line"]]
        self.assertEqual(len(pids), 2, [e.get("line") for e in events])
        for pid in pids:
            self.assertTrue(await wait_until_gone(pid), "pid %d still runs" % (pid,))

    async def test_cancel_kills_builders(self) -> None:
        """Cancelling a build stops Nix and its builders."""
        nix = nix_runner(self)
        resolution = await nix.resolve(path_source(), ["slow"], (), "x86_64-linux")
        pids: list[int] = []
        running: Deferred[None] = Deferred()

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            line = event.get("line", "")
            if event.get("image") == "cancelled" and line.startswith("slow: "):
                pids.append(int(line.rsplit(" ", 1)[1]))
                if len(pids) == 2:
                    running.callback(None)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        build = Deferred.fromCoroutine(nix.build(resolution, image="cancelled"))
        await running
        build.cancel()
        with self.assertRaises(CancelledError):
            await build
        for pid in pids:
            self.assertTrue(await wait_until_gone(pid), "pid %d still runs" % (pid,))

    async def test_noisy_build(self) -> None:
        """A build writing over a megabyte of log succeeds, and every line is streamed."""
        events = capture_events(self, image="noisy-image", phase="build")
        _, graph = await self.resolve_and_build(
            ["noisy"], package_set=fresh_package_set(self), image="noisy-image")
        self.assertEqual(len(graph.roots), 1)
        noisy = [e for e in events if e.get("line", "").startswith("noisy: ")]
        self.assertEqual(len(noisy), 12000)
        self.assertGreater(sum(len(e["line"]) for e in noisy), 1024 * 1024)

    async def test_aarch64_build(self) -> None:
        """
        An aarch64-linux image builds on this host without emulation: its
        derivations are built here (for this machine's system) and hold
        aarch64 binaries.
        """
        resolution, graph = await self.resolve_and_build(
            ["hello"], package_set=fresh_package_set(self), system="aarch64-linux")
        [hello] = resolution.packages
        assert hello.drv_path is not None
        with open(hello.drv_path) as drv:
            self.assertIn('"x86_64-linux"', drv.read())
        self.assertEqual(len(graph.paths), 2)
        self.assertTrue(os.path.isfile(hello.out_paths[0] + "/bin/hello"))
        [busybox] = [path for path in graph.paths if path.endswith("-busybox-1.0")]
        with open(busybox + "/bin/busybox", "rb") as binary:
            head = binary.read(20)
        # ELF, e_machine 183: AArch64.
        self.assertEqual((head[:4], int.from_bytes(head[18:20], "little")), (b"\x7fELF", 183))

    async def test_aarch64_derivation_needs_a_builder(self) -> None:
        """
        A derivation for aarch64-linux itself is refused by Nix on this
        host: a permanent failure saying what the operator can configure.
        """
        nix = nix_runner(self)
        resolution = await nix.resolve(path_source(fresh_package_set(self)), ["native"], (),
                                       "aarch64-linux", image="arm64/native")
        try:
            await nix.build(resolution, image="arm64/native")
        except BuildFailed as e:
            error = e
        else:
            self.fail("built a derivation for aarch64-linux")
        self.assertTrue(error.message.startswith(
            "package native in image arm64/native cannot be built for aarch64-linux: this"
            " registry builds for x86_64-linux only; "), error.message)
        self.assertEqual((error.package, error.status), ("native", 404))

    async def test_aarch64_remote_builder_down(self) -> None:
        """
        With a remote builder for aarch64-linux that refuses connections
        (a closed port on loopback), the build is unavailable now, to be
        tried again: not a failure of the package, not the advice to add
        a builder.
        """
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 22)) == 0:
                raise SkipTest("something listens on 127.0.0.1:22")
        nix = nix_runner(self, extra_options=(
            ("builders", "ssh://nobody@127.0.0.1 aarch64-linux"),))
        resolution = await nix.resolve(path_source(fresh_package_set(self)), ["native"], (),
                                       "aarch64-linux", image="arm64/native")
        try:
            await nix.build(resolution, image="arm64/native")
        except Unavailable as e:
            error = e
        else:
            self.fail("built a derivation for aarch64-linux, or failed otherwise")
        self.assertTrue(error.message.startswith(
            "no remote builder for aarch64-linux could be used now (cannot build on"
            " 'ssh://127.0.0.1': "), error.message)
        self.assertTrue(error.message.endswith("; try again later"), error.message)
        self.assertEqual((error.status, error.retry_after), (503, 10))

    async def test_closure_decoded_by_the_runner(self) -> None:
        """The closure report is decoded through the runner, off the reactor thread."""
        calls: list[str] = []

        class RecordingRunner:
            def run(self, function: Callable[P, T], /,
                    *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
                calls.append(function.__name__)
                return InlineRunner().run(function, *args, **kwargs)

        nix = NixRunner(reactor, runner=RecordingRunner(), nix_dir=default_nix_dir(),
                        timeout=60, options=NIX_OPTIONS, env=nix_environment(self))
        _, graph = await self.resolve_and_build(["hello"], nix=nix)
        self.assertEqual(len(graph.paths), 2)
        self.assertEqual(calls, ["_reported_closure"])

    async def test_closure_before_and_after_building(self) -> None:
        """
        The closure is right whether its paths had to be built (the early
        query fails, unseen, and is asked again) or were there already
        (it comes from the early query); the build's log never shows the
        early query's failure.
        """
        package_set = fresh_package_set(self)
        events = capture_events(self, image="fresh-image")
        _, built = await self.resolve_and_build(["toolA"], package_set=package_set,
                                                image="fresh-image")
        self.assertEqual(len(built.paths), 3)
        lines = [e.get("line", "") for e in events]
        self.assertFalse([line for line in lines if "is not valid" in line], lines)
        self.assertEqual(len([e for e in events if e.get("phase") == "path-info"
                              and e.get("process_event") == "started"]), 1)
        _, again = await self.resolve_and_build(["toolA"], package_set=package_set,
                                                image="fresh-image")
        self.assertEqual(again, built)

    async def test_empty_resolution(self) -> None:
        """Nothing to build gives an empty graph without running Nix."""
        nix = NixRunner(reactor, runner=InlineRunner(), nix_dir="/nonexistent",
                        timeout=1)
        graph = await nix.build(Resolution(path_source(), "x86_64-linux", []))
        self.assertEqual(graph, ClosureGraph((), {}))


class PathInfoDecodingTests(SynchronousTestCase):
    """Reading both shapes of ``nix path-info --json``."""

    def test_list_and_object(self) -> None:
        """The Nix 2.8 list and the newer object keyed by path decode alike."""
        entry = {"narSize": 10, "closureSize": 30, "references": ["/nix/store/b-b"]}
        as_list = nixeryd.build.nix._closure([dict(entry, path="/nix/store/a-a")], ())
        as_object = nixeryd.build.nix._closure({"/nix/store/a-a": entry}, ())
        expected = {"/nix/store/a-a": StorePathInfo(
            "/nix/store/a-a", 10, 30, ("/nix/store/b-b",))}
        self.assertEqual(as_list, expected)
        self.assertEqual(as_object, expected)

    def test_invalid_path(self) -> None:
        """A path Nix reports as invalid fails the build."""
        self.assertRaises(BuildFailed, nixeryd.build.nix._closure,
                          [{"path": "/nix/store/a-a", "valid": False}], ())
        self.assertRaises(BuildFailed, nixeryd.build.nix._closure, {"/nix/store/a-a": None}, ())
        self.assertRaises(BuildFailed, nixeryd.build.nix._closure, "nonsense", ())

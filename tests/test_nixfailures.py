"""
Tests for :mod:`nixeryd.build.nixfailures`: the one-line messages made of
failed Nix calls, from made-up process outcomes (the Nix tests check the
same against real Nix).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.build.nixfailures import (build_failure, closure_failure, evaluation_failure,
                                       first_error_message, nix_unavailable,
                                       packages_subject, unusable_packages)
from nixeryd.build.processresult import OutputTooLarge, ProcessFailed, ProcessTimedOut
from nixeryd.core.errors import BuildTimedOut

BUILD = ("nix-build", "--no-out-link")
DRV = "/nix/store/vd7r4h50x6d0s2wsc7bwlxmngkgpdm3l-failing-1.0.drv"
DEP = "/nix/store/00000000000000000000000000000000-libfoo-1.0.drv"


def failed(*tail: str, exit_code: int | None = 1, argv: tuple[str, ...] = BUILD
           ) -> ProcessFailed:
    return ProcessFailed(argv, exit_code, None, tail)


class SubjectTests(SynchronousTestCase):
    """How messages name the packages and the image."""

    def test_packages_subject(self) -> None:
        """The image is named only when it is more than the packages."""
        self.assertEqual(packages_subject(["failing"], "failing"), "package failing")
        self.assertEqual(packages_subject(["failing"], None), "package failing")
        self.assertEqual(packages_subject(["failing"], "shell/failing"),
                         "package failing in image shell/failing")
        self.assertEqual(packages_subject(["a", "b"], "a/b"), "packages a, b")

    def test_first_error_message(self) -> None:
        """The first ``error:`` line, without the prefix; ``None`` without one."""
        self.assertEqual(first_error_message(["x", "  error: first", "error: second"]),
                         "first")
        self.assertIsNone(first_error_message(["warning: nothing"]))

    def test_credentials_left_out(self) -> None:
        """The user information of URLs in Nix's message never reaches a client."""
        self.assertEqual(first_error_message([
            "error: Cannot find Git revision 'ff' in ref 'HEAD' of repository"
            " 'https://user:s3cret@git.example/pkgs.git'! Please make sure"]),
            "Cannot find Git revision 'ff' in ref 'HEAD' of repository"
            " 'https://git.example/pkgs.git'! Please make sure")


class BuildFailureTests(SynchronousTestCase):
    """``nix-build`` failures."""

    def test_requested_package(self) -> None:
        """The builder of a requested package: its name and exit status."""
        error = build_failure(failed(
            "building '%s'..." % (DRV,), "failing: error: this package never builds",
            "error: builder for '%s' failed with exit code 1" % (DRV,)),
            600, "failing", {DRV: "failing"})
        self.assertEqual(error.message, "the build of package failing failed"
                         " (builder exited with status 1)")
        self.assertEqual((error.package, error.status, error.code),
                         ("failing", 404, "MANIFEST_UNKNOWN"))

    def test_newer_nix_wording(self) -> None:
        """Later Nix versions end the line differently; the status is still read."""
        error = build_failure(failed(
            "error: builder for '%s' failed with exit code 2;" % (DRV,),
            "       last 10 log lines:"), 600, "shell/failing", {DRV: "failing"})
        self.assertEqual(error.message, "the build of package failing in image"
                         " shell/failing failed (builder exited with status 2)")

    def test_signal(self) -> None:
        """A builder killed by a signal says so (permanent unless ``SIGKILL``)."""
        tail = ("error: builder for '%s' failed due to signal 11 (Segmentation fault)"
                % (DRV,),)
        self.assertIsNone(nix_unavailable(failed(*tail)))
        error = build_failure(failed(*tail), 600, "failing", {DRV: "failing"})
        self.assertEqual(error.message, "the build of package failing failed"
                         " (builder was killed by signal 11)")

    def test_dependency(self) -> None:
        """A dependency's builder is named by its derivation name."""
        error = build_failure(failed(
            "error: builder for '%s' failed with exit code 1" % (DEP,),
            "error: 1 dependencies of derivation '%s' failed to build" % (DRV,)),
            600, "tool", {DRV: "tool"})
        self.assertEqual(error.message, "the build of libfoo-1.0, a dependency of image"
                         " tool, failed (builder exited with status 1)")
        self.assertEqual(error.package, "libfoo-1.0")

    def test_wrong_system(self) -> None:
        """
        A derivation for a system this machine cannot build for (Nix's
        words up to 2.19, and since): a permanent failure that says what
        the operator can configure.
        """
        native = "/nix/store/d3plp0jyh2x9mjbms53q1v8sbzffsz42-native-1.0.drv"
        older = failed(
            "error: a 'aarch64-linux' with features {} is required to build '%s',"
            " but I am a 'x86_64-linux' with features {benchmark, big-parallel, kvm,"
            " nixos-test}" % (native,))
        newer = failed(
            "error: Cannot build '%s'." % (native,),
            "       Reason: required system or feature not available",
            "       Required system: 'aarch64-linux' with features {}",
            "       Current system: 'x86_64-linux' with features {benchmark, big-parallel}")
        for failure in (older, newer):
            self.assertIsNone(nix_unavailable(failure))
            error = build_failure(failure, 600, "arm64/native", {native: "native"})
            self.assertEqual(
                error.message,
                "package native in image arm64/native cannot be built for aarch64-linux:"
                " this registry builds for x86_64-linux only; the registry's operator can"
                " add a remote builder for aarch64-linux (Nix option builders), emulation"
                " (extra-platforms = aarch64-linux, with binfmt_misc) or a binary cache"
                " that has it (substituters)")
            self.assertEqual((error.package, error.status), ("native", 404))
        error = build_failure(older, 600, "arm64/hello", {})
        self.assertTrue(error.message.startswith(
            "native-1.0, a dependency of image arm64/hello, cannot be built for"
            " aarch64-linux"), error.message)

    def test_other_failure(self) -> None:
        """Without a builder line, Nix's first error, else how the process ended."""
        self.assertEqual(build_failure(failed("error: out of disk"), 600, "x", {}).message,
                         "the build of image x failed: out of disk")
        self.assertEqual(build_failure(failed(exit_code=None), 600, None, {}).message,
                         "the build of the image failed: nix-build exited with status None")

    def test_timeout_names_the_building_package(self) -> None:
        """A build timeout names the last derivation being built."""
        tail = ("building '%s'..." % (DEP,), "building '%s'..." % (DRV,))
        error = build_failure(ProcessTimedOut(BUILD, 12.5, tail), 30, "slow", {DRV: "slow"})
        assert isinstance(error, BuildTimedOut)
        self.assertEqual(error.message, "the build of package slow timed out after"
                         " 30 seconds (NIX_TIMEOUT sets the limit)")
        self.assertEqual((error.step, error.seconds, error.package, error.status),
                         ("build", 30, "slow", 404))
        dependency = build_failure(ProcessTimedOut(BUILD, 30, tail[:1]), 30, "slow",
                                   {DRV: "slow"})
        self.assertEqual(dependency.message, "the build of image slow (building"
                         " libfoo-1.0) timed out after 30 seconds (NIX_TIMEOUT sets the limit)")
        unknown = build_failure(ProcessTimedOut(BUILD, 30, ()), 30, "slow", {})
        self.assertEqual(unknown.message, "the build of image slow timed out after"
                         " 30 seconds (NIX_TIMEOUT sets the limit)")
        # Nix had not yet said which builder it started: the image's own
        # packages were being built.
        early = build_failure(ProcessTimedOut(BUILD, 30, ()), 30, "slow", {DRV: "slow"})
        assert isinstance(early, BuildTimedOut)
        self.assertEqual(early.message, "the build of package slow timed out after"
                         " 30 seconds (NIX_TIMEOUT sets the limit)")
        self.assertEqual(early.package, "slow")

    def test_closure_failure(self) -> None:
        """The closure report's failures and timeouts."""
        self.assertEqual(closure_failure(failed("error: path is not valid"), 60,
                                         "hello").message,
                         "querying the closure of image hello failed: path is not valid")
        self.assertIsInstance(closure_failure(ProcessTimedOut(BUILD, 1, ()), 60, "hello"),
                              BuildTimedOut)


class EvaluationFailureTests(SynchronousTestCase):
    """``nix-instantiate`` failures."""

    def test_unusable(self) -> None:
        """Packages that throw: each named, the first explained by Nix."""
        tail = ["error: Package 'brokenpkg-1.0' is marked as broken, refusing to evaluate."]
        one = unusable_packages(["brokenpkg"], tail, "brokenpkg")
        self.assertEqual(one.message, "package brokenpkg cannot be evaluated: Package"
                         " 'brokenpkg-1.0' is marked as broken, refusing to evaluate.")
        two = unusable_packages(["brokenpkg", "removedpkg"], tail, "shell/brokenpkg")
        self.assertEqual(two.message, "packages brokenpkg, removedpkg in image"
                         " shell/brokenpkg cannot be evaluated; brokenpkg: Package"
                         " 'brokenpkg-1.0' is marked as broken, refusing to evaluate.")
        unexplained = unusable_packages(["x"], [], "x")
        self.assertEqual(unexplained.message, "package x cannot be evaluated"
                         " (removed, broken, unfree or insecure?)")

    def test_evaluation(self) -> None:
        """The evaluation as a whole: Nix's error, or the timeout and its setting."""
        self.assertEqual(evaluation_failure(failed("error: syntax error, unexpected"),
                                            10, "hello").message,
                         "the evaluation of image hello failed: syntax error, unexpected")
        timed_out = evaluation_failure(ProcessTimedOut(BUILD, 10, ()), 10, "hello")
        self.assertEqual(timed_out.message, "the evaluation of image hello timed out after"
                         " 10 seconds (NIX_TIMEOUT sets the limit)")
        too_large = evaluation_failure(OutputTooLarge(BUILD, 64, ()), 10, "hello")
        self.assertEqual(too_large.message, "the evaluation of image hello failed:"
                         " nix-build wrote more than 64 bytes to stdout")


class UnavailableTests(SynchronousTestCase):
    """Nix that cannot work at all: transient, not the image's fault."""

    def test_daemon(self) -> None:
        """Every wording of an unreachable or lost daemon."""
        for line in ("error: cannot connect to socket at '/nix/var/nix/daemon-socket/"
                     "socket': Connection refused",
                     "error: cannot connect to daemon at '/x/socket': No such file",
                     "error: cannot open connection to remote store 'daemon': x",
                     "error: Nix daemon disconnected unexpectedly (maybe it crashed?)"):
            with self.subTest(line=line):
                error = nix_unavailable(failed("evaluating", line))
                assert error is not None
                self.assertEqual((error.status, error.code, error.retry_after),
                                 (503, "UNAVAILABLE", 10))
                self.assertEqual(error.message,
                                 "the Nix daemon is unavailable; try again later")

    def test_program_missing(self) -> None:
        """The wrapper's report of a program it cannot start, with status 127."""
        error = nix_unavailable(failed(
            "cannot run nix-build: [Errno 2] No such file or directory: 'nix-build'",
            exit_code=127))
        assert error is not None
        self.assertEqual(error.message, "Nix is unavailable on the registry"
                         " (nix-build cannot be run); try again later")

    def test_downloads(self) -> None:
        """A download failing for the network or the server is transient."""
        for line in (
                "error: unable to download 'https://github.com/NixOS/nixpkgs/archive/"
                "nixos-unstable.tar.gz': Couldn't resolve host name (6)",
                "error: unable to download 'https://user:secret@git.example/x.tar.gz':"
                " HTTP error 503",
                "curl: (7) Failed to connect to cache.example port 443: Connection refused",
                "fatal: unable to access 'https://git.example/pkgs.git/': Could not"
                " resolve host: git.example",
                "error: some substitutes for the outputs of derivation '%s' failed"
                " (usually happens due to networking issues); try '--fallback'" % (DRV,)):
            with self.subTest(line=line):
                error = nix_unavailable(failed("building", line))
                assert error is not None
                self.assertEqual((error.status, error.code, error.retry_after),
                                 (503, "UNAVAILABLE", 10))
                self.assertTrue(error.message.startswith("a download for the image failed"))
                self.assertTrue(error.message.endswith("; try again later"))
                self.assertNotIn("secret", error.message)

    def test_builder_killed(self) -> None:
        """
        A builder killed by ``SIGKILL`` (the out-of-memory killer) is
        transient, in every Nix wording, and names the derivation.
        """
        for line in ("error: builder for '%s' failed due to signal 9 (Killed)" % (DEP,),
                     "error: builder for '%s' failed due to signal 9 (Killed);" % (DEP,),
                     "builder for '%s' failed due to signal 9" % (DEP,)):
            with self.subTest(line=line):
                error = nix_unavailable(failed("building '%s'..." % (DEP,), line))
                assert error is not None
                self.assertEqual((error.status, error.code, error.retry_after),
                                 (503, "UNAVAILABLE", 10))
                self.assertEqual(error.message, "the builder of libfoo-1.0 was killed"
                                 " (signal 9: out of memory on the registry?);"
                                 " try again later")
                self.assertIn(line, error.log_tail)

    def test_nix_killed(self) -> None:
        """Nix itself killed by ``SIGKILL`` is transient; by its timeout it is not."""
        error = nix_unavailable(ProcessFailed(BUILD, None, 9, ("evaluating",)))
        assert error is not None
        self.assertEqual(error.message, "nix-build was killed (signal 9: out of memory"
                         " on the registry?); try again later")
        self.assertIsNone(nix_unavailable(ProcessFailed(BUILD, None, 15, ())))
        self.assertIsNone(nix_unavailable(ProcessTimedOut(BUILD, 30, ())))

    def test_disk_full(self) -> None:
        """A full Nix store, temporary directory or quota is transient."""
        for line in ("error: writing to file: No space left on device",
                     "error: creating directory '/build-dir/nix-build-x.drv-0': No space"
                     " left on device",
                     "cp: error writing 'out/lib/libfoo.so': No space left on device",
                     "error: writing to file: Disk quota exceeded"):
            with self.subTest(line=line):
                error = nix_unavailable(failed(
                    line, "error: builder for '%s' failed with exit code 1" % (DRV,)))
                assert error is not None
                self.assertEqual((error.status, error.code), (503, "UNAVAILABLE"))
                self.assertEqual(error.message, "the registry is out of disk space for"
                                 " Nix builds; try again later")

    def test_remote_builder_down(self) -> None:
        """
        A remote builder for the platform that cannot be used now (Nix
        2.8's output with a builder whose port refuses connections) is
        transient, whatever ssh said; never the advice to add a builder.
        """
        native = "/nix/store/d3plp0jyh2x9mjbms53q1v8sbzffsz42-native-1.0.drv"
        wrong_system = ("error: a 'aarch64-linux' with features {} is required to build"
                        " '%s', but I am a 'x86_64-linux' with features {benchmark}"
                        % (native,))
        for reason in ("ssh: connect to host 127.0.0.1 port 22: Connection refused",
                       "ssh: connect to host builder.example port 22: Connection timed out"):
            with self.subTest(reason=reason):
                error = nix_unavailable(failed(
                    "cannot build on 'ssh://nobody@127.0.0.1': error: cannot connect to"
                    " 'nobody@127.0.0.1': " + reason,
                    "Failed to find a machine for remote build!",
                    "derivation: d3plp0jyh2x9mjbms53q1v8sbzffsz42-native-1.0.drv",
                    "required (system, features): (aarch64-linux, )",
                    "1 available machines:",
                    "(systems, maxjobs, supportedFeatures, mandatoryFeatures)",
                    "(aarch64-linux, 1, , )",
                    wrong_system))
                assert error is not None
                self.assertEqual((error.status, error.code, error.retry_after),
                                 (503, "UNAVAILABLE", 10))
                self.assertEqual(
                    error.message,
                    "no remote builder for aarch64-linux could be used now (cannot build"
                    " on 'ssh://127.0.0.1': error: cannot connect to"
                    " 'nobody@127.0.0.1': %s); try again later" % (reason,))
        # No builder tried: the advice to add one stands (a permanent failure).
        self.assertIsNone(nix_unavailable(failed(wrong_system)))
        # A builder down, but another built the package and its builder failed.
        self.assertIsNone(nix_unavailable(failed(
            "cannot build on 'ssh://a.example': error: cannot connect to 'a.example'",
            "error: builder for '%s' failed with exit code 1" % (native,))))

    def test_other_failures(self) -> None:
        """A build failure, or a builder exiting 127, is not unavailability."""
        self.assertIsNone(nix_unavailable(failed(
            "error: builder for '%s' failed with exit code 127" % (DRV,))))
        self.assertIsNone(nix_unavailable(failed("cannot run x", exit_code=1)))
        self.assertIsNone(nix_unavailable(failed(
            "error: HTTP error 404 for https://git.example/x.tar.gz")))
        self.assertIsNone(nix_unavailable(failed(
            "error: attribute 'nope' missing")))
        self.assertIsNone(nix_unavailable(failed(
            "error: builder for '%s' failed with exit code 137" % (DRV,))))
        self.assertIsNone(nix_unavailable(failed(
            "error: builder for '%s' failed due to signal 15 (Terminated)" % (DRV,))))

"""
The seams of the build side: the real classes and the test doubles meet
the same Protocols, so that tests exercise what the daemon runs.

What matters here is checked by mypy: each object is assigned to a
variable typed as the Protocol.  The assertions only make the test run.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.interfaces import IReactorThreads
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.build.nix import NixRunner, default_nix_dir
from nixeryd.build.nixsteps import NixSteps
from nixeryd.build.process import ProcessReactor
from nixeryd.build.sources import (ChannelSource, GitSource, PackageSource,
                                   PathSource)
from nixeryd.core.threads import InlineRunner, Runner, ThreadPoolService
from nixeryd.testing.nix import FakeNix, FakeSource
from nixeryd.testing.runners import ManualRunner


class SeamTests(SynchronousTestCase):
    """Real and fake implementations of each seam."""

    def test_nix_steps(self) -> None:
        """The Nix runner and the fake Nix both do the Nix steps of an image."""
        steps: list[NixSteps] = [
            NixRunner(reactor, runner=InlineRunner(), nix_dir=default_nix_dir(),
                      timeout=1.0, env={}),
            FakeNix(),
        ]
        self.assertEqual(len(steps), 2)

    def test_package_sources(self) -> None:
        """Every source, and the fake one, pins tags and says whether tags choose."""
        sources: list[PackageSource] = [
            PathSource("/srv/pkgs"), ChannelSource("nixos-unstable"),
            GitSource("https://example.invalid/x.git", reactor, {}),
            FakeSource(), FakeSource("git", "0" * 40),
        ]
        self.assertEqual([source.tag_selects_revision for source in sources],
                         [False, False, True, False, True])

    def test_runners(self) -> None:
        """The thread pool, the inline runner and the manual runner are runners."""
        runners: list[Runner] = [
            ThreadPoolService(IReactorThreads(reactor), 1), InlineRunner(),
            ManualRunner()]
        self.assertEqual(len(runners), 3)

    def test_process_reactor(self) -> None:
        """The reactor can run children (spawn them and time them)."""
        spawner: ProcessReactor = reactor
        self.assertIs(spawner, reactor)

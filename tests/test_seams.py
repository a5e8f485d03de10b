"""
The seams of the build side: the real classes and the test doubles meet
the same Protocols, so that tests exercise what the daemon runs.

Checked twice: by mypy, which sees each object assigned to a variable
typed as the Protocol, and at run time, where every member the Protocol
declares must be there (so a renamed method fails here too, without
mypy).
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.interfaces import IReactorThreads
from twisted.trial.unittest import SynchronousTestCase

def protocol_members(protocol: type) -> set[str]:
    """The names a Protocol declares (methods, properties, attributes)."""
    names = {name for name in vars(protocol) if not name.startswith("_")}
    names |= {name for name in getattr(protocol, "__annotations__", {})
              if not name.startswith("_")}
    return names

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

    def assert_provide(self, protocol: type, implementations: list[object]) -> None:
        """Every implementation has every member ``protocol`` declares."""
        members = protocol_members(protocol)
        self.assertTrue(members, protocol)
        for implementation in implementations:
            for name in members:
                with self.subTest(implementation=type(implementation).__name__, name=name):
                    self.assertTrue(hasattr(implementation, name))

    def test_nix_steps(self) -> None:
        """The Nix runner and the fake Nix both do the Nix steps of an image."""
        steps: list[NixSteps] = [
            NixRunner(reactor, runner=InlineRunner(), nix_dir=default_nix_dir(),
                      timeout=1.0, env={}),
            FakeNix(),
        ]
        self.assertEqual(protocol_members(NixSteps), {"resolve", "build"})
        self.assert_provide(NixSteps, list(steps))

    def test_package_sources(self) -> None:
        """Every source, and the fake one, pins tags and says whether tags choose."""
        sources: list[PackageSource] = [
            PathSource("/srv/pkgs"), ChannelSource("nixos-unstable"),
            GitSource("https://example.invalid/x.git", reactor, {}),
            FakeSource(), FakeSource("git", "0" * 40),
        ]
        self.assertEqual([source.tag_selects_revision for source in sources],
                         [False, False, True, False, True])
        self.assert_provide(PackageSource, list(sources))

    def test_runners(self) -> None:
        """The thread pool, the inline runner and the manual runner are runners."""
        runners: list[Runner] = [
            ThreadPoolService(IReactorThreads(reactor), 1), InlineRunner(),
            ManualRunner()]
        self.assertEqual(protocol_members(Runner), {"run"})
        self.assert_provide(Runner, list(runners))

    def test_process_reactor(self) -> None:
        """The reactor can run children (spawn them and time them)."""
        spawner: ProcessReactor = reactor
        self.assert_provide(ProcessReactor, [spawner])

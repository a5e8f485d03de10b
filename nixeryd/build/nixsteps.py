"""
The seam between an image and Nix: the two steps every image needs.

The image service asks Nix to *resolve* the requested names against a
package set; the image builder asks it to *build* a resolution and report
the closure.  :class:`~nixeryd.build.nix.NixRunner` does both with real
Nix; :class:`~nixeryd.testing.nix.FakeNix` answers them in tests.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from twisted.logger import Logger

from nixeryd.build.closure import ClosureGraph
from nixeryd.build.nix import Resolution
from nixeryd.build.sources import PinnedSource


class NixSteps(Protocol):
    """What the image service and the image builder ask of Nix."""

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
        :param log: where the step's events and Nix's log lines go (events
            with ``stream="stderr"`` and ``line``); a default logger when
            ``None``.
        :raises UnknownPackages: some requested names are not packages.
        :raises BuildFailed: evaluation failed (``BuildTimedOut``: past
            the timeout).
        :raises Unavailable: Nix cannot run.
        """

    async def build(self, resolution: Resolution, *,
                    image: str | None = None,
                    gc_root: str | None = None,
                    log: Logger | None = None) -> ClosureGraph:
        """
        Realise the outputs of ``resolution`` and report their closure.

        :param image: the image name, for log events and messages.
        :param gc_root: where garbage-collector roots keep the closure
            alive until the caller removes them.
        :param log: as for :meth:`resolve`.
        :raises BuildFailed: the build failed (``BuildTimedOut``: past the
            timeout).
        :raises Unavailable: Nix cannot run.
        """

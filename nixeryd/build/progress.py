"""
What a build tells the people waiting on it, as it goes: the vocabulary
shared by the steps that do the work (the image builder, the Nix runner)
and the build records that keep it (:mod:`nixeryd.service.builds`).

The steps see only :class:`BuildProgress`: a logger for their account of
the work and for Nix's output, the phase, and each stored layer.  The
image service gives each build one that feeds its record; without one
the steps just log.
"""

from __future__ import annotations

import enum
from typing import Protocol

from attrs import frozen
from twisted.logger import Logger


class BuildPhase(enum.Enum):
    """
    Where a build is.  The running phases come in this order; a build
    ends in exactly one of the final ones.
    """

    WAITING = "waiting"        # for a free evaluation or build slot
    EVALUATING = "evaluating"  # nix-instantiate: names → derivations
    BUILDING = "building"      # nix-build and the closure report
    LAYERING = "layering"      # layers grouped, written and stored
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the build has ended."""
        return self in (BuildPhase.SUCCEEDED, BuildPhase.FAILED, BuildPhase.CANCELLED)


@frozen
class LayerSummary:
    """
    One layer of a built image.

    :ivar digest: the compressed layer's digest.
    :ivar size: its compressed size in bytes.
    :ivar description: what it holds (store path names).
    :ivar reused: whether it was already stored (the layer cache).
    """

    digest: str
    size: int
    description: str
    reused: bool


class BuildProgress(Protocol):
    """One build as the steps doing its work see it."""

    @property
    def log(self) -> Logger:
        """
        Where the steps log their account of the build and Nix's output
        (events with ``stream="stderr"`` and ``line``, as
        :func:`~nixeryd.build.process.run_process` emits them).
        """

    def enter(self, phase: BuildPhase) -> None:
        """The build moves to a running ``phase``."""

    def add_layer(self, layer: LayerSummary) -> None:
        """A layer of the image is stored (reported base first)."""

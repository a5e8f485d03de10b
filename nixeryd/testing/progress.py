"""
A stand-in for a build's record: :class:`RecordingProgress` is a
:class:`~nixeryd.build.progress.BuildProgress` that writes down what the
build's steps tell it.
"""

from __future__ import annotations

from twisted.logger import ILogObserver, LogEvent, Logger
from zope.interface import implementer

from nixeryd.build.progress import BuildPhase, LayerSummary


@implementer(ILogObserver)
class _Events:
    """Keeps every event."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)


class RecordingProgress:
    """
    Records phases, layers and log events, in order.

    :ivar phases: every phase entered.
    :ivar layers: every layer reported.
    :ivar events: every event logged through :attr:`log`.
    """

    def __init__(self) -> None:
        self.phases: list[BuildPhase] = []
        self.layers: list[LayerSummary] = []
        self._events = _Events()
        self.events = self._events.events
        self._log = Logger(namespace="nixeryd.testing.progress", observer=self._events)

    @property
    def log(self) -> Logger:
        """A logger that keeps its events in :attr:`events`."""
        return self._log

    def enter(self, phase: BuildPhase) -> None:
        """Write down the phase."""
        self.phases.append(phase)

    def add_layer(self, layer: LayerSummary) -> None:
        """Write down the layer."""
        self.layers.append(layer)

    def lines(self) -> list[str]:
        """The Nix log lines logged so far."""
        return [e["line"] for e in self.events if e.get("stream") == "stderr"]

"""
Build outcomes and phase durations, read from the build records
(:mod:`nixeryd.service.builds`): :func:`follow_builds` watches a history
for new builds and listens to each one, so the image service needs no
call of its own for them.

A phase's duration is known when the build leaves it: for the next phase
or for its end, whatever the outcome (a build that fails while building
adds its time in that phase too).  Times are the records' own (reactor
seconds), so tests drive them with a ``Clock``.
"""

from __future__ import annotations

from typing import Callable, Protocol

from nixeryd.build.progress import BuildPhase
from nixeryd.service.builds import BuildHistory, BuildRecord

#: The phases whose durations are recorded (waiting is the build limit's).
TIMED_PHASES = (BuildPhase.EVALUATING, BuildPhase.BUILDING, BuildPhase.LAYERING)


class BuildReports(Protocol):
    """Where a build's times and outcome go."""

    def build_phase(self, phase: BuildPhase, seconds: float) -> None:
        """A build spent ``seconds`` in ``phase`` (one of :data:`TIMED_PHASES`)."""

    def build_ended(self, outcome: BuildPhase) -> None:
        """A build ended: succeeded, failed or cancelled."""


class _PhaseTimer:
    """Follows one build: times each phase as it is left, reports the outcome."""

    def __init__(self, record: BuildRecord, reports: BuildReports) -> None:
        self._reports = reports
        self._phase = record.phase
        self._since = record.phase_started.get(record.phase, record.created)

    def log_line(self, record: BuildRecord, line: str) -> None:
        """Log lines say nothing about phases."""

    def changed(self, record: BuildRecord) -> None:
        """Report the phase just left, and the outcome once there is one."""
        phase = record.phase
        if phase is self._phase:
            return
        now = record.phase_started.get(phase, self._since)
        if self._phase in TIMED_PHASES:
            self._reports.build_phase(self._phase, max(0.0, now - self._since))
        self._phase, self._since = phase, now
        if phase.finished:
            self._reports.build_ended(phase)


def follow_builds(history: BuildHistory, reports: BuildReports) -> Callable[[], None]:
    """
    Report the phases and outcome of every build started in ``history``
    from now on; returns the call that stops following new builds.
    """
    def started(record: BuildRecord) -> None:
        record.subscribe(_PhaseTimer(record, reports))

    return history.watch(started)

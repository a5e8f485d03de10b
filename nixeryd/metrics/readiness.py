"""
Readiness: whether the daemon can build images now, for ``/readyz``.

:class:`Readiness` runs its checks (the start-up checks of
:mod:`nixeryd.app.preflight`, made by :mod:`nixeryd.app.wiring`: package
source, Nix, storage) in the background: once when it starts, then again
:data:`CHECK_INTERVAL` seconds after each round started (or as soon as
it ended, if it took longer), never two rounds at once.  ``/readyz``
reads the last round's result, so it costs nothing to poll every second.
A round that has not ended after :data:`ROUND_TIMEOUT` seconds is
cancelled and counts as failing (each check has a deadline of its own;
this one keeps the result from going stale whatever a check does).

A check is a call returning ``None`` when all is well, or one line
saying what is wrong; a check that raises counts as failing, its error
logged.  Until the first round has ended the daemon is not ready.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Seconds between the starts of two rounds of checks.
CHECK_INTERVAL = 15.0

#: Seconds a round may take before it is cancelled.
ROUND_TIMEOUT = 60.0

#: What ``/readyz`` says before the first round has ended.
NOT_CHECKED = "the readiness checks have not run yet"

#: A readiness check: ``None`` when all is well, else what is wrong.
Check = Callable[[], Awaitable[Optional[str]]]

_log = Logger()


class Readiness(Service):
    """
    The last result of the readiness checks, kept up to date while the
    service runs.

    :param clock: schedules the rounds.
    :param interval: seconds between the starts of two rounds.
    :param timeout: seconds a round may take.
    """

    def __init__(self, clock: IReactorTime, interval: float = CHECK_INTERVAL,
                 timeout: float = ROUND_TIMEOUT) -> None:
        self._clock = clock
        self._interval = interval
        self._timeout = timeout
        self._checks: tuple[tuple[str, Check], ...] = ()
        self._problems: tuple[str, ...] = (NOT_CHECKED,)
        self._round: Optional[Deferred[None]] = None
        self._next: Optional[IDelayedCall] = None
        #: How many rounds have ended.
        self.rounds = 0

    def use(self, checks: Sequence[tuple[str, Check]]) -> None:
        """Check with ``checks`` (each named, for the log) from the next round on."""
        self._checks = tuple(checks)

    @property
    def problems(self) -> tuple[str, ...]:
        """What the last round found wrong, one line each; empty when ready."""
        return self._problems

    @property
    def ready(self) -> bool:
        """Whether the last round found nothing wrong."""
        return not self._problems

    # -- lifecycle ----------------------------------------------------------

    def startService(self) -> None:
        """Run the first round now."""
        super().startService()  # type: ignore[no-untyped-call]
        self._start_round()

    def stopService(self) -> Optional[Deferred[None]]:
        """Stop scheduling rounds, and cancel the one running, if any."""
        super().stopService()  # type: ignore[no-untyped-call]
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        running, self._round = self._round, None
        if running is not None:
            running.cancel()
        return None

    # -- rounds -------------------------------------------------------------

    def _start_round(self) -> None:
        self._next = None
        if not self.running or self._round is not None:
            return
        started = self._clock.seconds()
        round_done = Deferred.fromCoroutine(self._check_all())
        if round_done.called:
            # Every check answered at once (no check, or checks that need
            # no I/O): nothing to time.
            round_done.addErrback(self._round_failed)
            self._round_ended(None, started, None)
            return
        self._round = round_done
        timer = self._clock.callLater(self._timeout, round_done.cancel)
        round_done.addErrback(self._round_failed)
        round_done.addBoth(self._round_ended, started, timer)

    async def _check_all(self) -> None:
        """Run every check at once; keep what they found."""
        checks = self._checks
        try:
            results = await gatherResults(
                [Deferred.fromCoroutine(self._one(name, check)) for name, check in checks],
                consumeErrors=True)
        except FirstError as e:
            # Only a cancellation gets through :meth:`_one`: raise it as it is.
            e.subFailure.raiseException()
            raise  # pragma: no cover
        self._found(tuple(problem for problem in results if problem is not None))

    def _found(self, problems: tuple[str, ...]) -> None:
        """Keep a round's result, logging when readiness changes."""
        if problems != self._problems:
            if problems:
                _log.warn("Not ready: {problems}", problems="; ".join(problems),
                          event="not-ready")
            elif self.rounds:
                _log.info("Ready again: every readiness check passes", event="ready")
        self._problems = problems

    async def _one(self, name: str, check: Check) -> Optional[str]:
        """One check's problem, if any; an error of its own is a problem too."""
        try:
            return await check()
        except CancelledError:
            raise
        except Exception:
            _log.failure("Readiness check {check} failed", check=name)
            return "%s: the check failed unexpectedly (see the log)" % (name,)

    def _round_failed(self, failure: Failure) -> None:
        """Log a round's unexpected error (a cancelled round is no error)."""
        if not failure.check(CancelledError):  # type: ignore[no-untyped-call]
            _log.failure("A round of readiness checks failed", failure)

    def _round_ended(self, _: object, started: float, timer: Optional[IDelayedCall]) -> None:
        self._round = None
        self.rounds += 1
        if timer is not None and timer.active():
            timer.cancel()
        elif timer is not None and self.running:
            self._found(("the readiness checks did not end within %g seconds"
                         % (self._timeout,),))
        if not self.running:
            return
        delay = max(0.0, started + self._interval - self._clock.seconds())
        self._next = self._clock.callLater(delay, self._start_round)

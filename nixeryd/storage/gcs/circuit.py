"""
The outage circuit: a sustained Cloud Storage outage answered at once.

While Cloud Storage fails (5xx, 408, lost or refused connections,
timeouts), each request would retry for the whole retry deadline
(:mod:`nixeryd.storage.gcs.retry`) before its pull gets a 503.  Once
failures have gone on without a single success for ``sustained``
seconds and at least ``failures`` times, the circuit *opens*: for
``open_for`` seconds every request fails at once with
:class:`CircuitOpen`, a :class:`~nixeryd.storage.gcs.http.GCSError`
that the image service answers with 503 ``UNAVAILABLE`` and a
``Retry-After`` of the time left.  Warm manifests, answered from memory,
never get here.

Then it is *half-open*: one request (the probe) goes through while the
others still fail at once.  A probe that gets any answer other than an
outage closes the circuit; a probe that fails opens it again.  A probe
that ends otherwise (cancelled by its client) lets the next request
probe; one that never ends does after ``open_for``.

Opening and closing are one log line each; what the requests that fail
at once say is left to the image service's account of storage failures
(one warning a minute for each kind).
"""

from __future__ import annotations

import math

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nixeryd.core import defaults
from nixeryd.storage.gcs.http import GCSError

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class CircuitOpen(GCSError):
    """
    Cloud Storage is taken to be down: nothing was sent.

    :ivar retry_after: whole seconds until a request is tried again.
    """

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Circuit:
    """
    The state of one storage's outage circuit, on ``clock``.

    :param failures: the fewest consecutive failures that open it.
    :param sustained: the fewest seconds from the first of them.
    :param open_for: seconds it stays open before a probe.
    :param target: what it guards, for the log.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, *,
                 failures: int = defaults.GCS_CIRCUIT_FAILURES,
                 sustained: float = defaults.GCS_CIRCUIT_SUSTAINED,
                 open_for: float = defaults.GCS_CIRCUIT_OPEN,
                 target: str = "Cloud Storage") -> None:
        self._clock = clock
        self._failures = failures
        self._sustained = sustained
        self._open_for = open_for
        self._target = target
        self.state = CLOSED
        #: Consecutive failures, and when the first of them was.
        self._streak = 0
        self._streak_started = 0.0
        #: While open: when a probe may go; while half-open: when the
        #: probe in flight is given up for another.
        self._until = 0.0
        self._probe = 0
        #: Requests failed at once since it opened.
        self.refused = 0

    def admit(self) -> int:
        """
        Let a request go: its probe number (0 when it is no probe), to be
        given back to :meth:`succeeded`, :meth:`failed` or :meth:`abandoned`.

        :raises CircuitOpen: when it may not go.
        """
        if self.state == CLOSED:
            return 0
        now = self._clock.seconds()
        if now < self._until:
            self.refused += 1
            raise CircuitOpen(
                "%s is failing; no request is sent for %.0f s" % (self._target, self._until - now),
                max(1, math.ceil(self._until - now)))
        self.state = HALF_OPEN
        self._until = now + self._open_for
        self._probe += 1
        self.log.info("Probing whether {target} answers again", target=self._target,
                      event="gcs-circuit-probe")
        return self._probe

    def check(self) -> None:
        """
        Before waiting to retry: give up at once while the circuit is open.

        :raises CircuitOpen: when it is open (no probe is due).
        """
        if self.state == OPEN and self._clock.seconds() < self._until:
            self.refused += 1
            raise CircuitOpen("%s is failing" % (self._target,), self.retry_after())

    def retry_after(self) -> int:
        """Whole seconds until the next probe (at least 1)."""
        return max(1, math.ceil(self._until - self._clock.seconds()))

    def succeeded(self, probe: int) -> None:
        """A request got an answer that is no outage."""
        self._streak = 0
        if self.state != CLOSED and (probe == self._probe or self.state == OPEN):
            self.log.info("{target} answers again; closing the circuit after {refused}"
                          " requests failed at once", target=self._target,
                          refused=self.refused, event="gcs-circuit-closed")
            self.state = CLOSED
            self.refused = 0

    def failed(self, probe: int) -> None:
        """A request failed as in an outage."""
        now = self._clock.seconds()
        if probe and probe == self._probe and self.state == HALF_OPEN:
            self.state = OPEN
            self._until = now + self._open_for
            self.log.info("{target} still fails; the circuit stays open {seconds:.0f} s",
                          target=self._target, seconds=self._open_for,
                          event="gcs-circuit-reopened")
            return
        if self._streak == 0:
            self._streak_started = now
        self._streak += 1
        if (self.state == CLOSED and self._streak >= self._failures
                and now - self._streak_started >= self._sustained):
            self.state = OPEN
            self._until = now + self._open_for
            self.log.warn("{target} has failed {count} times in a row for {seconds:.0f} s;"
                          " requests fail at once (503) for {open_for:.0f} s, then one probes",
                          target=self._target, count=self._streak,
                          seconds=now - self._streak_started, open_for=self._open_for,
                          event="gcs-circuit-open")

    def abandoned(self, probe: int) -> None:
        """A request ended without an outcome (cancelled): another may probe."""
        if probe and probe == self._probe and self.state == HALF_OPEN:
            self.state = OPEN
            self._until = self._clock.seconds()

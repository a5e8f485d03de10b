"""
``nixeryd`` with a reactor stall probe, for the benchmarks.

Run as ``python bench/stallprobe.py OUTPUT serve [options]``: the same
command line as ``python -m nixeryd serve [options]``, with a looping call
on the reactor every :data:`INTERVAL` seconds.  Each time a call comes
more than :data:`REPORTED` seconds late (the reactor thread was busy, or
blocked, for that long), one line ``<monotonic time> <lateness> <cpu>
<queued>`` is appended to OUTPUT: ``cpu`` is the CPU time the reactor
thread used since the previous call (near the lateness when the reactor
was working), ``queued`` the time it waited, runnable, for a core
(``/proc/thread-self/schedstat``; near the lateness when the machine had
no core free).  What is left waited for the GIL or in a system call.
On its first call and every :data:`SAMPLE_TICKS` calls it also appends
``cpu <monotonic time> <thread CPU time>``, from which the benchmark reads
how much CPU the reactor thread used in a window (the probe's own calls
included).  ``time.monotonic`` is the system's monotonic clock, so the
benchmark reads the stalls of a time window it measured itself.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Seconds between the probe's calls.
INTERVAL = 0.005

#: Lateness worth a line, in seconds.
REPORTED = 0.005

#: Calls between two samples of the reactor thread's CPU time.
SAMPLE_TICKS = 20


class StallProbe:
    """Appends the lateness of each late call to ``output``."""

    def __init__(self, output: TextIO) -> None:
        self._output = output
        self._last: float | None = None
        self._last_cpu = 0.0
        self._last_queued = 0.0
        self._ticks = 0
        self._schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)

    def _queued(self) -> float:
        """Seconds this thread has waited on a run queue, in all."""
        return int(os.pread(self._schedstat, 200, 0).split()[1]) / 1e9

    def tick(self) -> None:
        """One call of the looping call."""
        now = time.monotonic()
        cpu = time.thread_time()
        queued = self._queued()
        if self._last is not None:
            late = now - self._last - INTERVAL
            if late > REPORTED:
                self._output.write("%.6f %.6f %.6f %.6f\n" % (
                    now, late, cpu - self._last_cpu, queued - self._last_queued))
        # The first call writes a sample too, so a request made as soon as
        # the daemon answers has one before it.
        if self._ticks % SAMPLE_TICKS == 0:
            self._output.write("cpu %.6f %.6f\n" % (now, cpu))
        self._ticks += 1
        self._last = now
        self._last_cpu = cpu
        self._last_queued = queued


def read_stalls(path: str, start: float, end: float
                ) -> list[tuple[float, float, float]]:
    """
    The stalls OUTPUT holds between ``start`` and ``end``: (lateness,
    reactor thread CPU seconds, seconds queued for a core) triples.
    """
    stalls = []
    with open(path) as lines:
        for line in lines:
            if line.startswith("cpu "):
                continue
            when, late, cpu, queued = map(float, line.split())
            # A call at ``when`` that was ``late`` late covers the stall
            # from ``when - late`` on.
            if when - late <= end and when >= start:
                stalls.append((late, cpu, queued))
    return stalls


def read_reactor_cpu(path: str, start: float, end: float) -> float:
    """
    CPU seconds the reactor thread used from the last sample at or before
    ``start`` to the first at or after ``end`` (a window up to two sample
    periods wider than asked).
    """
    before = after = None
    with open(path) as lines:
        for line in lines:
            if not line.startswith("cpu "):
                continue
            when, cpu = map(float, line.split()[1:])
            if when <= start:
                before = cpu
            elif when >= end and after is None:
                after = cpu
    if before is None or after is None:
        return float("nan")
    return after - before


def main() -> int:
    """Install the probe, then run the nixeryd command line."""
    from twisted.internet import reactor, task

    from nixeryd.__main__ import main as nixeryd_main

    output = open(sys.argv[1], "a", buffering=1)
    probe = StallProbe(output)
    loop = task.LoopingCall(probe.tick)
    reactor.callWhenRunning(loop.start, INTERVAL, now=True)
    return nixeryd_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())

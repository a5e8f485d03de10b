"""
``nixeryd`` with a reactor stall probe, for the benchmarks.

Run as ``python bench/stallprobe.py OUTPUT serve [options]``: the same
command line as ``python -m nixeryd serve [options]``, with a looping call
on the reactor every :data:`INTERVAL` seconds.  Each time a call comes
more than :data:`REPORTED` seconds late (the reactor thread was busy, or
blocked, for that long), one line ``<monotonic time> <lateness> <cpu>``
is appended to OUTPUT, ``cpu`` being the CPU time the reactor thread used
since the previous call: near the lateness when the reactor was working,
near zero when it waited (for the GIL, or for a core on a busy machine).  ``time.monotonic`` is the system's monotonic clock,
so the benchmark reads the stalls of a time window it measured itself.
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


class StallProbe:
    """Appends the lateness of each late call to ``output``."""

    def __init__(self, output: TextIO) -> None:
        self._output = output
        self._last: float | None = None
        self._last_cpu = 0.0

    def tick(self) -> None:
        """One call of the looping call."""
        now = time.monotonic()
        cpu = time.thread_time()
        if self._last is not None:
            late = now - self._last - INTERVAL
            if late > REPORTED:
                self._output.write("%.6f %.6f %.6f\n" % (now, late, cpu - self._last_cpu))
        self._last = now
        self._last_cpu = cpu


def read_stalls(path: str, start: float, end: float) -> list[tuple[float, float]]:
    """
    The stalls OUTPUT holds between ``start`` and ``end``: (lateness,
    reactor thread CPU seconds) pairs.
    """
    stalls = []
    with open(path) as lines:
        for line in lines:
            when, late, cpu = map(float, line.split())
            # A call at ``when`` that was ``late`` late covers the stall
            # from ``when - late`` on.
            if when - late <= end and when >= start:
                stalls.append((late, cpu))
    return stalls


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

"""
Whether a real process is still there, for tests that kill process trees.

A killed child is reaped by the reactor, which the tests wait for with
:meth:`~nixeryd.build.process.ChildProcess.when_ended`; but its own
children (a grandchild that left our pipes, a Nix builder) are reparented
to init and nothing signals their end, so :func:`wait_until_gone` polls
``/proc`` for them, briefly and within a bound.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import deferLater

#: How often :func:`wait_until_gone` looks, in seconds.
POLL_INTERVAL = 0.05


def is_alive(pid: int) -> bool:
    """Whether ``pid`` names a process that is neither gone nor a zombie."""
    try:
        with open("/proc/%d/stat" % (pid,)) as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


async def wait_until_gone(pid: int, seconds: float = 5.0) -> bool:
    """Poll until ``pid`` is gone; whether it went within ``seconds``."""
    for _ in range(int(seconds / POLL_INTERVAL)):
        if not is_alive(pid):
            return True
        await deferLater(reactor, POLL_INTERVAL, lambda: None)
    return not is_alive(pid)

"""
Gates: Deferreds a test fires to let held work go on.  :func:`follow`
lets any number of callers wait on one gate.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def follow(gate: Deferred[Any]) -> Deferred[None]:
    """
    A new Deferred that fires when ``gate`` does (with ``None``, or with
    the gate's failure), leaving the gate's own result untouched so that
    any number of callers can wait on one gate.
    """
    follower: Deferred[None] = Deferred()

    def fire(result: Any) -> Any:
        if isinstance(result, Failure):
            follower.errback(result)
        else:
            follower.callback(None)
        return result

    gate.addBoth(fire)
    return follower

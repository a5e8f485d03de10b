"""
:class:`Monitoring`: one daemon's metrics and readiness, made together
by the wiring (:mod:`nixeryd.app.wiring`) and shown by the site
(``/metrics``, ``/healthz``, ``/readyz``).
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from nixeryd.metrics.daemon import DaemonMetrics
from nixeryd.metrics.readiness import CHECK_INTERVAL, Readiness


@frozen
class Monitoring:
    """
    What the daemon tells its operators.

    :ivar metrics: every metric, in the daemon's own registry.
    :ivar readiness: the background readiness checks (a service; the
        wiring gives it its checks and starts it with the tree).
    """

    metrics: DaemonMetrics
    readiness: Readiness


def make_monitoring(clock: IReactorTime, interval: float = CHECK_INTERVAL) -> Monitoring:
    """New metrics, and readiness checked every ``interval`` seconds."""
    return Monitoring(DaemonMetrics(), Readiness(clock, interval))

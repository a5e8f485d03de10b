"""
What the daemon tells its operators: Prometheus metrics (``/metrics``)
and health (``/healthz``, ``/readyz``).

- :mod:`~nixeryd.metrics.hooks`: the calls the image service and the
  builder make as work happens (no Prometheus import: they stay cheap and
  optional);
- :mod:`~nixeryd.metrics.daemon`: every metric of one daemon, in a
  registry of its own;
- :mod:`~nixeryd.metrics.routes`: request paths as a small fixed set of
  route labels (pure);
- :mod:`~nixeryd.metrics.buildtimes`: build outcomes and phase durations,
  from the build records;
- :mod:`~nixeryd.metrics.readiness`: the start-up checks, again in the
  background, for ``/readyz``;
- :mod:`~nixeryd.metrics.resources`: the three resources;
- :mod:`~nixeryd.metrics.monitoring`: one daemon's metrics and readiness,
  made together (the wiring gives the readiness its checks:
  :mod:`nixeryd.app.readychecks`).
"""

"""
The pages people read outside ``/v2``: how to pull from this host and the
builds it runs (``/``), and each build's page with its live Nix log
(``/builds/<id>``, with ``/events`` and ``/log``).

- :mod:`~nixeryd.registry.pages.resources`: the resources and their routes.
- :mod:`~nixeryd.registry.pages.index`, :mod:`~nixeryd.registry.pages.buildpage`:
  the pages' HTML, from build records (pure).
- :mod:`~nixeryd.registry.pages.events`: a build's changes as server-sent
  events.
- :mod:`~nixeryd.registry.pages.html`: escaping, the frame and security
  headers of every page; :mod:`~nixeryd.registry.pages.assets`: the one
  inline style and script, and the policy that allows only them;
  :mod:`~nixeryd.registry.pages.formats`: sizes, durations and moments.
"""

"""
The HTTP side: the read-only ``/v2`` registry API on Twisted Web.

A request's way through, module by module:

- :mod:`~nixeryd.registry.site`: the ``Site`` (``make_site``), its channels
  (:mod:`~nixeryd.registry.tlsguard` refuses TLS on the plain port,
  :mod:`~nixeryd.registry.deadlines` bounds every wait of a connection),
  the connections it admits (:mod:`~nixeryd.registry.connections`), the
  access log and the root resource.
- :mod:`~nixeryd.registry.api`: the ``/v2`` resource; routes each request
  (paths parsed by :mod:`~nixeryd.registry.routes`) to its handler.
- :mod:`~nixeryd.registry.rendering`: runs coroutine handlers, cancelled
  when their client goes away.
- :mod:`~nixeryd.registry.imagesource`: what the handlers ask of the image
  service.
- :mod:`~nixeryd.registry.negotiate` (manifest format),
  :mod:`~nixeryd.registry.pagination` (tag lists),
  :mod:`~nixeryd.registry.blobs` (blob responses, with
  :mod:`~nixeryd.registry.ranges`), whose bodies are sent by
  :mod:`~nixeryd.registry.sendfile` or :mod:`~nixeryd.registry.streaming`.
- :mod:`~nixeryd.registry.responses`: finishing a response, and every
  registry JSON error; :mod:`~nixeryd.registry.httpnames` holds the header
  names and values they share.
- :mod:`~nixeryd.registry.pages`: the pages outside ``/v2``: how to pull, and
  each build's page with its live log.
"""

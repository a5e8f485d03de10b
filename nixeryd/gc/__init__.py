"""
Garbage collection of a storage: ``nixeryd gc``.

- :mod:`~nixeryd.gc.collector`: one pass over a storage, deciding which
  images are kept and removing the rest and every blob nothing references;
- :mod:`~nixeryd.gc.references`: what a manifest or an image index names
  (pure);
- :mod:`~nixeryd.gc.report`: what a pass removed (or would remove), by
  kind, and its text.

The command itself is :mod:`nixeryd.app.gccmd`.
"""

"""
Test doubles shipped with the package, one module per seam: ``storage``
(in-memory ``IStorage``), ``nix`` (Nix steps, package sources, fake store
paths), ``runners`` (blocking work run when the test says), ``images``
(the image service as the HTTP side sees it, and a real sample image) and
``network`` (loopback servers and raw clients).
"""

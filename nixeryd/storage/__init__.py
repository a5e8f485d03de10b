"""
Where blobs and small cache documents are kept.

Every backend stores content-addressed blobs (layers, configs, manifests)
and small JSON documents (the manifest and layer caches), and makes
nothing visible before it is complete.  :mod:`nixeryd.storage.filesystem`
is the embedded default.
"""

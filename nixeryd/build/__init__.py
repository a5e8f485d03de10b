"""
From an image name to stored blobs: names become packages (``names``),
the package source is pinned (``sources``), Nix is spawned (``process``,
``nix``), the closure is grouped into layers (``layers``), layers are
written (``archive``, ``tarstream``, ``forest``) and the config and
manifests made (``manifest``); ``builder`` runs those steps for one image.
"""

"""
Media types of the documents and blobs this registry serves.

Docker schema 2 and OCI image-spec types, side by side, so every module
names them the same way.
"""

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
#: The documents naming one manifest per platform.
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
#: Everything served from ``/v2/<name>/manifests/``.
SERVED_TYPES = MANIFEST_TYPES + INDEX_TYPES

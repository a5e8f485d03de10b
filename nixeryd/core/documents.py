"""
Small value types passed between the image service and the web layer.

They hold what a response needs (bytes, digest, media type, or where a blob
lives) and nothing about how it was produced.
"""

from __future__ import annotations

from attrs import frozen


@frozen
class ManifestDocument:
    """
    A manifest exactly as it is served.

    :ivar media_type: the manifest's own ``mediaType`` (the response's
        ``Content-Type``).
    :ivar body: the canonical JSON bytes; the digest is taken over these.
    :ivar digest: ``sha256:<hex>`` of ``body``.
    """

    media_type: str
    body: bytes
    digest: str


@frozen
class ImageIndex:
    """
    The image of every platform of one reference, in both formats.

    :ivar docker: the Docker manifest list, naming the Docker manifests.
    :ivar oci: the OCI image index, naming the OCI manifests.
    :ivar images: the image of each platform, in the index's order.
    """

    docker: ManifestDocument
    oci: ManifestDocument
    images: tuple["Image", ...]


@frozen
class Image:
    """
    One built image in both manifest formats, made from the same layers.

    :ivar docker: the Docker schema 2 manifest.
    :ivar oci: the OCI image manifest.
    :ivar index: when the reference names several platforms, their index;
        ``docker`` and ``oci`` are then the default platform's image, for
        clients that accept no index.
    """

    docker: ManifestDocument
    oci: ManifestDocument
    index: ImageIndex | None = None

    def documents(self) -> tuple[ManifestDocument, ...]:
        """Every document served for this image: manifests, then any index."""
        if self.index is None:
            return (self.docker, self.oci)
        own = (self.index.docker, self.index.oci)
        return own + tuple(document for image in self.index.images
                           for document in (image.docker, image.oci))

    def docker_digests(self) -> set[str]:
        """The Docker manifest digests of the image of each platform."""
        if self.index is None:
            return {self.docker.digest}
        return {image.docker.digest for image in self.index.images}


@frozen
class LocalBlob:
    """
    A blob stored as a complete file on local disk.

    :ivar path: the file; it is never modified once visible.
    :ivar size: its length in bytes.
    :ivar digest: ``sha256:<hex>`` of its content.
    """

    path: str
    size: int
    digest: str


@frozen
class RedirectBlob:
    """
    A blob served by redirecting the client elsewhere (e.g. a signed URL).

    :ivar url: where the client should fetch the blob (with GET).
    :ivar digest: ``sha256:<hex>`` of its content.
    :ivar size: its length in bytes, which a HEAD request is answered with
        (the URL is signed for GET only).
    """

    url: str
    digest: str
    size: int

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
class Image:
    """
    One built image in both manifest formats, made from the same layers.

    :ivar docker: the Docker schema 2 manifest.
    :ivar oci: the OCI image manifest.
    """

    docker: ManifestDocument
    oci: ManifestDocument


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

    :ivar url: where the client should fetch the blob.
    :ivar digest: ``sha256:<hex>`` of its content.
    """

    url: str
    digest: str

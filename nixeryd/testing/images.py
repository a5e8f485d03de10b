"""
Stand-ins for the image service: :class:`FakeImageService` answers the
registry's calls (it is a :class:`nixeryd.registry.imagesource.ImageSource`)
from dictionaries, records them and can hold them until the test releases
them (:class:`HeldCall`); :func:`write_sample_image` writes a small but
real image that clients such as skopeo can pull.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from typing import Mapping

from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred

from nixeryd.build.manifest import (
    LayerDescriptor,
    RuntimeSettings,
    build_documents,
    sha256_digest,
)
from nixeryd.core.documents import Image, LocalBlob, ManifestDocument, RedirectBlob
from nixeryd.core.errors import BlobUnknown, ManifestUnknown


def manifest_document(media_type: str, body: bytes) -> ManifestDocument:
    """A manifest document whose digest is computed from ``body``."""
    return ManifestDocument(media_type=media_type, body=body,
                            digest=sha256_digest(body))


@frozen
class SampleImage:
    """
    An image written by :func:`write_sample_image`.

    :ivar image: both manifests.
    :ivar layer: the layer blob (a gzip-compressed tar).
    :ivar config: the image configuration blob.
    """

    image: Image
    layer: LocalBlob
    config: LocalBlob

    @property
    def blobs(self) -> tuple[LocalBlob, LocalBlob]:
        """The layer and the config."""
        return (self.layer, self.config)


def _write_blob(directory: str, data: bytes) -> LocalBlob:
    digest = sha256_digest(data)
    path = os.path.join(directory, digest.split(":", 1)[1])
    with open(path, "wb") as out:
        out.write(data)
    return LocalBlob(path=path, size=len(data), digest=digest)


def _layer_tar(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            info.mtime = 1
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_sample_image(directory: str, files: Mapping[str, bytes]) -> SampleImage:
    """
    Write a one-layer amd64 image holding ``files`` as blobs under
    ``directory``.

    The blobs are named by their hex digest.  The config and both
    manifests are made by :func:`nixeryd.build.manifest.build_documents`,
    as the builder makes them.
    """
    tar = _layer_tar(files)
    layer = _write_blob(directory, gzip.compress(tar, mtime=0))
    documents = build_documents(
        "amd64",
        [LayerDescriptor(digest=layer.digest, diff_id=sha256_digest(tar), size=layer.size)],
        RuntimeSettings(env=()))
    config = _write_blob(directory, documents.config)
    return SampleImage(image=documents.image, layer=layer, config=config)


@define
class HeldCall:
    """
    A call to :class:`FakeImageService` waiting for the test to release it.

    :ivar method: the name of the method called.
    :ivar arguments: its arguments.
    :ivar cancelled: whether the caller cancelled its wait.
    :ivar cancellation: fires when the caller cancels its wait.
    """

    method: str
    arguments: tuple[str, ...]
    cancelled: bool = False
    deferred: Deferred[None] = field(init=False)
    cancellation: Deferred[None] = field(init=False, factory=Deferred)

    def __attrs_post_init__(self) -> None:
        self.deferred = Deferred(self._cancel)

    def _cancel(self, deferred: Deferred[None]) -> None:
        self.cancelled = True
        self.cancellation.callback(None)

    def release(self) -> None:
        """Let the call continue (unless its caller has cancelled it)."""
        if not self.deferred.called:
            self.deferred.callback(None)


class FakeImageService(Service):
    """
    An in-memory image service with the interface of
    :class:`nixeryd.service.images.ImageService`, as far as the registry
    uses it (:class:`~nixeryd.registry.imagesource.ImageSource`).

    :ivar images: ``(name, tag)`` to image.
    :ivar manifests: digest to manifest (filled by :meth:`add_image`).
    :ivar blobs: digest to blob.
    :ivar tag_lists: name to tags; names not listed have none.
    :ivar failures: method name to an exception that every call of that
        method raises (after being released, when calls are held).
    :ivar calls: ``(method, *arguments)`` of every call, in order.
    :ivar clients: the client address given to every ``image`` call, in order.
    :ivar hold: when true, every call waits as a :class:`HeldCall` in
        :attr:`held` until the test releases it.
    :ivar warm: ``(name, tag)`` pairs that :meth:`cached_image` answers
        at once, as the real service does for images in memory.
    """

    def __init__(self) -> None:
        self.images: dict[tuple[str, str], Image] = {}
        self.manifests: dict[str, ManifestDocument] = {}
        self.blobs: dict[str, LocalBlob | RedirectBlob] = {}
        self.tag_lists: dict[str, list[str]] = {}
        self.failures: dict[str, BaseException] = {}
        self.calls: list[tuple[str, ...]] = []
        self.clients: list[str | None] = []
        #: Whether each ``cached_image`` and ``image`` call's client takes
        #: an image index.
        self.index_wanted: list[bool] = []
        self.hold = False
        self.held: list[HeldCall] = []
        self.warm: set[tuple[str, str]] = set()
        self._held_waiters: list[tuple[int, Deferred[None]]] = []

    def add_image(self, name: str, tag: str, image: Image) -> None:
        """
        Serve ``image`` for ``name:tag`` and every document of it (both
        manifests, and its index's) by digest.
        """
        self.images[(name, tag)] = image
        for document in image.documents():
            self.manifests[document.digest] = document

    def add_sample_image(self, name: str, tag: str, sample: SampleImage) -> None:
        """Serve a :class:`SampleImage`: its manifests and its blobs."""
        self.add_image(name, tag, sample.image)
        for blob in sample.blobs:
            self.blobs[blob.digest] = blob

    def wait_for_held(self, count: int) -> Deferred[None]:
        """A Deferred that fires once :attr:`held` holds ``count`` calls."""
        waiter: Deferred[None] = Deferred()
        self._held_waiters.append((count, waiter))
        self._notify_held()
        return waiter

    def _notify_held(self) -> None:
        waiting = self._held_waiters
        self._held_waiters = [(count, waiter) for count, waiter in waiting
                              if count > len(self.held)]
        for count, waiter in waiting:
            if count <= len(self.held):
                waiter.callback(None)

    async def _enter(self, method: str, *arguments: str) -> None:
        self.calls.append((method,) + arguments)
        if self.hold:
            call = HeldCall(method, arguments)
            self.held.append(call)
            self._notify_held()
            await call.deferred
        failure = self.failures.get(method)
        if failure is not None:
            raise failure

    def cached_image(self, name: str, tag: str, *, index: bool = True) -> Image | None:
        """
        The image for ``name:tag`` if it is in :attr:`warm`, else ``None``;
        whether the client takes an index goes to :attr:`index_wanted`.
        """
        self.index_wanted.append(index)
        if (name, tag) in self.warm:
            return self.images.get((name, tag))
        return None

    async def image(self, name: str, tag: str, *, client: str | None = None,
                    index: bool = True) -> Image:
        """
        The image added for ``name:tag``, else ``MANIFEST_UNKNOWN``; the
        client's address goes to :attr:`clients`, whether it takes an
        index to :attr:`index_wanted`.
        """
        self.clients.append(client)
        self.index_wanted.append(index)
        await self._enter("image", name, tag)
        try:
            return self.images[(name, tag)]
        except KeyError:
            raise ManifestUnknown("manifest unknown", {"name": name, "tag": tag}) from None

    async def manifest(self, digest: str) -> ManifestDocument:
        """A manifest of an added image, else ``MANIFEST_UNKNOWN``."""
        await self._enter("manifest", digest)
        try:
            return self.manifests[digest]
        except KeyError:
            raise ManifestUnknown("manifest unknown", {"digest": digest}) from None

    async def blob(self, digest: str) -> LocalBlob | RedirectBlob:
        """An added blob, else ``BLOB_UNKNOWN``."""
        await self._enter("blob", digest)
        try:
            return self.blobs[digest]
        except KeyError:
            raise BlobUnknown("blob unknown to registry", {"digest": digest}) from None

    async def tags(self, name: str) -> list[str]:
        """The tags listed for ``name`` (none if not listed)."""
        await self._enter("tags", name)
        return list(self.tag_lists.get(name, ()))

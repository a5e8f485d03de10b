"""
What the registry needs from the image service: :class:`ImageSource`.

The HTTP side depends on this protocol only, never on
:class:`nixeryd.service.images.ImageService` itself, so the resources can
be tested over :class:`nixeryd.testing.images.FakeImageService`.
"""

from __future__ import annotations

from typing import Protocol

from nixeryd.core.documents import Image, LocalBlob, ManifestDocument, RedirectBlob


class ImageSource(Protocol):
    """
    Images, manifests, blobs and tags, as the ``/v2`` API serves them.

    :class:`nixeryd.service.images.ImageService` provides it; so does the
    fake in :mod:`nixeryd.testing.images`.  Every call returns a fresh
    awaitable for its caller, so cancelling one caller's wait affects no
    one else.  Failures are :class:`~nixeryd.core.errors.RegistryError`
    subclasses, answered to the client as they are.
    """

    def cached_image(self, name: str, tag: str, *, index: bool = True) -> Image | None:
        """
        The image named ``name`` at ``tag`` if it can be answered at once
        from memory, else ``None``; never raises for a valid route.

        :param index: as for :meth:`image`.
        """

    async def image(self, name: str, tag: str, *, client: str | None = None,
                    index: bool = True) -> Image:
        """
        The image named ``name`` at ``tag``, built if needed.

        :param client: the address of the client asking, which the image
            service counts new cold work against (its share of the queue);
            ``None`` when unknown.
        :param index: whether the client takes an image index; when not,
            a name served for several platforms may be answered with the
            default platform's image alone, without the others.
        :raises TooManyRequests: cold work the queue has no room for.
        """

    async def manifest(self, digest: str) -> ManifestDocument:
        """A manifest served before, by digest."""

    async def blob(self, digest: str) -> LocalBlob | RedirectBlob:
        """Where to find the blob with this digest."""

    async def tags(self, name: str) -> list[str]:
        """The tags an image name can be pulled with."""

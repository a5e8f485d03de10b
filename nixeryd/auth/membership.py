"""
Content by digest under a name only when an image of that name refers to
it: :class:`NameContents`.

Manifests and blobs are stored once, by digest, whatever image names
them, and the API's paths carry a name only because the protocol says
so.  With access decided per name, a user allowed one name could
otherwise fetch a denied image's layers through it.  So, when
authentication is on, ``/v2/<name>/manifests/<digest>`` and
``/v2/<name>/blobs/<digest>`` are answered only when the digest is one of
an image of ``<name>``: one of its manifests, its config or a layer.

What each name refers to is kept in memory, learnt from the images of
the name the image service answers.  A digest not (yet) known for a name
is looked up by resolving the name at the tags the image service knows
for it (``latest``, and every tag served since the daemon started): from
memory when warm, else from the manifest cache or a build, as a pull by
tag would.  So a client that pulls by tag and then fetches blobs costs
nothing more, and a pull by digest after a restart still works for the
digests of the name's known tags.

For a user the rules allow a name only at pinned revisions, only the
images of its pinned tags count: the content of ``latest`` is not theirs
by digest when ``latest`` is not theirs by tag.
"""

from __future__ import annotations

import json

from nixeryd.auth.rules import is_pinned
from nixeryd.core.documents import Image, ManifestDocument
from nixeryd.core.errors import BlobUnknown, ManifestUnknown
from nixeryd.registry.imagesource import ImageSource
from nixeryd.service.lru import LRU

#: Names whose digests are kept.
MEMORY_NAMES = 10_000
#: Digests kept per name (an image has a few dozen; tags add more).
DIGESTS_PER_NAME = 4_096


def _named_by(document: ManifestDocument) -> list[str]:
    """The digests a manifest names: config, layers, or an index's manifests."""
    try:
        parsed = json.loads(document.body)
    except ValueError:
        return []
    if not isinstance(parsed, dict):
        return []
    descriptors: list[object] = []
    config = parsed.get("config")
    if config is not None:
        descriptors.append(config)
    for key in ("layers", "manifests"):
        listed = parsed.get(key)
        if isinstance(listed, list):
            descriptors.extend(listed)
    return [str(d["digest"]) for d in descriptors
            if isinstance(d, dict) and isinstance(d.get("digest"), str)]


class NameContents:
    """
    The digests each image name refers to, over ``images``.
    """

    def __init__(self, images: ImageSource) -> None:
        self._images = images
        #: name → digest → whether an image of a pinned tag refers to it.
        self._names: LRU[str, dict[str, bool]] = LRU(MEMORY_NAMES)

    def _digests(self, name: str) -> dict[str, bool]:
        digests = self._names.get_recent(name)
        if digests is None:
            digests = {}
            self._names.put(name, digests)
        return digests

    def _learn(self, name: str, tag: str, image: Image) -> None:
        """
        Note under ``name`` every digest ``image`` (of ``tag``) refers to:
        its manifests (an index's, and each platform's), configs and layers.
        """
        digests = self._digests(name)
        pinned = is_pinned(tag)
        for document in image.documents():
            for digest in (document.digest, *_named_by(document)):
                if digest not in digests and len(digests) >= DIGESTS_PER_NAME:
                    return
                digests[digest] = digests.get(digest, False) or pinned

    def knows(self, name: str, digest: str, *, pinned_only: bool = False) -> bool:
        """
        Whether ``digest`` is known to belong to ``name`` (memory only); with
        ``pinned_only``, to an image of one of its pinned tags.
        """
        digests = self._names.get_recent(name)
        if digests is None or digest not in digests:
            return False
        return digests[digest] or not pinned_only

    async def check(self, name: str, digest: str, *, blob: bool,
                    client: str | None, pinned_only: bool = False) -> None:
        """
        Nothing when an image of ``name`` refers to ``digest``.

        :param blob: whether a blob (else a manifest) is asked for, which
            decides the error.
        :param client: who asks, for the image service's admission of
            cold work the lookup may start.
        :param pinned_only: only the images of pinned tags count (the
            rules allow the asker no other tag of the name).
        :raises BlobUnknown: or :class:`ManifestUnknown`, when no image of
            the name refers to it; failures of the lookup (429, 503) as
            they are.
        """
        if self.knows(name, digest, pinned_only=pinned_only):
            return
        for tag in await self._images.tags(name):
            if pinned_only and not is_pinned(tag):
                continue
            image = self._images.cached_image(name, tag)
            if image is None:
                try:
                    image = await self._images.image(name, tag, client=client)
                except ManifestUnknown:
                    continue
            self._learn(name, tag, image)
            if self.knows(name, digest, pinned_only=pinned_only):
                return
        if blob:
            raise BlobUnknown("blob unknown to repository %s" % (name,),
                              {"digest": digest, "name": name})
        raise ManifestUnknown("manifest unknown to repository %s" % (name,),
                              {"digest": digest, "name": name})

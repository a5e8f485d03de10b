"""
Grouping an image's closure into layers that related images share.

A layer is worth something only if other images carry the very same
layer: same paths, same bytes, same digest.  So which paths share a layer
must not depend on the rest of the closure.  If it did (as it does when
layers follow a dominator tree, or fold the least popular groups of *this*
closure together), adding one package to an image would move paths
between groups and change layers that hold nothing new; a client would
download them again and the storage would keep them twice.

The rule here decides each path's layer from properties of the path
itself: its size, its popularity when popularity data is given, and a hash
of its store path.  Nothing about other paths enters, except through one
coarse choice (``L``, below) made for the whole closure:

1. **One path, one layer.**  When the closure has at most ``budget``
   paths, every path is a layer of its own.  Adding, removing or swapping
   a package then adds or drops exactly the layers of the paths that came
   or went; every other layer stays byte-identical.
2. **Past the budget, light paths share hash buckets.**  A closure with
   more paths than ``budget`` needs some paths to share layers.  Each
   path has a weight, its NAR size times its popularity (1 without data;
   certificates and the IANA tables are pinned very high), and a weight
   class: how many steps of a fixed ladder (4 KiB, 16 KiB, 64 KiB, … ×4
   … up to 64 GiB) its weight reaches.  For the smallest ``L`` that fits
   the budget, the paths of the ``L`` lightest classes are *light*: each
   goes to the bucket ``(class, top 3 bits of a hash of its store path)``,
   and a bucket is a layer.  Every other path, and every path of a
   requested package (an image root), keeps a layer of its own.  Each
   class has at most 8 buckets, so ``L`` grows until
   ``own layers + non-empty buckets <= budget``; if even sharing every
   class does not fit (a budget under about a hundred, or more requested
   packages than the budget), all paths go into the largest power of two
   of buckets that fits, by hash alone.  The result never exceeds
   ``budget`` layers, whatever the closure.

   Only light paths ever share, so a changed bucket costs little to send
   again, and a heavy path never moves.  A light path's bucket depends on
   its own class and hash and on nothing else, so a package that adds a
   light path changes the one bucket it lands in and no other; the heavy
   paths it adds, and its own top-level path, are new layers of their
   own.  Removing a package drops its layers and changes only the buckets
   that held its light paths.  ``L`` moves only when the closure grows or
   shrinks past what the budget holds at the current ``L``; then the
   paths of the class that starts or stops sharing move, and no other.

Grouping by dependency structure (folding a library into the only
package that refers to it) is deliberately not used: who refers to a path
is a property of the closure, not of the path, and that is what made
layers change when a package was added.  References are still checked, so
an inconsistent closure is refused.

Every ordering is total and the inputs' order is never used, so the same
closure always gives the same layers in the same order, whatever order
the input arrived in; that keeps layer digests, and image digests, stable
across restarts and replicas.

Nothing here performs I/O; it is plain CPU work (one pass over the
closure), meant to run in a thread pool for large closures.
"""

from __future__ import annotations

import bisect
import hashlib
from typing import Collection, Mapping

from attrs import frozen

from nixeryd.build.closure import ClosureGraph, store_path_name
from nixeryd.core import defaults

#: Version of the grouping rule: raise it whenever the same closure, budget
#: and popularity data would be grouped differently, so that manifests
#: cached for a closure (whose layers follow the old rule) are not reused.
LAYERING_VERSION = 2

#: Popularity given to paths that nearly every image carries, whatever the
#: popularity data says, so they always keep layers of their own.
PINNED_POPULARITY = 500000

#: Name prefixes of the paths given :data:`PINNED_POPULARITY`.
PINNED_NAME_PREFIXES = ("nss-cacert", "iana-etc")

#: Popularity of a path the popularity data does not mention.
DEFAULT_POPULARITY = 1

#: The steps of the weight ladder (NAR bytes times popularity): a path's
#: weight class is the number of steps at or below its weight.  Past the
#: budget, classes share layers from the lightest up, as few as fit.
WEIGHT_STEPS: tuple[int, ...] = tuple(4096 * 4 ** step for step in range(13))

#: Buckets of each weight class, as a power of two: light paths of one
#: class share at most this many layers.
BUCKET_BITS = 3


@frozen
class LayerPlan:
    """
    One planned image layer: which store paths it holds.

    :ivar paths: the store paths of the layer, sorted, so that the same set
        always gives the same tarball and the same cache key.
    :ivar weight: the sum of its paths' weights (NAR size times
        popularity).  Layers are ordered by it, heaviest first.
    """

    paths: tuple[str, ...]
    weight: int


def path_popularity(path: str, popularity: Mapping[str, int]) -> int:
    """
    The popularity of one store path.

    Certificates and the IANA service tables are pinned very high; other
    paths are looked up by their name (the store path without its hash),
    and paths the data does not know count as
    :data:`DEFAULT_POPULARITY`.

    :param path: absolute store path.
    :param popularity: counts keyed by :func:`store_path_name`.
    """
    name = store_path_name(path)
    if name.startswith(PINNED_NAME_PREFIXES):
        return PINNED_POPULARITY
    return max(DEFAULT_POPULARITY, popularity.get(name, DEFAULT_POPULARITY))


def path_bucket_hash(path: str) -> int:
    """
    A 64-bit number drawn from the store path alone, uniform over paths:
    its top bits choose a light path's bucket.
    """
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big")


def plan_layers(graph: ClosureGraph,
                popularity: Mapping[str, int] | None = None,
                budget: int = defaults.LAYER_BUDGET) -> list[LayerPlan]:
    """
    Group the store paths of a closure into at most ``budget`` layers.

    :param graph: the closure, with sizes and references.
    :param popularity: reference counts keyed by store path name
        (``glibc-2.33``); missing or ``None`` means no data, and every
        path then counts as :data:`DEFAULT_POPULARITY`.
    :param budget: the most layers to return; at least 1.
    :return: the layers, heaviest first (by weight descending, then by
        paths); every path of the closure is in exactly one.
    :raise ValueError: if ``budget`` is below 1, a root or reference names
        a path that is not in the closure, or an entry of ``graph.paths``
        is filed under a path other than its own.
    """
    if budget < 1:
        raise ValueError("the layer budget must be at least 1, not %r" % (budget,))
    _check_closure(graph)
    weights = path_weights(graph, popularity)
    groups = _group(weights, set(graph.roots), budget)
    layers = [LayerPlan(paths=tuple(sorted(group)),
                        weight=sum(weights[path] for path in group))
              for group in groups]
    return sorted(layers, key=lambda layer: (-layer.weight, layer.paths))


def weight_class(weight: int) -> int:
    """How many steps of :data:`WEIGHT_STEPS` are at or below ``weight``."""
    return bisect.bisect_right(WEIGHT_STEPS, weight)


def path_weights(graph: ClosureGraph,
                 popularity: Mapping[str, int] | None = None) -> dict[str, int]:
    """Every path's weight: NAR size (at least 1) times popularity."""
    counts: Mapping[str, int] = popularity if popularity is not None else {}
    return {path: max(1, info.nar_size) * path_popularity(path, counts)
            for path, info in graph.paths.items()}


def sharing_classes(weights: Mapping[str, int], roots: Collection[str],
                    budget: int) -> int | None:
    """
    How many weight classes, from the lightest, share layers: 0 when every
    path has a layer of its own, ``None`` when not even sharing every class
    fits the budget (then all paths share one set of buckets).
    """
    if len(weights) <= budget:
        return 0
    own = len(set(roots) & weights.keys())
    # For each class: how many paths it has, and its non-empty buckets.
    counts = [0] * (len(WEIGHT_STEPS) + 1)
    buckets: list[set[int]] = [set() for _ in counts]
    for path, weight in weights.items():
        if path not in roots:
            klass = weight_class(weight)
            counts[klass] += 1
            buckets[klass].add(_bucket(path))
    alone = own + sum(counts)
    shared = 0
    for light, klass in enumerate(range(len(counts)), 1):
        alone -= counts[klass]
        shared += len(buckets[klass])
        if alone + shared <= budget:
            return light
    return None


def _bucket(path: str) -> int:
    """A light path's bucket within its weight class."""
    return path_bucket_hash(path) >> (64 - BUCKET_BITS)


def _group(weights: Mapping[str, int], roots: Collection[str],
           budget: int) -> list[list[str]]:
    """The paths of ``weights`` grouped as the module docstring says."""
    light = sharing_classes(weights, roots, budget)
    if light is None:
        bits = budget.bit_length() - 1
        everything: dict[int, list[str]] = {}
        for path in weights:
            everything.setdefault(path_bucket_hash(path) >> (64 - bits), []).append(path)
        return list(everything.values())
    groups: list[list[str]] = []
    buckets: dict[tuple[int, int], list[str]] = {}
    for path, weight in weights.items():
        klass = weight_class(weight)
        if path in roots or klass >= light:
            groups.append([path])
        else:
            buckets.setdefault((klass, _bucket(path)), []).append(path)
    return groups + list(buckets.values())


def _check_closure(graph: ClosureGraph) -> None:
    """Refuse a closure whose roots or references leave it."""
    for path, info in graph.paths.items():
        if info.path != path:
            raise ValueError("closure entry %r is filed under %r" % (info.path, path))
        for reference in info.references:
            if reference not in graph.paths:
                raise ValueError("%s references %s, which is not in the closure"
                                 % (path, reference))
    for root in graph.roots:
        if root not in graph.paths:
            raise ValueError("closure root %r is not in the closure" % (root,))

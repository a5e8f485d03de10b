"""
The layering nixeryd used before layers were chosen path by path: the
popularity and dominator-tree design of Nixery, kept here unchanged as the
baseline that ``bench/reuse.py`` prints beside :mod:`nixeryd.build.layers`.

An image made of one layer per store path would exceed the layer limits of
container runtimes, and one made of a single layer would share nothing
between images.  This module groups the store paths of a closure so that
paths which many images have in common (popular libraries, big toolchains)
land in layers of their own, which registries and clients then deduplicate,
while paths only this image needs are folded together.

The grouping follows the popularity and dominator-tree design of Nixery:

1. Build a graph with a virtual root that points at every top-level store
   path, and an edge from each path to each path it references.
2. Give every path a popularity (how many packages refer to it) and add an
   extra edge from the root to each path that is big or popular, so that
   such a path is never dominated by anything but the root.
3. Compute the dominator tree.  Each path immediately dominated by the root
   heads a layer holding everything it dominates: the paths that are only
   reachable through it, and so only needed because of it.
4. Rate each layer by the popularity of its head times its size, and while
   there are more layers than the budget allows, fold the lowest-rated ones
   into one.

Unlike Nixery, every ordering here is total, so the same closure always
gives the same layers in the same order, whatever order the input arrived
in.  That keeps layer digests, and therefore image digests, stable across
restarts and replicas.

Paths that the top-level paths do not reach (a consistent closure has
none) are still placed in layers: they are treated as further top-level
paths, so every path of the closure appears in exactly one layer.  Roots or
references that name a path missing from the closure raise
:class:`ValueError`, as the closure is then inconsistent.

Nothing here performs I/O; it is plain CPU work meant to run in a thread
pool for large closures.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from attrs import frozen

from nixeryd.build.closure import ClosureGraph
from nixeryd.build.layers import path_popularity
from nixeryd.core import defaults

#: A path whose closure is larger than this many bytes gets a layer of its
#: own, so the big thing is shared by every image that needs it.
BIG_CLOSURE_BYTES = 100 * 1000 * 1000

#: A path at least this popular gets a layer of its own.
POPULAR_THRESHOLD = 100

#: Marks a node without an immediate dominator in :func:`immediate_dominators`.
UNREACHABLE = -1


@frozen
class LayerPlan:
    """
    One planned image layer: which store paths it holds.

    :ivar paths: the store paths of the layer, sorted, so that the same set
        always gives the same tarball and the same cache key.
    :ivar merge_rating: how valuable the layer is to keep apart, the
        popularity of its head path times its size (summed when layers are
        merged).  Layers are ordered by it, the most shared first.
    """

    paths: tuple[str, ...]
    merge_rating: int


def immediate_dominators(successors: Sequence[Sequence[int]],
                         root: int = 0) -> list[int]:
    """
    The immediate dominator of every node of a directed graph.

    Node ``d`` dominates node ``n`` when every path from ``root`` to ``n``
    passes through ``d``; the immediate dominator is the closest strict
    dominator.  This is the iterative algorithm of Cooper, Harvey and
    Kennedy ("A Simple, Fast Dominance Algorithm"), run over the nodes in
    reverse postorder.  Both the depth-first search and the intersection
    are loops, not recursion, so graphs of any depth are fine; cycles are
    allowed.  On an acyclic graph it settles after two passes.

    :param successors: for each node ``0 .. n-1``, the nodes it has edges
        to.
    :param root: the entry node.
    :return: for each node its immediate dominator; ``root`` maps to itself
        and nodes not reachable from ``root`` map to :data:`UNREACHABLE`.
    """
    count = len(successors)
    if not 0 <= root < count:
        raise ValueError("root %d is not a node of a %d-node graph" % (root, count))

    # Depth-first search from the root, recording the postorder.
    postorder: list[int] = []
    visited = bytearray(count)
    visited[root] = 1
    stack = [(root, iter(successors[root]))]
    while stack:
        node, pending = stack[-1]
        for child in pending:
            if not visited[child]:
                visited[child] = 1
                stack.append((child, iter(successors[child])))
                break
        else:
            stack.pop()
            postorder.append(node)

    # Work in postorder numbers: the intersection then only compares ints.
    number = [UNREACHABLE] * count
    for index, node in enumerate(postorder):
        number[node] = index
    predecessors: list[list[int]] = [[] for _ in postorder]
    for node in postorder:
        source = number[node]
        for child in successors[node]:
            predecessors[number[child]].append(source)

    start = number[root]
    dominator = [UNREACHABLE] * len(postorder)
    dominator[start] = start
    changed = True
    while changed:
        changed = False
        for target in range(start - 1, -1, -1):
            chosen = UNREACHABLE
            for other in predecessors[target]:
                if dominator[other] == UNREACHABLE:
                    continue
                if chosen == UNREACHABLE:
                    chosen = other
                    continue
                left, right = other, chosen
                while left != right:
                    while left < right:
                        left = dominator[left]
                    while right < left:
                        right = dominator[right]
                chosen = left
            if dominator[target] != chosen:
                dominator[target] = chosen
                changed = True

    result = [UNREACHABLE] * count
    for index, node in enumerate(postorder):
        result[node] = postorder[dominator[index]]
    return result


def plan_layers(graph: ClosureGraph,
                popularity: Mapping[str, int] | None = None,
                budget: int = defaults.LAYER_BUDGET) -> list[LayerPlan]:
    """
    The dominator-tree layers of a closure, at most ``budget``: the
    arguments, errors and guarantees of :func:`nixeryd.build.layers.plan_layers`,
    with the layers ordered by merge rating, most valuable first.
    """
    if budget < 1:
        raise ValueError("the layer budget must be at least 1, not %r" % (budget,))
    counts: Mapping[str, int] = popularity if popularity is not None else {}
    layers = _dominator_layers(graph, counts)
    return _fit_budget(layers, budget)


def _dominator_layers(graph: ClosureGraph,
                      counts: Mapping[str, int]) -> list[LayerPlan]:
    """One layer per path immediately dominated by the virtual root."""
    paths = sorted(graph.paths)
    if not paths:
        if graph.roots:
            raise ValueError("closure root %r is not in the closure" % (graph.roots[0],))
        return []

    # Node 0 is the virtual root; path i of the sorted list is node i + 1,
    # so sorting node numbers sorts paths.
    ids = {path: index for index, path in enumerate(paths, 1)}
    infos = [graph.paths[path] for path in paths]
    rank = [0] + [path_popularity(path, counts) for path in paths]
    successors: list[list[int]] = [[]]
    for own, (path, info) in enumerate(zip(paths, infos), 1):
        if info.path != path:
            raise ValueError("closure entry %r is filed under %r" % (info.path, path))
        targets = set()
        for reference in info.references:
            target = ids.get(reference)
            if target is None:
                raise ValueError("%s references %s, which is not in the closure"
                                 % (path, reference))
            if target != own:
                targets.add(target)
        successors.append(sorted(targets))

    entry: set[int] = set()
    for root in graph.roots:
        target = ids.get(root)
        if target is None:
            raise ValueError("closure root %r is not in the closure" % (root,))
        entry.add(target)
    for node, info in enumerate(infos, 1):
        if info.closure_size > BIG_CLOSURE_BYTES or rank[node] >= POPULAR_THRESHOLD:
            entry.add(node)
    entry.update(_unreached_sources(successors, entry))
    successors[0] = sorted(entry)

    dominator = immediate_dominators(successors)
    children: list[list[int]] = [[] for _ in successors]
    for node in range(1, len(successors)):
        children[dominator[node]].append(node)

    layers = []
    for head in children[0]:
        members = []
        stack = [head]
        while stack:
            node = stack.pop()
            members.append(node)
            stack.extend(children[node])
        size = sum(infos[node - 1].closure_size for node in members)
        layers.append(LayerPlan(
            paths=tuple(paths[node - 1] for node in sorted(members)),
            merge_rating=rank[head] * size,
        ))
    return layers


def _unreached_sources(successors: list[list[int]], entry: set[int]) -> list[int]:
    """
    Extra entry nodes that make every node reachable from the root.

    Nodes the entry set does not reach get an edge from the root.  Those
    without an unreached predecessor come first, so a stray chain becomes
    one layer rather than one per path; nodes left over (only on stray
    cycles) are then taken in node order.
    """
    reached = bytearray(len(successors))
    reached[0] = 1

    def reach(starts: list[int]) -> None:
        stack = [node for node in starts if not reached[node]]
        for node in stack:
            reached[node] = 1
        while stack:
            for child in successors[stack.pop()]:
                if not reached[child]:
                    reached[child] = 1
                    stack.append(child)

    reach(sorted(entry))
    stray = [node for node in range(1, len(successors)) if not reached[node]]
    if not stray:
        return []
    has_stray_parent = bytearray(len(successors))
    for node in stray:
        for child in successors[node]:
            has_stray_parent[child] = 1
    added = []
    for node in stray:
        if not has_stray_parent[node]:
            added.append(node)
    reach(added)
    for node in stray:
        if not reached[node]:
            added.append(node)
            reach([node])
    return added


def _fit_budget(layers: list[LayerPlan], budget: int) -> list[LayerPlan]:
    """
    Fold the lowest-rated layers together until at most ``budget`` remain.

    As in Nixery, the ``len(layers) - budget + 1`` lowest-rated layers
    become one whose rating is their sum; the ordering by (rating, paths)
    is total, so ties cannot make the result depend on input order.
    """
    ordered = sorted(layers, key=lambda layer: (layer.merge_rating, layer.paths))
    if len(ordered) > budget:
        folded = ordered[:len(ordered) - budget + 1]
        merged = LayerPlan(
            paths=tuple(sorted(path for layer in folded for path in layer.paths)),
            merge_rating=sum(layer.merge_rating for layer in folded),
        )
        ordered = [merged] + ordered[len(folded):]
    return sorted(ordered, key=lambda layer: (-layer.merge_rating, layer.paths))

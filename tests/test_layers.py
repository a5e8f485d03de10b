"""
Tests for :mod:`nixeryd.build.layers`: the dominator computation and the
grouping of a closure into layers.
"""

from __future__ import annotations

import hashlib
import random

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.build.closure import ClosureGraph, StorePathInfo
from nixeryd.build.layers import (
    BIG_CLOSURE_BYTES,
    PINNED_POPULARITY,
    UNREACHABLE,
    LayerPlan,
    immediate_dominators,
    path_popularity,
    plan_layers,
)
from nixeryd.core.defaults import LAYER_BUDGET


def store(name: str) -> str:
    """A well-formed store path for ``name`` with a hash derived from it."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:32]
    return "/nix/store/%s-%s" % (digest, name)


def closure(roots: list[str], references: dict[str, list[str]],
            sizes: dict[str, int] | None = None,
            self_references: bool = True) -> ClosureGraph:
    """
    A closure from names: ``references`` maps every name to the names it
    refers to; ``sizes`` gives closure sizes (default 10 bytes).
    """
    sizes = sizes or {}
    infos = {}
    for name, targets in references.items():
        refs = [store(target) for target in targets]
        if self_references:
            refs.append(store(name))
        size = sizes.get(name, 10)
        infos[store(name)] = StorePathInfo(store(name), size, size, refs)
    return ClosureGraph(roots=[store(root) for root in roots], paths=infos)


def contents(layers: list[LayerPlan]) -> list[set[str]]:
    """The layers as sets of names, in order."""
    return [{path.split("-", 1)[1] for path in layer.paths} for layer in layers]


def brute_force_dominators(successors: list[list[int]], root: int) -> list[int]:
    """
    Immediate dominators by definition: ``d`` dominates ``n`` when ``n``
    cannot be reached from the root once ``d`` is removed.
    """
    count = len(successors)

    def reachable(removed: int) -> set[int]:
        if removed == root:
            return set()
        seen = {root}
        stack = [root]
        while stack:
            for child in successors[stack.pop()]:
                if child != removed and child not in seen:
                    seen.add(child)
                    stack.append(child)
        return seen

    everything = reachable(-1)
    dominators = {node: {node} for node in everything}
    for candidate in range(count):
        without = reachable(candidate)
        for node in everything:
            if node != candidate and node not in without:
                dominators[node].add(candidate)
    result = [UNREACHABLE] * count
    for node in everything:
        strict = dominators[node] - {node}
        if node == root:
            result[node] = root
        else:
            # Dominators form a chain; the closest has the most dominators.
            result[node] = max(strict, key=lambda other: len(dominators[other]))
    return result


def random_closure(rng: random.Random, count: int, root_count: int) -> tuple[
        ClosureGraph, dict[str, int]]:
    """
    An acyclic closure of ``count`` paths shaped like a real one: a few
    dozen shared libraries near the end, chains and fan-out before them,
    every path reachable from the first ``root_count``.
    """
    names = ["p%d-1.0" % (index,) for index in range(count)]
    library_start = count - 40
    references: list[set[int]] = [set() for _ in range(count)]
    for node in range(count - 1):
        if node + 1 < library_start and rng.random() < 0.7:
            references[node].add(node + 1)
        for _ in range(rng.randint(0, 3)):
            references[node].add(rng.randrange(node + 1, count))
        if node < library_start:
            references[node].add(rng.randrange(library_start, count))
    referred = {target for targets in references for target in targets}
    for node in range(root_count, count):
        if node not in referred:
            references[rng.randrange(0, node)].add(node)
    infos = {}
    for node in range(count):
        path = store(names[node])
        refs = [store(names[target]) for target in references[node]] + [path]
        size = rng.choice((1000, 20000, 300000, 5000000))
        if rng.random() < 0.002:
            size = BIG_CLOSURE_BYTES + 1
        infos[path] = StorePathInfo(path, size, size, refs)
    popularity = {names[node]: rng.choice((1, 5, 50, 99, 100, 4000))
                  for node in range(library_start, count)}
    graph = ClosureGraph(roots=[store(names[node]) for node in range(root_count)],
                         paths=infos)
    return graph, popularity


class ImmediateDominatorsTests(SynchronousTestCase):
    """Tests for :func:`immediate_dominators`."""

    def test_matches_definition_on_random_graphs(self) -> None:
        """
        On random graphs with cycles, self-loops and unreachable nodes, each
        node's immediate dominator is the one the definition gives.
        """
        rng = random.Random(20240601)
        for _ in range(300):
            count = rng.randint(1, 12)
            successors = [sorted({rng.randrange(count)
                                  for _ in range(rng.randint(0, 3))})
                          for _ in range(count)]
            root = rng.randrange(count)
            self.assertEqual(immediate_dominators(successors, root),
                             brute_force_dominators(successors, root),
                             (successors, root))

    def test_diamond(self) -> None:
        """The join of two branches is dominated by the fork, not a branch."""
        self.assertEqual(immediate_dominators([[1, 2], [3], [3], []]), [0, 0, 0, 0])

    def test_deep_chain(self) -> None:
        """A chain far deeper than the recursion limit is handled."""
        count = 50000
        successors = [[node + 1] for node in range(count - 1)] + [[]]
        dominators = immediate_dominators(successors)
        self.assertEqual(dominators[0], 0)
        self.assertEqual(dominators[1:], list(range(count - 1)))

    def test_bad_root(self) -> None:
        """A root outside the graph is rejected."""
        self.assertRaises(ValueError, immediate_dominators, [[]], 1)


class PathPopularityTests(SynchronousTestCase):
    """Tests for :func:`path_popularity`."""

    def test_lookup_by_name(self) -> None:
        """Popularity is looked up by the store path's name and version."""
        self.assertEqual(path_popularity(store("glibc-2.37"), {"glibc-2.37": 4321}), 4321)

    def test_unknown_counts_one(self) -> None:
        """A name the data does not mention counts as 1."""
        self.assertEqual(path_popularity(store("glibc-2.37"), {"glibc-2.38": 7}), 1)

    def test_pinned(self) -> None:
        """Certificates and IANA tables are pinned, whatever the data says."""
        counts = {"nss-cacert-3.92": 3, "iana-etc-20230316": 2}
        self.assertEqual(path_popularity(store("nss-cacert-3.92"), counts),
                         PINNED_POPULARITY)
        self.assertEqual(path_popularity(store("iana-etc-20230316"), counts),
                         PINNED_POPULARITY)


class PlanLayersTests(SynchronousTestCase):
    """Tests for :func:`plan_layers` on small hand-built closures."""

    def test_empty(self) -> None:
        """An empty closure has no layers."""
        self.assertEqual(plan_layers(ClosureGraph(roots=(), paths={})), [])

    def test_single_chain(self) -> None:
        """A chain from one root is dominated by the root: one layer."""
        graph = closure(["app-1"], {"app-1": ["libfoo-1"], "libfoo-1": ["libc-2"],
                                    "libc-2": []},
                        {"app-1": 30, "libfoo-1": 20, "libc-2": 5})
        layers = plan_layers(graph)
        self.assertEqual(contents(layers), [{"app-1", "libfoo-1", "libc-2"}])
        self.assertEqual(layers[0].merge_rating, 55)
        self.assertEqual(list(layers[0].paths), sorted(layers[0].paths))

    def test_shared_library_heads_own_layer(self) -> None:
        """
        A library two roots both need heads a layer of its own, holding what
        only it needs; each root keeps its private dependencies.
        """
        graph = closure(
            ["app-1", "tool-2"],
            {"app-1": ["applib-1", "libshared-3"], "applib-1": [],
             "tool-2": ["libshared-3"], "libshared-3": ["libdep-1"], "libdep-1": []},
            {"app-1": 100, "applib-1": 1, "tool-2": 40, "libshared-3": 30,
             "libdep-1": 2})
        layers = plan_layers(graph)
        self.assertEqual(contents(layers), [{"app-1", "applib-1"},
                                            {"tool-2"},
                                            {"libshared-3", "libdep-1"}])
        self.assertEqual([layer.merge_rating for layer in layers], [101, 40, 32])

    def test_popular_path_heads_own_layer(self) -> None:
        """
        A path with popularity of at least 100 gets its own layer even when
        one root alone needs it, rated by popularity times size; 99 is not
        enough.
        """
        references = {"app-1": ["libz-1", "libq-1"], "libz-1": [], "libq-1": []}
        sizes = {"app-1": 7, "libz-1": 3, "libq-1": 5}
        graph = closure(["app-1"], references, sizes)
        layers = plan_layers(graph, {"libz-1": 100, "libq-1": 99})
        self.assertEqual(contents(layers), [{"libz-1"}, {"app-1", "libq-1"}])
        self.assertEqual([layer.merge_rating for layer in layers], [300, 12])

    def test_pinned_path_heads_own_layer(self) -> None:
        """Certificates get their own layer, first, with the pinned rating."""
        graph = closure(["app-1"], {"app-1": ["nss-cacert-3.92"], "nss-cacert-3.92": []},
                        {"app-1": 50, "nss-cacert-3.92": 4})
        layers = plan_layers(graph)
        self.assertEqual(contents(layers), [{"nss-cacert-3.92"}, {"app-1"}])
        self.assertEqual(layers[0].merge_rating, 4 * PINNED_POPULARITY)

    def test_big_path_heads_own_layer(self) -> None:
        """
        A path whose closure exceeds 100 MB gets its own layer; one of
        exactly 100 MB does not.
        """
        graph = closure(
            ["app-1"],
            {"app-1": ["toolchain-9", "data-1"], "toolchain-9": [], "data-1": []},
            {"app-1": 10, "toolchain-9": BIG_CLOSURE_BYTES + 1,
             "data-1": BIG_CLOSURE_BYTES})
        self.assertEqual(contents(plan_layers(graph)),
                         [{"app-1", "data-1"}, {"toolchain-9"}])

    def test_root_referenced_by_other_root(self) -> None:
        """A root that another root also refers to still heads its own layer."""
        graph = closure(["app-1", "libbase-1"],
                        {"app-1": ["libbase-1"], "libbase-1": ["libc-1"], "libc-1": []},
                        {"app-1": 10, "libbase-1": 3, "libc-1": 1})
        self.assertEqual(contents(plan_layers(graph)),
                         [{"app-1"}, {"libbase-1", "libc-1"}])

    def test_duplicate_roots(self) -> None:
        """A root listed twice is planned once."""
        references = {"app-1": ["libc-1"], "libc-1": []}
        self.assertEqual(plan_layers(closure(["app-1", "app-1"], references)),
                         plan_layers(closure(["app-1"], references)))

    def test_without_self_references(self) -> None:
        """Paths that do not list themselves are grouped the same way."""
        references = {"app-1": ["libc-1"], "libc-1": [], "tool-1": ["libc-1"]}
        self.assertEqual(
            plan_layers(closure(["app-1", "tool-1"], references, self_references=False)),
            plan_layers(closure(["app-1", "tool-1"], references)))

    def test_cycle(self) -> None:
        """A reference cycle terminates, and every path lands in a layer."""
        graph = closure(["app-1"], {"app-1": ["a-1"], "a-1": ["b-1"], "b-1": ["a-1"]})
        self.assertEqual(contents(plan_layers(graph)), [{"app-1", "a-1", "b-1"}])

    def test_unreachable_paths_still_placed(self) -> None:
        """
        Paths no root reaches are treated as further roots: a stray chain
        becomes one layer headed by its first path, a stray cycle another.
        """
        graph = closure(
            ["app-1"],
            {"app-1": [], "stray-1": ["strayd-1"], "strayd-1": [],
             "loopa-1": ["loopb-1"], "loopb-1": ["loopa-1"]},
            {"app-1": 100, "stray-1": 50, "strayd-1": 1, "loopa-1": 7, "loopb-1": 7})
        layers = plan_layers(graph)
        self.assertEqual(contents(layers),
                         [{"app-1"}, {"stray-1", "strayd-1"}, {"loopa-1", "loopb-1"}])

    def test_missing_reference_rejected(self) -> None:
        """A reference to a path outside the closure is a ValueError."""
        graph = closure(["app-1"], {"app-1": ["ghost-1"]})
        error = self.assertRaises(ValueError, plan_layers, graph)
        self.assertIn(store("ghost-1"), str(error))

    def test_missing_root_rejected(self) -> None:
        """A root outside the closure is a ValueError, even for no paths."""
        self.assertRaises(ValueError, plan_layers,
                          closure(["ghost-1"], {"app-1": []}))
        self.assertRaises(ValueError, plan_layers,
                          ClosureGraph(roots=[store("ghost-1")], paths={}))

    def test_misfiled_entry_rejected(self) -> None:
        """An entry filed under another path's key is a ValueError."""
        info = StorePathInfo(store("app-1"), 1, 1, ())
        graph = ClosureGraph(roots=[store("tool-1")], paths={store("tool-1"): info})
        self.assertRaises(ValueError, plan_layers, graph)

    def test_budget_below_one_rejected(self) -> None:
        """A budget of zero or less is a ValueError."""
        graph = closure(["app-1"], {"app-1": []})
        self.assertRaises(ValueError, plan_layers, graph, None, 0)
        self.assertRaises(ValueError, plan_layers, graph, None, -3)

    def test_popularity_none_is_no_data(self) -> None:
        """Passing no popularity data equals passing an empty mapping."""
        graph, _ = random_closure(random.Random(5), 300, 4)
        self.assertEqual(plan_layers(graph, None), plan_layers(graph, {}))

    def test_order_ties_broken_by_paths(self) -> None:
        """Layers of equal rating come in the order of their paths."""
        names = ["zeta-1", "alpha-1", "mid-1"]
        graph = closure(names, {name: [] for name in names})
        layers = plan_layers(graph)
        self.assertEqual(len(layers), 3)
        self.assertEqual([layer.paths for layer in layers],
                         sorted(layer.paths for layer in layers))
        self.assertEqual({layer.merge_rating for layer in layers}, {10})

    def test_equal_ratings_merge_by_paths(self) -> None:
        """
        When the layers to fold tie on rating, the ones with the smallest
        paths fold, whatever the input order.
        """
        names = ["d-1", "b-1", "a-1", "c-1"]
        graph = closure(names, {name: [] for name in names})
        first, second, third, fourth = sorted(store(name) for name in names)
        layers = plan_layers(graph, budget=3)
        self.assertEqual(layers, [LayerPlan((first, second), 20),
                                  LayerPlan((third,), 10),
                                  LayerPlan((fourth,), 10)])


    def test_ties_compare_whole_layers(self) -> None:
        """
        Ties are broken by each layer's sorted paths, not by its head: a
        layer whose head sorts last but which holds the smallest path
        folds first.
        """
        def path(digit: str, name: str) -> str:
            return "/nix/store/%s-%s" % (digit * 32, name)

        late_head, early_member = path("m", "late-1"), path("a", "member-1")
        second, third = path("b", "second-1"), path("c", "third-1")
        infos = {
            late_head: StorePathInfo(late_head, 5, 5, (early_member,)),
            early_member: StorePathInfo(early_member, 5, 5, ()),
            second: StorePathInfo(second, 10, 10, ()),
            third: StorePathInfo(third, 10, 10, ()),
        }
        graph = ClosureGraph(roots=(third, late_head, second), paths=infos)
        self.assertEqual(plan_layers(graph, budget=3),
                         [LayerPlan((early_member, late_head), 10),
                          LayerPlan((second,), 10),
                          LayerPlan((third,), 10)])
        self.assertEqual(plan_layers(graph, budget=2),
                         [LayerPlan((early_member, second, late_head), 20),
                          LayerPlan((third,), 10)])


class DeterminismTests(SynchronousTestCase):
    """The same closure always gives the same layers."""

    def test_input_order_irrelevant(self) -> None:
        """
        Shuffling the order of the paths mapping, the roots and each path's
        references leaves the planned layers identical.
        """
        rng = random.Random(11)
        graph, popularity = random_closure(rng, 1500, 12)
        expected = plan_layers(graph, popularity, budget=30)
        unmerged = plan_layers(graph, popularity, budget=10 ** 6)
        self.assertGreater(len(unmerged), 30)
        for _ in range(5):
            items = list(graph.paths.items())
            rng.shuffle(items)
            shuffled_paths = {}
            for path, info in items:
                references = list(info.references)
                rng.shuffle(references)
                shuffled_paths[path] = StorePathInfo(
                    info.path, info.nar_size, info.closure_size, references)
            roots = list(graph.roots)
            rng.shuffle(roots)
            counts = list(popularity.items())
            rng.shuffle(counts)
            shuffled = ClosureGraph(roots=roots, paths=shuffled_paths)
            self.assertEqual(plan_layers(shuffled, dict(counts), budget=30), expected)


class BudgetTests(SynchronousTestCase):
    """Folding layers to fit the budget."""

    def setUp(self) -> None:
        self.graph, self.popularity = random_closure(random.Random(3), 3000, 25)

    def assert_partition(self, layers: list[LayerPlan]) -> None:
        """Every path of the closure is in exactly one layer."""
        placed = [path for layer in layers for path in layer.paths]
        self.assertEqual(len(placed), len(set(placed)))
        self.assertEqual(set(placed), set(self.graph.paths))

    def test_default_budget(self) -> None:
        """
        With the default budget a 3000-path closure gets exactly 94 layers:
        the lowest-rated layers fold into one rated by their sum, and the
        others are kept as they were, most valuable first.
        """
        unmerged = plan_layers(self.graph, self.popularity, budget=10 ** 6)
        self.assertGreater(len(unmerged), LAYER_BUDGET)
        self.assert_partition(unmerged)

        layers = plan_layers(self.graph, self.popularity)
        self.assertEqual(len(layers), LAYER_BUDGET)
        self.assert_partition(layers)

        ascending = sorted(unmerged, key=lambda layer: (layer.merge_rating, layer.paths))
        fold = len(unmerged) - LAYER_BUDGET + 1
        folded, kept = ascending[:fold], ascending[fold:]
        merged = LayerPlan(
            paths=tuple(sorted(path for layer in folded for path in layer.paths)),
            merge_rating=sum(layer.merge_rating for layer in folded))
        self.assertEqual(set(layers), set(kept) | {merged})
        self.assertLessEqual(max(layer.merge_rating for layer in folded),
                             min(layer.merge_rating for layer in kept))
        self.assertEqual(layers, sorted(
            layers, key=lambda layer: (-layer.merge_rating, layer.paths)))

    def test_budget_one(self) -> None:
        """A budget of one puts everything into a single layer, sorted."""
        unmerged = plan_layers(self.graph, self.popularity, budget=10 ** 6)
        [layer] = plan_layers(self.graph, self.popularity, budget=1)
        self.assertEqual(layer.paths, tuple(sorted(self.graph.paths)))
        self.assertEqual(layer.merge_rating,
                         sum(each.merge_rating for each in unmerged))

    def test_budget_not_reached(self) -> None:
        """A budget at or above the layer count leaves the layers alone."""
        unmerged = plan_layers(self.graph, self.popularity, budget=10 ** 6)
        self.assertEqual(plan_layers(self.graph, self.popularity, budget=len(unmerged)),
                         unmerged)
        self.assertEqual(len(plan_layers(self.graph, self.popularity,
                                         budget=len(unmerged) - 1)),
                         len(unmerged) - 1)

    def test_popular_paths_apart(self) -> None:
        """
        Before folding, no two paths of popularity 100 or more share a
        layer, and each layer is rated by the popularity of one of its
        paths times the sum of its paths' closure sizes.
        """
        unmerged = plan_layers(self.graph, self.popularity, budget=10 ** 6)
        popular = {store(name) for name, count in self.popularity.items()
                   if count >= 100}
        self.assertTrue(popular)
        for layer in unmerged:
            self.assertLessEqual(len(popular.intersection(layer.paths)), 1)
            size = sum(self.graph.paths[path].closure_size for path in layer.paths)
            ranks = {path_popularity(path, self.popularity) for path in layer.paths}
            self.assertIn(layer.merge_rating, {rank * size for rank in ranks})

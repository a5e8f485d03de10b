"""
Tests for :mod:`nixeryd.build.layers`: the grouping of a closure into
layers, and that layers survive small changes of the closure.
"""

from __future__ import annotations

import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.build.closure import ClosureGraph, StorePathInfo
from nixeryd.build.layers import (
    BUCKET_BITS,
    PINNED_POPULARITY,
    WEIGHT_STEPS,
    LayerPlan,
    path_bucket_hash,
    path_popularity,
    path_weights,
    plan_layers,
    sharing_classes,
    weight_class,
)
from nixeryd.core.defaults import LAYER_BUDGET, MAX_LAYER_BUDGET

#: Hypothesis settings: no example database, no deadline (the machine may
#: be busy), enough closures to meet the corner cases.
EXAMPLES = settings(max_examples=150, deadline=None, database=None)


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
        infos[path] = StorePathInfo(path, size, size, refs)
    popularity = {names[node]: rng.choice((1, 5, 50, 99, 100, 4000))
                  for node in range(library_start, count)}
    graph = ClosureGraph(roots=[store(names[node]) for node in range(root_count)],
                         paths=infos)
    return graph, popularity


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




def with_package(graph: ClosureGraph, name: str, size: int,
                 references: list[str]) -> ClosureGraph:
    """``graph`` with one more top-level package referring to ``references``."""
    path = store(name)
    infos = dict(graph.paths)
    infos[path] = StorePathInfo(path, size, size, references + [path])
    return ClosureGraph(roots=tuple(graph.roots) + (path,), paths=infos)


def without_root(graph: ClosureGraph, root: str) -> ClosureGraph:
    """``graph`` without ``root`` and the paths only it needed."""
    roots = [each for each in graph.roots if each != root]
    kept: set[str] = set()
    stack = list(roots)
    while stack:
        path = stack.pop()
        if path not in kept:
            kept.add(path)
            stack.extend(graph.paths[path].references)
    return ClosureGraph(roots=roots, paths={path: graph.paths[path] for path in kept})


def path_class(path: str, graph: ClosureGraph, popularity: dict[str, int]) -> int:
    """The weight class of one path of ``graph``."""
    return weight_class(max(1, graph.paths[path].nar_size)
                        * path_popularity(path, popularity))


def light_classes(graph: ClosureGraph, popularity: dict[str, int]) -> int:
    """How many weight classes share layers in ``graph``'s plan."""
    light = sharing_classes(path_weights(graph, popularity), set(graph.roots),
                            LAYER_BUDGET)
    assert light is not None
    return light


class PlanLayersTests(SynchronousTestCase):
    """Tests for :func:`plan_layers` on small hand-built closures."""

    def test_empty(self) -> None:
        """An empty closure has no layers."""
        self.assertEqual(plan_layers(ClosureGraph(roots=(), paths={})), [])

    def test_one_path_one_layer(self) -> None:
        """
        Within the budget every path is a layer of its own, heaviest first,
        its weight its NAR size.
        """
        graph = closure(["app-1"], {"app-1": ["libfoo-1"], "libfoo-1": ["libc-2"],
                                    "libc-2": []},
                        {"app-1": 30, "libfoo-1": 20, "libc-2": 5})
        layers = plan_layers(graph)
        self.assertEqual(contents(layers), [{"app-1"}, {"libfoo-1"}, {"libc-2"}])
        self.assertEqual([layer.weight for layer in layers], [30, 20, 5])

    def test_popularity_weighs(self) -> None:
        """Popularity multiplies a path's weight and so its place."""
        references = {"app-1": ["libz-1", "libq-1"], "libz-1": [], "libq-1": []}
        sizes = {"app-1": 7, "libz-1": 3, "libq-1": 5}
        layers = plan_layers(closure(["app-1"], references, sizes),
                             {"libz-1": 100, "libq-1": 1})
        self.assertEqual(contents(layers), [{"libz-1"}, {"app-1"}, {"libq-1"}])
        self.assertEqual([layer.weight for layer in layers], [300, 7, 5])

    def test_pinned_path_first(self) -> None:
        """Certificates come first, with the pinned weight."""
        graph = closure(["app-1"], {"app-1": ["nss-cacert-3.92"], "nss-cacert-3.92": []},
                        {"app-1": 50, "nss-cacert-3.92": 4})
        layers = plan_layers(graph)
        self.assertEqual(contents(layers), [{"nss-cacert-3.92"}, {"app-1"}])
        self.assertEqual(layers[0].weight, 4 * PINNED_POPULARITY)

    def test_empty_path_weighs_one(self) -> None:
        """A path of size 0 still weighs something, so order stays total."""
        graph = closure(["app-1"], {"app-1": []}, {"app-1": 0})
        self.assertEqual(plan_layers(graph), [LayerPlan((store("app-1"),), 1)])

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

    def test_cycle_and_unreached_paths(self) -> None:
        """A reference cycle, and paths no root reaches, are still placed."""
        graph = closure(["app-1"], {"app-1": ["a-1"], "a-1": ["b-1"], "b-1": ["a-1"],
                                    "stray-1": []})
        self.assertEqual(sorted(map(sorted, contents(plan_layers(graph)))),
                         [["a-1"], ["app-1"], ["b-1"], ["stray-1"]])

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
        """Layers of equal weight come in the order of their paths."""
        names = ["zeta-1", "alpha-1", "mid-1"]
        graph = closure(names, {name: [] for name in names})
        layers = plan_layers(graph)
        self.assertEqual([layer.paths for layer in layers],
                         sorted(layer.paths for layer in layers))
        self.assertEqual({layer.weight for layer in layers}, {10})

    def test_weight_classes(self) -> None:
        """A weight's class counts the ladder's steps at or below it."""
        self.assertEqual([weight_class(w) for w in
                          (0, 4095, 4096, 16383, 16384, WEIGHT_STEPS[-1])],
                         [0, 0, 1, 1, 2, len(WEIGHT_STEPS)])


class PastTheBudgetTests(SynchronousTestCase):
    """Closures with more paths than the budget."""

    def setUp(self) -> None:
        self.graph, self.popularity = random_closure(random.Random(3), 3000, 25)

    def assert_partition(self, layers: list[LayerPlan]) -> None:
        """Every path of the closure is in exactly one layer."""
        placed = [path for layer in layers for path in layer.paths]
        self.assertEqual(len(placed), len(set(placed)))
        self.assertEqual(set(placed), set(self.graph.paths))

    def test_default_budget(self) -> None:
        """
        A 3000-path closure fits the default budget: below some weight
        class every path but a requested package's shares the layer of its
        class and hash bucket with exactly the other such paths; from that
        class on, and for the requested packages, each path is alone.
        """
        layers = plan_layers(self.graph, self.popularity)
        self.assertLessEqual(len(layers), LAYER_BUDGET)
        self.assert_partition(layers)
        self.assertEqual(layers, sorted(layers, key=lambda layer: (-layer.weight,
                                                                   layer.paths)))
        light = light_classes(self.graph, self.popularity)
        self.assertGreater(light, 0)
        roots = set(self.graph.roots)
        expected: dict[tuple[int, int], set[str]] = {}
        for path in self.graph.paths:
            klass = path_class(path, self.graph, self.popularity)
            if path in roots or klass >= light:
                expected[(-1, hash(path))] = {path}
            else:
                expected.setdefault(
                    (klass, path_bucket_hash(path) >> (64 - BUCKET_BITS)), set()).add(path)
        self.assertEqual(sorted(map(sorted, expected.values())),
                         sorted(map(list, (layer.paths for layer in layers))))

    def test_small_budgets(self) -> None:
        """Every budget down to one is kept, and the layers partition the closure."""
        for budget in (1, 2, 3, 7, 8, 9, 30, 64):
            layers = plan_layers(self.graph, self.popularity, budget)
            self.assertLessEqual(len(layers), budget)
            self.assert_partition(layers)

    def test_budget_one(self) -> None:
        """A budget of one puts everything into a single layer, sorted."""
        [layer] = plan_layers(self.graph, self.popularity, budget=1)
        self.assertEqual(layer.paths, tuple(sorted(self.graph.paths)))

    def test_input_order_irrelevant(self) -> None:
        """
        Shuffling the order of the paths mapping, the roots and each path's
        references leaves the planned layers identical.
        """
        rng = random.Random(11)
        expected = plan_layers(self.graph, self.popularity, budget=30)
        for _ in range(3):
            items = list(self.graph.paths.items())
            rng.shuffle(items)
            shuffled_paths = {}
            for path, info in items:
                references = list(info.references)
                rng.shuffle(references)
                shuffled_paths[path] = StorePathInfo(
                    info.path, info.nar_size, info.closure_size, references)
            roots = list(self.graph.roots)
            rng.shuffle(roots)
            counts = list(self.popularity.items())
            rng.shuffle(counts)
            shuffled = ClosureGraph(roots=roots, paths=shuffled_paths)
            self.assertEqual(plan_layers(shuffled, dict(counts), budget=30), expected)


class BudgetEdgeTests(SynchronousTestCase):
    """Any closure, any budget the settings allow: the budget is kept."""

    @EXAMPLES
    @given(budget=st.integers(1, MAX_LAYER_BUDGET), extra=st.integers(-3, 3),
           count=st.one_of(st.just(None), st.integers(0, 400)),
           root_share=st.floats(0, 1),
           sizes=st.lists(st.sampled_from((0, 1, 5000, 10 ** 6, 10 ** 9, 10 ** 12)),
                          min_size=1, max_size=6))
    def test_partition_within_budget(self, budget: int, extra: int, count: int | None,
                                     root_share: float, sizes: list[int]) -> None:
        """
        Closures of around ``budget`` paths (exactly it, one more, a few
        fewer) or of any size, with any share of requested packages (more
        than the budget too): at most ``budget`` layers, every path in
        exactly one, no layer empty, and one path a layer while the
        closure fits.
        """
        total = max(0, budget + extra) if count is None else count
        paths = [store("p%d-1" % (index,)) for index in range(total)]
        infos = {path: StorePathInfo(path, sizes[index % len(sizes)],
                                     sizes[index % len(sizes)], [path])
                 for index, path in enumerate(paths)}
        graph = ClosureGraph(roots=paths[:int(total * root_share)], paths=infos)
        layers = plan_layers(graph, None, budget)
        placed = [path for layer in layers for path in layer.paths]
        self.assertLessEqual(len(layers), budget)
        self.assertEqual(sorted(placed), sorted(paths))
        self.assertTrue(all(layer.paths for layer in layers))
        if total <= budget:
            self.assertEqual(len(layers), total)


class StabilityTests(SynchronousTestCase):
    """
    Layers that hold nothing new stay byte-for-byte the same layers when a
    package is added, removed or changed: the point of the design.
    """

    @EXAMPLES
    @given(seed=st.integers(0, 2 ** 32), count=st.integers(41, LAYER_BUDGET - 1),
           size=st.integers(1, 10 ** 8), shared=st.integers(0, 4))
    def test_adding_within_budget(self, seed: int, count: int, size: int,
                                  shared: int) -> None:
        """
        Within the budget, adding a package keeps every earlier layer and
        adds exactly one, holding the new package.
        """
        graph, _ = random_closure(random.Random(seed), count, 3)
        targets = sorted(graph.paths)[:shared]
        before = {layer.paths for layer in plan_layers(graph)}
        after = {layer.paths for layer in plan_layers(
            with_package(graph, "added-1", size, targets))}
        self.assertEqual(after - before, {(store("added-1"),)})
        self.assertEqual(before - after, set())

    @EXAMPLES
    @given(seed=st.integers(0, 2 ** 32), count=st.integers(100, 1500),
           size=st.integers(1, 10 ** 8), shared=st.integers(0, 4))
    def test_adding_past_budget(self, seed: int, count: int, size: int,
                                shared: int) -> None:
        """
        Past the budget, adding a package (a path of its own, referring to
        paths already there) adds its layer and changes no other, unless
        the closure was so near the budget that one more weight class had
        to share layers: then only paths of that class moved.
        """
        graph, popularity = random_closure(random.Random(seed), count, 10)
        targets = sorted(graph.paths)[:shared]
        bigger = with_package(graph, "added-1", size, targets)
        before = plan_layers(graph, popularity)
        after = plan_layers(bigger, popularity)
        light_before = light_classes(graph, popularity)
        light_after = light_classes(bigger, popularity)
        self.assertGreaterEqual(light_after, light_before)
        added = {layer.paths for layer in after} - {layer.paths for layer in before}
        gone = {layer.paths for layer in before} - {layer.paths for layer in after}
        self.assertIn((store("added-1"),), added)
        if light_after == light_before:
            self.assertEqual(added, {(store("added-1"),)})
            self.assertEqual(gone, set())
        moved = set(range(light_before, light_after))
        for paths in (added - {(store("added-1"),)}) | gone:
            self.assertTrue({path_class(path, graph, popularity) for path in paths}
                            <= moved)

    @EXAMPLES
    @given(seed=st.integers(0, 2 ** 32), count=st.integers(45, 1500))
    def test_removing(self, seed: int, count: int) -> None:
        """
        Removing a package drops the layers of the paths only it needed and
        keeps every other, except that fewer weight classes may then need
        to share layers: only paths of those classes move.
        """
        graph, popularity = random_closure(random.Random(seed), count, 6)
        smaller = without_root(graph, graph.roots[0])
        removed = set(graph.paths) - set(smaller.paths)
        before = plan_layers(graph, popularity)
        after = {layer.paths for layer in plan_layers(smaller, popularity)}
        light_after = light_classes(smaller, popularity)
        for layer in before:
            classes = {path_class(path, graph, popularity) for path in layer.paths}
            if removed.isdisjoint(layer.paths) and (
                    len(layer.paths) == 1 or max(classes) < light_after):
                self.assertIn(layer.paths, after)

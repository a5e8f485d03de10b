"""
Timing of the layering algorithm on a large synthetic closure.

Image builds plan their layers on every cache miss, and big images (a
desktop environment, a compiler toolchain) have closures of tens of
thousands of store paths, so :func:`nixeryd.build.layers.plan_layers` has to
stay fast at that size.  This script builds a closure shaped like a real
one and reports how long planning takes.

The closure has:

* a few hundred shared libraries, referring to each other and to a libc,
  and referenced by many packages (the more basic, the more often);
* packages arranged in long dependency chains, with random fan-out to
  other packages and to libraries;
* a handful of very big paths (toolchains, data sets);
* certificates and the IANA tables, which get pinned popularity;
* popularity data for the libraries, skewed so a few are very popular.

Sizes are drawn from a ladder of about fifty values (1 kB to a few
hundred MB), which lets the exact closure sizes be computed quickly.

Run it as ``python bench/layering.py [--paths N] [--runs R] [--seed S]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nixeryd.build.closure import ClosureGraph, StorePathInfo
from nixeryd.build.layers import plan_layers
from nixeryd.core.defaults import LAYER_BUDGET

LIBRARY_COUNT = 300
ROOT_COUNT = 40
BIG_PATH_COUNT = 12
SIZE_STEPS = 56


def store_path(index: int, name: str) -> str:
    """A store path with a fake but well-formed 32-character hash."""
    digest = ("%032x" % (index * 2654435761 % (1 << 128)))[-32:]
    return "/nix/store/%s-%s" % (digest, name)


def synthetic_closure(count: int, seed: int) -> tuple[ClosureGraph, dict[str, int]]:
    """
    A closure of ``count`` store paths and popularity data for it.

    Nodes are numbered so that every reference points to a higher number,
    which makes the graph acyclic; every node but the top-level ones has a
    referrer with a lower number, which makes it reachable.
    """
    rng = random.Random(seed)
    package_count = count - LIBRARY_COUNT
    names = []
    for index in range(count):
        if index < package_count:
            names.append("pkg%d-%d.%d" % (index, rng.randrange(10), rng.randrange(10)))
        else:
            names.append("lib%d-1.%d" % (index - package_count, rng.randrange(30)))
    names[package_count - 1] = "nss-cacert-3.92"
    names[package_count - 2] = "iana-etc-20230316"
    libc = count - 1
    library_weights = [1.0 / (1 + (libc - index)) ** 0.8
                       for index in range(package_count, count)]
    libraries = list(range(package_count, count))

    references: list[set[int]] = [set() for _ in range(count)]
    # Packages: one subsystem per top-level path, each made of chains of
    # random length (each link referring to the next) with fan-out to
    # nearby packages of the same subsystem, to libraries by their weight,
    # and now and then to any later package.
    cuts = sorted(rng.sample(range(1, package_count), ROOT_COUNT - 1))
    starts = [0] + cuts
    ends = cuts + [package_count]
    for first, stop in zip(starts, ends):
        index = first
        while index < stop:
            length = rng.randint(20, 400)
            for link in range(index, min(index + length, stop) - 1):
                references[link].add(link + 1)
            if index > first:
                references[rng.randrange(first, index)].add(index)
            index += length
        for node in range(first, stop - 1):
            for _ in range(rng.choice((0, 0, 0, 1, 1, 2, 4))):
                references[node].add(min(node + rng.randint(1, 60), stop - 1))
            if rng.random() < 0.02:
                references[node].add(rng.randrange(node + 1, package_count))
    for node in range(package_count):
        references[node].update(rng.choices(libraries, library_weights,
                                            k=rng.randint(1, 6)))
        references[node].add(libc)
    for node in range(package_count, libc):
        references[node].add(libc)
        for _ in range(rng.randint(0, 4)):
            references[node].add(rng.randrange(node + 1, count))

    # Sizes come from a fixed ladder of values, so exact closure sizes can
    # be summed class by class with bit counts instead of path by path.
    ladder = [int(1000 * 1.25 ** step) for step in range(SIZE_STEPS)]
    classes = [min(SIZE_STEPS - 1, max(0, int(rng.gauss(20, 7))))
               for _ in range(count)]
    for node in rng.sample(range(count), BIG_PATH_COUNT):
        classes[node] = SIZE_STEPS - 1 - rng.randrange(4)
    nar_sizes = [ladder[step] for step in classes]
    masks = [0] * SIZE_STEPS
    for node, step in enumerate(classes):
        masks[step] |= 1 << node
    closure_sizes = [0] * count
    closures = [0] * count
    for node in range(count - 1, -1, -1):
        bits = 1 << node
        for target in references[node]:
            bits |= closures[target]
        closures[node] = bits
        closure_sizes[node] = sum(size * (bits & mask).bit_count()
                                  for size, mask in zip(ladder, masks) if mask)

    paths = [store_path(node, names[node]) for node in range(count)]
    infos = {}
    for node in range(count):
        own = paths[node]
        refs = sorted(paths[target] for target in references[node]) + [own]
        infos[own] = StorePathInfo(own, nar_sizes[node], closure_sizes[node], refs)
    popularity = {names[node]: max(1, int(50000 * library_weights[node - package_count]))
                  for node in libraries}
    graph = ClosureGraph(roots=[paths[first] for first in starts], paths=infos)
    return graph, popularity


def main() -> None:
    """Build the closure, time the planning and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--budget", type=int, default=LAYER_BUDGET)
    options = parser.parse_args()

    graph, popularity = synthetic_closure(options.paths, options.seed)
    edges = sum(len(info.references) for info in graph.paths.values())
    timings = []
    layers = []
    for _ in range(options.runs):
        started = time.perf_counter()
        layers = plan_layers(graph, popularity, options.budget)
        timings.append(time.perf_counter() - started)
    unmerged = plan_layers(graph, popularity, budget=options.paths + 1)
    biggest = max(len(layer.paths) for layer in layers)
    print("paths:            %d" % (len(graph.paths),))
    print("references:       %d" % (edges,))
    print("layers, no limit: %d" % (len(unmerged),))
    print("layers:           %d (budget %d)" % (len(layers), options.budget))
    print("largest layer:    %d paths" % (biggest,))
    print("runs:             %d" % (options.runs,))
    print("min seconds:      %.3f" % (min(timings),))
    print("median seconds:   %.3f" % (statistics.median(timings),))


if __name__ == "__main__":
    main()

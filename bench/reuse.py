"""
Layer reuse across a sequence of related images.

A registry stores each layer once and a client downloads only the layers
it does not hold, so what a new image costs depends on how many of its
layers earlier images already have.  This script builds a sequence of
related images from ``bench/pkgs`` (add a package, remove one, swap one,
``shell`` combinations, a newer revision of the package set that changes
one leaf package, and a closure with more store paths than an image has
layers), lays out each image with :func:`nixeryd.build.layers.plan_layers`
and, as the baseline, with the dominator-tree layering nixeryd used before
(``bench/dominatorlayers.py``), writes every layer with
:func:`nixeryd.build.archive.write_store_layer` (the builder's own writer,
so sizes and digests are the real ones) and prints for each image and each
layering:

* ``stored``: bytes of store-path layers no earlier image had (what the
  layer cache has to write and the storage to keep);
* ``download``: bytes a client holding every earlier image must fetch,
  the image's customisation layer included;
* ``ideal``: the compressed size of the store paths no earlier image
  holds, each compressed alone;
* ``ratio``: stored / ideal (the target is at most 1.1);
* ``layers``: the image's layer count, customisation layer included
  (the budget is ``LAYER_BUDGET`` + 1).

No popularity data is used.  Run it as ``python bench/reuse.py``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dominatorlayers  # noqa: E402

from nixeryd.build.archive import write_store_layer, write_tree_layer  # noqa: E402
from nixeryd.build.closure import ClosureGraph, StorePathInfo  # noqa: E402
from nixeryd.build.forest import build_customisation  # noqa: E402
from nixeryd.build.layers import plan_layers  # noqa: E402
from nixeryd.core.defaults import LAYER_BUDGET  # noqa: E402

PACKAGE_SET = Path(__file__).resolve().parent / "pkgs"
NIX_OPTIONS = ["--option", "substituters", ""]
SHELL = ("bashInteractive", "coreutils", "moreutils", "nano")
TARGET_RATIO = 1.1

#: (what changes, packages, package set revision).  ``shell`` stands for
#: its four packages, as in an image name.
STEPS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("first image", ("python", "perl", "deepapp"), 1),
    ("add greeter", ("python", "perl", "deepapp", "greeter"), 1),
    ("remove perl", ("python", "deepapp", "greeter"), 1),
    ("swap python for gcc", ("gcc", "deepapp", "greeter"), 1),
    ("shell + python", ("shell", "python"), 1),
    ("shell + gcc + tzdata", ("shell", "gcc", "tzdata"), 1),
    ("revision 2: greeter changed", ("python", "perl", "deepapp", "greeter"), 2),
    ("pystack (past the budget)", ("pystack",), 2),
    ("pystack: add pyapp", ("pyapp", "pystack"), 2),
    ("pystack: revision 3, pyapp changed", ("pyapp", "pystack"), 3),
    ("pystack: remove pyapp", ("pystack",), 3),
    ("pystack: add shell", ("pystack", "shell"), 3),
    ("pystack: add deepapp", ("deepapp", "pystack", "shell"), 3),
)

Planner = Callable[[ClosureGraph, Mapping[str, int], int], Sequence[Sequence[str]]]


def new_layering(graph: ClosureGraph, popularity: Mapping[str, int],
                 budget: int) -> list[tuple[str, ...]]:
    """Layers of :mod:`nixeryd.build.layers`."""
    return [layer.paths for layer in plan_layers(graph, popularity, budget)]


def dominator_layering(graph: ClosureGraph, popularity: Mapping[str, int],
                       budget: int) -> list[tuple[str, ...]]:
    """Layers of the baseline."""
    return [layer.paths
            for layer in dominatorlayers.plan_layers(graph, popularity, budget)]


LAYERINGS: tuple[tuple[str, Planner], ...] = (
    ("path by path (nixeryd)", new_layering),
    ("dominator tree (before)", dominator_layering),
)


def packages(names: Sequence[str]) -> list[str]:
    """The attributes of an image: ``shell`` expanded, sorted, unique."""
    expanded: list[str] = []
    for name in names:
        expanded.extend(SHELL if name == "shell" else (name,))
    return sorted(set(expanded))


def build(attributes: Sequence[str], revision: int) -> ClosureGraph:
    """Build some attributes of the package set; their closure from Nix."""
    selectors = [argument for attribute in attributes for argument in ("-A", attribute)]
    built = subprocess.run(
        ["nix-build", *NIX_OPTIONS, "--no-out-link", str(PACKAGE_SET),
         "--arg", "revision", str(revision), *selectors],
        check=True, capture_output=True, text=True)
    roots = built.stdout.split()
    listed = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "path-info",
         *NIX_OPTIONS, "--json", "--recursive", "--closure-size", *roots],
        check=True, capture_output=True, text=True)
    document = json.loads(listed.stdout)
    entries = document.items() if isinstance(document, dict) else (
        (entry["path"], entry) for entry in document)
    infos = {path: StorePathInfo(path=path, nar_size=entry["narSize"],
                                 closure_size=entry["closureSize"],
                                 references=entry["references"])
             for path, entry in entries}
    return ClosureGraph(roots=roots, paths=infos)


class Layers:
    """Writes each distinct layer once; remembers digests and sizes."""

    def __init__(self, directory: str, workers: int) -> None:
        self._directory = directory
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        self._written: dict[tuple[str, ...], tuple[str, int]] = {}

    def write(self, layers: Sequence[Sequence[str]]) -> None:
        """Write the layers not written yet, in parallel."""
        missing = sorted({tuple(sorted(layer)) for layer in layers} - set(self._written))
        for paths, blob in zip(missing, self._pool.map(self._write_one, missing)):
            self._written[paths] = blob

    def _write_one(self, paths: tuple[str, ...]) -> tuple[str, int]:
        blob = write_store_layer(list(paths), self._directory)
        os.unlink(blob.path)
        return blob.digest, blob.size

    def blob(self, layer: Sequence[str]) -> tuple[str, int]:
        """Digest and size of a written layer."""
        return self._written[tuple(sorted(layer))]

    def close(self) -> None:
        """Stop the threads."""
        self._pool.shutdown()


def customisation_blob(graph: ClosureGraph, directory: str) -> tuple[str, int]:
    """Digest and size of the image's customisation layer."""
    custom = build_customisation(list(dict.fromkeys(graph.roots)))
    blob = write_tree_layer(list(custom.entries), directory)
    os.unlink(blob.path)
    return blob.digest, blob.size


def main() -> None:
    """Build the sequence and print both layerings side by side."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=LAYER_BUDGET)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    options = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="nixeryd-reuse-")
    layers = Layers(directory, options.workers)
    try:
        graphs = [build(packages(names), revision) for _, names, revision in STEPS]
        plans = {name: [planner(graph, {}, options.budget) for graph in graphs]
                 for name, planner in LAYERINGS}
        singles = [[(path,) for path in graph.paths] for graph in graphs]
        for planned in [*singles, *(each for name in plans for each in plans[name])]:
            layers.write(planned)
        customs = [customisation_blob(graph, directory) for graph in graphs]
        report(graphs, plans, customs, layers, options.budget)
    finally:
        layers.close()
        shutil.rmtree(directory)


def report(graphs: Sequence[ClosureGraph],
           plans: Mapping[str, Sequence[Sequence[Sequence[str]]]],
           customs: Sequence[tuple[str, int]], layers: Layers, budget: int) -> None:
    """Print one table per layering and whether every step met the target."""
    ideals = []
    held: set[str] = set()
    for graph in graphs:
        new_paths = set(graph.paths) - held
        ideals.append(sum(layers.blob((path,))[1] for path in new_paths))
        held.update(graph.paths)
    verdicts: dict[str, list[str]] = {}
    for name, _ in LAYERINGS:
        print("\n%s  (budget %d store-path layers + 1, no popularity data)"
              % (name, budget))
        print("%-30s %6s %12s %12s %12s %7s %7s"
              % ("image", "paths", "stored", "download", "ideal", "ratio", "layers"))
        stored_digests: set[str] = set()
        client: set[str] = set()
        missed = []
        for (label, _, _), graph, planned, custom, ideal in zip(
                STEPS, graphs, plans[name], customs, ideals):
            blobs = {layers.blob(layer) for layer in planned}
            stored = sum(size for digest, size in blobs if digest not in stored_digests)
            stored_digests.update(digest for digest, _ in blobs)
            image = blobs | {custom}
            download = sum(size for digest, size in image if digest not in client)
            client.update(digest for digest, _ in image)
            if ideal:
                ratio = stored / ideal
            else:
                ratio = 1.0 if stored == 0 else float("inf")
            if ratio > TARGET_RATIO:
                missed.append("%s (%s bytes for %s)" % (label, "{:,}".format(stored),
                                                        "{:,}".format(ideal)))
            print("%-30s %6d %12s %12s %12s %7s %7d"
                  % (label, len(graph.paths), "{:,}".format(stored),
                     "{:,}".format(download), "{:,}".format(ideal),
                     "%.2fx" % ratio if ideal else ("=0" if stored == 0 else "inf"),
                     len(planned) + 1))
        verdicts[name] = missed
    print()
    for name, missed in verdicts.items():
        print("%s: stored at most %.1fx the ideal in %d of %d steps%s"
              % (name, TARGET_RATIO, len(STEPS) - len(missed), len(STEPS),
                 "" if not missed else "; over it: " + "; ".join(missed)))


if __name__ == "__main__":
    main()

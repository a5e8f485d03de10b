"""
Every benchmark of ``bench/``, one after another, each printing its
figures beside its reference and its target.

Run from the repository root as root, after ``dev/setup``::

    .venv/bin/python bench/all.py [--runs 3] [--only reuse,coldbuild,...]

``--runs`` sets the repetitions of the noisy measurements (assembly, cold
builds, concurrent pulls, redirects); the machine's load shows in their
spread, so each run's figures are printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))


def benchmarks(runs: int) -> dict[str, list[str]]:
    """Each benchmark's script and arguments, in the order they run."""
    return {
        "reuse": ["reuse.py"],
        "layering": ["layering.py"],
        "assemble": ["assemble.py", "--runs", str(runs)],
        "coldbuild": ["coldbuild.py", "--runs", str(runs)],
        "registry": ["registry.py", "--seconds", "5", "--rounds", "3",
                     "--pull-rounds", str(runs)],
        "redirects": ["redirects.py", "--rounds", str(runs)],
    }


def main() -> int:
    """Run the chosen benchmarks; the exit code is the number that failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="",
                        help="comma-separated names: " + ", ".join(benchmarks(1)))
    options = parser.parse_args()
    chosen = benchmarks(options.runs)
    if options.only:
        names = options.only.split(",")
        unknown = [name for name in names if name not in chosen]
        if unknown:
            parser.error("unknown benchmarks: " + ", ".join(unknown))
        chosen = {name: chosen[name] for name in names}
    failed = 0
    for name, (script, *arguments) in chosen.items():
        print("=== %s: bench/%s %s" % (name, script, " ".join(arguments)), flush=True)
        started = time.monotonic()
        code = subprocess.run([sys.executable, os.path.join(BENCH, script), *arguments]
                              ).returncode
        print("=== %s: %s in %.0f s\n" % (name, "done" if code == 0 else "FAILED (exit %d)"
                                          % (code,), time.monotonic() - started), flush=True)
        failed += code != 0
    return failed


if __name__ == "__main__":
    sys.exit(main())

"""
Cold builds through the daemon: the full image, then the same image with
one small package more, and the longest reactor stall meanwhile.

Each run starts ``nixeryd serve`` on fresh filesystem storage with
``bench/pkgs``, under ``bench/stallprobe.py`` (a looping call every 5 ms
on the reactor that reports how late it came), after Nix has built every
package the images need (so the figures are nixeryd's, not Nix's), and
with the closure in the page cache.  It then times, from the request to
the manifest:

* **cold**: ``image/deepapp`` (about 270 MB of store paths): evaluation,
  Nix's closure query, layering, writing and storing every layer;
* **incremental**: ``image/deepapp/greeter``, one small package more than
  the image just served (``greeter`` uses a library ``deepapp`` already
  brings): with layers that survive the change, only the new package's
  layer and the customisation layer are written;

and prints for each the wall time, the time in each build phase (from the
daemon's ``nixeryd_build_phase_seconds``), the longest reactor stall, and,
beside them, the references measured in the same run:
``tar -c <closure> | gzip -6 | sha256sum`` for the cold build, and the time
:func:`nixeryd.build.archive.write_store_layer` takes to compress the new
paths for the incremental one.

Targets: the incremental build's time after Nix (its ``layering`` phase)
at most 0.2 s plus the compression of its new paths; the longest reactor
stall under 50 ms.

Run as root after ``dev/setup``: ``.venv/bin/python bench/coldbuild.py
[--runs 3]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from stallprobe import read_reactor_cpu, read_stalls  # noqa: E402

from nixeryd.build.archive import write_store_layer  # noqa: E402
from tests.daemon import Daemon  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
PACKAGE_SET = os.path.join(BENCH, "pkgs")
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
PHASES = ("evaluating", "building", "layering")
STALL_TARGET = 0.050
INCREMENTAL_ALLOWANCE = 0.2


def nix_build(*attributes: str) -> list[str]:
    """Build attributes of the package set; their output paths."""
    selectors = [word for attribute in attributes for word in ("-A", attribute)]
    return subprocess.run(
        ["nix-build", "--option", "substituters", "", "--no-out-link", PACKAGE_SET,
         *selectors], check=True, capture_output=True, text=True).stdout.split()


def closure(roots: list[str]) -> list[str]:
    """The store paths of the closure of ``roots``."""
    return subprocess.run(["nix-store", "-qR", *roots], check=True,
                          capture_output=True, text=True).stdout.split()


def reference_seconds(paths: list[str]) -> float:
    """Wall time of ``tar -c | gzip -6 | sha256sum`` over ``paths``."""
    started = time.perf_counter()
    subprocess.run(["sh", "-c", 'tar -c -- "$@" | gzip -6 | sha256sum', "sh", *paths],
                   check=True, capture_output=True)
    return time.perf_counter() - started


def compress_seconds(paths: list[str], directory: str) -> float:
    """Time to write each of ``paths`` as a layer of its own, one after another."""
    started = time.perf_counter()
    for path in paths:
        os.unlink(write_store_layer([path], directory).path)
    return time.perf_counter() - started


def phase_sums(daemon: Daemon) -> dict[str, float]:
    """Seconds spent so far in each build phase, from ``/metrics``."""
    _, _, body = daemon.request("/metrics")
    sums = {}
    for phase in PHASES:
        found = re.search(r'^nixeryd_build_phase_seconds_sum\{phase="%s"\} (\S+)$' % (phase,),
                          body.decode(), re.MULTILINE)
        sums[phase] = float(found.group(1)) if found else 0.0
    return sums


def timed_pull(daemon: Daemon, image: str, probe: str) -> dict[str, float]:
    """Request a manifest; wall time, phase times and the longest stall."""
    before = phase_sums(daemon)
    started = time.monotonic()
    status, _, body = daemon.request("/v2/%s/manifests/latest" % (image,),
                                     headers={"Accept": DOCKER_MANIFEST})
    ended = time.monotonic()
    if status != 200:
        raise SystemExit("nixeryd could not build %s: %s"
                         % (image, body[:2000].decode("utf-8", "replace")))
    # The metrics are written when the build's record ends, just after the
    # manifest is answered.
    time.sleep(0.2)
    after = phase_sums(daemon)
    figures = {phase: after[phase] - before[phase] for phase in PHASES}
    figures["wall"] = ended - started
    figures["stall"], figures["stall_cpu"], figures["stall_queued"] = max(
        read_stalls(probe, started, ended), default=(0.0, 0.0, 0.0))
    # The probe samples every 0.1 s: wait for the sample after the end.
    time.sleep(0.3)
    figures["reactor_cpu"] = read_reactor_cpu(probe, started, ended)
    return figures


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()

    image_root, deepapp_root, greeter_root = nix_build("image", "deepapp", "greeter")
    image_paths = closure([image_root, deepapp_root])
    new_paths = sorted(set(closure([image_root, deepapp_root, greeter_root]))
                       - set(image_paths))
    subprocess.run(["tar", "-cf", "/dev/null", "--", *image_paths, *new_paths], check=True)
    print("image/deepapp: %d store paths; image/deepapp/greeter adds %d (%s)"
          % (len(image_paths), len(new_paths),
             ", ".join(path.split("-", 1)[1] for path in new_paths)))
    print("%-4s %-12s %8s %8s %8s %8s %9s %8s %9s %11s %8s %10s"
          % ("run", "pull", "wall s", "eval s", "nix s", "layer s", "stall ms",
             "(cpu ms", "queued)", "reactor ms", "ref s", "ratio"))
    worst_stall = 0.0
    for run in range(1, options.runs + 1):
        workdir = tempfile.mkdtemp(prefix="nixeryd-coldbuild-")
        probe = os.path.join(workdir, "stalls")
        daemon = Daemon(workdir, "--pkgs-path", PACKAGE_SET,
                        entry=(os.path.join(BENCH, "stallprobe.py"), probe))
        try:
            reference = reference_seconds(image_paths)
            compress = compress_seconds(new_paths, workdir)
            daemon.start(timeout=60)
            cold = timed_pull(daemon, "image/deepapp", probe)
            incremental = timed_pull(daemon, "image/deepapp/greeter", probe)
        finally:
            daemon.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        for label, figures, ref, allowance in (
                ("cold", cold, reference, None),
                ("incremental", incremental, compress, INCREMENTAL_ALLOWANCE)):
            ratio = (figures["layering"] / ref if allowance is None
                     else figures["layering"] - ref)
            print("%-4d %-12s %8.3f %8.3f %8.3f %8.3f %9.1f %8.1f %9.1f %11.0f %8.3f %10s"
                  % (run, label, figures["wall"], figures["evaluating"],
                     figures["building"], figures["layering"], figures["stall"] * 1000,
                     figures["stall_cpu"] * 1000, figures["stall_queued"] * 1000,
                     figures["reactor_cpu"] * 1000, ref, ("%.3fx" % ratio) if allowance is None else ("+%.3f s" % ratio)))
            worst_stall = max(worst_stall, figures["stall"])
    print("cold: ratio = layering / (tar | gzip -6 | sha256sum of the closure)")
    print("incremental: ref = compressing its new paths; +N s = layering - ref "
          "(target at most +%.1f s)" % (INCREMENTAL_ALLOWANCE,))
    print("stall: the longest lateness of a 5 ms looping call on the daemon's reactor;"
          " cpu: what the reactor thread itself used meanwhile; queued: how long it waited"
          " for a core; reactor: CPU the reactor thread used during the whole pull (the"
          " probe's calls included)")
    print("longest reactor stall: %.1f ms (target under %.0f ms)"
          % (worst_stall * 1000, STALL_TARGET * 1000))


if __name__ == "__main__":
    main()

"""
Timing of layer assembly against ``tar | gzip -6 | sha256sum``.

Writing the layers of an image is the bulk of a cache-missing build once
Nix is done, so it has to be much faster than the obvious shell pipeline.
This script builds the package set of ``bench/pkgs`` (real host binaries
and libraries copied into the store), takes the closure of its ``image``
package, and measures side by side, on a warm page cache:

* the reference: ``tar -c <closure paths> | gzip -6 | sha256sum``;
* the assembly: the closure grouped into layers by
  :func:`nixeryd.build.layers.plan_layers` and each layer written with
  :func:`nixeryd.build.archive.write_store_layer` in a thread pool, in a child
  process so that its peak memory is its own.

It prints the closure size, both wall times, their ratio, the compressed
size and the peak RSS of the assembling process, then checks every blob's
digest.  The ratio is taken on the assembly itself, timed inside the child
from the first layer started to the last one written, as it runs in the
daemon, whose interpreter is already up; the child's CPU time, interpreter
start-up included, is printed beside it.

Each run also prints the floor of the work on this machine: the CPU time of
the three passes every layer needs over its bytes (isal deflate of the tar
stream, the sha256 of the tar stream for the ``diff_id`` and the sha256 of
the gzip stream for the digest), measured one pass at a time on the very
streams just written, on the CPU clock of the thread that runs them, and
that total divided by the CPUs, as a ratio of the same reference.  No
assembly that writes these layers (isal deflate at this level) and names
them can go below it; reading and writing the files comes on top.

Run it as ``python bench/assemble.py [--level N] [--workers N] [--runs N]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from isal import isal_zlib

from nixeryd.build.archive import DEFAULT_COMPRESS_LEVEL, hash_file, write_store_layer
from nixeryd.build.closure import ClosureGraph, StorePathInfo
from nixeryd.build.tarstream import CHUNK_SIZE

PACKAGE_SET = Path(__file__).resolve().parent / "pkgs"
NIX_OPTIONS = ["--option", "substituters", ""]
MB = 1000 * 1000
#: CPUs the assembly can use, which divide the floor of its work.
CPUS = os.cpu_count() or 1
#: Most assembly time per second of the reference (issue target for the
#: ~250 MB closure).
TARGET_RATIO = 0.04


def build_image(attribute: str) -> str:
    """Build one attribute of the bench package set; return its store path."""
    built = subprocess.run(
        ["nix-build", *NIX_OPTIONS, "--no-out-link", str(PACKAGE_SET),
         "-A", attribute],
        check=True, capture_output=True, text=True)
    return built.stdout.strip().splitlines()[-1]


def closure_graph(root: str) -> ClosureGraph:
    """The closure of ``root`` with sizes and references, from Nix."""
    listed = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "path-info",
         *NIX_OPTIONS, "--json", "--recursive", "--closure-size", root],
        check=True, capture_output=True, text=True)
    infos = {}
    for entry in json.loads(listed.stdout):
        infos[entry["path"]] = StorePathInfo(
            path=entry["path"], nar_size=entry["narSize"],
            closure_size=entry["closureSize"], references=entry["references"])
    closure = subprocess.run(["nix-store", "-qR", root], check=True,
                             capture_output=True, text=True).stdout.split()
    if sorted(closure) != sorted(infos):
        raise RuntimeError("nix path-info and nix-store -qR disagree")
    return ClosureGraph(roots=[root], paths=infos)


def plan(graph: ClosureGraph, groups: int) -> list[list[str]]:
    """
    The layers of the closure: planned by :mod:`nixeryd.build.layers` when it is
    available, else the sorted paths dealt into ``groups`` groups.
    """
    try:
        from nixeryd.build.layers import plan_layers
    except ImportError:
        paths = sorted(graph.paths)
        return [paths[index::groups] for index in range(groups)
                if paths[index::groups]]
    return [list(layer.paths) for layer in plan_layers(graph)]


def warm_cache(paths: list[str]) -> None:
    """Read every file once so both measurements start from memory."""
    subprocess.run(["tar", "-cf", "/dev/null", "--", *paths], check=True,
                   stderr=subprocess.DEVNULL)
    subprocess.run(["sh", "-c", 'cat -- $(find "$@" -type f) > /dev/null', "sh",
                    *paths], check=True)


def reference(paths: list[str]) -> tuple[float, str]:
    """Wall time and output of ``tar -c | gzip -6 | sha256sum``."""
    started = time.perf_counter()
    result = subprocess.run(
        ["sh", "-c", 'tar -c -- "$@" | gzip -6 | sha256sum', "sh", *paths],
        check=True, capture_output=True, text=True)
    return time.perf_counter() - started, result.stdout.split()[0]


def assemble_in_child(layers: list[list[str]], level: int, workers: int,
                      directory: str) -> dict[str, Any]:
    """
    Run :func:`assemble`, then :func:`work_floor`, in a fresh Python
    process, so that the peak RSS it reports is the assembly's own.

    :returns: the child's report.
    """
    request = json.dumps({"layers": layers, "level": level, "workers": workers,
                          "directory": directory})
    child = subprocess.run([sys.executable, __file__, "--child"], input=request,
                           check=True, capture_output=True, text=True)
    report: dict[str, Any] = json.loads(child.stdout)
    return report


def assemble(layers: list[list[str]], level: int, workers: int,
             directory: str) -> dict[str, Any]:
    """
    Write every layer in a thread pool, biggest first, and report the
    time, the blobs and the peak RSS of this process.
    """
    order = sorted(range(len(layers)), key=lambda index: -layer_bytes(layers[index]))
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {index: pool.submit(write_store_layer, layers[index], directory,
                                      compress_level=level)
                   for index in order}
        blobs = [futures[index].result() for index in range(len(layers))]
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "max_rss_kib": usage.ru_maxrss,
        "blobs": [{"digest": blob.digest, "diff_id": blob.diff_id,
                   "size": blob.size, "path": blob.path} for blob in blobs],
    }


def layer_bytes(paths: list[str]) -> int:
    """Apparent size of the files of some store paths, for scheduling."""
    total = 0
    for path in paths:
        for directory, _, files in os.walk(path):
            for name in files:
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def verify(blobs: list[dict[str, Any]]) -> None:
    """Check each blob's digest and size against its file."""
    for blob in blobs:
        digest, size = hash_file(blob["path"])
        if ("sha256:" + digest, size) != (blob["digest"], blob["size"]):
            raise RuntimeError("blob %s does not match its digest" % (blob["path"],))


def work_floor(blobs: list[dict[str, Any]], level: int) -> dict[str, float]:
    """
    CPU seconds of one core that the three passes over the layers' bytes
    take, each timed alone on this thread's CPU clock (so that other work
    on a shared machine does not lengthen it): deflate of the tar stream at
    ``level``, the sha256 of the tar stream, the sha256 of the gzip stream.
    The tar stream is recovered by decompressing each blob, which is not
    timed, and handed on in the writer's chunks.
    """
    clock = time.thread_time
    spent = {"deflate": 0.0, "sha256_tar": 0.0, "sha256_gzip": 0.0}
    for blob in blobs:
        compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED,
                                           16 + isal_zlib.MAX_WBITS)
        tar_hash, gzip_hash = hashlib.sha256(), hashlib.sha256()
        for tar_bytes in tar_chunks(blob["path"]):
            started = clock()
            tar_hash.update(tar_bytes)
            hashed = clock()
            deflated = compressor.compress(tar_bytes)
            deflated_at = clock()
            gzip_hash.update(deflated)
            spent["sha256_tar"] += hashed - started
            spent["deflate"] += deflated_at - hashed
            spent["sha256_gzip"] += clock() - deflated_at
        started = clock()
        deflated = compressor.flush()
        deflated_at = clock()
        gzip_hash.update(deflated)
        spent["deflate"] += deflated_at - started
        spent["sha256_gzip"] += clock() - deflated_at
        if "sha256:" + tar_hash.hexdigest() != blob["diff_id"]:
            raise RuntimeError("blob %s does not unpack to its diff_id" % (blob["path"],))
    return spent


def tar_chunks(path: str) -> Iterator[bytes]:
    """
    The tar stream of the gzip blob at ``path`` in chunks of
    :data:`CHUNK_SIZE` bytes, the last one shorter, as the writer hands
    them to the hashes and the compressor.
    """
    decompressor = isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)
    pending = bytearray()
    with open(path, "rb") as source:
        while compressed := source.read(CHUNK_SIZE):
            pending += decompressor.decompress(compressed)
            whole = len(pending) - len(pending) % CHUNK_SIZE
            for start in range(0, whole, CHUNK_SIZE):
                yield bytes(pending[start:start + CHUNK_SIZE])
            del pending[:whole]
    pending += decompressor.flush()
    for start in range(0, len(pending), CHUNK_SIZE):
        yield bytes(pending[start:start + CHUNK_SIZE])


def child_main() -> None:
    """Entry point of the assembling child: request on stdin, report on stdout."""
    request = json.loads(sys.stdin.read())
    report = assemble(request["layers"], request["level"], request["workers"],
                      request["directory"])
    report["floor"] = work_floor(report["blobs"], request["level"])
    json.dump(report, sys.stdout)


def main() -> None:
    """Build, measure side by side, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--attribute", default="image",
                        help="package of bench/pkgs whose closure is archived")
    parser.add_argument("--level", type=int, default=DEFAULT_COMPRESS_LEVEL,
                        help="isal compression level, 0-3")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="threads writing layers")
    parser.add_argument("--groups", type=int, default=8,
                        help="layers to make when nixeryd.build.layers is missing")
    parser.add_argument("--runs", type=int, default=1,
                        help="side-by-side measurements to take")
    options = parser.parse_args()
    if options.child:
        child_main()
        return

    root = build_image(options.attribute)
    graph = closure_graph(root)
    paths = sorted(graph.paths)
    layers = plan(graph, options.groups)
    total = graph.total_size()
    print("closure: %d store paths, %.1f MB (NAR), %d layers"
          % (len(paths), total / MB, len(layers)))
    print("assembly: isal level %d, %d worker threads"
          % (options.level, options.workers))
    warm_cache(paths)

    ratios: list[float] = []
    floors: list[float] = []
    for run in range(options.runs):
        reference_seconds, _ = reference(paths)
        directory = tempfile.mkdtemp(prefix="nixeryd-bench-")
        try:
            report = assemble_in_child(
                layers, options.level, options.workers, directory)
            verify(report["blobs"])
        finally:
            shutil.rmtree(directory)
        compressed = sum(blob["size"] for blob in report["blobs"])
        ratio = report["seconds"] / reference_seconds
        ratios.append(ratio)
        floor = report["floor"]
        floor_seconds = sum(floor.values()) / CPUS
        floors.append(floor_seconds / reference_seconds)
        print("run %d: reference %.2f s (%.0f MB/s) | assembly %.2f s (%.0f MB/s; "
              "child's CPU %.2f s, start-up included) | ratio %.3f | "
              "compressed %.1f MB (%.1f%%) | peak RSS %.1f MB"
              % (run + 1, reference_seconds, total / MB / reference_seconds,
                 report["seconds"], total / MB / report["seconds"],
                 report["cpu_seconds"], ratio, compressed / MB,
                 100.0 * compressed / total, report["max_rss_kib"] * 1024 / MB))
        print("       floor: deflate %.2f s + sha256 of tar %.2f s + sha256 of gzip "
              "%.2f s of one core, over %d CPUs %.2f s | ratio %.3f"
              % (floor["deflate"], floor["sha256_tar"], floor["sha256_gzip"], CPUS,
                 floor_seconds, floors[-1]))
    print("median ratio %.3f (floor %.3f, target at most %.2f)"
          % (statistics.median(ratios), statistics.median(floors), TARGET_RATIO))


if __name__ == "__main__":
    main()

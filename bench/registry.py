"""
Serving speed of nixeryd next to Debian's docker-registry, in one run.

Starts ``twistd nixery`` (filesystem storage, building ``bench/pkgs`` or
the offline test package set) and docker-registry on loopback, builds one
image with nixeryd, copies it into docker-registry with skopeo (same
manifest, same blobs), then measures on both:

- warm manifest GETs by tag: ``wrk`` with keep-alive, 16 connections;
- blob throughput for the largest layer: one stream and eight at once
  (curl to /dev/null).

Run from the repository root as root, after ``dev/setup``::

    .venv/bin/python bench/registry.py [--image image] [--seconds 10]

Needs: nix, skopeo, docker-registry, wrk, curl.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.daemon import Daemon, free_port  # noqa: E402

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
BENCH_PKGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pkgs")


def start_docker_registry(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    """docker-registry on a free loopback port, no auth, no TLS."""
    address = "127.0.0.1:%d" % (free_port(),)
    config = os.path.join(workdir, "registry.yml")
    with open(config, "w") as f:
        f.write("version: 0.1\n"
                "log: {level: error, accesslog: {disabled: true}}\n"
                "storage:\n"
                "  filesystem: {rootdirectory: %s}\n"
                "  cache: {blobdescriptor: inmemory}\n"
                "http:\n  addr: %s\n"
                "health: {storagedriver: {enabled: false}}\n"
                % (os.path.join(workdir, "regdata"), address))
    process = subprocess.Popen(["docker-registry", "serve", config],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if subprocess.run(["curl", "-sf", "http://%s/v2/" % (address,)],
                          capture_output=True).returncode == 0:
            return process, address
        time.sleep(0.1)
    process.kill()
    raise SystemExit("docker-registry did not start")


def wrk_requests_per_second(url: str, seconds: int) -> float:
    """Requests per second that wrk reaches on ``url`` (2 threads, 16 connections)."""
    out = subprocess.run(
        ["wrk", "-t2", "-c16", "-d%ds" % (seconds,), "-H", "Accept: " + DOCKER_MANIFEST, url],
        capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit("wrk saw %s failed responses from %s" % (non2xx.group(1), url))
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise SystemExit("wrk reported no request rate for %s:\n%s" % (url, out))
    return float(rate.group(1))


def download(url: str) -> tuple[int, float]:
    """Bytes and seconds for one curl download to /dev/null."""
    out = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w",
                          "%{size_download} %{time_total}", url],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1])


def blob_throughput(url: str, streams: int, rounds: int) -> float:
    """Median aggregate MB/s of ``streams`` parallel downloads, over ``rounds``."""
    figures = []
    for _ in range(rounds):
        started = time.monotonic()
        with ThreadPoolExecutor(streams) as pool:
            sizes = [size for size, _ in pool.map(lambda _: download(url), range(streams))]
        figures.append(sum(sizes) / (time.monotonic() - started) / 1e6)
    return statistics.median(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pkgs", default=BENCH_PKGS, help="package set (default bench/pkgs)")
    parser.add_argument("--image", default="image", help="image name (default: image)")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration")
    parser.add_argument("--rounds", type=int, default=5, help="blob download rounds")
    args = parser.parse_args()
    for tool in ("skopeo", "docker-registry", "wrk", "curl", "nix-build"):
        if shutil.which(tool) is None:
            raise SystemExit("%s is not installed (dev/setup installs it)" % (tool,))

    workdir = tempfile.mkdtemp(prefix="nixeryd-bench-")
    ours = Daemon(workdir, "--pkgs-path", args.pkgs)
    registry = None
    try:
        ours.start(timeout=60)
        started = time.monotonic()
        status, headers, body = ours.request("/v2/%s/manifests/latest" % (args.image,),
                                             headers={"Accept": DOCKER_MANIFEST})
        if status != 200:
            raise SystemExit("nixeryd could not build %s: %s" % (
                args.image, body[:2000].decode("utf-8", "replace")))
        print("cold build of %s: %.2f s" % (args.image, time.monotonic() - started))
        manifest = json.loads(body)
        digest = headers["docker-content-digest"]
        layer = max(manifest["layers"], key=lambda l: l["size"])

        registry, address = start_docker_registry(workdir)
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                        "--dest-tls-verify=false", "--preserve-digests",
                        "docker://%s/%s:latest" % (ours.address, args.image),
                        "docker://%s/%s:latest" % (address, args.image)],
                       check=True)
        theirs = subprocess.run(
            ["curl", "-sfI", "-H", "Accept: " + DOCKER_MANIFEST,
             "http://%s/v2/%s/manifests/latest" % (address, args.image)],
            capture_output=True, text=True, check=True).stdout
        if digest not in theirs:
            raise SystemExit("docker-registry serves another manifest:\n" + theirs)

        rows = []
        for label, host in (("nixeryd", ours.address), ("docker-registry", address)):
            base = "http://%s/v2/%s" % (host, args.image)
            rows.append((
                label,
                wrk_requests_per_second(base + "/manifests/latest", args.seconds),
                blob_throughput(base + "/blobs/" + layer["digest"], 1, args.rounds),
                blob_throughput(base + "/blobs/" + layer["digest"], 8, args.rounds),
            ))
        print("image %s: %d layers, largest %.1f MB; %d CPUs"
              % (args.image, len(manifest["layers"]), layer["size"] / 1e6,
                 os.cpu_count() or 0))
        print("%-16s %16s %16s %16s" % ("", "manifest req/s", "blob MB/s (1)", "blob MB/s (8)"))
        for label, rps, one, eight in rows:
            print("%-16s %16.0f %16.0f %16.0f" % (label, rps, one, eight))
        (_, r1, o1, e1), (_, r2, o2, e2) = rows
        print("%-16s %15.2fx %15.2fx %15.2fx" % ("ratio", r1 / r2, o1 / o2, e1 / e2))
        print("targets: manifests >= 5x, blobs >= 1x")
    finally:
        ours.stop()
        if registry is not None:
            registry.terminate()
            registry.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

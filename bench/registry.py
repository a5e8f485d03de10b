"""
Serving speed of nixeryd next to Debian's docker-registry, in one run.

Starts ``twistd nixery`` (filesystem storage, building ``bench/pkgs`` or
the offline test package set) and docker-registry on loopback, builds one
image with nixeryd, copies it into docker-registry with skopeo (same
manifest, same blobs), then measures on both:

- warm manifest GETs by tag: ``wrk`` with keep-alive, 16 connections;
- blob throughput for the largest layer: one stream and eight at once
  (curl to /dev/null);
- many clients at once: ``--clients`` (200) curl processes, each pulling
  the whole image over one keep-alive connection (the manifest, then
  every blob in turn), all started together: the aggregate throughput,
  the manifest latencies' median and 99th percentile, and each server's
  peak RSS afterwards;
- idle connections: warm manifests with wrk again while ``--idle``
  (2,000) keep-alive connections that each made one request are held
  open, against the rate without them (before and after), on nixeryd.

Every client runs on loopback, so all come from one address: the daemon
is started with ``--max-connections-per-client 4096`` (the default, 64,
is meant for distinct clients) and ``--idle-timeout 600``, so that the
idle connections stay for the whole measurement.

Run from the repository root as root, after ``dev/setup``::

    .venv/bin/python bench/registry.py [--image image] [--seconds 10]
        [--clients 200] [--pull-rounds 2] [--idle 2000]

Needs: nix, skopeo, docker-registry, wrk, curl.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
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


def pull_command(base: str, manifest: dict[str, object]) -> list[str]:
    """A curl command that pulls the whole image over one connection."""
    argv = ["curl", "-sf", "-H", "Accept: " + DOCKER_MANIFEST,
            "-w", "%{size_download} %{time_total}\n",
            "-o", "/dev/null", base + "/manifests/latest"]
    layers = manifest["layers"]
    assert isinstance(layers, list)
    config = manifest["config"]
    assert isinstance(config, dict)
    for descriptor in [config] + layers:
        argv += ["-o", "/dev/null", base + "/blobs/" + descriptor["digest"]]
    return argv


def concurrent_pulls(base: str, manifest: dict[str, object],
                     clients: int) -> tuple[float, list[float]]:
    """
    ``clients`` whole-image pulls at once: aggregate MB/s and each
    client's manifest latency in seconds.
    """
    argv = pull_command(base, manifest)
    started = time.monotonic()
    processes = [subprocess.Popen(argv, stdout=subprocess.PIPE)
                 for _ in range(clients)]
    outputs = [process.communicate()[0].decode() for process in processes]
    seconds = time.monotonic() - started
    total = 0
    latencies = []
    for process, output in zip(processes, outputs):
        if process.returncode != 0:
            raise SystemExit("a pull from %s failed (curl exit %d)"
                             % (base, process.returncode))
        lines = [line.split() for line in output.splitlines()]
        total += sum(int(size) for size, _ in lines)
        latencies.append(float(lines[0][1]))
    return total / seconds / 1e6, latencies


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(fraction * len(ordered))) - 1))]


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size of a process (``VmHWM``), in MB."""
    with open("/proc/%d/status" % (pid,)) as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def hold_idle_connections(address: str, count: int) -> list[socket.socket]:
    """``count`` keep-alive connections, each after one answered request."""
    host, port = address.rsplit(":", 1)
    held = []
    for _ in range(count):
        connection = socket.create_connection((host, int(port)))
        connection.sendall(b"GET /v2/ HTTP/1.1\r\nHost: %s\r\n\r\n" % (address.encode(),))
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = connection.recv(65536)
            if not chunk:
                raise SystemExit("an idle connection was closed before its answer")
            answer += chunk
        if not answer.startswith(b"HTTP/1.1 200"):
            raise SystemExit("an idle connection was refused: %r" % (answer[:200],))
        held.append(connection)
    return held


def still_open(connections: list[socket.socket]) -> int:
    """How many of ``connections`` the server has not closed."""
    open_count = 0
    for connection in connections:
        try:
            if connection.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK):
                open_count += 1
        except BlockingIOError:
            open_count += 1
        except OSError:
            pass
    return open_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pkgs", default=BENCH_PKGS, help="package set (default bench/pkgs)")
    parser.add_argument("--image", default="image", help="image name (default: image)")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration")
    parser.add_argument("--rounds", type=int, default=5, help="blob download rounds")
    parser.add_argument("--clients", type=int, default=200,
                        help="clients pulling the whole image at once (0: skip)")
    parser.add_argument("--pull-rounds", type=int, default=2,
                        help="rounds of concurrent pulls on each server")
    parser.add_argument("--idle", type=int, default=2000,
                        help="idle keep-alive connections held open (0: skip)")
    args = parser.parse_args()
    for tool in ("skopeo", "docker-registry", "wrk", "curl", "nix-build"):
        if shutil.which(tool) is None:
            raise SystemExit("%s is not installed (dev/setup installs it)" % (tool,))

    workdir = tempfile.mkdtemp(prefix="nixeryd-bench-")
    ours = Daemon(workdir, "--pkgs-path", args.pkgs,
                  "--max-connections-per-client", "4096", "--idle-timeout", "600")
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
        servers = (("nixeryd", ours.address, ours.process.pid if ours.process else 0),
                   ("docker-registry", address, registry.pid))
        if args.clients:
            many_clients(servers, args.image, manifest, args.clients, args.pull_rounds)
        if args.idle:
            idle_connections(ours.address, args.image, args.idle, args.seconds)
    finally:
        ours.stop()
        if registry is not None:
            registry.terminate()
            registry.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def many_clients(servers: tuple[tuple[str, str, int], ...], image: str,
                 manifest: dict[str, object], clients: int, rounds: int) -> None:
    """Concurrent whole-image pulls on both servers, rounds alternating."""
    layers = manifest["layers"]
    assert isinstance(layers, list)
    size = sum(int(layer["size"]) for layer in layers)
    rates: dict[str, list[float]] = {label: [] for label, _, _ in servers}
    latencies: dict[str, list[float]] = {label: [] for label, _, _ in servers}
    for round_number in range(rounds):
        order = servers if round_number % 2 == 0 else servers[::-1]
        for label, host, _ in order:
            rate, manifest_seconds = concurrent_pulls(
                "http://%s/v2/%s" % (host, image), manifest, clients)
            rates[label].append(rate)
            latencies[label].extend(manifest_seconds)
    print("%d clients at once, each pulling the whole image (%.1f MB), %d rounds"
          % (clients, size / 1e6, rounds))
    print("%-16s %14s %14s %14s %12s" % ("", "MB/s (median)", "manifest p50", "manifest p99",
                                          "peak RSS"))
    rows = []
    for label, _, pid in servers:
        rows.append((statistics.median(rates[label]), percentile(latencies[label], 0.5),
                     percentile(latencies[label], 0.99), peak_rss_mb(pid)))
        print("%-16s %14.0f %12.1f ms %12.1f ms %9.0f MB" % (
            label, rows[-1][0], rows[-1][1] * 1000, rows[-1][2] * 1000, rows[-1][3]))
    (rate1, _, p99_1, _), (rate2, _, p99_2, _) = rows
    print("%-16s %13.2fx %14s %13.2fx" % ("ratio", rate1 / rate2, "", p99_1 / p99_2))
    print("per round MB/s: " + "; ".join(
        "%s %s" % (label, ", ".join("%.0f" % rate for rate in rates[label]))
        for label, _, _ in servers))
    print("targets: throughput >= 1.0x, p99 manifest latency <= 1.0x")


def idle_connections(address: str, image: str, count: int, seconds: int,
                     rounds: int = 3) -> None:
    """
    Warm manifests on nixeryd without and with idle connections held open,
    alternating ``rounds`` times; medians compared.
    """
    url = "http://%s/v2/%s/manifests/latest" % (address, image)
    without, with_idle = [], []
    kept = count
    for _ in range(rounds):
        without.append(wrk_requests_per_second(url, seconds))
        held = hold_idle_connections(address, count)
        try:
            with_idle.append(wrk_requests_per_second(url, seconds))
            kept = min(kept, still_open(held))
        finally:
            for connection in held:
                connection.close()
    baseline, loaded = statistics.median(without), statistics.median(with_idle)
    print("warm manifests on nixeryd, median of %d: %.0f req/s without idle connections"
          " (%s), %.0f req/s with %d held open (%s; at least %d still open at the end):"
          " %+.1f%% (target: no more than 10%% slower)"
          % (rounds, baseline, ", ".join("%.0f" % rate for rate in without), loaded,
             count, ", ".join("%.0f" % rate for rate in with_idle), kept,
             100.0 * (loaded / baseline - 1)))


if __name__ == "__main__":
    main()

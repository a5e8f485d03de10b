"""
Blob redirects with Cloud Storage, next to warm manifests, in one run.

Starts the Cloud Storage emulator (``gcp-storage-emulator``, in memory) and
``nixeryd serve`` on it with a service-account key (the test fixture's), so
that every blob answer is a ``303`` to a V4 signed URL, builds a small
image, then measures with ``wrk`` (keep-alive, 16 connections, redirects
not followed):

- warm manifest GETs by tag;
- blob GETs of one layer, each answered with a ``303``.

Target: redirects per second at least 80% of the manifest rate.  Runs
alternate (manifests, blobs) ``--rounds`` times; medians are compared.

Run from the repository root after ``dev/setup``::

    .venv/bin/python bench/redirects.py [--image hello] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from registry import DOCKER_MANIFEST, wrk_requests_per_second  # noqa: E402

from tests.daemon import Daemon, free_port  # noqa: E402
from tests.gcssupport import KEY_FILE  # noqa: E402

TESTS_PKGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "tests", "pkgs")
BUCKET = "nixeryd-bench"
TARGET = 0.8


def start_emulator(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    """The emulator on a free loopback port, with the bucket created."""
    port = free_port()
    endpoint = "http://127.0.0.1:%d" % (port,)
    process = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
         "--port", str(port), "--in-memory", "-q"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    request = urllib.request.Request(
        endpoint + "/storage/v1/b?project=nixeryd-bench",
        data=json.dumps({"name": BUCKET}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    for _ in range(100):
        try:
            with urllib.request.urlopen(request, timeout=2):
                return process, endpoint
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the Cloud Storage emulator did not start")


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="hello",
                        help="image of the offline test package set (default hello)")
    parser.add_argument("--seconds", type=int, default=5, help="each wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="nixeryd-redirects-")
    emulator = None
    daemon = Daemon(workdir, "--pkgs-path", TESTS_PKGS, "--storage-backend", "gcs",
                    "--gcs-bucket", BUCKET, "--gcs-endpoint", "",
                    env={"GOOGLE_APPLICATION_CREDENTIALS": KEY_FILE})
    try:
        emulator, endpoint = start_emulator(workdir)
        daemon.args[daemon.args.index("--gcs-endpoint") + 1] = endpoint
        daemon.start(timeout=60)
        status, _, body = daemon.request("/v2/%s/manifests/latest" % (args.image,),
                                         headers={"Accept": DOCKER_MANIFEST})
        if status != 200:
            raise SystemExit("nixeryd could not build %s: %s"
                             % (args.image, body[:2000].decode("utf-8", "replace")))
        layer = json.loads(body)["layers"][0]["digest"]
        base = "http://%s/v2/%s" % (daemon.address, args.image)
        answer = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
             base + "/blobs/" + layer], capture_output=True, text=True, check=True).stdout
        if not answer.startswith("303 ") or "X-Goog-Signature=" not in answer:
            raise SystemExit("the blob is not answered with a signed redirect: " + answer)
        manifests, redirects = [], []
        for _ in range(args.rounds):
            manifests.append(wrk_requests_per_second(base + "/manifests/latest",
                                                     args.seconds))
            redirects.append(wrk_requests_per_second(base + "/blobs/" + layer,
                                                     args.seconds))
        manifest_rate = statistics.median(manifests)
        redirect_rate = statistics.median(redirects)
        print("GCS storage on the emulator, signed URLs (V4, RSA), wrk -t2 -c16 %d s x %d"
              % (args.seconds, args.rounds))
        print("warm manifests:  %8.0f req/s (%s)"
              % (manifest_rate, ", ".join("%.0f" % rate for rate in manifests)))
        print("blob redirects:  %8.0f req/s (%s)"
              % (redirect_rate, ", ".join("%.0f" % rate for rate in redirects)))
        print("ratio: %.2f (target at least %.2f)" % (redirect_rate / manifest_rate, TARGET))
    finally:
        daemon.stop()
        if emulator is not None:
            emulator.terminate()
            emulator.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

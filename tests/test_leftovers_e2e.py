"""
A daemon killed with ``SIGKILL`` while it writes a layer, then started
again on the same storage: what it left (the layer file being written, the
GC roots of its build) is removed at once, while the files of another
daemon sharing the storage are kept.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from twisted.trial.unittest import TestCase

from tests.daemon import Daemon
from tests.e2e import fresh_package_set, require_root, require_tools, run

#: The ``zeros`` package holds 8 MiB of random bytes, which the layer file
#: gets at once, then a sparse file of zeros this large: no disk, but tar,
#: gzip and hashing read all of it, which gives the test seconds to catch
#: the layer file being written.
ZEROS_SIZE = "512M"
#: Bytes the layer file holds, at least, while the zeros are read.
RANDOM_BYTES = 8 * 1024 * 1024


def package_set_with_zeros(work: str) -> str:
    """The offline package set plus ``zeros``, a package holding a large sparse file."""
    base = fresh_package_set(work)
    path = os.path.join(work, "with-zeros")
    os.makedirs(path)
    with open(os.path.join(path, "default.nix"), "w") as f:
        f.write("""
{ system ? builtins.currentSystem }:
(import %s { inherit system; }) // {
  zeros = derivation {
    name = "zeros-1.0";
    inherit system;
    builder = "/bin/busybox";
    args = [ "sh" "-c" ''
      /bin/busybox mkdir -p $out
      /bin/busybox head -c %d /dev/urandom > $out/a-random
      /bin/busybox truncate -s %s $out/b-zeros
    '' ];
    nonce = "%s";
  };
}
""" % (base, RANDOM_BYTES, ZEROS_SIZE, uuid.uuid4().hex))
    return path


def writer_directories(storage: str) -> dict[str, list[str]]:
    """Each writer directory under the storage's ``nixeryd/tmp``, with what it holds."""
    tmp = os.path.join(storage, "nixeryd", "tmp")
    found = {}
    for name in os.listdir(tmp):
        path = os.path.join(tmp, name)
        if name.startswith("writer-") and os.path.isdir(path):
            try:
                found[name] = sorted(os.listdir(path))
            except FileNotFoundError:
                continue
    return found


def layer_being_written(storage: str) -> str | None:
    """
    The writer directory holding the ``zeros`` layer being written, once
    the random bytes are in it, if any.
    """
    tmp = os.path.join(storage, "nixeryd", "tmp")
    for name, entries in writer_directories(storage).items():
        for entry in entries:
            if entry.endswith(".layer.tmp"):
                try:
                    size = os.path.getsize(os.path.join(tmp, name, entry))
                    if size >= RANDOM_BYTES // 2:
                        return name
                except FileNotFoundError:
                    continue
    return None


def delete_zeros(pkgs: str) -> None:
    """Remove the ``zeros`` package from the Nix store, if it is there and unused."""
    drv = run(["nix-instantiate", pkgs, "-A", "zeros"], check=False).stdout.strip()
    if drv:
        for path in run(["nix-store", "--query", "--outputs", drv],
                        check=False).stdout.split():
            run(["nix-store", "--delete", path], check=False)


class KilledMidLayerEndToEnd(TestCase):
    """SIGKILL while a layer is written, then a restart on the same storage."""

    def test_restart_removes_what_the_killed_daemon_left(self) -> None:
        require_root()
        require_tools("nix-build")
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        storage = os.path.join(work, "storage")
        pkgs = package_set_with_zeros(work)
        # Last, once every daemon has stopped: no store space is kept.
        self.addCleanup(delete_zeros, pkgs)
        # Another daemon on the same storage, alive throughout.
        other = Daemon(work, "--pkgs-path", pkgs, storage=storage)
        self.addCleanup(other.stop)
        other.start()
        others = set(writer_directories(storage))
        killed = Daemon(work, "--pkgs-path", pkgs, storage=storage)
        self.addCleanup(killed.stop)
        killed.start()

        def pull() -> None:
            try:
                killed.request("/v2/zeros/manifests/latest")
            except OSError:
                pass  # Killed, as the test wants.

        threading.Thread(target=pull, daemon=True).start()
        # The daemon says nothing of its temporary files: poll the
        # directory, briefly, until the layer has bytes in it.
        deadline = time.monotonic() + 120
        writing = None
        while writing is None and time.monotonic() < deadline:
            writing = layer_being_written(storage)
            time.sleep(0.02)
        assert writing is not None, killed.log_text()
        assert killed.process is not None
        killed.process.kill()
        killed.process.wait()
        left = writer_directories(storage)[writing]
        self.assertTrue(any(e.endswith(".layer.tmp") for e in left), left)
        self.assertTrue(any(e.endswith(".gcroots") for e in left), left)
        self.assertNotIn(writing, others)

        again = Daemon(work, "--pkgs-path", pkgs, storage=storage)
        self.addCleanup(again.stop)
        again.start()
        now = writer_directories(storage)
        self.assertNotIn(writing, now)
        self.assertFalse(os.path.exists(
            os.path.join(storage, "nixeryd", "tmp", writing + ".lock")))
        # The live daemon's directory is still there.
        self.assertTrue(others <= set(now), (others, now))
        removed = [e for e in again.events() if writing in e.get("entries", ())]
        self.assertEqual(len(removed), 1, again.log_text())
        self.assertGreater(removed[0]["bytes"], RANDOM_BYTES // 2)

"""
Small real filesystems for the tests of a full or read-only storage: a
tmpfs mounted for one test (root only; the test is skipped where mounting
is not permitted), filled up, remounted read-only, and unmounted in the
test's cleanup.
"""

from __future__ import annotations

import errno
import os
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase


def mount_tmpfs(test: SynchronousTestCase, size: str) -> str:
    """
    A new tmpfs of ``size`` (``mount`` syntax: ``2m``), mounted on a new
    directory of ``test`` and unmounted in its cleanup.

    :raises SkipTest: when this process may not mount it.
    """
    path = os.path.abspath(str(test.mktemp()))
    os.makedirs(path)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % (size,), "tmpfs", path],
        capture_output=True, text=True)
    if mounted.returncode != 0:
        raise SkipTest("cannot mount a tmpfs here: %s" % (
            mounted.stderr.strip() or mounted.returncode,))
    test.addCleanup(unmount, path)
    return path


def unmount(path: str) -> None:
    """Unmount ``path``; lazily if something still holds it open."""
    if subprocess.run(["umount", path], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", path], check=True)


def remount(path: str, option: str) -> None:
    """Remount the tmpfs at ``path`` ``ro`` or ``rw``."""
    subprocess.run(["mount", "-o", "remount,%s" % (option,), path], check=True)


def fill(path: str) -> str:
    """Fill the filesystem holding ``path`` with one file; that file."""
    filler = os.path.join(path, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"\0" * 65536
        while True:
            try:
                os.write(fd, block)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    break
                block = block[:len(block) // 2]
    finally:
        os.close(fd)
    return filler

"""
Store paths and layer files for the archive tests: names of fake store
paths, Nix's store modes, and reading written layers back with
``tarfile``.
"""

from __future__ import annotations

import os
import stat
import tarfile

from nixeryd.build import tarstream
from nixeryd.build.archive import LayerBlob

HASH_A = "0" * 31 + "a"
HASH_B = "1" * 31 + "b"
#: Two store paths, laid out under a test's own root.
PATH_A = "/nix/store/%s-alpha-1.0" % (HASH_A,)
PATH_B = "/nix/store/%s-beta-2.0" % (HASH_B,)
#: A file size spanning several read chunks.
BIG_SIZE = 3 * tarstream.CHUNK_SIZE + 123


def read_members(blob: LayerBlob) -> list[tarfile.TarInfo]:
    """Every member of a written layer, in stream order."""
    with tarfile.open(blob.path, "r:gz") as tar:
        return tar.getmembers()


def read_content(blob: LayerBlob, name: str) -> bytes:
    """The content of one regular member of a written layer."""
    with tarfile.open(blob.path, "r:gz") as tar:
        extracted = tar.extractfile(name)
        assert extracted is not None
        return extracted.read()


def file_bytes(path: str) -> bytes:
    """The whole content of a file."""
    with open(path, "rb") as source:
        return source.read()


def canonicalise_like_nix(top: str) -> None:
    """
    Give a tree the modes Nix gives a store path it registers: 0555 for
    directories and executables, 0444 for other files.
    """
    for directory, subdirectories, files in os.walk(top):
        for name in files:
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                os.chmod(path, 0o555 if mode & 0o111 else 0o444)
        os.chmod(directory, 0o555)


def make_tree_writable(top: str) -> None:
    """Let a read-only temporary tree be removed."""
    for directory, subdirectories, files in os.walk(top):
        os.chmod(directory, 0o755)

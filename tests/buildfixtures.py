"""
A small image world for the builder and image service tests: a store of
real directories standing in for Nix store paths, and a scripted Nix that
resolves three images over it.
"""

from __future__ import annotations

import os
from typing import Sequence

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.build import builder as builder_module
from nixeryd.build.archive import LayerBlob, write_store_layer
from nixeryd.build.names import ImageRequest
from nixeryd.build.nix import Resolution
from nixeryd.build.sources import PinnedSource
from nixeryd.core.documents import Image
from nixeryd.testing.nix import FakeNix, FakeStore, Symlink

#: The package set every resolution of the fixture comes from.
SOURCE = PinnedSource("path", {"kind": "path", "path": "/pkgs"}, None)
#: Makes the shared paths popular enough to head layers of their own.
POPULARITY = {"libfoo-1.0": 1000, "busybox-1.0": 1000}

#: What a pull ended with: the image, or the status, code and Retry-After
#: the client got.
Outcome = Image | tuple[int, str, int | None]


class ImageFixture(SynchronousTestCase):
    """
    A small store (busybox, a library, two tools using both) and a scripted
    Nix that resolves ``toola``, ``toolb`` and ``toola/toolb``.
    """

    def make_store(self) -> None:
        """Create the store paths and teach the fake Nix about them."""
        self.store = FakeStore(os.path.abspath(self.mktemp()))
        self.busybox = self.store.add("busybox-1.0", {
            "bin/busybox": b"\x7fELF" + b"b" * 2000,
            "bin/sh": Symlink("busybox"), "bin/env": Symlink("busybox")})
        self.libfoo = self.store.add("libfoo-1.0", {"lib/libfoo.so": b"f" * 3000},
                                     references=[self.busybox])
        self.tool_a = self.store.add("toolA-1.0", {"bin/toolA": b"#!/bin/sh\na\n"},
                                     references=[self.libfoo, self.busybox])
        self.tool_b = self.store.add("toolB-1.0", {"bin/toolB": b"#!/bin/sh\nb\n"},
                                     references=[self.libfoo, self.busybox])
        self.nix = FakeNix()
        for packages, paths in ((("toola",), {"toola": self.tool_a}),
                                (("toolb",), {"toolb": self.tool_b}),
                                (("toola", "toolb"), {"toola": self.tool_a,
                                                      "toolb": self.tool_b})):
            resolution = self.store.resolution(SOURCE, paths)
            self.nix.add(packages, resolution, self.store.closure(list(paths.values())))

    def assert_unavailable(self, outcome: Outcome, longest_wait: int) -> None:
        """``outcome`` is 503 UNAVAILABLE, with a Retry-After of at most ``longest_wait``."""
        assert isinstance(outcome, tuple), outcome
        status, code, retry_after = outcome
        self.assertEqual((status, code), (503, "UNAVAILABLE"))
        assert retry_after is not None
        self.assertLessEqual(retry_after, longest_wait)

    def resolution(self, request: ImageRequest) -> Resolution:
        """What the fake Nix resolves the request to."""
        d = Deferred.fromCoroutine(self.nix.resolve(SOURCE, request.packages))
        return self.successResultOf(d)

    def temp_directory(self) -> str:
        """A new empty directory for layer files."""
        path: str = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def count_store_layers(self) -> list[tuple[str, ...]]:
        """Record the paths of every store layer written from now on."""
        written: list[tuple[str, ...]] = []

        def counting(paths: Sequence[str], directory: str) -> LayerBlob:
            written.append(tuple(paths))
            return write_store_layer(paths, directory)

        self.patch(builder_module, "write_store_layer", counting)
        return written

"""
Tests for :mod:`nixeryd.build.builder`: images built from directories standing
in for store paths, with a scripted Nix and in-memory or filesystem
storage.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.build.builder import (
    LAYER_NAMESPACE,
    BuiltImage,
    ImageBuilder,
    describe_layer,
    layer_cache_key,
    runtime_settings,
)
from nixeryd.build.forest import Customisation
from nixeryd.build.layers import LAYERING_VERSION
from nixeryd.build.names import parse_image_name
from nixeryd.build.progress import BuildPhase, LayerSummary
from nixeryd.core.text import human_size
from nixeryd.build.tarstream import TarGzipWriter
from nixeryd.core.errors import BuildFailed
from nixeryd.core.threads import InlineRunner
from nixeryd.storage.filesystem import FilesystemStorage
from nixeryd.testing.nix import FakeNix
from nixeryd.testing.progress import RecordingProgress
from nixeryd.testing.runners import ManualRunner
from nixeryd.testing.storage import MemoryStorage
from tests.buildfixtures import POPULARITY, ImageFixture

_ORIGINAL_ADD_FILE = TarGzipWriter.add_file


def sha256(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_names(data: bytes) -> list[str]:
    """The member names of a gzip tar layer."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getnames()


class BuildTests(ImageFixture):
    """Building images with :class:`ImageBuilder`."""

    def setUp(self) -> None:
        self.make_store()
        self.storage = MemoryStorage(self.temp_directory())
        self.builder = ImageBuilder(nix=self.nix, storage=self.storage,
                                    runner=InlineRunner(), popularity=POPULARITY)

    def build(self, name: str, builder: ImageBuilder | None = None,
              progress: RecordingProgress | None = None) -> BuiltImage:
        """Build ``name`` and return the result, which must be ready at once."""
        builder = builder or self.builder
        request = parse_image_name(name)
        return self.successResultOf(Deferred.fromCoroutine(
            builder.build(request, self.resolution(request), progress)))

    def test_progress(self) -> None:
        """
        The build's progress hears of the layering phase and of every
        layer, base first, written or reused; its logger gets the account
        of the build and Nix's lines.
        """
        self.nix.build_lines = ["building '/nix/store/x-toolA-1.0.drv'..."]
        self.build("toolb")
        progress = RecordingProgress()
        built = self.build("toola", progress=progress)
        self.assertEqual(progress.phases, [BuildPhase.LAYERING])
        self.assertEqual(progress.layers, [
            LayerSummary(layer.digest, layer.size, layer.comment,
                         layer.comment in ("busybox-1.0", "libfoo-1.0"))
            for layer in built.layers])
        self.assertEqual(sorted(layer.description for layer in progress.layers),
                         ["busybox-1.0", "customisation layer", "libfoo-1.0", "toolA-1.0"])
        self.assertEqual(progress.layers[-1].description, "customisation layer")
        self.assertIs(self.nix.logs[-1], progress.log)
        self.assertEqual(progress.lines(), ["building '/nix/store/x-toolA-1.0.drv'..."])
        texts = [formatEvent(e) for e in progress.events]
        self.assertEqual([text for text in texts if " layer sha256:" in text], [
            "%s layer %s (%s): %s" % ("Reused" if reused else "Wrote", layer.digest,
                                      human_size(layer.size), layer.comment)
            for layer, reused in zip(built.layers, [True, True, False, False])])

    def test_human_size(self) -> None:
        """Sizes for people."""
        self.assertEqual([human_size(n) for n in (0, 999, 1000, 4149, 999_949, 999_950,
                                                  12_345_678, 3_200_000_000)],
                         ["0 B", "999 B", "1.0 kB", "4.1 kB", "999.9 kB", "1.0 MB",
                          "12.3 MB", "3.2 GB"])

    def test_stores_every_blob(self) -> None:
        """Every blob the manifests reference is stored, and the manifests themselves too."""
        built = self.build("toola")
        for document in (built.image.docker, built.image.oci):
            self.assertEqual(self.storage.blobs[document.digest], document.body)
            manifest = json.loads(document.body)
            for descriptor in [manifest["config"]] + manifest["layers"]:
                self.assertEqual(len(self.storage.blobs[descriptor["digest"]]),
                                 descriptor["size"])
        self.assertEqual(self.storage.blobs[built.documents.config_digest],
                         built.documents.config)
        self.assertEqual(os.listdir(self.storage.temp_directory()), [])

    def test_layers_hold_the_closure(self) -> None:
        """The store layers hold every path of the closure once, and the last layer is the customisation."""
        built = self.build("toola")
        self.assertEqual(len(built.layers), 4)
        held: list[str] = []
        for layer in built.layers[:-1]:
            names = layer_names(self.storage.blobs[layer.digest])
            held += [path for path in (self.busybox, self.libfoo, self.tool_a)
                     if path[1:] in names]
        self.assertEqual(sorted(held), sorted([self.busybox, self.libfoo, self.tool_a]))
        custom = layer_names(self.storage.blobs[built.layers[-1].digest])
        self.assertIn("bin/toolA", custom)
        self.assertIn("tmp", custom)
        self.assertEqual(built.layers[-1].comment, "customisation layer")

    def test_diff_ids(self) -> None:
        """The config's diff_ids are the digests of the uncompressed layers."""
        built = self.build("toola")
        config = json.loads(built.documents.config)
        self.assertEqual(config["rootfs"]["diff_ids"],
                         [sha256(gzip.decompress(self.storage.blobs[layer.digest]))
                          for layer in built.layers])

    def test_runtime_settings(self) -> None:
        """The config's PATH comes from the image's directories; shell images run bash."""
        config = json.loads(self.build("toola").documents.config)
        self.assertEqual(config["config"], {"Env": ["PATH=/bin"]})
        request = parse_image_name("shell")
        custom = Customisation(entries=(), path=("/bin",),
                               ca_bundle="/etc/ssl/certs/ca-bundle.crt")
        settings = runtime_settings(request, custom)
        self.assertEqual(settings.env, ("PATH=/bin",
                                        "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"))
        self.assertEqual(settings.cmd, ("bash",))

    def test_architecture(self) -> None:
        """An arm64 request gives an arm64 config."""
        request = parse_image_name("arm64/toola")
        built = self.successResultOf(Deferred.fromCoroutine(
            self.builder.build(request, self.resolution(parse_image_name("toola")))))
        self.assertEqual(json.loads(built.documents.config)["architecture"], "arm64")
        self.assertEqual(json.loads(self.build("toola").documents.config)["architecture"],
                         "amd64")

    def test_layer_cache_reused(self) -> None:
        """A second image sharing layers writes only its new store layer."""
        written = self.count_store_layers()
        first = self.build("toola")
        self.assertEqual(sorted(written), sorted([(self.busybox,), (self.libfoo,),
                                                   (self.tool_a,)]))
        del written[:]
        stored_before = len(self.storage.stored)
        second = self.build("toolb")
        self.assertEqual(written, [(self.tool_b,)])
        new_blobs = set(self.storage.stored[stored_before:])
        shared = {layer.digest for layer in first.layers} & {
            layer.digest for layer in second.layers}
        self.assertEqual(len(shared), 2)
        self.assertFalse(shared & new_blobs)

    def test_reused_layer_refreshed(self) -> None:
        """
        A reused layer counts as written again: it has a new time and
        version, so a garbage-collection removal guarded by the version
        listed before the build leaves it.
        """
        first = self.build("toola")
        for layer in first.layers:
            self.storage.age(layer.digest, 30 * 86400)
        listed = {blob.digest: blob for blob in self.successResultOf(self.storage.list_blobs())}
        second = self.build("toolb")
        shared = {layer.digest for layer in first.layers} & {
            layer.digest for layer in second.layers}
        self.assertEqual(len(shared), 2)
        for digest in shared:
            written, version = self.storage.written[digest]
            self.assertNotEqual(version, listed[digest].version)
            self.assertGreater(written, listed[digest].modified)
            self.assertFalse(self.successResultOf(
                self.storage.remove_blob(digest, listed[digest].version)))
            self.assertIn(digest, self.storage.blobs)
        self.assertEqual(self.storage.calls["refresh_blob"], 2)

    def test_layer_cache_survives_restart(self) -> None:
        """A new builder over the same storage writes no store layer for a known image."""
        first = self.build("toola")
        written = self.count_store_layers()
        again = ImageBuilder(nix=self.nix, storage=self.storage, runner=InlineRunner(),
                             popularity=POPULARITY)
        second = self.build("toola", again)
        self.assertEqual(written, [])
        self.assertEqual(second.image, first.image)

    def test_layer_cache_documents(self) -> None:
        """Each store layer has a cache document keyed by its paths."""
        built = self.build("toola")
        document = json.loads(self.storage.documents[
            (LAYER_NAMESPACE, layer_cache_key([self.tool_a]))])
        layer = [l for l in built.layers if l.comment == "toolA-1.0"][0]
        self.assertEqual(document, {"digest": layer.digest, "diff_id": layer.diff_id,
                                    "size": layer.size, "paths": 1})

    def test_cached_layer_without_blob_rewritten(self) -> None:
        """A cache document whose blob is gone does not count: the layer is written again."""
        built = self.build("toola")
        libfoo = [l for l in built.layers if l.comment == "libfoo-1.0"][0]
        self.storage.delete_blob(libfoo.digest)
        written = self.count_store_layers()
        self.assertEqual(self.build("toola").image, built.image)
        self.assertEqual(written, [(self.libfoo,)])
        self.assertIn(libfoo.digest, self.storage.blobs)

    def test_damaged_cached_layer_rewritten(self) -> None:
        """
        A cached layer whose blob now holds other bytes of the same size is
        not reused by a new image sharing it: it is written again, which
        replaces the damaged blob.
        """
        built = self.build("toola")
        libfoo = [l for l in built.layers if l.comment == "libfoo-1.0"][0]
        good = self.storage.blobs[libfoo.digest]
        self.storage.damage_blob(libfoo.digest, bytes(b ^ 0xFF for b in good))
        written = self.count_store_layers()
        second = self.build("toolb")
        self.assertEqual(written, [(self.libfoo,), (self.tool_b,)])
        self.assertIn(libfoo.digest, {layer.digest for layer in second.layers})
        self.assertEqual(self.storage.blobs[libfoo.digest], good)

    def test_layer_checksum_recorded_and_checked(self) -> None:
        """
        On the filesystem, a layer rewritten in place with other bytes of
        its size is found by a builder over the storage opened again (a
        restart), and written anew.
        """
        root = os.path.abspath(self.mktemp())
        storage = FilesystemStorage(root, InlineRunner())
        builder = ImageBuilder(nix=self.nix, storage=storage, runner=InlineRunner(),
                               popularity=POPULARITY)
        built = self.build("toola", builder)
        libfoo = [l for l in built.layers if l.comment == "libfoo-1.0"][0]
        path = os.path.join(root, "blobs", "sha256", libfoo.digest.split(":")[1])
        with open(path, "rb") as f:
            good = f.read()
        with open(path, "r+b") as f:
            f.write(bytes(b ^ 0xFF for b in good))
        restarted = FilesystemStorage(root, InlineRunner())
        written = self.count_store_layers()
        again = self.build("toola", ImageBuilder(
            nix=self.nix, storage=restarted, runner=InlineRunner(), popularity=POPULARITY))
        self.assertEqual(written, [(self.libfoo,)])
        self.assertEqual(again.image, built.image)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), good)

    def test_identical_inputs_identical_digests(self) -> None:
        """The same closure built by separate builders into separate storages gives the same manifests."""
        first = self.build("toola/toolb")
        other_storage = FilesystemStorage(os.path.abspath(self.mktemp()), InlineRunner())
        other = ImageBuilder(nix=self.nix, storage=other_storage, runner=InlineRunner(),
                             popularity=dict(POPULARITY))
        second = self.build("toolb/toola", other)
        self.assertEqual(second.image, first.image)
        self.assertEqual(second.documents.config, first.documents.config)

    def test_settings_change_layers(self) -> None:
        """A smaller layer budget makes paths share layers, so the digest differs."""
        plain = ImageBuilder(nix=self.nix, storage=self.storage, runner=InlineRunner())
        tight = ImageBuilder(nix=self.nix, storage=self.storage, runner=InlineRunner(),
                             layer_budget=1)
        self.assertEqual(len(self.build("toola", tight).layers), 2)
        self.assertNotEqual(self.build("toola", plain).image.oci.digest,
                            self.build("toola", tight).image.oci.digest)

    def test_store_failure_fails_build(self) -> None:
        """When storing a layer fails the build fails, no manifest is stored and no file is left."""
        self.storage.failures["store_blob_file"] = OSError("disk full")
        request = parse_image_name("toola")
        d = Deferred.fromCoroutine(self.builder.build(request, self.resolution(request)))
        self.failureResultOf(d, OSError)
        self.assertEqual(self.storage.calls["store_blob_bytes"], 0)
        self.assertEqual(self.storage.blobs, {})
        self.assertEqual(self.storage.documents, {})
        self.assertEqual(os.listdir(self.storage.temp_directory()), [])

    def test_nix_failure_fails_build(self) -> None:
        """A Nix build failure reaches the caller and nothing is stored."""
        self.nix.build_error = BuildFailed("the build of package toola failed", "toola")
        request = parse_image_name("toola")
        d = Deferred.fromCoroutine(self.builder.build(request, self.resolution(request)))
        self.assertEqual(self.failureResultOf(d, BuildFailed).value.package, "toola")
        self.assertEqual(self.storage.calls["store_blob_file"], 0)


class FailingLayerTests(ImageFixture):
    """A layer whose tarball fails half-way, on filesystem storage."""

    def setUp(self) -> None:
        self.make_store()
        self.root = os.path.abspath(self.mktemp())
        self.storage = FilesystemStorage(self.root, InlineRunner())
        self.builder = ImageBuilder(nix=self.nix, storage=self.storage,
                                    runner=InlineRunner(), popularity=POPULARITY)
        original = TarGzipWriter.add_file

        def failing(writer: TarGzipWriter, name: bytes, mode: int, size: int,
                    fd: int) -> None:
            original(writer, name, mode, size, fd)
            if name.endswith(b"/bin/toolA"):
                raise OSError("read error")

        self.patch(TarGzipWriter, "add_file", failing)

    def test_no_partial_blob(self) -> None:
        """The build fails, every blob on disk is complete, and nothing is left in tmp."""
        request = parse_image_name("toola")
        d = Deferred.fromCoroutine(self.builder.build(request, self.resolution(request)))
        self.assertEqual(str(self.failureResultOf(d, OSError).value), "read error")
        blobs = os.path.join(self.root, "blobs", "sha256")
        for name in os.listdir(blobs):
            with open(os.path.join(blobs, name), "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), name)
        self.assertEqual(os.listdir(self.storage.temp_directory()), [])
        self.assertIsNone(self.successResultOf(self.storage.get_document(
            LAYER_NAMESPACE, layer_cache_key([self.tool_a]))))
        with open(os.path.join(self.root, "index.json"), "rb") as f:
            self.assertEqual(json.loads(f.read())["manifests"], [])

    def test_retry_after_failure(self) -> None:
        """Once the cause is gone, the same builder builds the image."""
        request = parse_image_name("toola")
        self.failureResultOf(Deferred.fromCoroutine(
            self.builder.build(request, self.resolution(request))), OSError)
        self.patch(TarGzipWriter, "add_file", _ORIGINAL_ADD_FILE)
        built = self.successResultOf(Deferred.fromCoroutine(
            self.builder.build(request, self.resolution(request))))
        self.assertTrue(self.successResultOf(self.storage.has_blob(built.image.oci.digest)))


class ConcurrentBuildTests(ImageFixture):
    """Builds whose blocking work is released by the test."""

    def setUp(self) -> None:
        self.make_store()
        self.storage = MemoryStorage(self.temp_directory())
        self.runner = ManualRunner()
        self.builder = ImageBuilder(nix=self.nix, storage=self.storage,
                                    runner=self.runner, popularity=POPULARITY)

    def start(self, name: str) -> Deferred[BuiltImage]:
        """Start building ``name``."""
        request = parse_image_name(name)
        return Deferred.fromCoroutine(self.builder.build(request, self.resolution(request)))

    def test_shared_layer_written_once(self) -> None:
        """Two images built at once write their shared layers once."""
        written = self.count_store_layers()
        first, second = self.start("toola"), self.start("toolb")
        self.assertNoResult(first)
        self.assertGreater(self.runner.run_pending(), 0)
        a, b = self.successResultOf(first), self.successResultOf(second)
        self.assertEqual(sorted(written), sorted([(self.busybox,), (self.libfoo,),
                                                   (self.tool_a,), (self.tool_b,)]))
        self.assertEqual(len({l.digest for l in a.layers} & {l.digest for l in b.layers}), 2)

    def test_layers_reported_base_first(self) -> None:
        """Layers written out of order are still reported base first, each once ready."""
        written = self.count_store_layers()
        progress = RecordingProgress()
        request = parse_image_name("toola")
        d = Deferred.fromCoroutine(self.builder.build(
            request, self.resolution(request), progress))
        while self.runner.pending:
            # The newest work first: the top layer is written before the base.
            function, args, kwargs, done = self.runner.pending.pop()
            done.callback(function(*args, **kwargs))
        built = self.successResultOf(d)
        self.assertNotEqual([paths for paths in written],
                            [(self.busybox,), (self.libfoo,), (self.tool_a,)])
        self.assertEqual([layer.digest for layer in progress.layers],
                         [layer.digest for layer in built.layers])

    def test_shared_failure_reaches_both(self) -> None:
        """When a shared layer fails, both images waiting on it fail."""
        self.storage.failures["put_document"] = OSError("no space")
        first, second = self.start("toola"), self.start("toolb")
        self.runner.run_pending()
        self.failureResultOf(first, OSError)
        self.failureResultOf(second, OSError)
        self.assertEqual(self.storage.calls["store_blob_bytes"], 0)


class SettingsTests(SynchronousTestCase):
    """Layer cache keys, descriptions and the settings key."""

    def make(self, **kwargs: Any) -> ImageBuilder:
        """A builder with the given settings."""
        return ImageBuilder(nix=FakeNix(), storage=MemoryStorage(self.mktemp()),
                            runner=InlineRunner(), **kwargs)

    def test_settings_key(self) -> None:
        """The settings key is stable for equal settings and changes with budget or popularity."""
        base = self.make(popularity={"a-1": 3}).settings_key()
        self.assertEqual(self.make(popularity={"a-1": 3}).settings_key(), base)
        self.assertNotEqual(self.make(popularity={"a-1": 3}, layer_budget=10).settings_key(),
                            base)
        self.assertNotEqual(self.make(popularity={"a-1": 4}).settings_key(), base)
        self.assertNotEqual(self.make().settings_key(), base)
        self.assertIn("layering=%d;" % (LAYERING_VERSION,), base)

    def test_set_popularity(self) -> None:
        """New popularity data changes the settings key, and the same data restores it."""
        builder = self.make(popularity={"a-1": 3})
        before = builder.settings_key()
        builder.set_popularity({"b-1": 9})
        self.assertNotEqual(builder.settings_key(), before)
        builder.set_popularity({"a-1": 3})
        self.assertEqual(builder.settings_key(), before)

    def test_layer_cache_key(self) -> None:
        """The layer cache key ignores path order but not the set of paths."""
        self.assertEqual(layer_cache_key(["/nix/store/a-x", "/nix/store/b-y"]),
                         layer_cache_key(["/nix/store/b-y", "/nix/store/a-x"]))
        self.assertNotEqual(layer_cache_key(["/nix/store/a-x"]),
                            layer_cache_key(["/nix/store/a-x", "/nix/store/b-y"]))

    def test_describe_layer(self) -> None:
        """A layer is described by its sorted path names, abbreviated past three."""
        self.assertEqual(describe_layer(["/nix/store/h-zlib-1", "/nix/store/h-acl-2"]),
                         "acl-2, zlib-1")
        self.assertEqual(describe_layer(["/nix/store/h-%s" % c for c in "edcba"]),
                         "a, b, c and 2 more")

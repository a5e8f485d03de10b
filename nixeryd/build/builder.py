"""
Building one image: closure → layers → blobs → config and manifests.

:class:`ImageBuilder` drives the steps after Nix has resolved the names:
it asks Nix for the closure, groups it into layers, writes every layer it
does not already have (in parallel, in the thread pool), adds the
customisation layer, and stores the config and both manifests.  Layers
are cached by the exact set of store paths they hold, so the same group of
paths is never tarred twice, across images and restarts.  A cached layer
is reused only once storage vouches for its blob (its checksum, recorded
in the cache document, against what is stored:
:mod:`nixeryd.storage.integrity`); a damaged one is written again, which
replaces it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Mapping, ParamSpec, Sequence, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.logger import Logger

from nixeryd.build.archive import (DEFAULT_COMPRESS_LEVEL, LAYER_FORMAT_VERSION,
                                   LayerBlob, write_store_layer, write_tree_layer)
from nixeryd.build.closure import ClosureGraph, store_path_name
from nixeryd.build.forest import Customisation, build_customisation
from nixeryd.build.layers import LAYERING_VERSION, LayerPlan, plan_layers
from nixeryd.build.manifest import (BuiltDocuments, LayerDescriptor, RuntimeSettings,
                                    build_documents)
from nixeryd.build.names import ImageRequest
from nixeryd.build.nix import Resolution
from nixeryd.build.nixsteps import NixSteps
from nixeryd.build.progress import BuildPhase, BuildProgress, LayerSummary
from nixeryd.core.text import human_size
from nixeryd.core import defaults
from nixeryd.core.documents import Image
from nixeryd.core.sharedwork import SharedWork
from nixeryd.core.threads import Runner
from nixeryd.metrics.hooks import NO_INSTRUMENTS, Instruments
from nixeryd.storage.integrity import CHECKSUM_FIELD, BlobState
from nixeryd.storage.interface import IStorage

#: Namespace of layer cache documents in storage.
LAYER_NAMESPACE = "layers"

T = TypeVar("T")
P = ParamSpec("P")


def _timed(work: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> tuple[T, float]:
    """``work``'s result and the seconds it took (in the thread that runs it)."""
    started = time.monotonic()
    result = work(*args, **kwargs)
    return result, time.monotonic() - started


def layer_cache_key(paths: Sequence[str]) -> str:
    """
    The layer cache key: a hash of the sorted paths and of everything else
    that changes a layer's bytes (tar format version, compression level).
    """
    h = hashlib.sha256(("nixeryd-layer-v%d-gzip%d\n" % (
        LAYER_FORMAT_VERSION, DEFAULT_COMPRESS_LEVEL)).encode())
    h.update("\n".join(sorted(paths)).encode())
    return h.hexdigest()


def describe_layer(paths: Sequence[str]) -> str:
    """A short description of a layer's content for the image history."""
    names = sorted(store_path_name(p) for p in paths)
    if len(names) <= 3:
        return ", ".join(names)
    return "%s and %d more" % (", ".join(names[:3]), len(names) - 3)


def runtime_settings(request: ImageRequest, custom: Customisation) -> RuntimeSettings:
    """The config's ``Env`` and ``Cmd`` for an image."""
    env = []
    if custom.path:
        env.append("PATH=" + ":".join(custom.path))
    if custom.ca_bundle:
        env.append("SSL_CERT_FILE=" + custom.ca_bundle)
    cmd = ("bash",) if request.shell else ()
    return RuntimeSettings(env=tuple(env), cmd=cmd)


@frozen
class BuiltImage:
    """
    The result of a build.

    :ivar image: both manifests.
    :ivar documents: config and manifests with their digests.
    :ivar layers: the layer descriptors, base first.
    """

    image: Image
    documents: BuiltDocuments
    layers: tuple[LayerDescriptor, ...]


class ImageBuilder:
    """
    Turns a resolved image request into stored blobs and manifests.

    :param nix: builds a resolution and reports its closure.
    :param storage: where blobs and the layer cache are kept.
    :param runner: runs blocking work (tar, gzip, hashing, file I/O).
    :param popularity: ``{name-version: count}`` for layering.
    :param layer_budget: the most store-path layers an image may have.
    :param instruments: told of layer cache lookups and of how long each
        layer took to write and to store.
    """

    log = Logger()

    def __init__(self, *, nix: NixSteps, storage: IStorage, runner: Runner,
                 popularity: Mapping[str, int] | None = None,
                 layer_budget: int = defaults.LAYER_BUDGET,
                 instruments: Instruments = NO_INSTRUMENTS) -> None:
        self._nix = nix
        self._instruments = instruments
        self._storage = storage
        self._runner = runner
        self._popularity = dict(popularity or {})
        self._layer_budget = layer_budget
        self._settings_key: str | None = None
        #: Layer cache key → (descriptor, whether it was already stored).
        self._layers_in_flight: SharedWork[str, tuple[LayerDescriptor, bool]] = SharedWork()

    def set_popularity(self, popularity: Mapping[str, int]) -> None:
        """Use new popularity data for later builds."""
        self._popularity = dict(popularity)
        self._settings_key = None

    def settings_key(self) -> str:
        """
        A string that changes whenever the layering does (its rule, the
        budget, popularity data), for the manifest cache keys.
        """
        if self._settings_key is None:
            popularity = json.dumps(self._popularity, sort_keys=True).encode()
            self._settings_key = "layering=%d;budget=%d;popularity=%s" % (
                LAYERING_VERSION, self._layer_budget, hashlib.sha256(popularity).hexdigest())
        return self._settings_key

    async def build(self, request: ImageRequest, resolution: Resolution,
                    progress: BuildProgress | None = None) -> BuiltImage:
        """
        Build and store the image for a resolved request.

        :param progress: told of the layering phase and of every stored
            layer; its logger gets this builder's account and Nix's lines.
        :raises BuildFailed: when Nix fails (``BuildTimedOut`` on timeout).
        :raises Unavailable: when Nix cannot run.
        """
        started = time.monotonic()
        log = progress.log if progress is not None else self.log
        log.info("Building closure of {image}", image=request.name,
                 phase="building")
        roots = await self._runner.run(tempfile.mkdtemp, ".gcroots",
                                       dir=self._storage.temp_directory())
        try:
            return await self._build_rooted(request, resolution, roots, started,
                                            progress, log)
        finally:
            await self._runner.run(shutil.rmtree, roots, True)

    async def _build_rooted(self, request: ImageRequest, resolution: Resolution,
                            roots: str, started: float,
                            progress: BuildProgress | None, log: Logger) -> BuiltImage:
        """Build with the closure held by garbage-collector roots in ``roots``."""
        graph: ClosureGraph = await self._nix.build(
            resolution, image=request.name, gc_root=os.path.join(roots, "result"),
            log=progress.log if progress is not None else None)
        if progress is not None:
            progress.enter(BuildPhase.LAYERING)
        plans = await self._runner.run(
            plan_layers, graph, self._popularity, self._layer_budget)
        log.info(
            "Grouped {paths} store paths ({size}) of {image} into "
            "{layer_count} layers", image=request.name, paths=len(graph.paths),
            size=human_size(graph.total_size()), layer_count=len(plans),
            phase="layering")
        report = _LayerReport(self._reporter(request, progress, log))
        # Requested packages first, in their sorted order, then the optional
        # ones: the first package providing a file owns it in the forest.
        top_level = list(dict.fromkeys(
            path for package in resolution.packages for path in package.out_paths))
        customised = Deferred.fromCoroutine(self._customise(top_level))
        customised.addCallback(report.stored_custom, len(plans))
        stored = [Deferred.fromCoroutine(self._store_layer(plan)).addCallback(
                      report.stored, index)
                  for index, plan in enumerate(plans)]
        results = await _all_or_first_error(
            gatherResults([customised] + stored, consumeErrors=True))
        custom_value, custom_layer = results[0]
        layers = tuple(results[1:]) + (custom_layer,)
        documents = build_documents(request.arch.oci_arch, layers,
                                    runtime_settings(request, custom_value),
                                    request.arch.variant)
        await self._store_documents(documents)
        log.info(
            "Built {image}: {digest}, {layer_count} layers in {seconds} s",
            image=request.name, digest=documents.image.docker.digest,
            oci_digest=documents.image.oci.digest, layer_count=len(layers),
            seconds=round(time.monotonic() - started, 2), phase="done")
        return BuiltImage(image=documents.image, documents=documents, layers=layers)

    @staticmethod
    def _reporter(request: ImageRequest, progress: BuildProgress | None,
                  log: Logger) -> Callable[[LayerDescriptor, bool], None]:
        """What tells the log and ``progress`` of one stored layer."""
        def report(layer: LayerDescriptor, reused: bool) -> None:
            log.info("{how} layer {digest} ({size}): {content}", image=request.name,
                     digest=layer.digest, size=human_size(layer.size),
                     how="Reused" if reused else "Wrote", content=layer.comment,
                     bytes=layer.size, reused=reused, phase="layer")
            if progress is not None:
                progress.add_layer(LayerSummary(layer.digest, layer.size,
                                                layer.comment, reused))
        return report

    async def _store_documents(self, documents: BuiltDocuments) -> None:
        await self._storage.store_blob_bytes(documents.config, documents.config_digest)
        for manifest in (documents.image.docker, documents.image.oci):
            await self._storage.store_blob_bytes(manifest.body, manifest.digest)

    async def _store_layer(self, plan: LayerPlan) -> tuple[LayerDescriptor, bool]:
        """
        Reuse the cached layer for ``plan``'s paths, or write it once;
        with whether it was already stored.
        """
        key = layer_cache_key(plan.paths)
        return await self._layers_in_flight.wait(key, lambda: Deferred.fromCoroutine(
            self._cached_or_written(key, plan.paths)))

    async def _cached_or_written(self, key: str, paths: Sequence[str]
                                 ) -> tuple[LayerDescriptor, bool]:
        comment = describe_layer(paths)
        cached = await self._storage.get_document(LAYER_NAMESPACE, key)
        if cached is not None:
            reused = await self._reusable(key, cached)
            if reused:
                self._instruments.layer_cache(True)
                return LayerDescriptor(digest=cached["digest"], diff_id=cached["diff_id"],
                                       size=cached["size"], comment=comment), True
        self._instruments.layer_cache(False)
        blob = await self._write(write_store_layer, list(paths))
        await self._store_blob(blob)
        document: dict[str, object] = {
            "digest": blob.digest, "diff_id": blob.diff_id, "size": blob.size,
            "paths": len(paths)}
        # Known from the write just made: no request, no hashing.
        checksum = (await self._storage.check_blob(blob.digest)).checksum
        if checksum is not None:
            document[CHECKSUM_FIELD] = checksum
        await self._storage.put_document(LAYER_NAMESPACE, key, document)
        return LayerDescriptor(digest=blob.digest, diff_id=blob.diff_id,
                               size=blob.size, comment=comment), False

    async def _reusable(self, key: str, cached: dict[str, Any]) -> bool:
        """
        Whether the layer a cache document names may be reused: its blob
        is stored and intact.  Reusing a layer counts as writing it: a
        garbage-collection pass that listed it before then keeps it (a new
        version).  A document from before checksums were kept gets the
        checksum storage now vouches for.
        """
        digest = cached["digest"]
        recorded = cached.get(CHECKSUM_FIELD)
        check = await self._storage.check_blob(
            digest, recorded if isinstance(recorded, str) else None)
        if check.state is BlobState.CORRUPT:
            self.log.warn("Cached layer {digest} is damaged in storage; writing it again",
                          digest=digest)
            return False
        if not check.intact or not await self._storage.refresh_blob(digest):
            return False
        if check.checksum is not None and recorded is None:
            await self._storage.put_document(
                LAYER_NAMESPACE, key, dict(cached, **{CHECKSUM_FIELD: check.checksum}))
        return True

    async def _customise(self, top_level: list[str]
                         ) -> tuple[Customisation, LayerDescriptor]:
        """Build and store the customisation layer of the image."""
        custom: Customisation = await self._runner.run(build_customisation, top_level)
        blob = await self._write(write_tree_layer, list(custom.entries))
        await self._store_blob(blob)
        return custom, LayerDescriptor(digest=blob.digest, diff_id=blob.diff_id,
                                       size=blob.size, comment="customisation layer")

    async def _write(self, write: Callable[[Any, str], LayerBlob],
                     content: list[Any]) -> LayerBlob:
        """Write a layer in the thread pool, timing the work itself."""
        blob, seconds = await self._runner.run(
            _timed, write, content, self._storage.temp_directory())
        self._instruments.layer_written(seconds)
        return blob

    async def _store_blob(self, blob: LayerBlob) -> None:
        """Store a written layer, timed."""
        started = time.monotonic()
        await self._storage.store_blob_file(blob.path, blob.digest)
        self._instruments.layer_stored(time.monotonic() - started)


class _LayerReport:
    """
    Reports an image's layers base first, each as soon as it and every
    layer below it are stored (they are written in parallel).

    :param report: called with each layer and whether it was reused.
    """

    def __init__(self, report: Callable[[LayerDescriptor, bool], None]) -> None:
        self._report = report
        self._ready: dict[int, tuple[LayerDescriptor, bool]] = {}
        self._next = 0

    def stored(self, result: tuple[LayerDescriptor, bool], index: int) -> LayerDescriptor:
        """Layer ``index`` is stored; passes its descriptor on."""
        self._ready[index] = result
        while self._next in self._ready:
            self._report(*self._ready.pop(self._next))
            self._next += 1
        return result[0]

    def stored_custom(self, result: tuple[Customisation, LayerDescriptor],
                      index: int) -> tuple[Customisation, LayerDescriptor]:
        """The customisation layer, layer ``index``, is stored."""
        self.stored((result[1], False), index)
        return result


async def _all_or_first_error(d: Deferred[list[Any]]) -> list[Any]:
    """
    Await a ``gatherResults``: every result, or the first failure's own
    exception (not the ``FirstError`` wrapping it).
    """
    try:
        return await d
    except FirstError as e:
        e.subFailure.raiseException()
        raise  # pragma: no cover

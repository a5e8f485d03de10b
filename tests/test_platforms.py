"""
Tests of several platforms under one name: :mod:`nixeryd.build.platforms`,
the index documents of :mod:`nixeryd.build.manifest`, their negotiation
(:mod:`nixeryd.registry.negotiate`), the image service answering with an
index (:mod:`nixeryd.service.images`), ``NIXERY_PLATFORMS``, and the rest
of the pull API: the referrers API and referrers tags.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.app.config import config_from
from nixeryd.build.manifest import (LayerDescriptor, RuntimeSettings, build_documents,
                                    build_index, manifest_from_bytes, sha256_digest)
from nixeryd.build.names import is_referrers_tag, parse_image_name
from nixeryd.build.platforms import (AMD64, ARM64, ARMV7, host_architecture,
                                     parse_platform, parse_platforms)
from nixeryd.build.progress import BuildPhase
from nixeryd.core.documents import Image
from nixeryd.core.errors import BuildFailed, ManifestUnknown
from nixeryd.core.mediatypes import (DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX,
                                     OCI_MANIFEST)
from nixeryd.registry.negotiate import choose_manifest
from nixeryd.service.images import ImageService
from tests.registrycases import (CONTAINERD_ACCEPT, SKOPEO_ACCEPT, StubRegistryTestCase,
                                 content_length, header)
from tests.test_images import ServiceFixture

LAYER = LayerDescriptor(digest="sha256:" + "1" * 64, diff_id="sha256:" + "2" * 64, size=10)
RUNTIME = RuntimeSettings(env=("PATH=/bin",))
DIGEST = "sha256:" + "a" * 64


def image_for(arch: str, variant: str = "") -> Image:
    """An image of one layer for one architecture."""
    return build_documents(arch, [LAYER], RUNTIME, variant).image


class PlatformNameTests(SynchronousTestCase):
    """``NIXERY_PLATFORMS`` texts and the host's platform."""

    def test_parse(self) -> None:
        """``os/arch[/variant]``, the OS optional, spellings of one platform alike."""
        self.assertEqual(parse_platforms("linux/amd64,linux/arm64"), (AMD64, ARM64))
        self.assertEqual(parse_platforms(" linux/arm64/v8 , amd64"), (ARM64, AMD64))
        self.assertEqual(parse_platform("arm"), ARMV7)
        self.assertEqual(parse_platform("linux/arm/v7"), ARMV7)

    def test_repeats_dropped(self) -> None:
        """A platform named twice is built once; the first named stays the default."""
        self.assertEqual(parse_platforms("linux/arm64,linux/amd64,arm64/v8"), (ARM64, AMD64))

    def test_refused(self) -> None:
        """Other systems, unknown architectures and empty lists are refused."""
        for text in ("windows/amd64", "linux/mips", "", " , ", "darwin/arm64"):
            self.assertRaises(ValueError, parse_platforms, text)

    def test_host(self) -> None:
        """The machine's name maps to its platform; an unknown one to amd64."""
        self.assertEqual(host_architecture("x86_64"), AMD64)
        self.assertEqual(host_architecture("aarch64"), ARM64)
        self.assertEqual(host_architecture("sparc64"), AMD64)

    def test_oci_names(self) -> None:
        """arm64 is variant v8 in the index, as the OCI image index lists it."""
        self.assertEqual(ARM64.platform(),
                         {"architecture": "arm64", "os": "linux", "variant": "v8"})
        self.assertEqual(AMD64.platform(), {"architecture": "amd64", "os": "linux"})
        self.assertEqual(ARM64.name(), "linux/arm64/v8")

    def test_config(self) -> None:
        """The variable and the option set the platforms; a bad one stops the daemon."""
        env = {"NIXERY_PKGS_PATH": "/srv/pkgs", "STORAGE_PATH": "/srv/storage"}
        self.assertEqual(config_from({}, env).platforms, (host_architecture(),))
        self.assertEqual(
            config_from({}, dict(env, NIXERY_PLATFORMS="linux/amd64,linux/arm64")).platforms,
            (AMD64, ARM64))
        self.assertEqual(
            config_from({"platforms": "linux/arm64"},
                        dict(env, NIXERY_PLATFORMS="linux/amd64")).platforms, (ARM64,))
        error = self.assertRaises(UsageError, config_from, {},
                                  dict(env, NIXERY_PLATFORMS="linux/mips"))
        self.assertIn("NIXERY_PLATFORMS/--platforms", str(error))


class NameTests(SynchronousTestCase):
    """The default platform, and the ``arm64`` meta-package."""

    def test_default(self) -> None:
        """Without a meta-package the default platform is used, not selected."""
        request = parse_image_name("hello", ARM64)
        self.assertEqual((request.arch, request.arch_selected), (ARM64, False))

    def test_selected(self) -> None:
        """``arm64`` selects its platform whatever the default."""
        request = parse_image_name("arm64/hello", AMD64)
        self.assertEqual((request.arch, request.arch_selected), (ARM64, True))

    def test_referrers_tags(self) -> None:
        """The referrers tag schema: an algorithm, ``-``, 64 hex characters."""
        self.assertTrue(is_referrers_tag("sha256-" + "0" * 64))
        self.assertTrue(is_referrers_tag("sha512-" + "ab" * 32))
        for tag in ("latest", "sha256-" + "0" * 63, "sha256-" + "G" * 64, "v1-" + "0" * 64):
            self.assertFalse(is_referrers_tag(tag), tag)


class IndexDocumentTests(SynchronousTestCase):
    """The Docker manifest list and the OCI image index."""

    def test_documents(self) -> None:
        """Each format names its own manifests, with size, digest and platform."""
        amd, arm = image_for("amd64"), image_for("arm64", "v8")
        index = build_index([(AMD64, amd), (ARM64, arm)])
        oci = json.loads(index.oci.body)
        self.assertEqual(oci, {
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "size": len(amd.oci.body),
                 "digest": amd.oci.digest,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": OCI_MANIFEST, "size": len(arm.oci.body),
                 "digest": arm.oci.digest,
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}}]})
        docker = json.loads(index.docker.body)
        self.assertEqual(docker["mediaType"], DOCKER_LIST)
        self.assertEqual([(entry["mediaType"], entry["digest"]) for entry in docker["manifests"]],
                         [(DOCKER_MANIFEST, amd.docker.digest),
                          (DOCKER_MANIFEST, arm.docker.digest)])
        for document in (index.docker, index.oci):
            self.assertEqual(document.digest, sha256_digest(document.body))
            self.assertEqual(manifest_from_bytes(document.body), document)
        self.assertEqual(index.images, (amd, arm))

    def test_order_independent(self) -> None:
        """The same images give the same bytes, whatever order they come in."""
        amd, arm = image_for("amd64"), image_for("arm64", "v8")
        self.assertEqual(build_index([(ARM64, arm), (AMD64, amd)]),
                         build_index([(AMD64, amd), (ARM64, arm)]))

    def test_config_variant(self) -> None:
        """The arm64 config says its variant; an amd64 config has none."""
        arm = build_documents("arm64", [LAYER], RUNTIME, "v8")
        self.assertEqual(json.loads(arm.config)["variant"], "v8")
        amd = build_documents("amd64", [LAYER], RUNTIME)
        self.assertNotIn("variant", json.loads(amd.config))


class IndexNegotiationTests(SynchronousTestCase):
    """Which document of an image with an index a client gets."""

    def setUp(self) -> None:
        amd, arm = image_for("amd64"), image_for("arm64", "v8")
        self.index = build_index([(AMD64, amd), (ARM64, arm)])
        self.image = Image(docker=amd.docker, oci=amd.oci, index=self.index)

    def test_clients(self) -> None:
        """
        skopeo and containerd (every type) get the manifest list; a client
        accepting only OCI types gets the OCI index; a client accepting no
        index, or sending no Accept, gets the default platform's manifest.
        """
        cases = [
            (SKOPEO_ACCEPT, self.index.docker),
            (CONTAINERD_ACCEPT, self.index.docker),
            ([OCI_MANIFEST.encode(), OCI_INDEX.encode()], self.index.oci),
            ([OCI_INDEX.encode() + b", " + DOCKER_MANIFEST.encode()], self.index.oci),
            # A type weighted q=0 is refused: no manifest list, no index.
            ([DOCKER_LIST.encode() + b";q=0, " + OCI_INDEX.encode() + b", "
              + DOCKER_MANIFEST.encode()], self.index.oci),
            ([DOCKER_LIST.encode() + b";q=0", OCI_INDEX.encode() + b"; q=0.0",
              DOCKER_MANIFEST.encode()], self.image.docker),
            ([DOCKER_MANIFEST.encode()], self.image.docker),
            ([OCI_MANIFEST.encode()], self.image.oci),
            (None, self.image.docker),
            ([b"*/*"], self.image.docker),
        ]
        for accept, expected in cases:
            self.assertEqual(choose_manifest(self.image, accept), expected, accept)

    def test_single_platform(self) -> None:
        """An image without an index never gets one, whatever the client accepts."""
        single = image_for("amd64")
        self.assertEqual(choose_manifest(single, SKOPEO_ACCEPT), single.docker)
        self.assertEqual(choose_manifest(single, [OCI_MANIFEST.encode(), OCI_INDEX.encode()]),
                         single.oci)


class ServiceIndexTests(ServiceFixture):
    """The image service with two platforms."""

    def make_service(self, **kwargs: Any) -> ImageService:
        kwargs.setdefault("platforms", (AMD64, ARM64))
        return super().make_service(**kwargs)

    def test_index(self) -> None:
        """
        A name without meta-package is built for both platforms, in
        parallel, and answered with both images and their index; the
        default platform's image is the one for clients without an index.
        """
        service = self.make_service()
        self.nix.build_gate = Deferred()
        waiting = self.image(service, "toola")
        self.assertNoResult(waiting)
        # Both builds run at once (two build slots by default).
        self.assertEqual(len(self.nix.build_calls), 2)
        self.assertEqual(sorted(call[3] for call in self.nix.resolve_calls),
                         ["aarch64-linux", "x86_64-linux"])
        self.nix.build_gate.callback(None)
        image = self.successResultOf(waiting)
        assert image.index is not None
        oci = json.loads(image.index.oci.body)
        self.assertEqual([entry["platform"]["architecture"] for entry in oci["manifests"]],
                         ["amd64", "arm64"])
        self.assertEqual(image.oci, image.index.images[0].oci)
        config = json.loads(self.successResultOf(self.storage.read_small_blob(
            json.loads(image.index.images[1].oci.body)["config"]["digest"], 1 << 20)) or b"{}")
        self.assertEqual((config["architecture"], config["variant"]), ("arm64", "v8"))
        # Both platforms share the layers of their store paths.
        layers = [[layer["digest"] for layer in json.loads(platform.docker.body)["layers"]]
                  for platform in image.index.images]
        self.assertEqual(layers[0][:-1], layers[1][:-1])

    def test_index_by_digest_and_after_restart(self) -> None:
        """
        The index documents are stored: served by digest, by a restarted
        service too, which gives the same digests without building.
        """
        first = self.successResultOf(self.image(self.make_service(), "toola"))
        assert first.index is not None
        restarted = self.make_service()
        for document in (first.index.docker, first.index.oci):
            served = self.successResultOf(Deferred.fromCoroutine(
                restarted.manifest(document.digest)))
            self.assertEqual(served, document)
        again = self.successResultOf(self.image(restarted, "toola"))
        assert again.index is not None
        self.assertEqual((again.index.docker.digest, again.index.oci.digest),
                         (first.index.docker.digest, first.index.oci.digest))

    def test_warm_and_shared_with_arm64_name(self) -> None:
        """
        The index is answered warm afterwards; ``arm64/toola`` is the arm64
        image of the index, one platform alone, built once for both.
        """
        service = self.make_service()
        image = self.successResultOf(self.image(service, "toola"))
        builds = len(self.nix.build_calls)
        warm = service.cached_image("toola", "latest")
        self.assertEqual(warm, image)
        arm = self.successResultOf(self.image(service, "arm64/toola"))
        assert image.index is not None
        self.assertIsNone(arm.index)
        self.assertEqual(arm, image.index.images[1])
        self.assertEqual(len(self.nix.build_calls), builds)

    def test_client_gone_cancels_every_platform(self) -> None:
        """A client gone while both platforms build cancels both builds."""
        service = self.make_service()
        self.nix.build_gate = Deferred()
        only = self.image(service, "toola")
        only.cancel()
        self.failureResultOf(only, CancelledError)
        self.assertEqual({(record.system, record.phase) for record in service.builds},
                         {("x86_64-linux", BuildPhase.CANCELLED),
                          ("aarch64-linux", BuildPhase.CANCELLED)})
        self.nix.build_gate.callback(None)
        self.assertEqual(self.nix.builds_finished, 0)

    def test_build_limit(self) -> None:
        """With one build slot, the second platform's build waits for the first."""
        service = self.make_service(max_builds=1)
        self.nix.build_gate = Deferred()
        waiting = self.image(service, "toola")
        self.assertEqual(len(self.nix.build_calls), 1)
        gate, self.nix.build_gate = self.nix.build_gate, None
        gate.callback(None)
        self.assertEqual(len(self.nix.build_calls), 2)
        self.assertIsNotNone(self.successResultOf(waiting).index)

    def test_one_platform_fails(self) -> None:
        """A platform that cannot be built fails the request with its error."""
        service = self.make_service()
        self.nix.build_error = BuildFailed("the build of package toola failed", "toola")
        failure = self.failureResultOf(self.image(service, "toola"), BuildFailed)
        self.assertIn("toola", failure.value.message)

    def test_client_without_index(self) -> None:
        """
        A client that takes no index gets the default platform's image,
        built alone; a client taking the index then builds the other
        platform only, and its answer serves both kinds of client warm.
        """
        service = self.make_service()
        image = self.successResultOf(Deferred.fromCoroutine(
            service.image("toola", "latest", index=False)))
        self.assertIsNone(image.index)
        self.assertEqual([call[3] for call in self.nix.resolve_calls], ["x86_64-linux"])
        self.assertEqual(service.cached_image("toola", "latest", index=False), image)
        self.assertIsNone(service.cached_image("toola", "latest"))
        whole = self.successResultOf(self.image(service, "toola"))
        assert whole.index is not None
        self.assertEqual(whole.index.images[0], image)
        self.assertEqual([call[3] for call in self.nix.resolve_calls],
                         ["x86_64-linux", "aarch64-linux"])
        self.assertEqual(service.cached_image("toola", "latest"), whole)
        self.assertEqual(service.cached_image("toola", "latest", index=False), whole)

    def test_damaged_blob_of_another_platform_made_again(self) -> None:
        """
        A blob of the arm64 image of a warm index, found damaged, has the
        index made again and is answered repaired, not as unknown.
        """
        service = self.make_service()
        image = self.successResultOf(self.image(service, "toola"))
        assert image.index is not None
        config = json.loads(image.index.images[1].oci.body)["config"]["digest"]
        good = self.storage.blobs[config]
        self.storage.damage_blob(config, bytes(b ^ 0xFF for b in good))
        where = self.successResultOf(Deferred.fromCoroutine(service.blob(config)))
        self.assertEqual((where.digest, self.storage.blobs[config]), (config, good))

    def test_single_platform_default(self) -> None:
        """One platform: no index, as before platforms could be chosen."""
        service = self.make_service(platforms=(AMD64,))
        image = self.successResultOf(self.image(service, "toola"))
        self.assertIsNone(image.index)
        self.assertEqual(len(self.nix.build_calls), 1)


class ReferrersTests(StubRegistryTestCase):
    """``/v2/<name>/referrers/<digest>`` and referrers tags."""

    def test_empty_index(self) -> None:
        """Any subject has no referrers: 200, an empty OCI image index."""
        response, body = self.fetch(b"GET", "/v2/shell/git/referrers/" + DIGEST)
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, b"content-type"), OCI_INDEX.encode())
        self.assertEqual(content_length(response), len(body))
        self.assertEqual(json.loads(body), {"schemaVersion": 2, "mediaType": OCI_INDEX,
                                            "manifests": []})
        self.assertIsNone(header(response, b"oci-filters-applied"))
        self.assertEqual(self.images.calls, [])

    def test_filter(self) -> None:
        """An artifactType filter is applied (to nothing), and said so."""
        response, body = self.fetch(
            b"GET", "/v2/shell/git/referrers/%s?artifactType=application/vnd.example.sbom.v1"
            % (DIGEST,))
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, b"oci-filters-applied"), b"artifactType")
        self.assertEqual(json.loads(body)["manifests"], [])

    def test_head(self) -> None:
        """HEAD has GET's headers and no body."""
        response, body = self.fetch(b"HEAD", "/v2/shell/git/referrers/" + DIGEST)
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(content_length(response), len(
            b'{"schemaVersion":2,"mediaType":"%s","manifests":[]}' % (OCI_INDEX.encode(),)))

    def test_bad_digest(self) -> None:
        """A malformed digest is 400 DIGEST_INVALID; a bad name 400 NAME_INVALID."""
        response, body = self.fetch(b"GET", "/v2/shell/git/referrers/sha256:xyz")
        self.assert_error(response, body, 400, "DIGEST_INVALID")
        response, body = self.fetch(b"GET", "/v2/Shell/referrers/" + DIGEST)
        self.assert_error(response, body, 400, "NAME_INVALID")

    def test_referrers_tag_builds_nothing(self) -> None:
        """A tag of the referrers tag schema is 404 MANIFEST_UNKNOWN, asking nothing."""
        for method in (b"GET", b"HEAD"):
            response, body = self.fetch(
                method, "/v2/shell/git/manifests/sha256-" + "a" * 64)
            self.assertEqual(response.code, 404)
            if method == b"GET":
                error = self.assert_error(response, body, 404, "MANIFEST_UNKNOWN")
                self.assertIn("referrers", error["message"])
        self.assertEqual(self.images.calls, [])


class IndexServedTests(StubRegistryTestCase):
    """The registry serves an image's index by tag, and it by digest."""

    def test_served(self) -> None:
        """skopeo gets the manifest list by tag; both index documents by digest."""
        amd, arm = image_for("amd64"), image_for("arm64", "v8")
        index = build_index([(AMD64, amd), (ARM64, arm)])
        self.images.add_image("multi", "latest",
                              Image(docker=amd.docker, oci=amd.oci, index=index))
        response, body = self.fetch(b"GET", "/v2/multi/manifests/latest",
                                    {b"Accept": SKOPEO_ACCEPT})
        self.assertEqual((response.code, body), (200, index.docker.body))
        self.assertEqual(header(response, b"content-type"), DOCKER_LIST.encode())
        self.assertEqual(header(response, b"docker-content-digest"),
                         index.docker.digest.encode())
        for document in (index.docker, index.oci):
            for method in (b"GET", b"HEAD"):
                response, body = self.fetch(method, "/v2/multi/manifests/" + document.digest)
                self.assertEqual(response.code, 200)
                self.assertEqual(header(response, b"content-type"),
                                 document.media_type.encode())
                self.assertEqual(content_length(response), len(document.body))
                self.assertEqual(body, document.body if method == b"GET" else b"")
        response, _ = self.fetch(b"GET", "/v2/multi/manifests/latest",
                                 {b"Accept": [DOCKER_MANIFEST.encode()]})
        self.assertEqual(header(response, b"docker-content-digest"), amd.docker.digest.encode())
        # Whether each client takes an index is passed on, warm and cold.
        self.images.warm.add(("multi", "latest"))
        self.fetch(b"GET", "/v2/multi/manifests/latest", {b"Accept": [OCI_MANIFEST.encode()]})
        self.assertEqual(self.images.index_wanted, [True, True, False, False, False])


class UnknownTagTests(SynchronousTestCase):
    """A referrers tag never reaches the image service's work."""

    def test_error_type(self) -> None:
        """It is refused as an unknown manifest by the route itself."""
        from nixeryd.registry.routes import parse_v2_path

        error = self.assertRaises(ManifestUnknown, parse_v2_path,
                                  [b"hello", b"manifests", b"sha256-" + b"b" * 64])
        self.assertEqual((error.status, error.code), (404, "MANIFEST_UNKNOWN"))

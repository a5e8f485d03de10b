"""
Tests for :mod:`nixeryd.build.manifest`: image configs and manifests as
canonical bytes, and recognising manifests among stored blobs.
"""

from __future__ import annotations

import gzip
import hashlib
import json

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.core import mediatypes
from nixeryd.build.manifest import (
    CREATED,
    LayerDescriptor,
    RuntimeSettings,
    build_documents,
    canonical_json,
    image_config,
    manifest_from_bytes,
    sha256_digest,
)

LAYERS = (
    LayerDescriptor(digest="sha256:" + "1" * 64, diff_id="sha256:" + "a" * 64,
                    size=100, comment="glibc-2.33"),
    LayerDescriptor(digest="sha256:" + "2" * 64, diff_id="sha256:" + "b" * 64,
                    size=200),
)
RUNTIME = RuntimeSettings(env=("PATH=/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"),
                          cmd=("bash",))


class CanonicalBytesTests(SynchronousTestCase):
    """The bytes and digests of documents."""

    def test_compact(self) -> None:
        """Canonical JSON has no whitespace and keeps insertion order."""
        self.assertEqual(canonical_json({"b": 1, "a": [1, 2]}), b'{"b":1,"a":[1,2]}')

    def test_sha256_digest(self) -> None:
        """A digest is ``sha256:`` and the hex SHA-256 of the bytes."""
        self.assertEqual(sha256_digest(b"abc"),
                         "sha256:" + hashlib.sha256(b"abc").hexdigest())

    def test_fixed_key_order(self) -> None:
        """Manifests and configs list their keys in one fixed order."""
        built = build_documents("amd64", LAYERS, RUNTIME)
        for document in (built.image.docker, built.image.oci):
            self.assertEqual(list(json.loads(document.body)),
                             ["schemaVersion", "mediaType", "config", "layers"])
            self.assertNotIn(b" ", document.body)
        self.assertEqual(list(json.loads(built.config)),
                         ["architecture", "os", "created", "config", "rootfs", "history"])
        self.assertNotIn(b": ", built.config)

    def test_digests_match_bytes(self) -> None:
        """Every digest is the SHA-256 of the bytes it names."""
        built = build_documents("amd64", LAYERS, RUNTIME)
        self.assertEqual(built.config_digest, sha256_digest(built.config))
        for document in (built.image.docker, built.image.oci):
            self.assertEqual(document.digest, sha256_digest(document.body))

    def test_deterministic(self) -> None:
        """The same inputs always give the same bytes."""
        first = build_documents("amd64", LAYERS, RUNTIME)
        second = build_documents("amd64", list(LAYERS), RuntimeSettings(
            env=tuple(RUNTIME.env), cmd=("bash",)))
        self.assertEqual(first, second)

    def test_inputs_change_digest(self) -> None:
        """Another architecture, layer list or command gives another digest."""
        base = build_documents("amd64", LAYERS, RUNTIME).image.oci.digest
        for other in (build_documents("arm64", LAYERS, RUNTIME),
                      build_documents("amd64", LAYERS[:1], RUNTIME),
                      build_documents("amd64", LAYERS, RuntimeSettings(env=RUNTIME.env))):
            self.assertNotEqual(other.image.oci.digest, base)


class ManifestContentTests(SynchronousTestCase):
    """What the two manifests say."""

    def setUp(self) -> None:
        self.built = build_documents("arm64", LAYERS, RUNTIME)
        self.docker = json.loads(self.built.image.docker.body)
        self.oci = json.loads(self.built.image.oci.body)

    def test_docker_media_types(self) -> None:
        """The Docker manifest uses Docker types for itself, its config and its layers."""
        self.assertEqual(self.built.image.docker.media_type, mediatypes.DOCKER_MANIFEST)
        self.assertEqual(self.docker["mediaType"], mediatypes.DOCKER_MANIFEST)
        self.assertEqual(self.docker["config"]["mediaType"], mediatypes.DOCKER_CONFIG)
        self.assertEqual({l["mediaType"] for l in self.docker["layers"]},
                         {mediatypes.DOCKER_LAYER})

    def test_oci_media_types(self) -> None:
        """The OCI manifest uses OCI types for itself, its config and its layers."""
        self.assertEqual(self.built.image.oci.media_type, mediatypes.OCI_MANIFEST)
        self.assertEqual(self.oci["mediaType"], mediatypes.OCI_MANIFEST)
        self.assertEqual(self.oci["config"]["mediaType"], mediatypes.OCI_CONFIG)
        self.assertEqual({l["mediaType"] for l in self.oci["layers"]},
                         {mediatypes.OCI_LAYER})

    def test_schema_version(self) -> None:
        """Both manifests are schema version 2."""
        self.assertEqual((self.docker["schemaVersion"], self.oci["schemaVersion"]), (2, 2))

    def test_same_config(self) -> None:
        """Both manifests reference the one config blob with its size and digest."""
        expected = {"size": len(self.built.config), "digest": self.built.config_digest}
        for manifest in (self.docker, self.oci):
            self.assertEqual({k: manifest["config"][k] for k in ("size", "digest")},
                             expected)

    def test_layers(self) -> None:
        """Both manifests list the layers, base first, with digest and size."""
        expected = [{"size": l.size, "digest": l.digest} for l in LAYERS]
        for manifest in (self.docker, self.oci):
            self.assertEqual([{k: l[k] for k in ("size", "digest")}
                              for l in manifest["layers"]], expected)

    def test_config(self) -> None:
        """The config names the architecture, the diff_ids and the runtime settings."""
        config = json.loads(self.built.config)
        self.assertEqual(config["architecture"], "arm64")
        self.assertEqual(config["os"], "linux")
        self.assertEqual(config["created"], CREATED)
        self.assertEqual(config["rootfs"], {"type": "layers",
                                            "diff_ids": [l.diff_id for l in LAYERS]})
        self.assertEqual(config["config"], {"Env": list(RUNTIME.env), "Cmd": ["bash"]})

    def test_history(self) -> None:
        """There is one history entry per layer, with the layer's comment when it has one."""
        history = json.loads(self.built.config)["history"]
        self.assertEqual(len(history), len(LAYERS))
        self.assertEqual(history[0]["comment"], "glibc-2.33")
        self.assertNotIn("comment", history[1])

    def test_no_cmd(self) -> None:
        """Without a command the config has no ``Cmd``, and an empty ``Env`` is kept."""
        config = json.loads(image_config("amd64", LAYERS, RuntimeSettings(env=())))
        self.assertEqual(config["config"], {"Env": []})

    def test_empty_layers(self) -> None:
        """An image without layers has empty layer lists and history."""
        built = build_documents("amd64", (), RuntimeSettings(env=()))
        self.assertEqual(json.loads(built.image.oci.body)["layers"], [])
        self.assertEqual(json.loads(built.config)["history"], [])


class ManifestFromBytesTests(SynchronousTestCase):
    """:func:`manifest_from_bytes`."""

    def test_recognises_ours(self) -> None:
        """Both of our manifests are recognised with their media type and digest."""
        built = build_documents("amd64", LAYERS, RUNTIME)
        for document in (built.image.docker, built.image.oci):
            self.assertEqual(manifest_from_bytes(document.body), document)

    def test_rejects_config(self) -> None:
        """A config blob is not a manifest."""
        built = build_documents("amd64", LAYERS, RUNTIME)
        self.assertIsNone(manifest_from_bytes(built.config))

    def test_rejects_gzip(self) -> None:
        """A gzip layer is not a manifest."""
        self.assertIsNone(manifest_from_bytes(gzip.compress(b"tar data")))

    def test_rejects_non_objects(self) -> None:
        """JSON that is not an object, or lacks a manifest media type, is not a manifest."""
        for body in (b"[]", b'"x"', b"3", b"null", b"",
                     b'{"mediaType":"application/vnd.oci.image.config.v1+json"}',
                     b'{"mediaType":["application/vnd.oci.image.manifest.v1+json"]}'):
            self.assertIsNone(manifest_from_bytes(body), body)

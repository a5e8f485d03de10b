"""
Tests for :mod:`nixeryd.registry.negotiate`.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.core.documents import Image
from nixeryd.core.mediatypes import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from nixeryd.registry.negotiate import accepted_types, choose_manifest, wants_oci
from nixeryd.testing.images import manifest_document

DOCKER_LIST = b"application/vnd.docker.distribution.manifest.list.v2+json"

SKOPEO_LINES = [
    OCI_MANIFEST.encode(),
    DOCKER_MANIFEST.encode(),
    b"application/vnd.docker.distribution.manifest.v1+prettyjws",
    b"application/vnd.docker.distribution.manifest.v1+json",
    DOCKER_LIST,
    OCI_INDEX.encode(),
]

CONTAINERD_LINE = [b", ".join([DOCKER_MANIFEST.encode(), DOCKER_LIST,
                               OCI_MANIFEST.encode(), OCI_INDEX.encode(), b"*/*"])]

IMAGE = Image(docker=manifest_document(DOCKER_MANIFEST, b'{"d":1}'),
              oci=manifest_document(OCI_MANIFEST, b'{"o":1}'))


class AcceptedTypesTests(SynchronousTestCase):
    """Parsing of Accept lines."""

    def test_splits_and_strips(self) -> None:
        """Lines are split on commas; parameters, spaces and case are dropped."""
        self.assertEqual(
            accepted_types([b"A/B ;q=0.5, c/d", b"  E/F;x=y"]),
            {b"a/b", b"c/d", b"e/f"})

    def test_zero_weight(self) -> None:
        """A type weighted ``q=0`` is not acceptable: left out; other weights kept."""
        self.assertEqual(
            accepted_types([b"a/b;q=0, c/d; Q=0.000, e/f;q=0.001, g/h;q=1",
                            b"i/j ; level=1 ; q = 0.0"]),
            {b"e/f", b"g/h"})

    def test_empty_items(self) -> None:
        """Empty items between commas are ignored."""
        self.assertEqual(accepted_types([b",, a/b ,"]), {b"a/b"})


class ChoiceTests(SynchronousTestCase):
    """Which manifest format is served."""

    def test_skopeo_separate_lines(self) -> None:
        """Six separate lines naming both formats give Docker schema 2."""
        self.assertIs(choose_manifest(IMAGE, SKOPEO_LINES), IMAGE.docker)

    def test_containerd_one_line(self) -> None:
        """containerd's single comma-separated line gives Docker schema 2."""
        self.assertIs(choose_manifest(IMAGE, CONTAINERD_LINE), IMAGE.docker)

    def test_no_accept(self) -> None:
        """No Accept header gives Docker schema 2."""
        self.assertIs(choose_manifest(IMAGE, None), IMAGE.docker)
        self.assertIs(choose_manifest(IMAGE, []), IMAGE.docker)

    def test_wildcard_only(self) -> None:
        """Only */* gives Docker schema 2."""
        self.assertIs(choose_manifest(IMAGE, [b"*/*"]), IMAGE.docker)

    def test_only_oci(self) -> None:
        """Accepting the OCI manifest but not Docker's gives OCI."""
        self.assertIs(choose_manifest(IMAGE, [OCI_MANIFEST.encode()]), IMAGE.oci)
        self.assertIs(
            choose_manifest(IMAGE, [OCI_INDEX.encode(), OCI_MANIFEST.encode() + b"; q=1"]),
            IMAGE.oci)

    def test_oci_on_a_later_line(self) -> None:
        """The OCI type is found on any line, not only the last."""
        self.assertTrue(wants_oci([OCI_MANIFEST.encode(), OCI_INDEX.encode()]))

    def test_docker_on_an_earlier_line(self) -> None:
        """The Docker type on any line wins over OCI on another."""
        self.assertFalse(wants_oci([DOCKER_MANIFEST.encode(), OCI_MANIFEST.encode()]))

    def test_repeated_answers_are_consistent(self) -> None:
        """Remembered answers equal freshly computed ones."""
        lines = [OCI_MANIFEST.encode()]
        self.assertTrue(wants_oci(lines))
        self.assertTrue(wants_oci(list(lines)))
        self.assertFalse(wants_oci([DOCKER_MANIFEST.encode()]))

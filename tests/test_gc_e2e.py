"""
End-to-end tests of ``nixeryd gc``: a real daemon builds and serves images
with real Nix into a filesystem storage and records their pulls; the
storage is aged, given unreferenced blobs and stale documents; ``nixeryd
gc --dry-run`` changes nothing, the real pass removes exactly what is
expired or unreferenced, and skopeo pulls every kept image afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

from nixeryd.service.pulls import DAY, day_of, day_text
from tests.daemoncases import DaemonTestCase
from tests.e2e import PACKAGE_SET, child_environment, require_tools, run

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
REF_NAME = "org.opencontainers.image.ref.name"

#: path → (modification time in ns, sha256 of the content).
Tree = dict[str, tuple[int, str]]


def tree(root: str) -> Tree:
    """Every file of a storage but its temporary ones, with time and content hash."""
    files: Tree = {}
    for top, directories, names in os.walk(root):
        if os.path.relpath(top, root) == os.path.join("nixeryd", "tmp"):
            directories[:] = []
            continue
        for name in names:
            path = os.path.join(top, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = (
                    os.stat(path).st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
    return files


class GarbageCollectionEndToEnd(DaemonTestCase):
    """``nixeryd gc`` on the storage of a real daemon."""

    def setUp(self) -> None:
        require_tools("skopeo")

    def blob_path(self, digest: str) -> str:
        return os.path.join("blobs", "sha256", digest[len("sha256:"):])

    def read(self, relative: str) -> object:
        with open(os.path.join(self.storage, relative), "rb") as f:
            return json.loads(f.read())

    def documents(self, namespace: str) -> dict[str, dict[str, str]]:
        """Relative path → content of every document of ``namespace``."""
        directory = os.path.join("nixeryd", namespace)
        found = {}
        for name in os.listdir(os.path.join(self.storage, directory)):
            document = self.read(os.path.join(directory, name))
            assert isinstance(document, dict)
            found[os.path.join(directory, name)] = document
        return found

    def image_blobs(self, docker: str) -> tuple[set[str], set[str]]:
        """The blob paths of the image whose Docker manifest is ``docker``, and its documents."""
        documents = {path for path, document in self.documents("manifests").items()
                     if document["docker"] == docker}
        [oci] = {self.documents("manifests")[path]["oci"] for path in documents}
        blobs = {docker, oci}
        for digest in (docker, oci):
            manifest = self.read(self.blob_path(digest))
            assert isinstance(manifest, dict)
            blobs.add(manifest["config"]["digest"])
            blobs.update(layer["digest"] for layer in manifest["layers"])
        return {self.blob_path(digest) for digest in blobs}, documents

    def age(self, relative: str, seconds: float) -> None:
        """Make a file of the storage ``seconds`` old."""
        when = time.time() - seconds
        os.utime(os.path.join(self.storage, relative), (when, when))

    def write(self, relative: str, data: bytes, age: float) -> None:
        path = os.path.join(self.storage, relative)
        with open(path, "wb") as f:
            f.write(data)
        self.age(relative, age)

    def gc(self, *args: str) -> str:
        """Run ``nixeryd gc`` on the storage (named by its variable); its output."""
        result = run([sys.executable, "-m", "nixeryd", "gc", *args],
                     env=child_environment(STORAGE_PATH=self.storage))
        self.assertEqual(result.stderr, "")
        return result.stdout

    def test_collect_then_pull(self) -> None:
        """
        Of three images built and pulled by a daemon, the one pulled today
        and the one built two days ago stay whole and still pull; the one
        neither pulled nor built within ten days goes with its documents,
        its index entry and every blob only it used, as do old
        unreferenced blobs and stale documents.
        """
        registry = self.daemon("--pkgs-path", PACKAGE_SET)
        self.storage = registry.storage
        docker = {}
        for name in ("hello", "toola", "toolb"):
            status, headers, body = registry.request(
                "/v2/%s/manifests/latest" % (name,), headers={"Accept": DOCKER_MANIFEST})
            self.assertEqual(status, 200, body)
            docker[name] = headers["docker-content-digest"]
        registry.stop()

        # The daemon wrote the pulls of the day when it stopped.
        pulls = self.documents("pulls")
        today = day_text(day_of(time.time()))
        self.assertEqual({document["digest"]: document["day"] for document in pulls.values()},
                         {digest: today for digest in docker.values()})

        blobs, documents = {}, {}
        for name, digest in docker.items():
            blobs[name], documents[name] = self.image_blobs(digest)
        layer_documents = {path: self.blob_path(document["digest"])
                           for path, document in self.documents("layers").items()}

        # Everything 40 days old; toolb built two days ago; pulls: hello
        # today, toolb 30 days ago, toola 40 days ago.
        for relative in tree(self.storage):
            if relative.startswith(("blobs", os.path.join("nixeryd", "manifests"),
                                    os.path.join("nixeryd", "layers"))):
                self.age(relative, 40 * DAY)
        for relative in documents["toolb"]:
            self.age(relative, 2 * DAY)
        for name, days in (("toolb", 30), ("toola", 40)):
            self.write(os.path.join("nixeryd", "pulls", docker[name][7:] + ".json"),
                       json.dumps({"digest": docker[name],
                                   "day": day_text(day_of(time.time() - days * DAY))}).encode(),
                       days * DAY)
        old_stray, young_stray = b"nothing references me", b"written a moment ago"
        for data, age in ((old_stray, 40 * DAY), (young_stray, 0)):
            self.write(self.blob_path("sha256:" + hashlib.sha256(data).hexdigest()), data, age)
        stale_layer = os.path.join("nixeryd", "layers", "gone.json")
        self.write(stale_layer, json.dumps({"digest": "sha256:" + "0" * 64}).encode(), 40 * DAY)
        stale_pull = os.path.join("nixeryd", "pulls", "1" * 64 + ".json")
        self.write(stale_pull, json.dumps({"digest": "sha256:" + "1" * 64,
                                           "day": "2020-01-01"}).encode(), 40 * DAY)

        before = tree(self.storage)
        planned = self.gc("--dry-run", "--keep-days", "10", "--grace", "1")
        self.assertEqual(tree(self.storage), before)
        done = self.gc("--keep-days", "10", "--grace", "1")
        self.assertEqual(done, planned.replace("would remove", "removed").replace(
            "would keep", "kept").replace("would be removed", "was removed"))
        after = tree(self.storage)

        only_toola = blobs["toola"] - blobs["hello"] - blobs["toolb"]
        expected = (only_toola | documents["toola"]
                    | {path for path, blob in layer_documents.items() if blob in only_toola}
                    | {os.path.join("nixeryd", "pulls", docker["toola"][7:] + ".json"),
                       self.blob_path("sha256:" + hashlib.sha256(old_stray).hexdigest()),
                       stale_layer, stale_pull})
        self.assertEqual(set(before) - set(after), expected)
        self.assertEqual(set(after) - set(before), set())
        changed = {path for path in after if after[path] != before[path]}
        self.assertEqual(changed, {"index.json"})
        self.assertTrue(blobs["toola"] & blobs["toolb"], "the images share no layer")
        index = self.read("index.json")
        assert isinstance(index, dict)
        self.assertEqual([m["annotations"][REF_NAME] for m in index["manifests"]],
                         ["hello:latest", "toolb:latest"])
        lines = done.splitlines()
        self.assertEqual(lines[0], "kept 2 images pulled or built within 10 days, removed 1;"
                         " nothing written in the last 1 hour was removed")
        self.assertIn("removed 1 unreferenced blob (21 B)", lines)
        self.assertIn("removed 1 index entry", lines)

        # Every kept image still pulls, as it was built: no build on the way.
        registry = self.daemon("--pkgs-path", PACKAGE_SET, storage=self.storage)
        for name in ("hello", "toolb"):
            layout = self.mktemp()
            run(["skopeo", "copy", "--src-tls-verify=false",
                 "docker://%s/%s" % (registry.address, name), "oci:%s:img" % (layout,)])
            inspected = json.loads(run(["skopeo", "inspect", "--tls-verify=false",
                                        "docker://%s/%s" % (registry.address, name)]).stdout)
            self.assertIn(self.blob_path(inspected["Digest"]), blobs[name])
        self.assertEqual(self.nix_processes(registry, "nix-build"), 0)

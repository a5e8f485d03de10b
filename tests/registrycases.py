"""
Test cases and helpers shared by the tests of the registry's HTTP side.

:class:`StubRegistryTestCase` serves the resource tree in memory (a real
``Site`` and Twisted's HTTP client parsing, through treq's request
traversal agent);
:class:`LoopbackTestCase` serves the real site on a loopback port, for
streaming, disconnects and the access log.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional, ParamSpec, TypeVar

import treq
from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorThreads
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from nixeryd.build.manifest import sha256_digest
from nixeryd.core.documents import LocalBlob
from nixeryd.core.mediatypes import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from nixeryd.core.threads import ThreadPoolService
from nixeryd.registry.site import RootResource
from nixeryd.testing.images import FakeImageService, SampleImage, write_sample_image

P = ParamSpec("P")
T = TypeVar("T")

BASE = "http://registry.test"
SKOPEO_ACCEPT = [
    OCI_MANIFEST.encode(),
    DOCKER_MANIFEST.encode(),
    b"application/vnd.docker.distribution.manifest.v1+prettyjws",
    b"application/vnd.docker.distribution.manifest.v1+json",
    b"application/vnd.docker.distribution.manifest.list.v2+json",
    OCI_INDEX.encode(),
]
CONTAINERD_ACCEPT = [
    b"application/vnd.docker.distribution.manifest.v2+json, "
    b"application/vnd.docker.distribution.manifest.list.v2+json, "
    b"application/vnd.oci.image.manifest.v1+json, "
    b"application/vnd.oci.image.index.v1+json, */*"
]
UNKNOWN_DIGEST = "sha256:" + "f" * 64


def content_length(response: IResponse) -> int:
    """
    The response's Content-Length.

    Twisted's client keeps it as a header only for HEAD responses; for
    others it becomes ``response.length``, which is not an ``int`` when the
    body was chunked.
    """
    value = header(response, b"content-length")
    if value is not None:
        return int(value)
    length = response.length
    assert isinstance(length, int), "no Content-Length"
    return length


def header(response: IResponse, name: bytes) -> Optional[bytes]:
    """The single value of a response header, or ``None``."""
    values: Optional[list[bytes]] = response.headers.getRawHeaders(name)
    if values is None:
        return None
    assert len(values) == 1, (name, values)
    return values[0]


def make_directory(testcase: SynchronousTestCase) -> str:
    """A new empty directory, removed by trial with the test's temporary files."""
    directory: str = testcase.mktemp()
    os.makedirs(directory)
    return directory


class StubRegistryTestCase(SynchronousTestCase):
    """An in-memory registry over a fake image service holding one image."""

    def setUp(self) -> None:
        self.directory = make_directory(self)
        self.images = FakeImageService()
        self.sample: SampleImage = write_sample_image(
            self.directory, {"bin/hello": b"#!/bin/sh\necho hello\n"})
        self.images.add_sample_image("shell/git", "latest", self.sample)
        self.agent = RequestTraversalAgent(RootResource(self.images))

    def start_request(self, method: bytes, path: str,
                      headers: Optional[dict[bytes, list[bytes]]] = None,
                      ) -> Deferred[IResponse]:
        """Send a request; the Deferred fires with the response head."""
        d: Deferred[IResponse] = self.agent.request(
            method, (BASE + path).encode("ascii"), Headers(headers or {}))
        return d

    def fetch(self, method: bytes, path: str,
              headers: Optional[dict[bytes, list[bytes]]] = None,
              ) -> tuple[IResponse, bytes]:
        """Make a request and return the response and its whole body."""
        d = self.start_request(method, path, headers)
        self.agent.flush()
        response = self.successResultOf(d)
        body_d = treq.content(response)
        self.agent.flush()
        return response, self.successResultOf(body_d)

    def assert_error(self, response: IResponse, body: bytes, status: int,
                     code: str) -> dict[str, Any]:
        """Check a registry JSON error response and return its one error."""
        self.assertEqual(response.code, status)
        self.assertEqual(header(response, b"content-type"), b"application/json")
        self.assertEqual(header(response, b"docker-distribution-api-version"),
                         b"registry/2.0")
        self.assertEqual(content_length(response), len(body))
        document = json.loads(body)
        self.assertEqual(list(document), ["errors"])
        [error] = document["errors"]
        self.assertEqual(sorted(error), ["code", "detail", "message"])
        self.assertEqual(error["code"], code)
        assert isinstance(error, dict)
        return error


class FakeStreamedRequest:
    """
    A :class:`~nixeryd.registry.streaming.StreamedRequest` that records
    what a body sender does to it.

    :ivar written: every ``write``, in order.
    :ivar producer: the registered producer, if any.
    :ivar lost: whether the connection was dropped.
    :ivar after_write: called after each ``write``, if set (for example
        to pause the sender, as a full connection buffer would).
    :ivar finish_notice: what :meth:`notifyFinish` returns.
    """

    method = b"GET"
    uri = b"/blob"

    def __init__(self) -> None:
        self.channel: object = object()
        self.finished = False
        self.sentLength = 0
        self.written: list[bytes] = []
        self.producer: Optional[IPushProducer] = None
        self.lost = False
        self.after_write: Optional[Callable[[], None]] = None
        self.finish_notice: Deferred[None] = Deferred()

    def notifyFinish(self) -> Deferred[None]:
        return self.finish_notice

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        if self.after_write is not None:
            self.after_write()

    def finish(self) -> None:
        self.finished = True

    def loseConnection(self) -> None:
        self.lost = True


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """
    Poll ``condition`` on the reactor until it is true: for state that
    threads of a pool change, which fires no event to wait for.
    """
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


class RecordingBlobPool:
    """
    A blob pool that runs work on a real pool and records which functions
    it was given.

    :ivar functions: every function run, in order.
    """

    def __init__(self, pool: ThreadPoolService) -> None:
        self._pool = pool
        self.functions: list[Callable[..., object]] = []

    @property
    def size(self) -> int:
        """The real pool's size."""
        return self._pool.size

    def run(self, function: Callable[P, T], /,
            *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """Record ``function`` and run it on the real pool."""
        self.functions.append(function)
        return self._pool.run(function, *args, **kwargs)


class LoopbackTestCase(TestCase):
    """A fake image service holding one sample image and any random blobs."""

    def setUp(self) -> None:
        self.directory = make_directory(self)
        self.images = FakeImageService()
        self.sample = write_sample_image(self.directory, {"x": b"y"})
        self.images.add_sample_image("shell/git", "latest", self.sample)

    def add_random_blob(self, size: int) -> tuple[bytes, str]:
        """Serve ``size`` random bytes as a blob; returns them and their digest."""
        data = os.urandom(size)
        digest = sha256_digest(data)
        path = os.path.join(self.directory, digest.split(":")[1])
        with open(path, "wb") as out:
            out.write(data)
        self.images.blobs[digest] = LocalBlob(path, len(data), digest)
        return data, digest

    def start_blob_pool(self, size: int) -> ThreadPoolService:
        """A started thread pool for sendfile, stopped at the end of the test."""
        pool = ThreadPoolService(IReactorThreads(reactor), size, name="test-blobs")
        pool.startService()
        self.addCleanup(pool.stopService)
        return pool

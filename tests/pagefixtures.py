"""
Helpers for the tests of the pages (``/``, ``/builds/<id>``): a site over
a build history on a fake clock, served in memory through Twisted's HTTP
client, a reader of streamed bodies and a parser of server-sent events.
"""

from __future__ import annotations

from typing import Optional

import treq
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from nixeryd.registry.site import RootResource
from nixeryd.service.builds import BuildHistory, BuildPhase, BuildRecord, LayerSummary
from nixeryd.testing.images import FakeImageService

SOURCE = "path /srv/pkgs"


class BodyReader(Protocol):
    """
    Reads a response body as it arrives; :meth:`disconnect` drops the
    connection, as a browser tab being closed does.

    :ivar data: the bytes so far.
    :ivar done: fires once the body has ended.
    :ivar reason: why it ended (``ResponseDone`` when complete).
    """

    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred[None] = Deferred()
        self.reason: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.reason = reason
        self.done.callback(None)

    def disconnect(self) -> None:
        """Close the connection from the client's side."""
        transport = self.transport
        assert transport is not None
        transport.stopProducing()  # type: ignore[attr-defined]


def parse_events(body: bytes) -> list[dict[str, str]]:
    """
    The events in an event-stream body, as a browser reads them: fields
    per event (``data`` lines joined with ``\\n``), comments as
    ``{"comment": ...}``.
    """
    events: list[dict[str, str]] = []
    for block in body.decode("utf-8").split("\n\n"):
        if not block:
            continue
        event: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                event["comment"] = line[1:].strip()
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data" and "data" in event:
                event["data"] += "\n" + value
            else:
                event[name] = value
        events.append(event)
    return events


class PagesTestCase(SynchronousTestCase):
    """The site's pages over a build history on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.history = BuildHistory(self.clock, keep_builds=5, keep_lines=10)
        self.root = RootResource(FakeImageService(), builds=self.history, source=SOURCE,
                                 clock=self.clock)
        self.agent = RequestTraversalAgent(self.root)

    def start(self, image: str = "shell/hello", tag: str = "latest",
              revision: Optional[str] = None) -> BuildRecord:
        """A new build record, as the image service makes one."""
        return self.history.start(image=image, tag=tag, packages=("bashInteractive", "hello"),
                                  system="x86_64-linux", source=SOURCE, revision=revision)

    def finish(self, record: BuildRecord) -> None:
        """Take ``record`` through every phase to success with two layers."""
        for phase in [BuildPhase.EVALUATING, BuildPhase.BUILDING, BuildPhase.LAYERING]:
            self.clock.advance(1.5)
            record.enter(phase)
        record.add_layer(LayerSummary("sha256:" + "a" * 64, 3 * 1024 * 1024, "hello-1.0", True))
        record.add_layer(LayerSummary("sha256:" + "b" * 64, 2048, "customisation layer", False))
        self.clock.advance(0.5)
        record.succeed("sha256:" + "c" * 64, "built in 5.0 s")

    def start_request(self, method: bytes, path: str,
                      headers: Optional[dict[bytes, list[bytes]]] = None,
                      scheme: str = "http") -> Deferred[IResponse]:
        """Send a request; the Deferred fires with the response head."""
        d: Deferred[IResponse] = self.agent.request(
            method, ("%s://registry.test:5000%s" % (scheme, path)).encode("ascii"),
            Headers(headers or {}))
        return d

    def fetch(self, method: bytes, path: str,
              headers: Optional[dict[bytes, list[bytes]]] = None,
              scheme: str = "http") -> tuple[IResponse, bytes]:
        """Make a request and return the response and its whole body."""
        d = self.start_request(method, path, headers, scheme)
        self.agent.flush()
        response = self.successResultOf(d)
        body_d = treq.content(response)
        self.agent.flush()
        return response, self.successResultOf(body_d)

    def open_stream(self, path: str, headers: Optional[dict[bytes, list[bytes]]] = None,
                    ) -> tuple[IResponse, BodyReader]:
        """Start reading a streamed response; pump with ``self.agent.flush()``."""
        d = self.start_request(b"GET", path, headers)
        self.agent.flush()
        response = self.successResultOf(d)
        reader = BodyReader()
        response.deliverBody(reader)
        self.agent.flush()
        return response, reader

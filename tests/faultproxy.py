"""
A fault-injecting HTTP proxy between the code under test and a Cloud
Storage emulator, for the fault tests: it relays each connection to the
emulator, and on the requests a rule matches it can instead

- answer by itself (a burst of 503, a 429 with ``Retry-After``),
- cut the connection after a number of request body bytes (an upload
  lost in the middle) or response body bytes (a download lost in the
  middle), or before the answer to a request relayed whole (an answer
  lost),

and it can refuse every connection (the emulator down) and accept them
again.  It counts the request body bytes relayed to upload URLs, which
is what an upload costs.

It reads one request per connection: the GCS storage opens a connection
per request against emulators (:func:`tests.gcssupport.gcs_storage`), and
what follows a first request on a connection is relayed untouched.

For an emulator whose resumable sessions cannot say how much they hold
(fake-gcs-server completes the object on ``Content-Range: bytes */N``),
the proxy can be the judge: it answers those status queries itself, from
the ``Range`` of the last 308 it relayed for the session (what the
emulator acknowledged; a chunk cut short is dropped by that emulator).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from attrs import define, field
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory
from twisted.python.failure import Failure

HEADER_END = b"\r\n\r\n"
#: A request head is never longer than this (a broken client otherwise).
HEAD_LIMIT = 64 * 1024


@define(frozen=True)
class RequestHead:
    """The request line and headers (lower-case names) of a relayed request."""

    method: str
    path: str
    headers: dict[str, str]

    @property
    def length(self) -> int:
        """The body's length (0 without ``Content-Length``)."""
        return int(self.headers.get("content-length", "0"))

    def query(self, name: str) -> str | None:
        """One query parameter, or ``None``."""
        values = parse_qs(urlsplit(self.path).query).get(name)
        return values[0] if values else None

    @property
    def is_upload(self) -> bool:
        """Whether it sends object content (a JSON API upload)."""
        return self.path.startswith("/upload/")

    @property
    def is_status_query(self) -> bool:
        """Whether it asks a resumable session how much it holds."""
        return (self.method == "PUT" and self.query("upload_id") is not None
                and re.fullmatch(r"bytes \*/\d+", self.headers.get("content-range", ""))
                is not None)


@define(frozen=True)
class Answer:
    """Answer with ``status`` (a JSON error body) instead of relaying."""

    status: int
    headers: dict[str, str] = field(factory=dict)


@define(frozen=True)
class CutRequest:
    """Relay only the first ``after`` bytes of the request body, then cut."""

    after: int


@define(frozen=True)
class CutResponse:
    """Relay only the first ``after`` bytes of the response body, then cut."""

    after: int


@define(frozen=True)
class DropResponse:
    """Relay the whole request, then cut the connection before any of the answer."""


Fault = Answer | CutRequest | CutResponse | DropResponse


@define
class Rule:
    """A fault for the next ``times`` requests that ``matches`` accepts."""

    matches: Callable[[RequestHead], bool]
    fault: Fault
    times: int


def parse_head(data: bytes) -> RequestHead:
    """A request head (without its final blank line)."""
    lines = data.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RequestHead(method, path, headers)


class _Upstream(Protocol):
    """The connection to the emulator: answers go back to the client."""

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def connectionMade(self) -> None:
        self.relay.upstream_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.relay.from_upstream(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.relay.upstream_lost()


class _Relay(Protocol):
    """One client connection: its first request judged, then relayed."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.buffer = b""
        self.head: RequestHead | None = None
        self.fault: Fault | None = None
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []
        self.body_seen = 0
        self.response_head = b""
        self.response_body = 0
        self.response_parsed = False
        self.done = False

    def connectionMade(self) -> None:
        self.proxy.relays.add(self)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.proxy.relays.discard(self)
        self.done = True
        self.close_upstream()

    def abort(self) -> None:
        """
        Cut the client's connection at once; the emulator's gets what was
        relayed, then its end (as when a client's connection drops).
        """
        self.done = True
        client: Any = self.transport
        client.abortConnection()
        self.close_upstream()

    def close_upstream(self) -> None:
        """End the connection to the emulator once what was relayed is sent."""
        if self.upstream is not None and self.upstream.transport is not None:
            upstream: Any = self.upstream.transport
            upstream.unregisterProducer()
            upstream.loseConnection()

    # -- from the client ----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.done:
            return
        if self.head is None:
            self.buffer += data
            end = self.buffer.find(HEADER_END)
            if end < 0:
                if len(self.buffer) > HEAD_LIMIT:
                    self.abort()
                return
            head_bytes, data = self.buffer[:end + len(HEADER_END)], self.buffer[end + 4:]
            self.buffer = b""
            self.head = parse_head(head_bytes[:-len(HEADER_END)])
            self.proxy.requests.append(self.head)
            self.proxy.arrivals.append(self.proxy.reactor.seconds())  # type: ignore[attr-defined]
            self.fault = self.proxy.fault_for(self.head)
            if not isinstance(self.fault, Answer):
                self.proxy.connect_upstream(self)
                self.send_upstream(head_bytes)
        self.body(data)

    def body(self, data: bytes) -> None:
        assert self.head is not None
        if isinstance(self.fault, Answer):
            self.body_seen += len(data)
            if self.body_seen >= self.head.length:
                self.answer(self.fault)
            return
        if isinstance(self.fault, CutRequest):
            room = self.fault.after - self.body_seen
            if len(data) >= room:
                self.forward_body(data[:room])
                self.proxy.cuts += 1
                self.abort()
                return
        self.forward_body(data)

    def forward_body(self, data: bytes) -> None:
        assert self.head is not None
        self.body_seen += len(data)
        if self.head.is_upload:
            self.proxy.upload_bytes += len(data)
        self.send_upstream(data)

    def answer(self, fault: Answer) -> None:
        reason = {308: "Resume Incomplete", 429: "Too Many Requests",
                  503: "Service Unavailable"}.get(fault.status, "Fault")
        body = b"" if fault.status == 308 else json.dumps(
            {"error": {"code": fault.status, "message": "injected by the fault proxy"}}
        ).encode()
        headers = {"Content-Length": str(len(body)), "Connection": "close"}
        if body:
            headers["Content-Type"] = "application/json"
        headers.update(fault.headers)
        assert self.transport is not None
        self.transport.write(("HTTP/1.1 %d %s\r\n" % (fault.status, reason)).encode()
                             + "".join("%s: %s\r\n" % item for item in headers.items()).encode()
                             + b"\r\n" + body)
        self.done = True
        self.transport.loseConnection()

    def send_upstream(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending.append(data)
        else:
            assert self.upstream.transport is not None
            self.upstream.transport.write(data)

    # -- from the emulator --------------------------------------------------

    def upstream_connected(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        assert upstream.transport is not None and self.transport is not None
        if self.done:
            upstream.transport.loseConnection()
            return
        # Flow control both ways: a 100 MB upload never piles up here.
        upstream_transport: Any = upstream.transport
        client_transport: Any = self.transport
        upstream_transport.registerProducer(client_transport, True)
        client_transport.registerProducer(upstream_transport, True)
        for data in self.pending:
            upstream.transport.write(data)
        self.pending = []

    def from_upstream(self, data: bytes) -> None:
        if self.done:
            return
        assert self.transport is not None
        if not self.response_parsed:
            self.response_head += data
            end = self.response_head.find(HEADER_END)
            if end < 0:
                return
            self.response_parsed = True
            head, data = (self.response_head[:end + len(HEADER_END)],
                          self.response_head[end + len(HEADER_END):])
            self.proxy.saw_response(self.head, head)
            if isinstance(self.fault, DropResponse):
                self.proxy.cuts += 1
                self.abort()
                return
            self.transport.write(head)
        if isinstance(self.fault, CutResponse):
            room = self.fault.after - self.response_body
            if len(data) >= room:
                # The head and the first bytes reach the client, then the
                # connection ends: a body shorter than announced.
                self.transport.write(data[:room])
                self.proxy.cuts += 1
                self.done = True
                self.transport.loseConnection()
                self.close_upstream()
                return
        self.response_body += len(data)
        self.transport.write(data)

    def upstream_lost(self) -> None:
        if self.transport is not None and not self.done:
            self.transport.loseConnection()


class _UpstreamFactory(ClientFactory):
    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def buildProtocol(self, addr: object) -> _Upstream:
        return _Upstream(self.relay)

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        if self.relay.transport is not None:
            self.relay.transport.loseConnection()


class FaultProxy:
    """
    The proxy, listening on a free loopback port, relaying to ``upstream``
    (``host``, ``port``).

    :ivar upload_bytes: request body bytes relayed to upload URLs.
    :ivar requests: every request head seen, in order.
    :ivar arrivals: when each of them came (the reactor's seconds).
    :ivar cuts: connections cut by a rule.
    :ivar judge_status: answer resumable status queries from the 308s
        relayed, instead of relaying them.
    """

    def __init__(self, reactor: IReactorTCP, upstream: tuple[str, int], *,
                 judge_status: bool = False) -> None:
        self.reactor = reactor
        self.upstream = upstream
        self.judge_status = judge_status
        self.rules: list[Rule] = []
        self.relays: set[_Relay] = set()
        self.requests: list[RequestHead] = []
        self.arrivals: list[float] = []
        self.upload_bytes = 0
        self.cuts = 0
        #: upload_id → the ``Range`` of the last 308 relayed for it.
        self.held: dict[str, str | None] = {}
        self._port: IListeningPort | None = None
        self.port_number = 0

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``, for the storage under test."""
        return "http://127.0.0.1:%d" % (self.port_number,)

    def start(self) -> None:
        """Listen (on the same port as before, after :meth:`down`)."""
        proxy = self

        class RelayFactory(ServerFactory):
            def buildProtocol(self, addr: object) -> _Relay:
                return _Relay(proxy)

        factory = RelayFactory()
        self._port = self.reactor.listenTCP(self.port_number, factory, interface="127.0.0.1")
        self.port_number = self._port.getHost().port  # type: ignore[attr-defined]

    def down(self) -> None:
        """Refuse connections from now on, and cut those open: the emulator is gone."""
        if self._port is not None:
            self._port.stopListening()
            self._port = None
        for relay in list(self.relays):
            relay.abort()

    def up(self) -> None:
        """Accept connections again."""
        if self._port is None:
            self.start()

    def stop(self) -> None:
        """Stop listening and cut every connection (at the end of a test)."""
        self.down()

    def add(self, matches: Callable[[RequestHead], bool], fault: Fault,
            times: int = 1) -> Rule:
        """Apply ``fault`` to the next ``times`` requests ``matches`` accepts."""
        rule = Rule(matches, fault, times)
        self.rules.append(rule)
        return rule

    def fault_for(self, head: RequestHead) -> Fault | None:
        """
        The fault of the first rule that takes ``head``, used up by one;
        else the proxy's own answer to a status query when it judges them.
        """
        for rule in self.rules:
            if rule.times > 0 and rule.matches(head):
                rule.times -= 1
                return rule.fault
        if self.judge_status and head.is_status_query:
            upload_id = head.query("upload_id")
            held = self.held.get(upload_id or "")
            return Answer(308, {"Range": held} if held else {})
        return None

    def saw_response(self, head: RequestHead | None, response_head: bytes) -> None:
        """Keep what a resumable session acknowledged, for :attr:`judge_status`."""
        if head is None:
            return
        upload_id = head.query("upload_id")
        status_line, _, rest = response_head.decode("latin-1").partition("\r\n")
        if upload_id is None or " 308 " not in status_line + " ":
            return
        match = re.search(r"(?im)^range:\s*(\S+)", rest)
        self.held[upload_id] = match.group(1) if match else None

    def connect_upstream(self, relay: _Relay) -> None:
        """Open the relay's connection to the emulator."""
        host, port = self.upstream
        self.reactor.connectTCP(host, port, _UpstreamFactory(relay))


def uploads_to(name_part: str) -> Callable[[RequestHead], bool]:
    """Matches requests that send content for an object whose name contains ``name_part``."""
    def matches(head: RequestHead) -> bool:
        return head.is_upload and not head.is_status_query and (
            name_part in (head.query("name") or ""))
    return matches


def chunk_at(offset: int) -> Callable[[RequestHead], bool]:
    """Matches the resumable-upload chunk that begins at byte ``offset``."""
    def matches(head: RequestHead) -> bool:
        return chunk_puts(head) and head.headers.get(
            "content-range", "").startswith("bytes %d-" % (offset,))
    return matches


def status_queries(head: RequestHead) -> bool:
    """Matches the status queries of resumable sessions."""
    return head.is_status_query


def chunk_puts(head: RequestHead) -> bool:
    """Matches the chunks of resumable uploads (not their status queries)."""
    return head.method == "PUT" and head.is_upload and not head.is_status_query


def any_request(head: RequestHead) -> bool:
    """Matches every request."""
    return True


def method_is(method: str) -> Callable[[RequestHead], bool]:
    """Matches the requests of one method."""
    return lambda head: head.method == method

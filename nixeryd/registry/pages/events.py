"""
A build's changes as server-sent events (``/builds/<id>/events``):
:func:`sse_event` frames one event, :class:`BuildEventStream` follows one
build for one client.

The stream sends ``line`` events (one per log line, its ``id`` the
line's number), a ``state`` event (JSON, :func:`state_document`) when
the phase, layers or outcome change, a comment every
:data:`HEARTBEAT` seconds so that proxies keep the connection open, and
an ``end`` event when the build has ended; then the response finishes.

A client that reads slowly costs nothing but the record's own bounded
log: while the connection's buffer is full the stream stops writing, and
when it drains the stream catches up from the record's kept lines
(saying how many were no longer kept).  A client that goes away is
unsubscribed from the record at once.
"""

from __future__ import annotations

import itertools
import json
import re

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from nixeryd.registry.pages.buildpage import state_document
from nixeryd.registry.pages.html import set_common_headers
from nixeryd.service.builds import BuildRecord

log = Logger()

EVENT_STREAM = b"text/event-stream; charset=utf-8"
#: Seconds between comments on an otherwise quiet stream.
HEARTBEAT = 15.0

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_event(name: str, data: str, event_id: int | None = None) -> bytes:
    """
    One event: its name, its id when given, and ``data`` as one ``data:``
    field per line (a client joins them again with ``\\n``).
    """
    fields = ["event: " + name]
    if event_id is not None:
        fields.append("id: %d" % (event_id,))
    fields.extend("data: " + part for part in _LINE_BREAK.split(data))
    return ("\n".join(fields) + "\n\n").encode("utf-8")


def sse_comment(text: str) -> bytes:
    """A comment, ignored by clients: keeps a quiet connection alive."""
    return (": " + _LINE_BREAK.sub(" ", text) + "\n\n").encode("utf-8")


def start_after(request: Request) -> int:
    """
    The number of the last log line the client already has: the larger
    of the ``after`` query argument (the lines in the page it loaded) and
    ``Last-Event-ID`` (sent when a client reconnects); 0 when neither is
    a number.
    """
    candidates = [0]
    args = request.args or {}
    for value in args.get(b"after", [])[:1] + [request.getHeader(b"last-event-id") or b""]:
        if value.isdigit() and len(value) <= 18:
            candidates.append(int(value))
    return max(candidates)


@implementer(IPushProducer)
class BuildEventStream:
    """
    One client's stream of one build's events (a
    :class:`~nixeryd.service.builds.BuildListener` and the push producer
    of the response).

    :param request: the client's request, its headers not yet sent.
    :param record: the build followed.
    :param clock: times the heartbeat.
    :param after: the number of the last log line the client has.
    """

    def __init__(self, request: Request, record: BuildRecord, clock: IReactorTime,
                 after: int = 0, heartbeat: float = HEARTBEAT) -> None:
        self._request = request
        self._record = record
        self._sent = min(after, record.log_lines)
        self._paused = False
        self._state_due = True
        self._done = False
        self._unsubscribe = record.subscribe(self)
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = clock
        self._heartbeat_interval = heartbeat

    def start(self) -> None:
        """Send the headers, what the client lacks and the state; then follow."""
        request = self._request
        request.setResponseCode(200)
        set_common_headers(request, EVENT_STREAM)
        request.responseHeaders.setRawHeaders(b"X-Accel-Buffering", [b"no"])
        request.notifyFinish().addErrback(self._gone)
        request.registerProducer(self, True)  # type: ignore[no-untyped-call]
        self._heartbeat.start(self._heartbeat_interval, now=False).addErrback(
            lambda failure: log.failure("Event stream heartbeat failed", failure))
        self._flush()

    # BuildListener

    def log_line(self, record: BuildRecord, line: str) -> None:
        """Send the new line at once, unless the client is behind."""
        if self._done or self._paused:
            return
        if record.log_lines == self._sent + 1:
            self._sent = record.log_lines
            self._write(sse_event("line", line, record.log_lines))
        else:
            self._flush()

    def changed(self, record: BuildRecord) -> None:
        """Send the new state (and end the stream if the build has ended)."""
        self._state_due = True
        if not self._done and not self._paused:
            self._flush()

    # IPushProducer

    def pauseProducing(self) -> None:
        """The client's buffer is full: stop writing."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The buffer drained: catch up."""
        self._paused = False
        if not self._done:
            self._flush()

    def stopProducing(self) -> None:
        """The connection is closing."""
        self._stop()

    # Own work

    def _flush(self) -> None:
        """Send the lines after the last one sent, then the state if due."""
        record = self._record
        first_kept = record.log_lines - len(record.log) + 1
        out = []
        if self._sent + 1 < first_kept:
            out.append(sse_event("skipped", "%d" % (first_kept - self._sent - 1,)))
            self._sent = first_kept - 1
        start = self._sent - first_kept + 1
        for number, line in enumerate(itertools.islice(record.log, start, None),
                                      self._sent + 1):
            out.append(sse_event("line", line, number))
        self._sent = record.log_lines
        if self._state_due:
            self._state_due = False
            out.append(sse_event("state", json.dumps(state_document(record))))
        if out:
            self._write(b"".join(out))
        if record.finished:
            self._end()

    def _beat(self) -> None:
        if not self._paused and not self._done:
            self._write(sse_comment("waiting for the build"))

    def _write(self, data: bytes) -> None:
        self._request.write(data)  # type: ignore[no-untyped-call]

    def _end(self) -> None:
        """The build has ended: say so and finish the response."""
        if self._done:
            return
        self._write(sse_event("end", self._record.phase.value))
        self._stop()
        self._request.unregisterProducer()  # type: ignore[no-untyped-call]
        self._request.finish()  # type: ignore[no-untyped-call]

    def _gone(self, reason: Failure) -> None:
        """The client went away before the end."""
        self._stop()

    def _stop(self) -> None:
        self._done = True
        self._unsubscribe()
        if self._heartbeat.running:
            self._heartbeat.stop()

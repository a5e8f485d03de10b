"""
Tests for a build's event stream (:mod:`nixeryd.registry.pages.events`):
framing, live lines and state, catching up, the heartbeat, the end of the
stream, and unsubscribing when the client goes away.
"""

from __future__ import annotations

import json

from twisted.web.client import ResponseDone
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.registry.pages.events import HEARTBEAT, BuildEventStream, sse_comment, sse_event
from nixeryd.service.builds import BuildPhase, BuildRecord
from tests.pagefixtures import PagesTestCase, parse_events
from tests.registrycases import header


class FramingTests(SynchronousTestCase):
    """One event, as bytes."""

    def test_event(self) -> None:
        """Name, id, then one data field."""
        self.assertEqual(sse_event("line", "hello", 7),
                         b"event: line\nid: 7\ndata: hello\n\n")

    def test_multi_line_data(self) -> None:
        """Every kind of line break starts a new data field; nothing can end the event early."""
        framed = sse_event("line", "a\nb\r\nc\rd\n\nevent: fake")
        self.assertEqual(framed, b"event: line\ndata: a\ndata: b\ndata: c\ndata: d\n"
                                 b"data: \ndata: event: fake\n\n")
        [event] = parse_events(framed)
        self.assertEqual(event, {"event": "line", "data": "a\nb\nc\nd\n\nevent: fake"})

    def test_comment(self) -> None:
        """A comment is one line whatever it holds."""
        self.assertEqual(sse_comment("a\nb"), b": a b\n\n")

    def test_utf8(self) -> None:
        """Data is UTF-8."""
        self.assertEqual(sse_event("line", "\u00e9"), "event: line\ndata: \u00e9\n\n".encode())


class StreamTests(PagesTestCase):
    """``/builds/<id>/events`` over HTTP, in memory."""

    def running(self) -> BuildRecord:
        """A build in its building phase with two lines of log."""
        record = self.start()
        record.enter(BuildPhase.BUILDING)
        record.add_log_line("one")
        record.add_log_line("two")
        return record

    def listeners(self, record: BuildRecord) -> int:
        """How many listeners the record tells of its changes."""
        return len(record._listeners)

    def test_headers_and_catch_up(self) -> None:
        """An event stream; the lines after ``after``, then the current state."""
        record = self.running()
        response, reader = self.open_stream("/builds/%s/events?after=1" % (record.id,))
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, b"content-type"), b"text/event-stream; charset=utf-8")
        self.assertEqual(header(response, b"cache-control"), b"no-store")
        self.assertEqual(header(response, b"x-content-type-options"), b"nosniff")
        events = parse_events(reader.data)
        self.assertEqual(events[0], {"event": "line", "id": "2", "data": "two"})
        self.assertEqual(events[1]["event"], "state")
        self.assertEqual(json.loads(events[1]["data"])["phase"], "building")
        self.assertEqual(len(events), 2)
        self.assertEqual(self.listeners(record), 1)

    def test_live_until_end(self) -> None:
        """Lines and state changes as they happen; the stream ends with the build."""
        record = self.running()
        _, reader = self.open_stream("/builds/%s/events?after=2" % (record.id,))
        reader.data = b""
        record.add_log_line("three\nwith a second line")
        self.agent.flush()
        self.assertEqual(parse_events(reader.data),
                         [{"event": "line", "id": "3", "data": "three\nwith a second line"}])
        self.assertNoResult(reader.done)
        reader.data = b""
        record.enter(BuildPhase.LAYERING)
        record.succeed("sha256:" + "c" * 64, "built")
        self.agent.flush()
        events = parse_events(reader.data)
        self.assertEqual([e["event"] for e in events], ["state", "state", "end"])
        self.assertEqual(json.loads(events[0]["data"])["phase"], "layering")
        final = json.loads(events[1]["data"])
        self.assertEqual((final["phase"], final["finished"], final["message"], final["digest"]),
                         ("succeeded", True, "built", "sha256:" + "c" * 64))
        self.successResultOf(reader.done)
        assert reader.reason is not None
        reader.reason.trap(ResponseDone)
        self.assertEqual(self.listeners(record), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_finished_build(self) -> None:
        """A stream of an ended build sends what is missing, the state, and ends."""
        record = self.running()
        record.fail("it broke")
        _, reader = self.open_stream("/builds/%s/events" % (record.id,))
        events = parse_events(reader.data)
        self.assertEqual([e.get("event") for e in events], ["line", "line", "state", "end"])
        self.successResultOf(reader.done)
        self.assertEqual(self.listeners(record), 0)

    def test_unsubscribe_on_disconnect(self) -> None:
        """A client that goes away is no longer told anything, and its heartbeat stops."""
        record = self.running()
        _, reader = self.open_stream("/builds/%s/events" % (record.id,))
        self.assertEqual(self.listeners(record), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        reader.disconnect()
        self.agent.flush()
        self.assertEqual(self.listeners(record), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        record.add_log_line("after")
        record.succeed("sha256:" + "c" * 64, "built")
        self.agent.flush()

    def test_heartbeat(self) -> None:
        """A quiet stream gets a comment every heartbeat."""
        record = self.running()
        _, reader = self.open_stream("/builds/%s/events?after=2" % (record.id,))
        reader.data = b""
        self.clock.advance(HEARTBEAT - 0.1)
        self.agent.flush()
        self.assertEqual(reader.data, b"")
        self.clock.advance(0.1)
        self.agent.flush()
        self.assertEqual(parse_events(reader.data), [{"comment": "waiting for the build"}])

    def test_last_event_id(self) -> None:
        """A reconnecting client resumes after the last line it had."""
        record = self.running()
        record.add_log_line("three")
        _, reader = self.open_stream("/builds/%s/events?after=1" % (record.id,),
                                     {b"Last-Event-ID": [b"2"]})
        lines = [e for e in parse_events(reader.data) if e["event"] == "line"]
        self.assertEqual(lines, [{"event": "line", "id": "3", "data": "three"}])

    def test_bad_after(self) -> None:
        """A malformed or too large ``after`` is read as nothing or everything."""
        record = self.running()
        for after, count in [("x", 2), ("-1", 2), ("99", 0)]:
            _, reader = self.open_stream("/builds/%s/events?after=%s" % (record.id, after))
            lines = [e for e in parse_events(reader.data) if e["event"] == "line"]
            self.assertEqual(len(lines), count, after)
            reader.disconnect()
            self.agent.flush()

    def test_slow_client_catches_up(self) -> None:
        """
        While the client's buffer is full nothing is written; then the
        kept lines follow, after a note of those no longer kept.
        """
        record = self.running()
        _, reader = self.open_stream("/builds/%s/events?after=2" % (record.id,))
        [stream] = record._listeners
        assert isinstance(stream, BuildEventStream)
        reader.data = b""
        stream.pauseProducing()
        for n in range(3, 16):
            record.add_log_line("line %d" % (n,))
        record.enter(BuildPhase.LAYERING)
        self.clock.advance(HEARTBEAT)
        self.agent.flush()
        self.assertEqual(reader.data, b"")
        stream.resumeProducing()
        self.agent.flush()
        events = parse_events(reader.data)
        self.assertEqual(events[0], {"event": "skipped", "data": "3"})
        self.assertEqual([e["data"] for e in events[1:-1]],
                         ["line %d" % (n,) for n in range(6, 16)])
        self.assertEqual([e["id"] for e in events[1:3]], ["6", "7"])
        self.assertEqual(json.loads(events[-1]["data"])["phase"], "layering")

    def test_ends_while_paused(self) -> None:
        """A build that ends while the client is behind still ends its stream."""
        record = self.running()
        _, reader = self.open_stream("/builds/%s/events?after=2" % (record.id,))
        [stream] = record._listeners
        assert isinstance(stream, BuildEventStream)
        stream.pauseProducing()
        record.add_log_line("last")
        record.cancel("stopped")
        self.agent.flush()
        self.assertNoResult(reader.done)
        stream.resumeProducing()
        self.agent.flush()
        events = parse_events(reader.data)
        self.assertEqual([e["event"] for e in events][-3:], ["line", "state", "end"])
        self.successResultOf(reader.done)

    def test_head(self) -> None:
        """HEAD of the stream: its headers, no body, no subscription."""
        record = self.running()
        response, body = self.fetch(b"HEAD", "/builds/%s/events" % (record.id,))
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(header(response, b"content-type"), b"text/event-stream; charset=utf-8")
        self.assertEqual(self.listeners(record), 0)

    def test_unknown(self) -> None:
        """The stream of an unknown build is a 404 page."""
        response, body = self.fetch(b"GET", "/builds/nothere/events")
        self.assertEqual(response.code, 404)
        self.assertIn(b"Not found", body)

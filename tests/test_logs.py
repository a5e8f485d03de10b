"""
Tests for :class:`nixeryd.app.logs.BatchedFlush`: log lines are flushed once
per reactor turn, and at once where there is no running reactor.
"""

from __future__ import annotations

import io
from typing import Callable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.app import logs
from nixeryd.app.logs import BatchedFlush, JSONLinesObserver


class CountingStream(io.StringIO):
    """A text stream that counts its flushes."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


class RunningClock(Clock):
    """A clock that says it is a running reactor and records triggers."""

    running = True

    def __init__(self) -> None:
        super().__init__()
        self.triggers: list[tuple[str, str, object]] = []

    def addSystemEventTrigger(self, phase: str, eventType: str,
                              callable: Callable[[], None]) -> None:
        self.triggers.append((phase, eventType, callable))


class BatchedFlushTests(SynchronousTestCase):
    """When log output reaches the stream."""

    def setUp(self) -> None:
        # These tests play the reactor thread.
        self.patch(logs, "isInIOThread", lambda: True)

    def test_other_threads_flush_at_once(self) -> None:
        """Events from a thread other than the reactor's are flushed at once."""
        self.patch(logs, "isInIOThread", lambda: False)
        stream, clock = CountingStream(), RunningClock()
        BatchedFlush(stream, clock).written()
        self.assertEqual(stream.flushes, 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_one_flush_per_turn(self) -> None:
        """Many events in one reactor turn cost one flush, after the turn."""
        stream, clock = CountingStream(), RunningClock()
        observer = JSONLinesObserver(stream, clock)
        for n in range(50):
            observer({"log_format": "event {n}", "n": n, "log_namespace": "t"})
        self.assertEqual(stream.flushes, 0)
        clock.advance(0)
        self.assertEqual(stream.flushes, 1)
        self.assertEqual(len(stream.getvalue().splitlines()), 50)
        observer({"log_format": "later", "log_namespace": "t"})
        clock.advance(0)
        self.assertEqual(stream.flushes, 2)

    def test_flushed_at_shutdown(self) -> None:
        """The reactor's shutdown flushes what is pending."""
        stream, clock = CountingStream(), RunningClock()
        flusher = BatchedFlush(stream, clock)
        [(phase, event, call)] = clock.triggers
        self.assertEqual((phase, event), ("after", "shutdown"))
        flusher.written()
        call()  # type: ignore[operator]
        self.assertEqual(stream.flushes, 1)

    def test_without_running_reactor(self) -> None:
        """With no reactor, or one not running, every write is flushed at once."""
        stream = CountingStream()
        BatchedFlush(stream).written()
        self.assertEqual(stream.flushes, 1)
        clock = RunningClock()
        clock.running = False
        BatchedFlush(stream, clock).written()
        self.assertEqual(stream.flushes, 2)
        self.assertEqual(clock.getDelayedCalls(), [])

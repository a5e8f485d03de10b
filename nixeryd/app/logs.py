"""
Log observers for ``twistd --logger``.

``twistd --logger=nixeryd.app.logs.text_observer`` writes the same lines as
twistd's default observer (time, ``[namespace#level]``, message) at a
fraction of the cost, which matters when every request is logged.

``twistd --logger=nixeryd.app.logs.json_observer`` writes every log event as
one JSON object per line on standard output, for log collectors.
Both flush once per reactor turn (:class:`BatchedFlush`).  Named
event fields (``image``, ``digest``, ``method``, ``status``, ...) are
top-level keys, next to ``log_text`` (the rendered message),
``log_level``, ``log_namespace`` and ``log_time``; a logged failure comes
as its traceback text in ``log_failure``.

Unlike Twisted's own JSON observer, which is built to round-trip events
between Twisted processes, this one writes plain values that a person or a
log pipeline can read, and it is cheap enough to log every request.

Both leave out of every line what may be a secret
(:func:`~nixeryd.core.text.without_secrets`): credentials, tokens, signed
URLs' signatures, whatever field or message they came in.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Optional, Protocol, TextIO

from twisted.logger import ILogObserver, formatEvent
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

from nixeryd.core.text import may_hold_secret, without_secrets

_INTERNAL_KEYS = frozenset({
    "log_logger", "log_source", "log_level", "log_failure", "log_format",
    "log_flattened", "log_trace", "log_legacy",
})
_LEGACY_KEYS = _INTERNAL_KEYS | {"message", "format", "time", "system", "isError",
                                 "failure", "why"}
_PLAIN = (str, int, float, bool, type(None))


def render_message(event: dict[str, Any]) -> str:
    """
    The event's message text.

    Plain ``{name}`` formats are rendered with :meth:`str.format_map`;
    anything it cannot handle (Twisted's ``{method()}`` call syntax, a
    missing field) falls back to :func:`twisted.logger.formatEvent`, so the
    text is always what Twisted's own observers would show.
    """
    log_format = event.get("log_format")
    if isinstance(log_format, str):
        try:
            return log_format.format_map(event)
        except Exception:
            pass
    return formatEvent(event)


def _without_secrets(value: Any) -> Any:
    """``value`` with :func:`without_secrets` applied to every string it holds."""
    if isinstance(value, str):
        return without_secrets(value)
    if isinstance(value, dict):
        return {_without_secrets(key): _without_secrets(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_secrets(item) for item in value]
    return value


def event_as_json(event: dict[str, Any]) -> str:
    """
    One event as a JSON object on one line (without the newline), with
    what may be a secret left out of each value before it is encoded (on
    the encoded line, a filter could cut an escape in two and break it).
    The line is encoded once as it is first: when it shows nothing a
    secret needs (:func:`~nixeryd.core.text.may_hold_secret`), as an access
    line does, no value can hold one and the line is written as it is.
    """
    record: dict[str, Any] = {}
    skipped = _LEGACY_KEYS if event.get("log_namespace") == "log_legacy" else _INTERNAL_KEYS
    for key, value in event.items():
        if key in skipped:
            continue
        record[key] = value if isinstance(value, _PLAIN) else _plain(value)
    level = event.get("log_level")
    record["log_level"] = getattr(level, "name", None)
    record["log_text"] = render_message(event)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["log_failure"] = failure.getTraceback()
        except Exception:
            record["log_failure"] = repr(failure)
    line = _encode(record)
    if may_hold_secret(line):
        line = _encode(_without_secrets(record))
    return line


def _encode(record: dict[str, Any]) -> str:
    """``record`` as one line of JSON; values JSON cannot hold as their ``repr``."""
    try:
        return json.dumps(record, default=repr)
    except (TypeError, ValueError):
        return json.dumps({key: value if isinstance(value, _PLAIN) else repr(value)
                           for key, value in record.items()})


class FlushReactor(Protocol):
    """
    What :class:`BatchedFlush` needs of the reactor: whether it runs, a
    call at the end of the turn, and a call at shutdown.
    """

    @property
    def running(self) -> bool:
        """Whether the reactor runs (and is not stopping)."""

    def callLater(self, delay: float, callable: Callable[[], None]) -> object:
        """Call ``callable`` after ``delay`` seconds."""

    def addSystemEventTrigger(self, phase: str, eventType: str,
                              callable: Callable[[], None]) -> object:
        """Call ``callable`` in ``phase`` of the system event ``eventType``."""


class BatchedFlush:
    """
    Flushes a stream after the writes of one reactor turn, rather than
    after every event: under load, one request's access-log line need not
    cost a system call of its own.

    Without a reactor, or from a thread other than the reactor's, or once
    the reactor is stopping, every write is flushed at once.

    :param stream: the stream to flush.
    :param reactor: the reactor whose turns group the writes, or ``None``.
    """

    def __init__(self, stream: TextIO, reactor: Optional[FlushReactor] = None) -> None:
        self._stream = stream
        self._reactor = reactor
        self._pending = False
        if reactor is not None:
            reactor.addSystemEventTrigger("after", "shutdown", self.flush)

    def written(self) -> None:
        """Arrange for what was just written to be flushed soon."""
        reactor = self._reactor
        if (reactor is None or not reactor.running
                or not isInIOThread()):  # type: ignore[no-untyped-call]
            self._stream.flush()
            return
        if not self._pending:
            self._pending = True
            reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Flush now."""
        self._pending = False
        self._stream.flush()


def _plain(value: Any) -> Any:
    """``value`` if JSON can hold it, else its ``repr``."""
    if isinstance(value, (list, tuple, dict)):
        try:
            json.dumps(value)
            return value
        except (TypeError, ValueError):
            pass
    return repr(value)


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event as a JSON line to a text stream.

    :param stream: where to write.
    """

    def __init__(self, stream: TextIO, reactor: Optional[FlushReactor] = None) -> None:
        self._stream = stream
        self._flush = BatchedFlush(stream, reactor)

    def __call__(self, event: dict[str, Any]) -> None:
        """Write one event."""
        self._stream.write(event_as_json(event) + "\n")
        self._flush.written()


def json_observer() -> ILogObserver:
    """An observer writing events to stdout as JSON, one object per line."""
    from twisted.internet import reactor
    return JSONLinesObserver(sys.stdout, reactor)


@implementer(ILogObserver)
class TextLinesObserver:
    """
    Writes each event as ``<time> [<namespace>#<level>] <message>``, with a
    failure's traceback on the following lines.

    The time text is computed once per second rather than per event.

    :param stream: where to write.
    """

    def __init__(self, stream: TextIO, reactor: Optional[FlushReactor] = None) -> None:
        self._stream = stream
        self._flush = BatchedFlush(stream, reactor)
        self._second = -1
        self._time_text = ""

    def _format_time(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._time_text = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
        return self._time_text

    def __call__(self, event: dict[str, Any]) -> None:
        """Write one event."""
        level = event.get("log_level")
        text = "%s [%s#%s] %s\n" % (
            self._format_time(event.get("log_time") or time.time()),
            event.get("log_namespace", "-"), getattr(level, "name", "-"),
            render_message(event).replace("\n", "\n\t"))
        failure = event.get("log_failure")
        if failure is not None:
            try:
                text += "\t" + failure.getTraceback().rstrip("\n").replace("\n", "\n\t") + "\n"
            except Exception:
                text += "\t%r\n" % (failure,)
        self._stream.write(without_secrets(text))
        self._flush.written()


def text_observer() -> ILogObserver:
    """An observer writing events to stdout as text lines."""
    from twisted.internet import reactor
    return TextLinesObserver(sys.stdout, reactor)

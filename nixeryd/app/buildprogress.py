"""
What ``nixeryd build`` shows on stderr while it builds, taken from the
build's record (:class:`~nixeryd.service.builds.BuildRecord`) rather than
from log text: the steps (evaluating, building, layering), each layer as
it is stored (written or reused, and its size), the bytes written, and a
summary at the end.

:class:`BuildDisplay` writes plain ``nixeryd: ...`` lines, one per event,
when stderr is a file or a pipe (a CI log).  On a terminal it writes the
same lines and, under them, one status line redrawn in place: a bar of
the steps, the time so far, the layers and bytes so far and the build's
last log line.  Every other message of the command goes through
:meth:`BuildDisplay.say`, which clears the status line first.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional, TextIO

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from nixeryd.core.documents import ManifestDocument
from nixeryd.service.builds import BuildHistory, BuildPhase, BuildRecord
from nixeryd.core.text import human_size

#: The running steps, in order, as the lines name them.
STEPS = (
    (BuildPhase.EVALUATING, "evaluating the package names (nix-instantiate)"),
    (BuildPhase.BUILDING, "building the packages (nix-build)"),
    (BuildPhase.LAYERING, "layering: writing and storing the layers"),
)
_STEP_NUMBER = {phase: number for number, (phase, _) in enumerate(STEPS, 1)}

#: Cells of the status line's bar.
BAR_WIDTH = 12
#: Seconds between redraws of the status line while nothing happens.
TICK = 1.0
#: Columns assumed when the terminal's width is unknown.
DEFAULT_COLUMNS = 80
#: Packages named in the line that starts a build, at most.
NAMED_PACKAGES = 4


def layer_sizes(manifest: ManifestDocument) -> list[int]:
    """The compressed sizes of a manifest's layers (a small JSON document)."""
    document = json.loads(manifest.body)
    return [int(layer.get("size", 0)) for layer in document.get("layers", ())]


def _plural(count: int, word: str) -> str:
    return "%d %s%s" % (count, word, "" if count == 1 else "s")


class _Followed:
    """What has been shown of one build."""

    def __init__(self, record: BuildRecord) -> None:
        self.record = record
        self.phase = BuildPhase.WAITING
        self.layers = 0
        self.last_line = ""


class BuildDisplay:
    """
    Shows the progress of builds on a stream.

    :param stream: where to write (stderr).
    :param clock: the time of the status line.
    :param progress: show progress at all (``--quiet`` turns it off; the
        lines given to :meth:`say` are still written).
    :param terminal: whether ``stream`` is a terminal (asked of the stream
        when not given).
    :param columns: the terminal's width (asked of the terminal when not
        given).
    """

    def __init__(self, stream: TextIO, clock: IReactorTime, *, progress: bool = True,
                 terminal: Optional[bool] = None, columns: Optional[int] = None) -> None:
        self._stream = stream
        self._clock = clock
        self._progress = progress
        self._terminal = progress and (stream.isatty() if terminal is None else terminal)
        self._columns = columns
        self._followed: Optional[_Followed] = None
        #: The status line on the terminal now, if any.
        self._status_shown: Optional[str] = None
        self._ticker: Optional[LoopingCall] = None
        #: The build that made the image and stored its layers, if any (none:
        #: the image was already built).
        self.built: Optional[BuildRecord] = None

    # -- following builds ---------------------------------------------------

    def follow(self, history: BuildHistory) -> Callable[[], None]:
        """Show every build ``history`` starts from now on; returns the call that stops it."""
        return history.watch(self._started)

    def _started(self, record: BuildRecord) -> None:
        self._followed = _Followed(record)
        record.subscribe(self)
        if not self._progress:
            return
        packages = ", ".join(record.packages[:NAMED_PACKAGES])
        if len(record.packages) > NAMED_PACKAGES:
            packages += ", ..."
        self.say("%s:%s: %s (%s) from %s, for %s" % (
            record.image, record.tag, _plural(len(record.packages), "package"), packages,
            record.source, record.system))
        if self._terminal:
            self._ticker = LoopingCall(self._redraw)
            self._ticker.clock = self._clock
            self._ticker.start(TICK, now=True)

    # -- BuildListener --------------------------------------------------------

    def log_line(self, record: BuildRecord, line: str) -> None:
        """A log line: shown only as the tail of the status line."""
        followed = self._followed
        if followed is not None and followed.record is record:
            followed.last_line = line
            self._redraw()

    def changed(self, record: BuildRecord) -> None:
        """A new step, new layers or the end: one line each."""
        followed = self._followed
        if followed is None or followed.record is not record:
            return
        if record.phase is BuildPhase.SUCCEEDED and record.layers:
            self.built = record
        if not self._progress:
            return
        if record.phase is not followed.phase and record.phase in _STEP_NUMBER:
            followed.phase = record.phase
            number = _STEP_NUMBER[record.phase]
            self.say("[%d/%d] %s" % (number, len(STEPS), STEPS[number - 1][1]))
        for index in range(followed.layers, len(record.layers)):
            layer = record.layers[index]
            self.say("layer %d %s: %s, %s" % (
                index + 1, "reused" if layer.reused else "written", human_size(layer.size),
                layer.description))
        followed.layers = len(record.layers)
        if record.finished:
            self._stop_ticking()
            # Without layers, the evaluation found the image already built.
            if record.phase is BuildPhase.SUCCEEDED and record.layers:
                self.say("built %s:%s in %.1f s: %s" % (
                    record.image, record.tag, record.duration(), self._layers_text(record)))
        else:
            self._redraw()

    # -- output ---------------------------------------------------------------

    def say(self, text: str, prefix: str = "nixeryd: ") -> None:
        """Write ``<prefix><text>`` as a line of its own, above the status line."""
        self._clear_status()
        self._stream.write("%s%s\n" % (prefix, text))
        self._redraw()
        self._stream.flush()

    def close(self) -> None:
        """Stop redrawing and clear the status line."""
        self._stop_ticking()
        self._clear_status()
        self._stream.flush()

    def _layers_text(self, record: BuildRecord) -> str:
        written = [layer.size for layer in record.layers if not layer.reused]
        reused = [layer.size for layer in record.layers if layer.reused]
        return "%s, %d written (%s), %d reused (%s)" % (
            _plural(len(record.layers), "layer"), len(written), human_size(sum(written)),
            len(reused), human_size(sum(reused)))

    def status(self) -> str:
        """The status line of the build followed, without the ``\\r``."""
        followed = self._followed
        if followed is None:
            return ""
        record = followed.record
        # A third of the bar per step; the layers fill the last third,
        # one cell each (their number is not known before they come).
        step = _STEP_NUMBER.get(record.phase, 0)
        segment = BAR_WIDTH // len(STEPS)
        filled = segment * max(0, step - 1)
        if record.phase is BuildPhase.LAYERING:
            filled += min(segment - 1, len(record.layers))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        written = sum(layer.size for layer in record.layers if not layer.reused)
        text = "[%s] %s %ds, %s, %s written" % (
            bar, record.phase.value, int(record.duration()),
            _plural(len(record.layers), "layer"), human_size(written))
        if followed.last_line:
            text += " | " + " ".join(followed.last_line.split())
        width = max(20, self._width() - 1)
        return text if len(text) <= width else text[:width - 3] + "..."

    def _width(self) -> int:
        if self._columns is not None:
            return self._columns
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return DEFAULT_COLUMNS

    def _redraw(self) -> None:
        followed = self._followed
        if not self._terminal or followed is None or followed.record.finished:
            return
        status = self.status()
        if self._status_shown == status:
            return
        self._stream.write("\r\x1b[K" + status)
        self._stream.flush()
        self._status_shown = status

    def _clear_status(self) -> None:
        if self._status_shown is not None:
            self._stream.write("\r\x1b[K")
            self._status_shown = None

    def _stop_ticking(self) -> None:
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self._ticker = None
        self._clear_status()

"""
One build's log: its own logger, whose every event goes to the build's
record and, at the right level, to the service log.

The Nix runner and the image builder log through the logger of the build
they work for (:class:`BuildLog` is their
:class:`~nixeryd.build.progress.BuildProgress`).  Its observer sorts the
events:

- a line of Nix's output (``stream="stderr"``, from
  :func:`~nixeryd.build.process.run_process`) is added to the record as it
  is (but for the credentials of URLs: the record is shown to anyone who
  pulls), and goes on to the service log at DEBUG, or at WARN when it is one
  of Nix's ``error:`` lines;
- any other event is nixeryd's own account of the build (a step started,
  a layer stored, the outcome): its text is added to the record after
  ``nixeryd:``, and it goes on to the service log at its own level.

Every event passed on carries the build's id in the field ``build``.
"""

from __future__ import annotations

from twisted.logger import (ILogObserver, LogEvent, Logger, LogLevel, formatEvent,
                            globalLogPublisher)
from twisted.python.failure import Failure
from zope.interface import implementer

from nixeryd.build.progress import BuildPhase, LayerSummary
from nixeryd.core.text import without_credentials
from nixeryd.core.errors import RegistryError
from nixeryd.service.builds import BuildRecord
from nixeryd.service.failures import StorageUnavailable

#: What starts nixeryd's own lines in a build's log.
ACCOUNT_PREFIX = "nixeryd: "


@implementer(ILogObserver)
class _BuildObserver:
    """Feeds one build's record and passes its events on to the service log."""

    def __init__(self, record: BuildRecord, publisher: ILogObserver) -> None:
        self._record = record
        self._publisher = publisher

    def __call__(self, event: LogEvent) -> None:
        """One event of the build."""
        event = dict(event, build=self._record.id)
        line = event.get("line")
        if event.get("stream") == "stderr" and isinstance(line, str):
            self._record.add_log_line(without_credentials(line))
            event["log_level"] = (LogLevel.warn if line.lstrip().startswith("error:")
                                  else LogLevel.debug)
        else:
            text = formatEvent(event)
            if text:
                self._record.add_log_line(ACCOUNT_PREFIX + without_credentials(text))
        self._publisher(event)


class BuildLog:
    """
    A build's record with the logger that feeds it: the
    :class:`~nixeryd.build.progress.BuildProgress` of the build's steps,
    and where the image service ends the build.

    :param record: the build's record.
    :param publisher: where events go on to (the global log publisher,
        the service log, when not given).

    :ivar record: the build's record.
    :ivar log: the build's logger.
    """

    def __init__(self, record: BuildRecord,
                 publisher: ILogObserver | None = None) -> None:
        self.record = record
        self._log = Logger(namespace=__name__, observer=_BuildObserver(
            record, publisher if publisher is not None else globalLogPublisher))

    @property
    def log(self) -> Logger:
        """The build's logger (see the module's docstring)."""
        return self._log

    def enter(self, phase: BuildPhase) -> None:
        """The build moves to a running ``phase``."""
        self.record.enter(phase)

    def add_layer(self, layer: LayerSummary) -> None:
        """A layer of the image is stored."""
        self.record.add_layer(layer)

    def succeeded(self, manifest_digest: str, outcome: str) -> None:
        """The image is built (or found) and stored; ``outcome`` says how."""
        record = self.record
        record.succeed(manifest_digest, outcome)
        self._log.info("{image}:{tag}: {outcome}", image=record.image, tag=record.tag,
                       outcome=outcome, digest=manifest_digest)

    def failed(self, error: RegistryError) -> None:
        """
        The build failed with ``error``, whose message (the client's, without
        the page address) ends the record; the error gets the build's id.
        """
        record = self.record
        error.build_id = record.id
        # A storage failure has its own warnings, at most one a minute.
        level = LogLevel.info if isinstance(error, StorageUnavailable) else LogLevel.warn
        self._log.emit(level, "{image}:{tag} failed: {error}", image=record.image,
                       tag=record.tag, error=error.message)
        record.fail(error.message)

    def crashed(self, failure: Failure) -> None:
        """The build failed unexpectedly: logged with its traceback."""
        record = self.record
        self._log.failure("{image}:{tag} failed: internal server error", failure,
                          image=record.image, tag=record.tag)
        record.fail("internal server error")

    def cancelled(self, reason: str) -> None:
        """The build was stopped before it ended."""
        self._log.info("Cancelled: {reason}", reason=reason)
        self.record.cancel("cancelled: " + reason)

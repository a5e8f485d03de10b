"""
A configuration file read again when it changes: :class:`WatchedFile`.

The htpasswd file and the rules file are edited while the daemon runs;
each use asks :meth:`WatchedFile.current`, which looks at the file's
``stat`` (in the runner, at most once per :data:`CHECK_INTERVAL`) and
parses it again, also in the runner, when its identity, size or
modification time changed.  A file that cannot be read or parsed any more
keeps the last good contents, with one warning per change.
"""

from __future__ import annotations

import os
from typing import Callable, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nixeryd.core.sharedwork import follow
from nixeryd.core.threads import Runner

T = TypeVar("T")

#: Seconds between two looks at the file.
CHECK_INTERVAL = 1.0

log = Logger()

_Stamp = tuple[int, int, int, int]


def _stamp(path: str) -> _Stamp:
    info = os.stat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class WatchedFile(Generic[T]):
    """
    The parsed contents of the file at ``path``, kept current.

    :param parse: reads the file (called in ``runner``); raises
        :class:`ValueError` or :class:`OSError` for a file it cannot use.
    :param what: what the file is, for the log (``htpasswd file``).
    """

    def __init__(self, path: str, parse: Callable[[str], T], *, runner: Runner,
                 clock: IReactorTime, what: str) -> None:
        self.path = path
        self._parse = parse
        self._runner = runner
        self._clock = clock
        self._what = what
        self._stamp: _Stamp | None = None
        self._value: T | None = None
        self._checked = float("-inf")
        self._checking: Deferred[None] | None = None

    def load_now(self) -> T:
        """Read the file on the calling thread (at start-up); raises as ``parse`` does."""
        stamp = _stamp(self.path)
        self._value = self._parse(self.path)
        self._stamp = stamp
        self._checked = self._clock.seconds()
        return self._value

    def due(self) -> bool:
        """Whether :meth:`current` would look at the file now."""
        return self._clock.seconds() - self._checked >= CHECK_INTERVAL

    def loaded(self) -> T | None:
        """The contents last read, without looking at the file."""
        return self._value

    async def current(self) -> T:
        """
        The contents, read again first when the file changed (looked at
        once per :data:`CHECK_INTERVAL`; concurrent callers share the look).
        """
        if self.due():
            if self._checking is None:
                checking = Deferred.fromCoroutine(self._refresh())
                self._checking = checking
                checking.addBoth(self._checked_now)
            await self._wait_checking()
        if self._value is None:
            raise ValueError("the %s %s could not be read" % (self._what, self.path))
        return self._value

    async def _wait_checking(self) -> None:
        """Wait for the look under way, on a Deferred of this caller's own."""
        checking = self._checking
        if checking is not None:
            await follow(checking)

    def _checked_now(self, result: object) -> None:
        self._checking = None
        self._checked = self._clock.seconds()
        if isinstance(result, Failure):
            log.failure("Looking at the {what} {path} failed", result,
                        what=self._what, path=self.path)

    async def _refresh(self) -> None:
        try:
            stamp = await self._runner.run(_stamp, self.path)
        except OSError as e:
            if self._stamp is not None:
                log.warn("Cannot read the {what} {path} ({error}); keeping what was read"
                         " before", what=self._what, path=self.path, error=e.strerror)
                self._stamp = None
            return
        if stamp == self._stamp:
            return
        try:
            value = await self._runner.run(self._parse, self.path)
        except (OSError, ValueError) as e:
            log.warn("The {what} {path} changed but cannot be used ({error}); keeping"
                     " what was read before", what=self._what, path=self.path, error=str(e))
            self._stamp = stamp
            return
        self._value = value
        self._stamp = stamp
        log.info("Read the {what} {path} again: it changed", what=self._what, path=self.path)

"""
How a child process ended: its result on success, an exception otherwise.

:func:`~nixeryd.build.process.run_process` fires with a
:class:`ProcessResult` or fails with :class:`ProcessFailed` (or one of its
kinds); the callers (the Nix runner, the git source) turn these into the
registry's errors.  Every outcome carries the last lines the child
logged, for the error report.
"""

from __future__ import annotations

import os
from typing import Sequence

from attrs import field, frozen


@frozen
class ProcessResult:
    """
    A child process that exited with status 0.

    :ivar argv: the command that was run.
    :ivar pid: the process id of its reaper (:mod:`nixeryd.build.reaper`),
        whose child it was.
    :ivar stdout: everything it wrote to stdout.
    :ivar tail: the last lines it logged.
    """

    argv: tuple[str, ...] = field(converter=tuple[str, ...])
    pid: int
    stdout: bytes
    tail: tuple[str, ...] = field(converter=tuple[str, ...])


class ProcessFailed(Exception):
    """
    A child process exited with a non-zero status or was killed.

    :ivar argv: the command.
    :ivar exit_code: its exit status, or ``None`` when a signal killed it.
    :ivar signal: the signal that killed it, or ``None``.
    :ivar tail: the last lines it logged.
    """

    def __init__(self, argv: Sequence[str], exit_code: int | None,
                 signal: int | None, tail: Sequence[str]) -> None:
        self.argv = tuple(argv)
        self.exit_code = exit_code
        self.signal = signal
        self.tail = tuple(tail)
        super().__init__(self.describe())

    @property
    def program(self) -> str:
        """The program's name, for messages."""
        return os.path.basename(self.argv[0]) if self.argv else "process"

    def describe(self) -> str:
        """One sentence saying how the process ended."""
        name = self.program
        if self.signal is not None:
            return "%s was killed by signal %d" % (name, self.signal)
        return "%s exited with status %s" % (name, self.exit_code)


class ProcessTimedOut(ProcessFailed):
    """
    A child process ran past its deadline and was killed.

    :ivar timeout: the deadline, in seconds.
    """

    def __init__(self, argv: Sequence[str], timeout: float,
                 tail: Sequence[str]) -> None:
        self.timeout = timeout
        super().__init__(argv, None, None, tail)

    def describe(self) -> str:
        """One sentence saying how the process ended."""
        return "%s timed out after %g seconds" % (self.program, self.timeout)


class OutputTooLarge(ProcessFailed):
    """
    A child process wrote more to stdout than allowed and was killed.

    :ivar limit: the limit, in bytes.
    """

    def __init__(self, argv: Sequence[str], limit: int,
                 tail: Sequence[str]) -> None:
        self.limit = limit
        super().__init__(argv, None, None, tail)

    def describe(self) -> str:
        """One sentence saying how the process ended."""
        return "%s wrote more than %d bytes to stdout" % (self.program, self.limit)

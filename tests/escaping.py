"""
A program whose descendant escapes its process group, for the tests of
deadlines and of stopping: run as ``python escaping.py MODE``, it
double-forks a grandchild into a session of its own, which ignores
``SIGTERM``, keeps the program's stdout and stderr open, says
``escaped <pid> <sid>`` on stderr and sleeps for a minute.  Then the
program itself, by ``MODE``:

- ``sleep``: says ``sleeping <pid>`` on stderr and sleeps for a minute (a
  step that runs past its deadline);
- ``exit``: writes ``done`` on stdout and exits with status 0 (a step
  that succeeds, leaving its descendant behind).

Only the standard library is used: tests run it with the interpreter, as
a fake ``nix-instantiate`` does in the daemon's tests.  A second argument
names a file where the lines about pids are appended too (the daemon's
log does not keep Nix's lines).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from typing import Iterable

#: Where this program is, to run it.
PROGRAM = os.path.abspath(__file__)

_ESCAPED = re.compile(r"escaped (\d+) (\d+)$")


def escaped_pid(lines: Iterable[str]) -> int | None:
    """The grandchild's pid, from the program's stderr lines."""
    for line in lines:
        match = _ESCAPED.search(line)
        if match:
            return int(match.group(1))
    return None


def sleeping_pid(lines: Iterable[str]) -> int | None:
    """The program's own pid, from its stderr lines (mode ``sleep``)."""
    for line in lines:
        if line.startswith("sleeping "):
            return int(line.split()[1])
    return None


def pids_in(path: str) -> tuple[int | None, int | None]:
    """The grandchild's and the program's pids, from a pid file."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None, None
    return escaped_pid(lines), sleeping_pid(lines)


def _say(line: str, pid_file: str | None) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    if pid_file is not None:
        with open(pid_file, "a") as f:
            f.write(line + "\n")


def _escape(pid_file: str | None) -> None:
    """Leave a grandchild in a new session; return in the program."""
    ready_read, ready_write = os.pipe()
    if os.fork() == 0:
        os.close(ready_read)
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            _say("escaped %d %d" % (os.getpid(), os.getsid(0)), pid_file)
            os.write(ready_write, b"x")
            os.close(ready_write)
            time.sleep(60)
            os._exit(0)
        os._exit(0)
    os.close(ready_write)
    # The grandchild has said who it is before the program goes on.
    os.read(ready_read, 1)
    os.close(ready_read)
    os.wait()


def main(mode: str, pid_file: str | None = None) -> None:
    _escape(pid_file)
    if mode == "exit":
        sys.stdout.write("done\n")
        sys.stdout.flush()
        os._exit(0)
    _say("sleeping %d" % (os.getpid(),), pid_file)
    time.sleep(60)


if __name__ == "__main__":
    main(*sys.argv[1:3])

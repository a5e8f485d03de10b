"""
The parent of every child step: ends the whole process tree a step leaves.

:mod:`nixeryd.build.process` does not run Nix or git directly; it runs
this file as a program (``python -I -S reaper.py GRACE LC PARENT -- ARGV``),
which starts ``ARGV`` and stays its parent until everything it started has
ended.  Killing a process group is not enough: a descendant may start a
session of its own or double-fork away from the group, keep our stderr
pipe open and outlive both the step and the daemon.  So this program:

- is a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``): every
  orphan among the step's descendants is re-parented to it rather than to
  init, so the step's whole tree is always below it, whatever sessions or
  groups its members made, and can be found by walking the parent ids in
  ``/proc``;
- leads its own session and process group (the daemon signals the group);
- on ``SIGTERM``, ``SIGINT`` or ``SIGHUP`` sends ``SIGTERM`` to every
  descendant, then ``SIGKILL`` to every descendant ``GRACE`` seconds later
  unless the step has ended;
- once the step's program has exited, kills (``SIGKILL``) whatever it left
  running and reaps it all, then exits the way the program did (its
  status, or the signal that killed it), so the daemon sees the program's
  own outcome;
- gets ``SIGTERM`` when the daemon dies (``PR_SET_PDEATHSIG``), so even a
  daemon killed with ``SIGKILL`` leaves no step running.

Without ``prctl`` (a system other than Linux, or a seccomp filter that
refuses it) this program writes one line saying so and falls back to the
step's process group: what it kills is what is below it in ``/proc`` and
every member of its group, wherever re-parented, and the daemon kills the
group after the grace period as always.  A descendant that leaves the
group and is re-parented away, or a step whose daemon was killed, is then
not ended.

The alternative, one cgroup per step, needs a delegated cgroup hierarchy
(root, or systemd's ``Delegate=``), which neither every host nor every CI
runner gives; a subreaper works for any user on any Linux.  A process
that gets stuck in the kernel (uninterruptible sleep) may keep this
program from exiting: the daemon, which does not wait for it to answer a
request, kills its group after a margin of its own.

Only the standard library is used: the file runs without the package on
the path (``-I -S``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import sys
import time
from typing import Sequence

#: ``prctl`` options (``<linux/prctl.h>``).
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

#: Signals that ask the step to stop.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

#: Set in the environment this program is given (to anything), it acts
#: as if ``prctl`` were unavailable, for tests; never passed on.
NO_PRCTL = "NIXERYD_REAPER_NO_PRCTL"

#: Exit status when the program cannot be started (as a shell says).
CANNOT_RUN = 127

#: How long to wait for a SIGCHLD between two rounds of killing what is
#: left, in seconds (a descendant forked during a round is found by the
#: next one).
_KILL_ROUND = 0.05

_WAITED = frozenset(STOP_SIGNALS | {signal.SIGCHLD})


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        prctl = libc.prctl
    except AttributeError:
        raise OSError(errno.ENOSYS, "the C library has no prctl") from None
    if prctl(ctypes.c_int(option), ctypes.c_ulong(value),
                  ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def _parent_ids() -> dict[int, tuple[int, str, int]]:
    """``pid → (ppid, state, pgid)`` of every process in ``/proc``."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % (name,), "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) >= 3:
            found[int(name)] = (int(fields[1]), fields[0].decode("ascii", "replace"),
                                int(fields[2]))
    return found


def descendants(pid: int, *, include_zombies: bool = False,
                group: int | None = None) -> list[int]:
    """
    Every process below ``pid``, found through the parent ids in
    ``/proc`` (zombies, which no signal reaches, only when asked), and
    every other member of process group ``group`` when one is given.
    """
    table = _parent_ids()
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(child)
    found = []
    seen = {pid}
    pending = list(children.get(pid, ()))
    if group is not None:
        pending.extend(p for p, (_, _, pgid) in table.items() if pgid == group)
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        if include_zombies or table[current][1] not in ("Z", "X"):
            found.append(current)
        pending.extend(children.get(current, ()))
    return found


#: The process group whose members are ended with the step's tree, when
#: ``prctl`` is unavailable (see the module docstring); else ``None``.
_fallback_group: int | None = None


def _tree(me: int) -> list[int] | None:
    """
    The live descendants of ``me`` (and the members of the fallback
    group), or ``None`` when ``/proc`` cannot be read.
    """
    try:
        return descendants(me, group=_fallback_group)
    except OSError:
        return None


def _signal_all(pids: Sequence[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _reap(program: int) -> int | None:
    """Reap every child that has ended; the program's wait status if it did."""
    status = None
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if pid == program:
            status = wait_status


def _wait_for_signal(timeout: float | None) -> int | None:
    """The next awaited signal, or ``None`` when ``timeout`` passes first."""
    if timeout is None:
        return signal.sigwaitinfo(_WAITED).si_signo
    info = signal.sigtimedwait(_WAITED, max(timeout, 0.0))
    return None if info is None else info.si_signo


def supervise(program: int, grace: float) -> int:
    """
    Wait for ``program`` (a child) to exit, stopping the whole tree when
    asked; then end everything it left.  Its wait status.
    """
    me = os.getpid()
    stop_at: float | None = None
    killed = False
    status = None
    while True:
        status = _reap(program)
        if status is not None:
            break
        timeout = None
        if stop_at is not None and not killed:
            timeout = stop_at + grace - time.monotonic()
            if timeout <= 0:
                _signal_all(_tree(me) or [program], signal.SIGKILL)
                killed = True
                timeout = None
        signum = _wait_for_signal(timeout)
        if signum in STOP_SIGNALS and stop_at is None:
            stop_at = time.monotonic()
            _signal_all(_tree(me) or [program], signal.SIGTERM)
    end_everything(me)
    return status


def end_everything(me: int) -> None:
    """
    Kill every descendant of ``me`` and reap them all, however they fork
    (without ``/proc``, only reap those that have ended).
    """
    while True:
        _reap(-1)
        alive = _tree(me)
        if alive is None:
            return
        if not alive:
            try:
                os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            # A child that has just ended, not yet reaped: another round.
        _signal_all(alive, signal.SIGKILL)
        signal.sigtimedwait({signal.SIGCHLD}, _KILL_ROUND)


def exit_like(status: int) -> None:
    """Exit as a process with wait status ``status`` did."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL and SIGSTOP have no handler to reset.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)
    os._exit(os.waitstatus_to_exitcode(status))


def _start(argv: Sequence[str]) -> int:
    """Fork and exec ``argv`` with the signal state a new program expects."""
    pid = os.fork()
    if pid != 0:
        return pid
    try:
        # The interpreter ignores these; exec keeps what is ignored.
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.execvp(argv[0], list(argv))
    except OSError as e:
        sys.stderr.write("cannot run %s: %s\n" % (argv[0], e.strerror or e))
        sys.stderr.flush()
    finally:
        os._exit(CANNOT_RUN)


def _fall_back(error: OSError) -> None:
    """
    Without ``prctl``: say so in one line, and end the members of our own
    process group with the tree (only when we lead it, so never the
    daemon's).
    """
    global _fallback_group
    me = os.getpid()
    if os.getpgrp() == me:
        _fallback_group = me
    sys.stderr.write(
        "reaper: prctl is unavailable (%s): the step's process group is ended,"
        " not its descendants that leave it, nor the step when the daemon is"
        " killed\n" % (error.strerror or error,))
    sys.stderr.flush()


def main(args: Sequence[str]) -> None:
    """``GRACE LC_CTYPE_SET PARENT_PID -- ARGV...``, see the module docstring."""
    grace, keeps_lc_ctype, parent, separator, *argv = args
    if separator != "--" or not argv:
        sys.stderr.write("usage: reaper.py GRACE 0|1 PARENT -- ARGV...\n")
        os._exit(2)
    signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # The interpreter sets LC_CTYPE itself when the locale is "C" (PEP
    # 538): the program gets exactly the environment it was given.
    if keeps_lc_ctype == "0":
        os.environ.pop("LC_CTYPE", None)
    try:
        os.setsid()
    except PermissionError:
        pass  # Already a session leader.
    disabled = os.environ.pop(NO_PRCTL, None) is not None
    try:
        if disabled:
            raise OSError(errno.ENOSYS, "disabled by %s" % (NO_PRCTL,))
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError as e:
        _fall_back(e)
    if os.getppid() != int(parent):
        # The daemon died before the line above: nothing to run for.
        os._exit(128 + signal.SIGTERM)
    program = _start(argv)
    exit_like(supervise(program, float(grace)))


if __name__ == "__main__":
    main(sys.argv[1:])

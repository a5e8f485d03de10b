"""
``nixeryd <command>`` (also ``python -m nixeryd <command>``): the
command-line entry points other than the daemon.

``serve`` runs the registry daemon (see :mod:`nixeryd.app.servecmd`;
``twistd nixery`` is the same daemon); ``build`` builds one image into an
OCI image layout (see :mod:`nixeryd.app.buildcmd`); ``gc`` removes from
the daemon's storage what is no longer wanted (see
:mod:`nixeryd.app.gccmd`); ``verify`` checks its blobs against their
digests (see :mod:`nixeryd.app.verifycmd`).
"""

from __future__ import annotations

import os
import signal
import sys

USAGE = """\
usage: nixeryd serve [--log-format json|text] [options]
       nixeryd build [options] NAME
       nixeryd gc [--keep-days N] [--grace HOURS] [--dry-run] [options]
       nixeryd verify [--repair] [options]
       (run 'nixeryd serve --help', 'nixeryd build --help', 'nixeryd gc --help'
       or 'nixeryd verify --help' for options)
"""


def main(argv: list[str]) -> int:
    """Dispatch to a command; returns the exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    if argv[0] == "serve":
        from nixeryd.app.servecmd import main as serve_main
        return serve_main(argv[1:])
    if argv[0] == "build":
        from nixeryd.app.buildcmd import main as build_main
        return build_main(argv[1:])
    if argv[0] == "gc":
        from nixeryd.app.gccmd import main as gc_main
        return gc_main(argv[1:])
    if argv[0] == "verify":
        from nixeryd.app.verifycmd import main as verify_main
        return verify_main(argv[1:])
    sys.stderr.write("nixeryd: unknown command %r (expected 'serve', 'build', 'gc' or"
                     " 'verify')\n" % (argv[0],))
    return 2


def entry_point() -> None:
    """
    The ``nixeryd`` console script.  A reader that goes away early
    (``nixeryd gc --help | head``) ends it quietly, as with other
    command-line programs: no traceback, exit code 141 (SIGPIPE).
    """
    try:
        code = main(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so
        # that the closed pipe is not reported a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        sys.exit(128 + signal.SIGPIPE)
    sys.exit(code)


if __name__ == "__main__":
    entry_point()

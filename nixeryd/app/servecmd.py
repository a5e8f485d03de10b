"""
``nixeryd serve``: the registry daemon, in the foreground, as a service
manager runs it.

It is ``twistd --nodaemon --pidfile= --logger=<observer> nixery <options>``
with the project's own log observer chosen by ``--log-format`` (one JSON
object per line by default, for journald and log collectors; ``text`` for
a person at a terminal), so a unit file or a container needs one installed
program and no ``twistd`` on its PATH.  Every other argument goes to the
``nixery`` plugin (``nixeryd serve --help`` lists them).
"""

from __future__ import annotations

import sys
from typing import Sequence

#: ``--log-format`` values and the observer factories they select.
LOG_FORMATS = {
    "json": "nixeryd.app.logs.json_observer",
    "text": "nixeryd.app.logs.text_observer",
}
DEFAULT_LOG_FORMAT = "json"


class ServeUsageError(Exception):
    """A ``--log-format`` that is missing its value or names no format."""


def twistd_argv(argv: Sequence[str]) -> list[str]:
    """
    The ``twistd`` command line that ``nixeryd serve argv`` stands for.

    :raises ServeUsageError: for a bad ``--log-format``.
    """
    log_format = DEFAULT_LOG_FORMAT
    rest: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--log-format":
            value = next(arguments, None)
            if value is None:
                raise ServeUsageError("--log-format needs a value: json or text")
            log_format = value
        elif argument.startswith("--log-format="):
            log_format = argument.partition("=")[2]
        else:
            rest.append(argument)
    if log_format not in LOG_FORMATS:
        raise ServeUsageError("--log-format must be json or text, not %r" % (log_format,))
    return ["twistd", "--nodaemon", "--pidfile=",
            "--logger=" + LOG_FORMATS[log_format], "nixery", *rest]


def main(argv: Sequence[str]) -> int:
    """Run the daemon until it stops; returns the exit code."""
    try:
        sys.argv = twistd_argv(argv)
    except ServeUsageError as e:
        sys.stderr.write("nixeryd serve: %s\n" % (e,))
        return 2
    from twisted.scripts.twistd import run

    run()  # type: ignore[no-untyped-call]
    return 0

"""
What every ``nixeryd`` command does with its command line before it does
its work: parse it, or say in one line why not and give the exit code.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence, TypeVar

from twisted.python.usage import UsageError

#: The exit code of a command line that cannot be used.
EXIT_USAGE = 2

T = TypeVar("T")


def parse_or_exit_code(parse: Callable[[Sequence[str]], T], argv: Sequence[str],
                       prefix: str) -> T | int:
    """
    ``parse(argv)``, or the exit code to end with: :data:`EXIT_USAGE` after
    one line on stderr (``<prefix>: <reason>``) for a usage error, or what
    ``--help``/``--version`` asked for (they print and exit).
    """
    try:
        return parse(argv)
    except UsageError as e:
        sys.stderr.write("%s: %s\n" % (prefix, e))
        return EXIT_USAGE
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0

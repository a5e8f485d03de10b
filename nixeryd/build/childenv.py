"""
The environment of a child process (Nix, git): never inherited whole.

A child gets only the variables it needs to find its tools, store,
daemon, caches and credentials, picked from the server's environment by
an allow-list, plus what the caller adds.
"""

from __future__ import annotations

from typing import Iterable, Mapping

#: Environment variables a child may inherit from the server by default:
#: what Nix and git need to find their tools, store, daemon, caches and
#: credentials, and nothing else.
DEFAULT_ENVIRONMENT_NAMES = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "TMPDIR",
    "LANG",
    "LC_ALL",
    "TZ",
    "NIX_PATH",
    "NIX_REMOTE",
    "NIX_CONF_DIR",
    "NIX_USER_CONF_FILES",
    "NIX_SSL_CERT_FILE",
    "SSL_CERT_FILE",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "SSH_AUTH_SOCK",
    "GIT_SSH_COMMAND",
    "GIT_SSL_CAINFO",
)


def child_environment(environ: Mapping[str, str],
                      names: Iterable[str] = DEFAULT_ENVIRONMENT_NAMES,
                      **extra: str) -> dict[str, str]:
    """
    The environment for a child process: the allow-listed variables that
    are set and non-empty in ``environ``, plus ``extra``.

    :param environ: the server's environment, read once at startup.
    :param names: the variables to keep.
    :param extra: variables to set regardless of ``environ``.
    """
    env = {name: environ[name] for name in names if environ.get(name)}
    env.update(extra)
    return env

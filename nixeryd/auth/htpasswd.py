"""
Users from an htpasswd file with bcrypt hashes: :class:`Htpasswd`.

The format is the one ``htpasswd -B`` writes and the distribution
registry reads: one ``user:hash`` line per user, the hash a bcrypt one
(``$2y$``, ``$2b$`` or ``$2a$``).  Blank lines and lines starting with
``#`` are skipped; a line with another kind of hash (MD5, SHA-1, crypt) is
refused at start-up, naming its line, since those hashes are too weak to
keep.

bcrypt runs in the runner, never on the reactor thread, and each verdict
is kept briefly (:mod:`nixeryd.auth.verdicts`).  The file is read again
when it changes (:mod:`nixeryd.auth.watchedfile`).
"""

from __future__ import annotations

from typing import Mapping

import bcrypt
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from nixeryd.auth.credentials import BasicCredentials
from nixeryd.auth.verdicts import Verdicts
from nixeryd.auth.watchedfile import WatchedFile
from nixeryd.core.threads import Runner

#: The prefixes of bcrypt hashes.
BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
#: What an unknown user's password is checked against when the file has
#: no user (else it is a user's hash, of the cost the file uses), so that
#: an unknown user takes as long as a known one: no user names learnt by
#: timing.
_NOBODY = b"$2b$10$SSv/cCSO9elKWRqDgXkFTO5I1VHwY/adNRifzvoxBxgOgIFo/7ATS"
#: Longest password checked: bcrypt reads 72 bytes, and refuses more.
MAX_PASSWORD_BYTES = 72


def parse_htpasswd(text: str) -> dict[str, bytes]:
    """
    ``user → bcrypt hash`` from an htpasswd file's text.

    :raises ValueError: naming the first line that is not ``user:bcrypt-hash``.
    """
    users: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise ValueError("line %d is not user:hash" % (number,))
        if not hashed.startswith(BCRYPT_PREFIXES):
            raise ValueError("line %d (user %s) has no bcrypt hash: make it with"
                             " htpasswd -B" % (number, user))
        users[user] = hashed.encode("ascii", "replace")
    return users


def read_htpasswd(path: str) -> dict[str, bytes]:
    """Read and parse the htpasswd file at ``path`` (blocking)."""
    with open(path, encoding="utf-8") as f:
        return parse_htpasswd(f.read())


def _matches(password: str, hashed: bytes) -> bool:
    """bcrypt's verdict (blocking: tens of milliseconds by design)."""
    encoded = password.encode("utf-8")
    if len(encoded) > MAX_PASSWORD_BYTES:
        return False
    try:
        return bcrypt.checkpw(encoded, hashed)
    except ValueError:
        return False


class Htpasswd:
    """
    Checks user names and passwords against an htpasswd file.

    :param path: the file, read now (raising ``OSError`` or ``ValueError``
        for one that cannot be used) and again whenever it changes.
    :param runner: runs bcrypt and the file's reading.
    """

    def __init__(self, path: str, *, runner: Runner, clock: IReactorTime) -> None:
        self._file: WatchedFile[Mapping[str, bytes]] = WatchedFile(
            path, read_htpasswd, runner=runner, clock=clock, what="htpasswd file")
        self._file.load_now()
        self._runner = runner
        self._verdicts: Verdicts[bool] = Verdicts(clock)

    @property
    def path(self) -> str:
        """The file's path."""
        return self._file.path

    def _key(self, credentials: BasicCredentials, users: Mapping[str, bytes]) -> bytes:
        hashed = users.get(credentials.user, b"")
        return self._verdicts.key(credentials.user, credentials.password,
                                  hashed.decode("ascii", "replace"))

    def known(self, credentials: BasicCredentials) -> bool | None:
        """
        The verdict on ``credentials`` if one is kept and the file is not
        due for a look (:meth:`check` then looks first), else ``None``.
        """
        users = self._file.loaded()
        if users is None or self._file.due():
            return None
        kept = self._verdicts.known(self._key(credentials, users))
        return None if kept is None else kept[0]

    async def check(self, credentials: BasicCredentials) -> bool:
        """Whether the password is the user's (an unknown user: never)."""
        users = await self._file.current()
        hashed = users.get(credentials.user)

        def verify() -> Deferred[tuple[bool, float | None]]:
            against = hashed if hashed is not None else next(iter(users.values()), _NOBODY)
            return self._runner.run(_matches, credentials.password, against).addCallback(
                lambda ok: (ok and hashed is not None, None))

        return await self._verdicts.decide(self._key(credentials, users), verify)

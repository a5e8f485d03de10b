"""
The registry errors of authentication and authorisation: 401
``UNAUTHORIZED`` with its challenge, 403 ``DENIED``.
"""

from __future__ import annotations

from typing import Any

from nixeryd.core.errors import RegistryError

#: The header that carries a challenge (RFC 9110).
WWW_AUTHENTICATE = b"WWW-Authenticate"


class Unauthorized(RegistryError):
    """
    No credentials, wrong ones, or a token that does not do: a 401
    ``UNAUTHORIZED`` whose ``WWW-Authenticate`` challenge tells the client
    how to authenticate (and, for a token, which scope it needs).

    :param challenge: the ``WWW-Authenticate`` value.
    """

    code = "UNAUTHORIZED"
    status = 401

    def __init__(self, message: str, challenge: bytes, detail: Any = None) -> None:
        super().__init__(message, detail)
        self.headers = ((WWW_AUTHENTICATE, challenge),)


class Denied(RegistryError):
    """
    An authenticated user may not pull this image: a 403 ``DENIED`` whose
    message says which package the rules keep from them.
    """

    code = "DENIED"
    status = 403

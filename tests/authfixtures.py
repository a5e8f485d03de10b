"""
Fixtures of the authentication tests: htpasswd files with real bcrypt
hashes (cheap ones), token keys, and a runner that counts its calls.
"""

from __future__ import annotations

import os
from typing import Callable, ParamSpec, TypeVar

import bcrypt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.defer import Deferred

from nixeryd.core.threads import InlineRunner

P = ParamSpec("P")
T = TypeVar("T")

#: The users of the tests and their passwords.
USERS = {"alice": "wonderland", "bob": "builder"}


def htpasswd_text(users: dict[str, str], prefix: bytes = b"$2y$") -> str:
    """An htpasswd file's text: bcrypt hashes of cost 4, written as ``htpasswd -B`` does."""
    lines = []
    for user, password in users.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4))
        lines.append("%s:%s" % (user, (prefix + hashed[4:]).decode()))
    return "\n".join(lines) + "\n"


def write_file(directory: str, name: str, text: str | bytes) -> str:
    """Write ``text`` to ``directory/name``; its path."""
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    return path


def ec_key_pem() -> bytes:
    """A new EC P-256 private key, PEM (PKCS#8)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def rsa_key_pem() -> bytes:
    """A new RSA 2048 private key, PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(private_pem: bytes) -> bytes:
    """The public key of a PEM private key, PEM."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


class CountingRunner(InlineRunner):
    """An inline runner that records the name of every function it ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def run(self, function: Callable[P, T], /,
            *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        self.ran.append(getattr(function, "__name__", repr(function)))
        return super().run(function, *args, **kwargs)

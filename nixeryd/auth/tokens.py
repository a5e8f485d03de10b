"""
Bearer tokens: JWTs as the distribution token specification has them.

:class:`TokenSigner` issues them (nixeryd's own token endpoint): RS256 for
an RSA key, ES256 for an EC P-256 key, with the claims ``iss``, ``sub``,
``aud`` (the service), ``iat``, ``nbf``, ``exp``, ``jti`` and ``access``.
:class:`TokenVerifier` checks them, whoever issued them (nixeryd or an
external token service whose public key it is given): the signature, the
algorithm, the issuer, the audience and the times, against the daemon's
clock.  PyJWT over ``cryptography`` does the JSON Web parts.
"""

from __future__ import annotations

import secrets
from typing import Any, Sequence

import jwt
from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.interfaces import IReactorTime

from nixeryd.auth.scopes import Scope, claims_of

#: The algorithms tokens are signed and checked with.
ALGORITHMS = ("RS256", "ES256")
#: Seconds of clock difference tolerated between issuer and registry.
LEEWAY = 30.0

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class InvalidToken(Exception):
    """A token that proves nothing; the message says why, for the client."""


@frozen
class TokenClaims:
    """
    What a valid token says.

    :ivar subject: the user it was issued to (``sub``).
    :ivar access: its ``access`` claim, as issued.
    :ivar expires: when it expires, in the clock's seconds.
    """

    subject: str
    access: Any
    expires: float


def _algorithm(key: PrivateKey | PublicKey) -> str:
    """RS256 for RSA, ES256 for an EC P-256 key; refuses any other key."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        if key.key_size < 2048:
            raise ValueError("an RSA key of %d bits is too small: use 2048 or more"
                             % (key.key_size,))
        return "RS256"
    if isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError("an EC key must be on P-256 (ES256), not %s" % (key.curve.name,))


def load_private_key(pem: bytes) -> PrivateKey:
    """
    A PEM private key (RSA or EC P-256, unencrypted).

    :raises ValueError: for anything else.
    """
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ValueError("the key must be an RSA or EC P-256 private key")
    _algorithm(key)
    return key


def load_public_keys(pem: bytes) -> list[PublicKey]:
    """
    Every public key in a PEM file: ``PUBLIC KEY`` blocks and the keys of
    ``CERTIFICATE`` blocks (a token service's signing certificate).

    :raises ValueError: when it holds none, or an unusable one.
    """
    keys: list[PublicKey] = []
    for block in pem.split(b"-----END ")[:-1]:
        start = block.find(b"-----BEGIN ")
        if start < 0:
            continue
        kind = block[start + len(b"-----BEGIN "):].split(b"-----", 1)[0]
        text = block[start:] + b"-----END " + kind + b"-----\n"
        key: object
        if kind == b"CERTIFICATE":
            key = x509.load_pem_x509_certificate(text).public_key()
        elif kind == b"PUBLIC KEY":
            key = serialization.load_pem_public_key(text)
        else:
            continue
        if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise ValueError("a token key must be RSA or EC P-256")
        _algorithm(key)
        keys.append(key)
    if not keys:
        raise ValueError("no PEM public key or certificate in it")
    return keys


class TokenSigner:
    """
    Issues tokens for ``service`` as ``issuer``, lasting ``ttl`` seconds.
    """

    def __init__(self, key: PrivateKey, *, issuer: str, service: str, ttl: float,
                 clock: IReactorTime) -> None:
        self._key = key
        self._algorithm = _algorithm(key)
        self.issuer = issuer
        self.service = service
        self.ttl = ttl
        self._clock = clock

    def public_key(self) -> PublicKey:
        """The key that checks this signer's tokens."""
        return self._key.public_key()

    def issue(self, subject: str, scopes: Sequence[Scope]) -> tuple[str, int, int]:
        """
        A token for ``subject`` granting ``scopes`` (signing is blocking:
        called in a runner): the token, its lifetime and its issue time
        (whole seconds).
        """
        now = int(self._clock.seconds())
        lifetime = int(self.ttl)
        claims = {
            "iss": self.issuer, "sub": subject, "aud": self.service,
            "iat": now, "nbf": now - 1, "exp": now + lifetime,
            "jti": secrets.token_hex(16), "access": claims_of(scopes),
        }
        token = jwt.encode(claims, self._key, algorithm=self._algorithm,
                           headers={"typ": "JWT"})
        return token, lifetime, now


class TokenVerifier:
    """
    Checks tokens signed by one of ``keys`` for ``service`` by ``issuer``.
    """

    def __init__(self, keys: Sequence[PublicKey], *, issuer: str, service: str,
                 clock: IReactorTime) -> None:
        if not keys:
            raise ValueError("a token verifier needs a key")
        self._keys = list(keys)
        self.issuer = issuer
        self.service = service
        self._clock = clock

    def verify(self, token: str) -> TokenClaims:
        """
        The claims of a valid token (blocking: called in a runner).

        :raises InvalidToken: saying what is wrong with it.
        """
        claims: dict[str, Any] | None = None
        for key in self._keys:
            try:
                claims = jwt.decode(
                    token, key, algorithms=[_algorithm(key)], audience=self.service,
                    issuer=self.issuer,
                    options={"require": ["exp", "iss", "aud", "sub"],
                             "verify_exp": False, "verify_nbf": False,
                             "verify_iat": False})
                break
            except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
                # Signed by another key, or for another kind of key (an
                # ES256 token met by an RSA key first): try the next key.
                continue
            except jwt.InvalidAudienceError:
                raise InvalidToken("the token is for another service, not %s"
                                   % (self.service,)) from None
            except jwt.InvalidIssuerError:
                raise InvalidToken("the token was issued by another token service, not %s"
                                   % (self.issuer,)) from None
            except jwt.MissingRequiredClaimError as e:
                raise InvalidToken("the token has no %s claim" % (e.claim,)) from None
            except jwt.InvalidTokenError:
                raise InvalidToken("the token is not a valid signed token") from None
        if claims is None:
            raise InvalidToken("the token's signature is not one of this registry's"
                               " token service")
        now = self._clock.seconds()
        expires = claims.get("exp")
        not_before = claims.get("nbf")
        if not isinstance(expires, (int, float)) or isinstance(expires, bool):
            raise InvalidToken("the token's expiry is not a time")
        if expires + LEEWAY <= now:
            raise InvalidToken("the token has expired")
        if isinstance(not_before, (int, float)) and not_before - LEEWAY > now:
            raise InvalidToken("the token is not valid yet")
        subject = claims.get("sub")
        if not isinstance(subject, str):
            raise InvalidToken("the token names no user")
        return TokenClaims(subject=subject, access=claims.get("access", []),
                           expires=float(expires) + LEEWAY)

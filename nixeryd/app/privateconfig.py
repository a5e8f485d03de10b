"""
The settings of a private instance, read and checked together:
authentication (htpasswd, tokens), the rules file, TLS and the bound on
cold builds per client.  One frozen :class:`PrivateConfig`, part of the
daemon's :class:`~nixeryd.app.config.Config`; everything off by default
(anonymous pulls over plain HTTP).
"""

from __future__ import annotations

from typing import Mapping, Optional

from attrs import frozen
from twisted.python.usage import UsageError

from nixeryd.app.settings import (
    AUTH_RULES,
    COLD_PER_MINUTE,
    HTPASSWD,
    TLS_CERT,
    TLS_KEY,
    TOKEN_ISSUER,
    TOKEN_KEY,
    TOKEN_PUBLIC_KEY,
    TOKEN_REALM,
    TOKEN_SERVICE,
    TOKEN_TTL,
)


@frozen
class PrivateConfig:
    """
    :ivar htpasswd: the htpasswd file (Basic authentication, and the
        users of the token endpoint).
    :ivar rules: the rules file.
    :ivar token_key: the private key of nixeryd's own token endpoint.
    :ivar token_public_key: the public key (or certificate) of an external
        token service.
    :ivar token_realm: the token service's URL, when not nixeryd's own.
    :ivar token_service: the tokens' service (audience).
    :ivar token_issuer: the tokens' issuer.
    :ivar token_ttl: seconds nixeryd's own tokens last.
    :ivar tls_cert: the TLS certificate (chain) file.
    :ivar tls_key: its private key file.
    :ivar cold_per_minute: cold builds one client may start per minute
        (0: no bound).
    """

    htpasswd: Optional[str] = None
    rules: Optional[str] = None
    token_key: Optional[str] = None
    token_public_key: Optional[str] = None
    token_realm: Optional[str] = None
    token_service: str = TOKEN_SERVICE.default
    token_issuer: str = TOKEN_ISSUER.default
    token_ttl: float = TOKEN_TTL.default
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    cold_per_minute: int = COLD_PER_MINUTE.default

    @property
    def tokens(self) -> bool:
        """Whether the token flow is on."""
        return self.token_key is not None or self.token_public_key is not None

    @property
    def authenticated(self) -> bool:
        """Whether pulls need credentials."""
        return self.htpasswd is not None or self.tokens


def private_config_from(options: Mapping[str, object],
                        environ: Optional[Mapping[str, str]]) -> PrivateConfig:
    """
    The private instance's settings.

    :raises UsageError: one line naming what to set, for settings that do
        not go together.
    """
    config = PrivateConfig(
        htpasswd=HTPASSWD.read(options, environ),
        rules=AUTH_RULES.read(options, environ),
        token_key=TOKEN_KEY.read(options, environ),
        token_public_key=TOKEN_PUBLIC_KEY.read(options, environ),
        token_realm=TOKEN_REALM.read(options, environ),
        token_service=TOKEN_SERVICE.read(options, environ),
        token_issuer=TOKEN_ISSUER.read(options, environ),
        token_ttl=TOKEN_TTL.read(options, environ),
        tls_cert=TLS_CERT.read(options, environ),
        tls_key=TLS_KEY.read(options, environ),
        cold_per_minute=COLD_PER_MINUTE.read(options, environ))
    variables = environ is not None
    if config.token_key is not None and config.htpasswd is None:
        raise UsageError("%s signs tokens for the users of an htpasswd file: set %s too"
                         % (TOKEN_KEY.label(variables), HTPASSWD.label(variables)))
    if config.token_public_key is not None and config.token_key is None \
            and config.token_realm is None:
        raise UsageError("%s needs the URL of the token service clients get tokens from:"
                         " set %s" % (TOKEN_PUBLIC_KEY.label(variables),
                                      TOKEN_REALM.label(variables)))
    if config.rules is not None and not config.authenticated:
        raise UsageError("%s needs authentication: set %s (or token settings)"
                         % (AUTH_RULES.label(variables), HTPASSWD.label(variables)))
    if (config.tls_cert is None) != (config.tls_key is None):
        raise UsageError("TLS needs both %s and %s" % (TLS_CERT.label(variables),
                                                       TLS_KEY.label(variables)))
    return config


def check_tls_listen(config: PrivateConfig, listen: str) -> PrivateConfig:
    """
    ``config``, unless it would speak TLS twice: ``--tls-cert`` wraps the
    endpoint in TLS itself, so the endpoint must be a plain one (``tcp:``,
    ``unix:``), not ``ssl:``.

    :raises UsageError: saying which to drop.
    """
    if config.tls_cert is not None and listen.lower().startswith(("ssl:", "tls:")):
        raise UsageError("--listen %s already speaks TLS: with %s give a plain tcp: endpoint"
                         " (or drop %s)" % (listen, TLS_CERT.label(True), TLS_CERT.label(True)))
    return config


def describe_access(config: PrivateConfig) -> str | None:
    """
    How clients reach a private instance, for the start-up line:
    ``HTTPS, Basic authentication (users of <file>), rules <file>``… (file
    paths only, never what is in them); ``None`` for anonymous pulls over
    plain HTTP.
    """
    if not config.authenticated and config.tls_cert is None:
        return None
    parts = ["HTTPS" if config.tls_cert is not None else "HTTP"]
    if not config.authenticated:
        parts.append("anonymous pulls")
    elif not config.tokens:
        parts.append("Basic authentication (users of %s)" % (config.htpasswd,))
    else:
        issuers = []
        if config.token_key is not None:
            issuers.append("of /token")
        if config.token_public_key is not None:
            issuers.append("of %s" % (config.token_realm or "/token",))
        parts.append("token authentication (tokens %s)" % (" and ".join(issuers),))
    if config.rules is not None:
        parts.append("rules %s" % (config.rules,))
    return ", ".join(parts)

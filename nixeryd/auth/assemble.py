"""
The gate and the token endpoint of a private instance, made from its
settings in one place: :func:`make_auth`.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from nixeryd.app.privateconfig import PrivateConfig
from nixeryd.auth.gate import AuthGate, TokenSettings
from nixeryd.auth.htpasswd import Htpasswd
from nixeryd.auth.membership import NameContents
from nixeryd.auth.pages import PageAccess, guard_pages
from nixeryd.auth.rules import Rules, read_rules
from nixeryd.auth.tokenresource import TokenResource
from nixeryd.auth.tokens import (TokenSigner, TokenVerifier, load_private_key,
                                 load_public_keys)
from nixeryd.auth.verdicts import Verdicts
from nixeryd.auth.watchedfile import WatchedFile
from nixeryd.core.threads import Runner
from nixeryd.registry.imagesource import ImageSource
from nixeryd.service.builds import BuildHistory


class AuthSetupFailed(Exception):
    """A file of the private settings cannot be used; the message says which and why."""


@frozen
class Auth:
    """
    :ivar gate: what every ``/v2`` request passes.
    :ivar token_endpoint: nixeryd's own ``/token``, when it signs tokens.
    :ivar htpasswd: the users, if the instance has its own.
    :ivar rules: the rules file, if any.
    """

    gate: AuthGate
    token_endpoint: TokenResource | None
    htpasswd: Htpasswd | None = None
    rules: WatchedFile[Rules] | None = None

    def guard_pages(self, builds: BuildHistory | None, index: Resource,
                    index_without_builds: Resource,
                    build_pages: Resource) -> tuple[Resource, Resource]:
        """The front page and ``/builds/`` for users only (:mod:`nixeryd.auth.pages`)."""
        return guard_pages(PageAccess(self.htpasswd, self.rules, builds), index,
                           index_without_builds, build_pages)


def _reason(error: OSError | ValueError) -> str:
    """Why a file cannot be used, in a few words."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise AuthSetupFailed("cannot read the %s %s: %s" % (what, path, e.strerror)) from None


def make_auth(config: PrivateConfig, images: ImageSource, *, runner: Runner,
              clock: IReactorTime) -> Auth | None:
    """
    The gate (and token endpoint) of ``config``; ``None`` when
    authentication is off.  Reads every file now (blocking: at start-up).

    :raises AuthSetupFailed: for a file that cannot be read or used.
    """
    if not config.authenticated:
        return None
    htpasswd = None
    rules = None
    if config.htpasswd is not None:
        path = config.htpasswd
        try:
            htpasswd = Htpasswd(path, runner=runner, clock=clock)
        except (OSError, ValueError) as e:
            raise AuthSetupFailed("the htpasswd file %s cannot be used: %s"
                                  % (path, _reason(e))) from None
    if config.rules is not None:
        path = config.rules
        watched: WatchedFile[Rules] = WatchedFile(
            path, read_rules, runner=runner, clock=clock, what="rules file")
        try:
            watched.load_now()
        except (OSError, ValueError) as e:
            raise AuthSetupFailed("the rules file %s cannot be used: %s"
                                  % (path, _reason(e))) from None
        rules = watched
    tokens = None
    endpoint = None
    if config.tokens:
        keys = []
        signer = None
        if config.token_key is not None:
            assert htpasswd is not None
            try:
                key = load_private_key(_read(config.token_key, "token key"))
            except ValueError as e:
                raise AuthSetupFailed("the token key %s cannot be used: %s"
                                      % (config.token_key, e)) from None
            signer = TokenSigner(key, issuer=config.token_issuer,
                                 service=config.token_service, ttl=config.token_ttl,
                                 clock=clock)
            keys.append(signer.public_key())
            endpoint = TokenResource(signer, htpasswd, rules, runner)
        if config.token_public_key is not None:
            try:
                keys.extend(load_public_keys(_read(config.token_public_key,
                                                   "token public key")))
            except ValueError as e:
                raise AuthSetupFailed("the token public key %s cannot be used: %s"
                                      % (config.token_public_key, e)) from None
        verifier = TokenVerifier(keys, issuer=config.token_issuer,
                                 service=config.token_service, clock=clock)
        tokens = TokenSettings(verifier, config.token_realm)
    gate = AuthGate(htpasswd=htpasswd if tokens is None else None, tokens=tokens,
                    rules=rules, contents=NameContents(images), runner=runner,
                    verdicts=Verdicts(clock))
    return Auth(gate, endpoint, htpasswd, rules)

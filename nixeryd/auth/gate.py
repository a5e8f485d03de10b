"""
The gate every ``/v2`` request passes when authentication is on:
:class:`AuthGate`.

1. **Who** (authentication): in ``basic`` mode, HTTP Basic credentials
   checked against the htpasswd file; in ``token`` mode, a bearer token
   checked against the token keys (nixeryd's own, or an external token
   service's).  Missing or wrong credentials, an expired or foreign token:
   401 ``UNAUTHORIZED`` with the challenge that says how to authenticate
   (``Basic realm=…``, or ``Bearer realm=…,service=…,scope=…``).
2. **May they** (authorisation), for a request about a name: a token must
   grant ``pull`` on it (else 401 with ``error="insufficient_scope"`` and
   the scope needed); the rules file, when there is one, must allow the
   user the name at the tag (else 403 ``DENIED``).
3. **Is it theirs**: content by digest only when an image of that name
   refers to it (:mod:`nixeryd.auth.membership`).

The cryptography (bcrypt, signatures) runs in the runner; its verdicts are
kept briefly, so :meth:`AuthGate.admitted_now` answers most requests of a
pull synchronously.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.web.server import Request

from nixeryd.auth.challenge import basic_challenge, bearer_challenge
from nixeryd.auth.credentials import BasicCredentials, BearerToken, parse_authorization
from nixeryd.auth.errors import Unauthorized
from nixeryd.auth.htpasswd import Htpasswd
from nixeryd.auth.membership import NameContents
from nixeryd.auth.rules import Rules
from nixeryd.auth.scopes import Scope, granted, pull_scope
from nixeryd.auth.tokens import InvalidToken, TokenClaims, TokenVerifier
from nixeryd.auth.verdicts import Verdicts
from nixeryd.auth.watchedfile import WatchedFile
from nixeryd.core.threads import Runner
from nixeryd.registry.hosts import request_host
from nixeryd.registry.routes import Blob, ManifestByDigest, ManifestByTag, Ping, Route

#: Where nixeryd's own token endpoint is, under the site's root.
TOKEN_PATH = "/token"


@frozen
class Identity:
    """
    An authenticated user.

    :ivar user: the user name (a token's subject).
    :ivar access: a token's ``access`` claim; ``None`` for Basic.
    """

    user: str
    access: object = None

    @property
    def client(self) -> str:
        """Who cold work counts against: the user, whatever address they come from."""
        return "user:" + self.user


@frozen
class TokenSettings:
    """
    Token mode's settings.

    :ivar verifier: checks the tokens.
    :ivar realm: the token service's URL; ``None`` for nixeryd's own
        endpoint at the address the request came to.
    """

    verifier: TokenVerifier
    realm: str | None


def _name_of(route: Route) -> str | None:
    name = getattr(route, "name", None)
    return name if isinstance(name, str) and not isinstance(route, Ping) else None


def _scope_of(route: Route) -> Scope | None:
    name = _name_of(route)
    return None if name is None else pull_scope(name)


class AuthGate:
    """
    Decides who may do what (see the module's docstring).

    :param htpasswd: the users, for ``basic`` mode (and the token endpoint).
    :param tokens: token mode; ``None`` for ``basic`` mode.
    :param rules: the rules file, if any.
    :param contents: what each name refers to.
    :param runner: runs the cryptography.
    :param verdicts: where token verdicts are kept (claims, or why not).
    """

    def __init__(self, *, htpasswd: Htpasswd | None, tokens: TokenSettings | None,
                 rules: WatchedFile[Rules] | None, contents: NameContents,
                 runner: Runner, verdicts: Verdicts[TokenClaims | str]) -> None:
        if htpasswd is None and tokens is None:
            raise ValueError("an auth gate needs an htpasswd file or token settings")
        self._htpasswd = htpasswd
        self._tokens = tokens
        self._rules = rules
        self._contents = contents
        self._runner = runner
        self._token_verdicts = verdicts

    @property
    def mode(self) -> str:
        """``basic`` or ``token``."""
        return "basic" if self._tokens is None else "token"

    def realm(self, request: Request) -> str:
        """The token service's URL: configured, or this site's token endpoint."""
        assert self._tokens is not None
        if self._tokens.realm is not None:
            return self._tokens.realm
        host = request_host(request) or "localhost"
        secure = request.isSecure()  # type: ignore[no-untyped-call]
        return "%s://%s%s" % ("https" if secure else "http", host, TOKEN_PATH)

    def _challenge(self, request: Request, route: Route, error: str | None = None) -> bytes:
        if self._tokens is None:
            return basic_challenge()
        return bearer_challenge(self.realm(request), self._tokens.verifier.service,
                                _scope_of(route), error)

    def _unauthorized(self, request: Request, route: Route, message: str,
                      error: str | None = None) -> Unauthorized:
        return Unauthorized(message, self._challenge(request, route, error))

    # -- who --------------------------------------------------------------

    def _known_identity(self, request: Request, route: Route) -> Identity | None:
        """The identity from kept verdicts only, or ``None`` when work is needed."""
        credentials = parse_authorization(request.getHeader(b"authorization"))
        if self._tokens is None and isinstance(credentials, BasicCredentials):
            assert self._htpasswd is not None
            if self._htpasswd.known(credentials):
                return Identity(credentials.user)
        elif self._tokens is not None and isinstance(credentials, BearerToken):
            kept = self._token_verdicts.known(self._token_verdicts.key(credentials.token))
            if kept is not None and isinstance(kept[0], TokenClaims):
                return Identity(kept[0].subject, kept[0].access)
        return None

    async def _identity(self, request: Request, route: Route) -> Identity:
        credentials = parse_authorization(request.getHeader(b"authorization"))
        if self._tokens is None:
            assert self._htpasswd is not None
            if not isinstance(credentials, BasicCredentials):
                raise self._unauthorized(
                    request, route, "authentication required: log in with a user name"
                    " and password of this registry")
            if not await self._htpasswd.check(credentials):
                raise self._unauthorized(request, route, "wrong user name or password")
            return Identity(credentials.user)
        if not isinstance(credentials, BearerToken):
            raise self._unauthorized(
                request, route, "authentication required: get a token from %s"
                % (self.realm(request),))
        claims = await self._verify(credentials.token)
        return Identity(claims.subject, claims.access)

    async def _verify(self, token: str) -> TokenClaims:
        """
        The claims of a valid token, checked in the runner (concurrent
        checks of one token share the run); a valid token's verdict is
        kept until it expires, an invalid one's not at all.
        """
        assert self._tokens is not None
        verifier = self._tokens.verifier

        def check() -> Deferred[tuple[TokenClaims | str, float | None]]:
            def run() -> tuple[TokenClaims | str, float | None]:
                try:
                    claims = verifier.verify(token)
                except InvalidToken as e:
                    return (str(e), 0.0)
                return (claims, claims.expires)
            return self._runner.run(run)

        verdict = await self._token_verdicts.decide(self._token_verdicts.key(token), check)
        if isinstance(verdict, str):
            raise InvalidToken(verdict)
        return verdict

    # -- may they -----------------------------------------------------------

    def _authorise(self, request: Request, route: Route, identity: Identity) -> None:
        name = _name_of(route)
        if name is None:
            return
        if self._tokens is not None and not granted(identity.access, name):
            rules = self._rules.loaded() if self._rules is not None else None
            if rules is not None:
                # The rules keep it from the user: say so (a 403), rather
                # than send the client for a token that would not grant it.
                rules.check(identity.user, name, _tag_of(route))
            raise self._unauthorized(
                request, route, "the token does not grant pull of %s: ask for scope %s"
                % (name, pull_scope(name)), "insufficient_scope")
        if self._rules is not None:
            rules = self._rules.loaded()
            if rules is not None:
                rules.check(identity.user, name, _tag_of(route))

    # -- the calls ------------------------------------------------------------

    def admitted_now(self, request: Request, route: Route) -> Identity | None:
        """
        The identity of a request that kept verdicts admit at once, for
        the routes that need nothing more (the ping, a manifest by tag);
        ``None`` when :meth:`admit` must decide.  Raises as :meth:`admit`
        for a denied name.
        """
        if isinstance(route, (ManifestByDigest, Blob)):
            return None
        if self._rules is not None and self._rules.due():
            return None
        identity = self._known_identity(request, route)
        if identity is None:
            return None
        note_user(request, identity)
        self._authorise(request, route, identity)
        return identity

    async def admit(self, request: Request, route: Route) -> Identity:
        """
        The identity of a request that may go on.

        :raises Unauthorized: 401 with a challenge.
        :raises Denied: 403, the rules keep the name from the user.
        """
        if self._rules is not None:
            await self._rules.current()
        try:
            identity = await self._identity(request, route)
        except InvalidToken as e:
            raise self._unauthorized(request, route, str(e), "invalid_token") from None
        note_user(request, identity)
        self._authorise(request, route, identity)
        if isinstance(route, (ManifestByDigest, Blob)):
            rules = self._rules.loaded() if self._rules is not None else None
            pinned_only = rules is not None and not rules.allows_unpinned(identity.user,
                                                                          route.name)
            await self._contents.check(route.name, route.digest,
                                       blob=isinstance(route, Blob), client=identity.client,
                                       pinned_only=pinned_only)
        return identity


#: The request attribute that names the authenticated user, for the access log.
_USER_ATTRIBUTE = "nixeryd_user"


def note_user(request: Request, identity: Identity) -> None:
    """Remember on ``request`` who made it (never their credentials)."""
    setattr(request, _USER_ATTRIBUTE, identity.user)


def user_of(request: object) -> str | None:
    """The user :func:`note_user` noted on ``request``, if any."""
    user = getattr(request, _USER_ATTRIBUTE, None)
    return user if isinstance(user, str) else None


def _tag_of(route: Route) -> str | None:
    return route.tag if isinstance(route, ManifestByTag) else None

"""
nixeryd's own token endpoint, ``/token``: Basic credentials in, a signed
token out, as the distribution token specification has it.

``GET /token?service=…&scope=repository:NAME:pull`` with an
``Authorization: Basic`` header (Docker, podman, skopeo), or ``POST
/token`` with the OAuth2 password grant as a form (``grant_type=password``,
``username``, ``password``, ``service``, ``scope``: containerd).  The
answer is ``{"token", "access_token", "expires_in", "issued_at"}``.  The
token grants ``pull`` on each repository asked for that the rules file
(if any) lets the user pull at some tag; anything else asked for is left
out, as the specification says, and the registry then says why when the
token is used.  Wrong credentials: 401 ``UNAUTHORIZED`` with a Basic
challenge.  Nothing here logs a credential or a token.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from urllib.parse import parse_qs

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from nixeryd.auth.challenge import basic_challenge
from nixeryd.auth.credentials import BasicCredentials, parse_authorization
from nixeryd.auth.errors import Unauthorized
from nixeryd.auth.htpasswd import Htpasswd
from nixeryd.auth.rules import Rules
from nixeryd.auth.scopes import PULL, REPOSITORY, Scope, parse_scopes
from nixeryd.auth.tokens import TokenSigner
from nixeryd.auth.watchedfile import WatchedFile
from nixeryd.core.errors import RegistryError
from nixeryd.core.threads import Runner
from nixeryd.registry.httpnames import CONTENT_LENGTH, CONTENT_TYPE, GET, JSON
from nixeryd.registry.rendering import render_async
from nixeryd.registry.responses import MethodNotAllowed, write_error

#: Largest form body read.
MAX_FORM = 16 * 1024


class BadTokenRequest(RegistryError):
    """A token request this endpoint cannot answer."""

    code = "UNSUPPORTED"
    status = 400


def _form(request: Request) -> dict[str, list[str]]:
    """The request's form body, for POST."""
    content = request.content
    if content is None:
        return {}
    body = content.read(MAX_FORM + 1)
    if len(body) > MAX_FORM:
        raise BadTokenRequest("the token request's form is too long")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return parsed


def _query(request: Request) -> dict[str, list[str]]:
    args: dict[bytes, list[bytes]] = request.args or {}
    return {k.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in vs]
            for k, vs in args.items()}


class TokenResource(Resource):
    """
    ``/token`` (see the module's docstring).

    :param signer: signs the tokens.
    :param htpasswd: the users.
    :param rules: the rules file, if any.
    :param runner: runs the signing.
    """

    isLeaf = True

    def __init__(self, signer: TokenSigner, htpasswd: Htpasswd,
                 rules: WatchedFile[Rules] | None, runner: Runner) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._signer = signer
        self._htpasswd = htpasswd
        self._rules = rules
        self._runner = runner

    def render(self, request: Request) -> int:
        """Answer a token request, later."""
        if request.method not in (GET, b"POST"):
            write_error(request, MethodNotAllowed(
                "the token endpoint answers GET and POST", None))
            return NOT_DONE_YET
        return render_async(request, self._token)

    async def _token(self, request: Request) -> bytes:
        fields = _query(request)
        credentials = parse_authorization(request.getHeader(b"authorization"))
        if request.method == b"POST":
            form = _form(request)
            fields.update(form)
            grant = form.get("grant_type", [""])[0]
            if grant != "password":
                raise BadTokenRequest("this token service answers the password grant only,"
                                      " not %r" % (grant,))
            credentials = BasicCredentials(form.get("username", [""])[0],
                                           form.get("password", [""])[0])
        service = fields.get("service", [self._signer.service])[0]
        if service != self._signer.service:
            raise BadTokenRequest("this token service issues tokens for %s, not %s"
                                  % (self._signer.service, service))
        if not isinstance(credentials, BasicCredentials) or not credentials.user:
            raise Unauthorized("authentication required: log in with a user name and"
                               " password of this registry", basic_challenge())
        if not await self._htpasswd.check(credentials):
            raise Unauthorized("wrong user name or password", basic_challenge())
        rules = await self._rules.current() if self._rules is not None else None
        grants = []
        for scope in parse_scopes(fields.get("scope", [])):
            if scope.type != REPOSITORY or PULL not in scope.actions:
                continue
            if rules is None or rules.allows_name(credentials.user, scope.name):
                grants.append(Scope(REPOSITORY, scope.name, (PULL,)))
        token, lifetime, issued = await self._runner.run(
            self._signer.issue, credentials.user, grants)
        body = json.dumps({
            "token": token, "access_token": token, "expires_in": lifetime,
            "issued_at": datetime.fromtimestamp(issued, timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"),
        }).encode("utf-8")
        headers = request.responseHeaders
        headers.setRawHeaders(CONTENT_TYPE, [JSON])
        headers.setRawHeaders(CONTENT_LENGTH, [b"%d" % (len(body),)])
        headers.setRawHeaders(b"Cache-Control", [b"no-store"])
        return body

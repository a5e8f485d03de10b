"""
Credentials for real Cloud Storage: the service-account key file, and the
OAuth2 access tokens obtained with it.

The same key signs blob URLs (:mod:`nixeryd.storage.gcs.signing`) and the
JWT assertions exchanged for access tokens.  Without a key, tokens come
from the metadata server (:mod:`nixeryd.storage.gcs.metadata`); both are
a :class:`TokenSource`, whose tokens :class:`CachedTokens` keeps until
shortly before they expire.  Against an emulator, requests are anonymous
and none of this is used.
"""

from __future__ import annotations

import json
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IResponse

from treq.client import HTTPClient

from nixeryd.core.httpbody import BodyTooLarge
from nixeryd.core.sharedwork import SharedWork
from nixeryd.core.threads import Runner
from nixeryd.storage.gcs.http import GCSError, cancel_after, drain, error_for
from nixeryd.storage.gcs.retry import Retrier
from nixeryd.storage.gcs.signing import JWT_BEARER_GRANT, ServiceAccountKey, jwt_assertion


def load_service_account_key(path: str) -> ServiceAccountKey:
    """
    Read a service-account JSON key file (blocking: call it at start-up or
    in the thread pool).

    :raises GCSError: when it cannot be read or is not a key file.
    """
    try:
        with open(path, "rb") as f:
            return ServiceAccountKey.from_json(f.read())
    except (OSError, ValueError) as e:
        raise GCSError("cannot use the service account key %s: %s" % (path, e)) from None


class TokenSource(Protocol):
    """Where the OAuth2 access tokens of requests to Google come from."""

    def token(self) -> Deferred[str]:
        """A Deferred firing with a valid access token."""


class CachedTokens:
    """
    Access tokens obtained by :meth:`fetch` and reused until ``margin``
    seconds before they expire; concurrent callers during a refresh share
    one request.

    :param clock: the time of token lifetimes.
    :param margin: seconds before expiry at which a token is renewed.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, margin: float = 300) -> None:
        self._clock = clock
        self._margin = margin
        self._token: str | None = None
        self._expires = 0.0
        self._refreshing: SharedWork[str, str] = SharedWork()

    def token(self) -> Deferred[str]:
        """A Deferred firing with a valid access token."""
        if self._token is not None and self._clock.seconds() < self._expires - self._margin:
            return succeed(self._token)
        return self._refreshing.wait("token", lambda: Deferred.fromCoroutine(self._refresh()))

    async def _refresh(self) -> str:
        now = self._clock.seconds()
        token, lifetime = await self.fetch()
        self._token, self._expires = token, now + lifetime
        return token

    async def fetch(self) -> tuple[str, float]:
        """A new token and its lifetime in seconds."""
        raise NotImplementedError()


def parse_token_answer(body: bytes, where: str) -> tuple[str, float]:
    """
    The token and lifetime of an OAuth2 token answer
    (``{"access_token": ..., "expires_in": ...}``).

    :raises GCSError: when it holds no token.
    """
    try:
        answer = json.loads(body)
        token: str = answer["access_token"]
        if not isinstance(token, str):
            raise TypeError(token)
        return token, float(answer.get("expires_in", 3600))
    except (ValueError, KeyError, TypeError):
        raise GCSError("%s answered without an access token" % (where,)) from None


class AccessTokenSource(CachedTokens):
    """
    OAuth2 access tokens for a service account, obtained with the JWT bearer
    grant (RFC 7523) and cached until shortly before they expire.

    :param clock: the time of token lifetimes and request timeouts.
    :param runner: runs the RSA signature of the assertion.
    :param key: the service account's key; its ``token_uri`` is contacted.
    :param http: the treq client to post with.
    :param margin: seconds before expiry at which a token is renewed.
    :param timeout: seconds a token request may take.
    :param retrier: retries token requests after transient failures; by
        default with the default policy on ``clock``.
    """

    def __init__(self, clock: IReactorTime, runner: Runner, key: ServiceAccountKey,
                 http: HTTPClient, margin: float = 300, timeout: float = 60,
                 retrier: Retrier | None = None) -> None:
        super().__init__(clock, margin)
        self._runner = runner
        self._key = key
        self._http = http
        self._timeout = timeout
        self._retrier = retrier if retrier is not None else Retrier(clock)

    async def fetch(self) -> tuple[str, float]:
        now = self._clock.seconds()
        assertion = await self._runner.run(jwt_assertion, self._key, issued_at=int(now))

        async def send() -> IResponse:
            response = await cancel_after(self._http.post(
                self._key.token_uri,
                data={"grant_type": JWT_BEARER_GRANT, "assertion": assertion},
                allow_redirects=False), self._timeout, self._clock)
            return response

        # Asking for a token changes nothing: always safe to repeat.
        response = await self._retrier.request(
            send, method="POST", target=self._key.token_uri, safe=True, log=self.log)
        if response.code != 200:
            raise await error_for(response, "fetching an access token from "
                                  + self._key.token_uri)
        try:
            body = await drain(response)
        except BodyTooLarge:
            body = b""
        token, lifetime = parse_token_answer(body, "the token endpoint " + self._key.token_uri)
        self.log.info("Obtained an access token for {account}, valid {seconds} s",
                      account=self._key.client_email, seconds=int(lifetime))
        return token, lifetime

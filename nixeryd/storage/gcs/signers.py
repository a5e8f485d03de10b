"""
Who signs blob URLs: a :class:`Signer`, and the signed URLs reused for a
part of their lifetime (:class:`SignedUrls`).

* :class:`KeySigner`: a service-account key file; RSA in the thread pool,
  about a millisecond.
* :class:`IAMSigner`: no key file (on Google Cloud): the IAM Credentials
  API signs the V4 string to sign with the key Google holds for the
  account (``signBlob``), a request per URL, authorised by the metadata
  server's tokens.  The account needs ``iam.serviceAccounts.signBlob`` on
  itself (the role Service Account Token Creator).
* none: a public bucket (``--gcs-public``) gets plain URLs, as Nixery
  gives them.

A signature through IAM costs a round trip, so :class:`SignedUrls` hands
out a URL again while less than :data:`~nixeryd.core.defaults.GCS_SIGNED_URL_REUSE`
of its lifetime has passed: a client always gets one valid for at least
the rest, and a busy blob costs one signature per period, not per pull.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from typing import Awaitable, Callable, Protocol
from urllib.parse import quote

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IResponse

from treq.client import HTTPClient

from nixeryd.core import defaults
from nixeryd.core.httpbody import BodyTooLarge
from nixeryd.core.sharedwork import SharedWork
from nixeryd.core.threads import Runner
from nixeryd.service.lru import LRU
from nixeryd.storage.gcs.auth import TokenSource
from nixeryd.storage.gcs.http import GCSError, cancel_after, drain, error_for
from nixeryd.storage.gcs.retry import Retrier
from nixeryd.storage.gcs.signing import ServiceAccountKey, sign_url_v4, unsigned_url_v4

#: How many signed URLs are kept for reuse.
KEPT_URLS = 10_000


class Signer(Protocol):
    """Signs V4 URLs to objects."""

    def sign(self, *, bucket: str, object_name: str, method: str, expiration: int,
             timestamp: datetime, endpoint: str) -> Deferred[str]:
        """A Deferred firing with the signed URL (path style, on ``endpoint``)."""


class KeySigner:
    """
    Signs with a service-account key, in the thread pool.

    :param key: the key.
    :param runner: runs the RSA signature.
    """

    def __init__(self, key: ServiceAccountKey, runner: Runner) -> None:
        self._key = key
        self._runner = runner

    def sign(self, *, bucket: str, object_name: str, method: str, expiration: int,
             timestamp: datetime, endpoint: str) -> Deferred[str]:
        key = self._key
        return self._runner.run(lambda: sign_url_v4(
            key, bucket=bucket, object_name=object_name, method=method,
            expiration=expiration, timestamp=timestamp, endpoint=endpoint).url)


class IAMSigner:
    """
    Signs through the IAM Credentials API's ``signBlob``.

    :param clock: the time of request timeouts.
    :param http: the treq client.
    :param tokens: the access tokens that authorise the calls.
    :param account: the signing account's e-mail, or a call giving it
        (the metadata server's default account).
    :param endpoint: the API's base URL.
    :param timeout: seconds one call may take.
    :param retrier: retries calls after transient failures (signing
        changes nothing: always safe to repeat).
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, http: HTTPClient, tokens: TokenSource,
                 account: str | Callable[[], Awaitable[str]],
                 endpoint: str = defaults.GCS_IAM_ENDPOINT, *, timeout: float = 30,
                 retrier: Retrier | None = None) -> None:
        self._clock = clock
        self._http = http
        self._tokens = tokens
        self._account = account
        self._endpoint = endpoint.rstrip("/")
        self._timeout = timeout
        self._retrier = retrier if retrier is not None else Retrier(clock)

    async def account(self) -> str:
        """The signing account's e-mail."""
        if isinstance(self._account, str):
            return self._account
        return await self._account()

    def sign(self, *, bucket: str, object_name: str, method: str, expiration: int,
             timestamp: datetime, endpoint: str) -> Deferred[str]:
        return Deferred.fromCoroutine(self._sign(
            bucket=bucket, object_name=object_name, method=method, expiration=expiration,
            timestamp=timestamp, endpoint=endpoint))

    async def _sign(self, *, bucket: str, object_name: str, method: str, expiration: int,
                    timestamp: datetime, endpoint: str) -> str:
        email = await self.account()
        unsigned = unsigned_url_v4(email, bucket=bucket, object_name=object_name,
                                   method=method, expiration=expiration,
                                   timestamp=timestamp, endpoint=endpoint)
        url = "%s/v1/projects/-/serviceAccounts/%s:signBlob" % (
            self._endpoint, quote(email, safe="@"))
        payload = json.dumps({"payload": base64.b64encode(
            unsigned.string_to_sign.encode("ascii")).decode("ascii")}).encode()

        async def send() -> IResponse:
            headers: dict[bytes | str, bytes | str] = {
                "Authorization": "Bearer " + await self._tokens.token(),
                "Content-Type": "application/json"}
            response = await cancel_after(self._http.post(
                url, data=payload, allow_redirects=False, headers=headers),
                self._timeout, self._clock)
            return response

        response = await self._retrier.request(send, method="POST", target=url,
                                               safe=True, log=self.log)
        if response.code != 200:
            raise await error_for(response, "signing a URL for %s through %s" % (email, url))
        try:
            answer = json.loads(await drain(response))
            signature = base64.b64decode(answer["signedBlob"], validate=True)
        except (BodyTooLarge, ValueError, KeyError, TypeError):
            raise GCSError("%s answered without a signature" % (url,)) from None
        return unsigned.signed(signature).url


class SignedUrls:
    """
    Signed URLs by object and method, handed out again while young enough.

    :param signer: signs new ones.
    :param clock: the signing time.
    :param lifetime: seconds a URL is valid.
    :param reuse: the part of ``lifetime`` during which a URL is handed out
        again (0 signs every time).
    """

    def __init__(self, signer: Signer, clock: IReactorTime, lifetime: int,
                 reuse: float = defaults.GCS_SIGNED_URL_REUSE) -> None:
        self._signer = signer
        self._clock = clock
        self._lifetime = lifetime
        self._reuse = reuse * lifetime
        self._kept: LRU[tuple[str, str, str, str], tuple[str, float]] = LRU(KEPT_URLS)
        self._signing: SharedWork[tuple[str, str, str, str], str] = SharedWork()

    def url(self, *, bucket: str, object_name: str, method: str,
            endpoint: str) -> Deferred[str]:
        """A URL valid for at least ``lifetime - reuse`` seconds from now."""
        key = (endpoint, bucket, object_name, method)
        kept = self._kept.get_recent(key)
        if kept is not None and self._clock.seconds() - kept[1] < self._reuse:
            return succeed(kept[0])
        return self._signing.wait(key, lambda: Deferred.fromCoroutine(self._sign(key)))

    async def _sign(self, key: tuple[str, str, str, str]) -> str:
        endpoint, bucket, object_name, method = key
        now = self._clock.seconds()
        url = await self._signer.sign(
            bucket=bucket, object_name=object_name, method=method,
            expiration=self._lifetime, endpoint=endpoint,
            timestamp=datetime.fromtimestamp(now, timezone.utc))
        self._kept.put(key, (url, now))
        return url

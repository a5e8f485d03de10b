"""
Credentials without a key file, as Google's client libraries find them on
Google Cloud: the GCE/GKE metadata server gives the access tokens of the
service account the machine (or the pod, with workload identity) runs as,
and that account's e-mail.

The server is ``metadata.google.internal``, or the ``host[:port]`` named
by ``GCE_METADATA_HOST`` (the variable google-auth reads), over plain
HTTP; every request carries ``Metadata-Flavor: Google``, which the server
requires (and which a proxy would not add by accident).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IResponse

from treq.client import HTTPClient

from nixeryd.core import defaults
from nixeryd.core.httpbody import BodyTooLarge
from nixeryd.core.sharedwork import SharedWork
from nixeryd.storage.gcs.auth import CachedTokens, parse_token_answer
from nixeryd.storage.gcs.http import GCSError, cancel_after, drain
from nixeryd.storage.gcs.retry import Retrier, RetryPolicy

#: The path of the default service account's entries.
ACCOUNT_PATH = "/computeMetadata/v1/instance/service-accounts/default/"
#: Seconds one request to the metadata server may take.
METADATA_TIMEOUT = 5.0
#: The retries of a request to the metadata server: it is on the machine
#: itself, so a server that has not answered within this is not there.
METADATA_RETRY = RetryPolicy(deadline=3.0)


class NoCredentials(GCSError):
    """
    Neither a key file nor a metadata server: a configuration to fix, not
    a failure to retry.
    """


def metadata_root(host: str) -> str:
    """``http://<host>`` for a ``host[:port]`` (a URL given whole is kept)."""
    host = host.strip().rstrip("/")
    return host if "://" in host else "http://" + host


class MetadataServer(CachedTokens):
    """
    The metadata server's tokens and account, for one ``host``.

    :param clock: the time of token lifetimes and request timeouts.
    :param http: the treq client.
    :param host: ``host[:port]`` of the server.
    :param margin: seconds before expiry at which a token is renewed.
    :param retrier: retries requests after transient failures.
    """

    def __init__(self, clock: IReactorTime, http: HTTPClient,
                 host: str = defaults.GCE_METADATA_HOST, *, margin: float = 300,
                 retrier: Retrier | None = None) -> None:
        super().__init__(clock, margin)
        self._http = http
        self.root = metadata_root(host)
        self._retrier = retrier if retrier is not None else Retrier(clock, METADATA_RETRY)
        self._email: str | None = None
        self._asking: SharedWork[str, str] = SharedWork()

    async def _get(self, entry: str) -> bytes:
        """The body of an entry of the default account (``token``, ``email``)."""
        url = self.root + ACCOUNT_PATH + entry

        headers: dict[bytes | str, bytes | str] = {"Metadata-Flavor": "Google"}

        async def send() -> IResponse:
            response = await cancel_after(self._http.get(
                url, headers=headers, allow_redirects=False),
                METADATA_TIMEOUT, self._clock)
            return response

        try:
            response = await self._retrier.request(send, method="GET", target=url,
                                                   safe=True, log=self.log)
        except Exception as e:
            raise NoCredentials(
                "no credentials: GOOGLE_APPLICATION_CREDENTIALS names no key file and no"
                " metadata server answered at %s (%s); set GOOGLE_APPLICATION_CREDENTIALS"
                " to a service account key file, or run on Google Cloud with a service"
                " account (GCE_METADATA_HOST names another metadata server)" % (
                    self.root, " ".join((str(e) or type(e).__name__).split()))) from None
        try:
            body = await drain(response)
        except BodyTooLarge:
            raise GCSError("the metadata server at %s answered %s with a long body"
                           % (self.root, entry)) from None
        if response.code != 200:
            raise GCSError("the metadata server at %s answered HTTP %d for the default"
                           " service account's %s: %s" % (
                               self.root, response.code, entry,
                               body.decode("utf-8", "replace").strip()[:200]),
                           response.code)
        return body

    async def fetch(self) -> tuple[str, float]:
        token, lifetime = parse_token_answer(await self._get("token"),
                                             "the metadata server at " + self.root)
        self.log.info("Obtained an access token from the metadata server, valid"
                      " {seconds} s", seconds=int(lifetime))
        return token, lifetime

    def email(self) -> Deferred[str]:
        """The default service account's e-mail (asked once)."""
        if self._email is not None:
            return succeed(self._email)
        return self._asking.wait("email", lambda: Deferred.fromCoroutine(self._ask_email()))

    async def _ask_email(self) -> str:
        email = (await self._get("email")).decode("utf-8", "replace").strip()
        if not email or "@" not in email:
            raise GCSError("the metadata server at %s gave no service account e-mail"
                           % (self.root,))
        self._email = email
        return email

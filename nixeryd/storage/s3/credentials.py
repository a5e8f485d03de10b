"""
AWS credentials from the places AWS's own tools look, in their order:

1. ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (with
   ``AWS_SESSION_TOKEN`` for temporary ones);
2. the shared credentials file (``AWS_SHARED_CREDENTIALS_FILE``, else
   ``~/.aws/credentials``) and the config file (``AWS_CONFIG_FILE``, else
   ``~/.aws/config``), profile ``AWS_PROFILE`` or ``default``;
3. container credentials (ECS, EKS Pod Identity):
   ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` on ``169.254.170.2``, or
   ``AWS_CONTAINER_CREDENTIALS_FULL_URI``, with
   ``AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)`` when set;
4. the instance metadata service (IMDSv2: a session token first), at
   ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` or ``169.254.169.254``, unless
   ``AWS_EC2_METADATA_DISABLED`` is ``true``.

Temporary credentials (3 and 4) are fetched again shortly before they
expire; callers waiting during a fetch share it.
"""

from __future__ import annotations

import configparser
import json
import os
from datetime import datetime
from typing import Awaitable, Callable, Mapping, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IResponse

from treq.client import HTTPClient

from nixeryd.core.httpbody import BodyTooLarge
from nixeryd.core.sharedwork import SharedWork
from nixeryd.core.threads import Runner
from nixeryd.storage.gcs.http import cancel_after, drain
from nixeryd.storage.gcs.retry import Retrier, RetryPolicy
from nixeryd.storage.s3.http import S3Error, error_for
from nixeryd.storage.s3.signing import Credentials

#: The host of ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI``.
CONTAINER_HOST = "http://169.254.170.2"
#: The hosts ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` may name over plain
#: HTTP (as AWS's SDKs allow): the ECS and EKS agents, and loopback.
PLAIN_HTTP_CONTAINER_HOSTS = frozenset({"169.254.170.2", "169.254.170.23", "fd00:ec2::23",
                                        "localhost"})
#: The instance metadata service.
IMDS_ENDPOINT = "http://169.254.169.254"
#: Seconds an IMDSv2 session token is asked for.
IMDS_TOKEN_TTL = 21600
#: Seconds a metadata request may take (the service answers at once where
#: it exists; elsewhere nothing answers at all).
METADATA_TIMEOUT = 2.0
#: How metadata requests are retried: briefly, so that a daemon started
#: where there is no metadata service says so well within its start-up
#: check's deadline.
METADATA_RETRY = RetryPolicy(initial=0.2, cap=1.0, deadline=6.0)
#: The variables read (the process environment is read once, at start).
VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_DISABLED", "AWS_EC2_METADATA_SERVICE_ENDPOINT", "HOME")


class NoCredentials(S3Error):
    """No credentials were found, or the ones named cannot be read."""


class CredentialSource(Protocol):
    """Gives credentials valid now."""

    #: Where the credentials come from, for the start-up line (no secret).
    description: str

    def credentials(self) -> Deferred[Credentials]:
        """A Deferred firing with credentials valid for a while yet."""


class StaticCredentials:
    """Credentials that never change (a long-term key)."""

    def __init__(self, credentials: Credentials, description: str) -> None:
        self._credentials = credentials
        self.description = description

    def credentials(self) -> Deferred[Credentials]:
        return succeed(self._credentials)


class RefreshingCredentials:
    """
    Temporary credentials, fetched again ``margin`` seconds before they
    expire (or every ``margin`` seconds when they say no expiry).

    :param fetch: fetches fresh credentials.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, fetch: Callable[[], Awaitable[Credentials]],
                 description: str, margin: float = 300) -> None:
        self._clock = clock
        self._fetch = fetch
        self.description = description
        self._margin = margin
        self._current: Credentials | None = None
        self._valid_until = 0.0
        self._refreshing: SharedWork[str, Credentials] = SharedWork()

    def credentials(self) -> Deferred[Credentials]:
        if self._current is not None and self._clock.seconds() < self._valid_until:
            return succeed(self._current)
        return self._refreshing.wait(
            "credentials", lambda: Deferred.fromCoroutine(self._refresh()))

    async def _refresh(self) -> Credentials:
        fresh = await self._fetch()
        now = self._clock.seconds()
        expires = fresh.expires if fresh.expires is not None else now + 2 * self._margin
        self._current = fresh
        self._valid_until = max(now, expires - self._margin)
        self.log.info("Obtained AWS credentials {key} from {source}, valid {seconds} s",
                      key=fresh.access_key_id, source=self.description,
                      seconds=int(expires - now))
        return fresh


def parse_expiration(text: str) -> float:
    """Seconds since the epoch of an ``Expiration`` such as ``2024-05-01T12:00:00Z``."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def credentials_from_json(body: bytes, where: str) -> Credentials:
    """
    The credentials of a container or instance-metadata answer.

    :raises S3Error: when it holds none.
    """
    try:
        answer = json.loads(body)
        expires = answer.get("Expiration")
        return Credentials(str(answer["AccessKeyId"]), str(answer["SecretAccessKey"]),
                           answer.get("Token") or None,
                           parse_expiration(expires) if isinstance(expires, str) else None)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise S3Error("%s answered without credentials" % (where,)) from None


class MetadataFetcher:
    """
    Fetches temporary credentials over HTTP (a container's endpoint or the
    instance metadata service), retried after transient failures.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, runner: Runner, http: HTTPClient, *,
                 timeout: float = METADATA_TIMEOUT, retrier: Retrier | None = None) -> None:
        self._clock = clock
        self._runner = runner
        self._http = http
        self._timeout = timeout
        self._retrier = retrier if retrier is not None else Retrier(clock, METADATA_RETRY)

    async def request(self, method: str, url: str, headers: dict[str, str]) -> bytes:
        """The body of a 200 answer; :class:`S3Error` for any other."""
        sent: dict[bytes | str, bytes | str] = {name: value for name, value in headers.items()}

        async def send() -> IResponse:
            response = await cancel_after(self._http.request(
                method, url, headers=sent, allow_redirects=False),
                self._timeout, self._clock)
            return response

        try:
            response = await self._retrier.request(send, method=method, target=url,
                                                   safe=True, log=self.log)
        except S3Error:
            raise
        except Exception as e:
            raise S3Error("cannot reach %s for AWS credentials: %s" % (url, e)) from None
        if response.code != 200:
            raise await error_for(response, "fetching AWS credentials from " + url)
        try:
            return await drain(response)
        except BodyTooLarge:
            raise S3Error("%s answered with too long a body" % (url,)) from None

    async def container(self, url: str, token: str | None, token_file: str | None) -> Credentials:
        """Credentials from a container credentials endpoint."""
        headers = {}
        if token_file is not None:
            token = (await self._runner.run(_read_text, token_file)).strip()
        if token:
            headers["Authorization"] = token
        return credentials_from_json(await self.request("GET", url, headers), url)

    async def instance(self, endpoint: str) -> Credentials:
        """Credentials of the instance's role, from IMDSv2."""
        base = endpoint.rstrip("/")
        try:
            token = (await self.request(
                "PUT", base + "/latest/api/token",
                {"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL)}
            )).decode().strip()
        except S3Error as e:
            raise S3Error(
                "no AWS credentials in the environment or the shared files, and the"
                " instance metadata service gives none (%s); set AWS_ACCESS_KEY_ID and"
                " AWS_SECRET_ACCESS_KEY, or AWS_PROFILE" % (e,), e.status, e.code) from None
        headers = {"X-aws-ec2-metadata-token": token}
        listing = base + "/latest/meta-data/iam/security-credentials/"
        roles = (await self.request("GET", listing, headers)).decode().split()
        if not roles:
            raise S3Error("the instance metadata service names no role (%s)" % (listing,))
        return credentials_from_json(await self.request("GET", listing + roles[0], headers),
                                     listing + roles[0])


def check_container_uri(url: str) -> str:
    """
    ``url`` if credentials may be fetched from it: over HTTPS, or over
    plain HTTP from the container agents or loopback only, so that the
    authorization token never crosses a network in clear.

    :raises NoCredentials: otherwise.
    """
    from ipaddress import ip_address
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http":
        if host in PLAIN_HTTP_CONTAINER_HOSTS:
            return url
        try:
            if ip_address(host).is_loopback:
                return url
        except ValueError:
            pass
    raise NoCredentials("AWS_CONTAINER_CREDENTIALS_FULL_URI %s must be https, or http to"
                        " the container agent or loopback" % (url,))


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _profile_section(parser: configparser.ConfigParser, profile: str,
                     config_file: bool) -> Mapping[str, str] | None:
    names = [profile] if not config_file else (
        ["default"] if profile == "default" else ["profile " + profile])
    for name in names:
        if parser.has_section(name):
            return parser[name]
    return None


def file_credentials(path: str, profile: str, config_file: bool) -> Credentials | None:
    """
    The key of ``profile`` in a shared credentials or config file, or
    ``None`` when the file or the profile is not there (blocking).

    :raises NoCredentials: when the file cannot be parsed, or the profile
        has only half a key.
    """
    if not os.path.isfile(path):
        return None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError) as e:
        raise NoCredentials("cannot read the AWS credentials file %s: %s"
                            % (path, " ".join(str(e).split()))) from None
    section = _profile_section(parser, profile, config_file)
    if section is None:
        return None
    key_id = section.get("aws_access_key_id", "").strip()
    secret = section.get("aws_secret_access_key", "").strip()
    if not key_id and not secret:
        return None
    if not key_id or not secret:
        raise NoCredentials("profile %s in %s has aws_access_key_id or"
                            " aws_secret_access_key but not both" % (profile, path))
    return Credentials(key_id, secret, section.get("aws_session_token", "").strip() or None)


def find_credentials(environ: Mapping[str, str], clock: IReactorTime, runner: Runner,
                     http: HTTPClient, *,
                     container_host: str = CONTAINER_HOST) -> CredentialSource:
    """
    The first source of credentials the environment names, in AWS's order
    (blocking: it reads the shared files; call it at start-up or in a
    thread).

    :param environ: the variables of :data:`VARIABLES`.
    :param runner: reads a container's authorization token file.
    :param container_host: where ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI``
        points.
    :raises NoCredentials: when a source is named but unusable, or there is
        none and instance metadata is disabled.
    """
    def get(name: str) -> str | None:
        return environ.get(name) or None

    key_id, secret = get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")
    if key_id is not None or secret is not None:
        if key_id is None or secret is None:
            raise NoCredentials("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set"
                                " together")
        return StaticCredentials(Credentials(key_id, secret, get("AWS_SESSION_TOKEN")),
                                 "AWS_ACCESS_KEY_ID %s" % (key_id,))

    profile = get("AWS_PROFILE")
    home = get("HOME") or os.path.expanduser("~")
    files = ((get("AWS_SHARED_CREDENTIALS_FILE")
              or os.path.join(home, ".aws", "credentials"), False),
             (get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config"), True))
    for path, config_file in files:
        found = file_credentials(path, profile or "default", config_file)
        if found is not None:
            return StaticCredentials(found, "profile %s in %s" % (profile or "default", path))
    if profile is not None:
        raise NoCredentials("AWS_PROFILE %s has no key in %s or %s"
                            % (profile, files[0][0], files[1][0]))

    fetcher = MetadataFetcher(clock, runner, http)
    relative, full = (get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
                      get("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
    if relative is not None or full is not None:
        url = (container_host.rstrip("/") + relative if relative is not None
               else check_container_uri(str(full)))
        token, token_file = (get("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
                             get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"))
        return RefreshingCredentials(
            clock, lambda: fetcher.container(url, token, token_file),
            "container credentials at %s" % (url,))

    if (get("AWS_EC2_METADATA_DISABLED") or "").lower() == "true":
        raise NoCredentials(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or"
            " AWS_PROFILE with a shared credentials file")
    endpoint = get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS_ENDPOINT
    return RefreshingCredentials(clock, lambda: fetcher.instance(endpoint),
                                 "instance metadata at %s" % (endpoint,))

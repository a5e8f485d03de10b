"""
The server's configuration: one frozen value built once at startup.

Settings come from command-line options and, for each option not given,
from the environment variables Nixery uses, so existing deployments keep
working.  Empty environment values count as unset, as in Nixery.  Every
setting is checked here, through its definition in
:mod:`nixeryd.app.settings`, so a bad configuration stops the server at
once with one line saying what to fix, and nothing reads ``os.environ``
later.
"""

from __future__ import annotations

from typing import Mapping, Optional

from attrs import field, frozen
from twisted.python.usage import UsageError

from nixeryd.app.privateconfig import PrivateConfig, check_tls_listen, private_config_from
from nixeryd.build.platforms import Architecture, host_architecture

from nixeryd.app.settings import (
    BUILD_LOG_LINES,
    FAILURE_TTL,
    KEEP_BUILDS,
    GCS_BUCKET,
    GCS_ENDPOINT,
    GCS_IAM_ENDPOINT,
    GCS_PUBLIC,
    GCS_SIGNING_ACCOUNT,
    GCE_METADATA_HOST,
    HEAD_TIMEOUT,
    IDLE_TIMEOUT,
    LAYER_BUDGET,
    LISTEN,
    MAX_BUILDS,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_CLIENT,
    MAX_QUEUE,
    NIX_TIMEOUT,
    POPULARITY_URL,
    PLATFORMS,
    PORT,
    S3_ADDRESSING_STYLE,
    S3_BUCKET,
    S3_ENDPOINT,
    S3_PUBLIC_URL,
    S3_REGION,
    S3_URL_LIFETIME,
    STORAGE_BACKEND,
    STORAGE_BACKENDS,
    STALL_TIMEOUT,
    STORAGE_PATH,
    SOURCES,
    THREADS,
    SourceSetting,
    read_nix_options,
    read_source,
)


@frozen
class S3Config:
    """
    An S3 bucket, validated.

    :ivar bucket: the bucket name.
    :ivar endpoint: an S3-compatible server's ``http(s)://host[:port]``, or
        ``None`` for AWS S3.
    :ivar region: the region requests are signed for.
    :ivar addressing_style: ``"path"`` or ``"virtual"``.
    :ivar url_lifetime: seconds a presigned blob URL is valid.
    :ivar public_url: where the objects are readable without credentials,
        if anywhere.
    :ivar aws_environment: the AWS variables credentials are found with
        (never shown: they may hold a secret).
    """

    bucket: str
    endpoint: Optional[str]
    region: str
    addressing_style: str
    url_lifetime: int
    public_url: Optional[str]
    aws_environment: tuple[tuple[str, str], ...] = field(repr=False)


@frozen
class StorageConfig:
    """
    Where images are stored, validated: what the daemon and ``nixeryd gc``
    share.

    :ivar storage_backend: ``"filesystem"``, ``"gcs"`` or ``"s3"``.
    :ivar storage_path: the storage directory (filesystem backend).
    :ivar gcs_bucket: the bucket name (gcs backend).
    :ivar google_credentials: path of a service-account JSON file, if set.
    :ivar gcs_endpoint: a GCS emulator's ``http://host:port``, or ``None``
        for Google Cloud Storage itself.
    :ivar s3: the bucket (s3 backend).
    :ivar gcs_public: blob URLs are plain, unsigned ones (a public bucket).
    :ivar gcs_signing_account: the account that signs blob URLs through
        IAM without a key file, or ``None`` for the metadata server's.
    :ivar gce_metadata_host: the metadata server's ``host[:port]``, or
        ``None`` when not given (then the default one, on Cloud Storage
        itself only).
    :ivar gcs_iam_endpoint: the IAM Credentials API.
    """

    storage_backend: str
    storage_path: Optional[str]
    gcs_bucket: Optional[str]
    google_credentials: Optional[str]
    gcs_endpoint: Optional[str]
    s3: Optional[S3Config] = field(default=None, kw_only=True)
    gcs_public: bool = field(default=False, kw_only=True)
    gcs_signing_account: Optional[str] = field(default=None, kw_only=True)
    gce_metadata_host: Optional[str] = field(default=None, kw_only=True)
    gcs_iam_endpoint: str = field(default=GCS_IAM_ENDPOINT.default, kw_only=True)


@frozen
class Config(StorageConfig):
    """
    Everything the server needs to know, validated (the storage's settings
    are those of :class:`StorageConfig`).

    :ivar listen: a Twisted server endpoint string, e.g. ``tcp:8080``.
    :ivar source: the package source.
    :ivar nix_timeout: seconds allowed for each Nix step of an image
        (evaluation, then build).
    :ivar popularity_url: a file path or URL of package popularity data.
    :ivar max_builds: how many Nix builds may run at once.
    :ivar layer_budget: the most layers an image may have.
    :ivar nix_options: ``(name, value)`` pairs passed to Nix as
        ``--option name value``; those of ``NIXERY_NIX_OPTIONS`` first,
        then ``--nix-option`` ones, which replace a setting of the same name.
    :ivar layer_threads: threads writing layers (tar, gzip, hashing).
    :ivar keep_builds: finished builds whose pages and logs are kept.
    :ivar build_log_lines: Nix log lines kept per build.
    :ivar max_queue: images in the making at once (running or waiting);
        one address may have a quarter of them.
    :ivar failure_ttl: seconds a permanent failure is answered from memory.
    :ivar head_timeout: seconds a client has to send a whole request.
    :ivar idle_timeout: seconds a kept-alive connection waits for a request.
    :ivar stall_timeout: seconds a response may wait for its client to read.
    :ivar max_connections_per_client: connections one address may hold.
    :ivar max_connections: connections in all, if set; never more than
        the open-file limit carries.
    :ivar platforms: the platforms a name is built for, the default first.
    """

    listen: str
    source: SourceSetting
    nix_timeout: float
    popularity_url: Optional[str]
    max_builds: int
    layer_budget: int
    nix_options: tuple[tuple[str, str], ...]
    layer_threads: int
    keep_builds: int = KEEP_BUILDS.default
    build_log_lines: int = BUILD_LOG_LINES.default
    max_queue: int = MAX_QUEUE.default
    failure_ttl: float = FAILURE_TTL.default
    head_timeout: float = HEAD_TIMEOUT.default
    idle_timeout: float = IDLE_TIMEOUT.default
    stall_timeout: float = STALL_TIMEOUT.default
    max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT.default
    max_connections: Optional[int] = MAX_CONNECTIONS.default
    #: Authentication, tokens, rules, TLS, cold builds per client.
    private: PrivateConfig = PrivateConfig()
    platforms: tuple[Architecture, ...] = (host_architecture(),)


def _listen(options: Mapping[str, object], environ: Mapping[str, str]) -> str:
    listen = LISTEN.given(options, None)
    if listen is not None:
        if PORT.given(options, None) is not None:
            raise UsageError("give either --listen or --port, not both")
        return listen
    port = PORT.read(options, environ)
    if port is None:
        return LISTEN.default
    return "tcp:%d" % (port,)


def _gcs_endpoint(options: Mapping[str, object],
                  environ: Mapping[str, str]) -> Optional[str]:
    """
    ``--gcs-endpoint``, else ``STORAGE_EMULATOR_HOST`` (the variable Google's
    client libraries read); a bare ``host:port`` means plain HTTP.
    """
    endpoint = GCS_ENDPOINT.given(options, environ)
    if endpoint is None:
        return None
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    if not endpoint.startswith(("http://", "https://")):
        raise UsageError("STORAGE_EMULATOR_HOST/--gcs-endpoint must be an http(s) URL,"
                         " not %r" % (endpoint,))
    return endpoint.rstrip("/")


def _http_url(text: str, label: str, path: bool = True) -> str:
    """
    ``text`` if it is an http(s) URL with a host (without a trailing
    ``/``), and without a path unless ``path``.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    try:
        parts.port
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError("%s must be an http(s) URL, not %r" % (label, text))
    if not path and (parts.path.strip("/") or parts.query or parts.fragment):
        raise UsageError("%s must be scheme://host[:port], without a path, not %r"
                         % (label, text))
    return text.rstrip("/")


def _s3_config(options: Mapping[str, object], environ: Mapping[str, str]) -> S3Config:
    """
    The S3 settings; the region falls back to ``AWS_REGION`` and
    ``AWS_DEFAULT_REGION`` as AWS's tools do.
    """
    from nixeryd.storage.s3.bucket import check_bucket_name, default_addressing_style
    from nixeryd.storage.s3.credentials import VARIABLES

    bucket = S3_BUCKET.given(options, environ)
    if bucket is None:
        raise UsageError("s3 storage needs a bucket: set S3_BUCKET (or --s3-bucket)")
    try:
        check_bucket_name(bucket)
    except ValueError as e:
        raise UsageError("%s: %s" % (S3_BUCKET.label(True), e)) from None
    endpoint = S3_ENDPOINT.given(options, environ)
    if endpoint is not None:
        endpoint = _http_url(endpoint, S3_ENDPOINT.label(True), path=False)
    public_url = S3_PUBLIC_URL.given(options, environ)
    if public_url is not None:
        public_url = _http_url(public_url, S3_PUBLIC_URL.label(True))
    region = (S3_REGION.given(options, environ) or environ.get("AWS_REGION")
              or environ.get("AWS_DEFAULT_REGION") or S3_REGION.default)
    style = (S3_ADDRESSING_STYLE.read(options, environ)
             or default_addressing_style(endpoint, bucket))
    aws = tuple((name, environ[name]) for name in VARIABLES if environ.get(name))
    given = {name for name, _ in aws}
    if len(given & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}) == 1:
        raise UsageError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together")
    return S3Config(bucket=bucket, endpoint=endpoint, region=region,
                    addressing_style=style,
                    url_lifetime=S3_URL_LIFETIME.read(options, environ),
                    public_url=public_url, aws_environment=aws)


def _check_source(source: SourceSetting) -> None:
    """
    A channel must be a channel name or commit, a repository URL must not
    look like an option: the checks the package sources make themselves.
    """
    from nixeryd.build.sources import ChannelSource

    for kind, setting in SOURCES:
        if kind != source.kind:
            continue
        if kind == "channel":
            try:
                ChannelSource(source.location)
            except ValueError:
                raise UsageError("%s: %r is not a nixpkgs channel name or commit" % (
                    setting.label(True), source.location)) from None
        elif kind == "repo" and source.location.startswith("-"):
            raise UsageError("%s: %r is not a git repository URL" % (
                setting.label(True), source.location))


def storage_config_from(options: Mapping[str, object],
                        environ: Mapping[str, str]) -> StorageConfig:
    """
    The storage settings, from options and the environment as
    :func:`config_from` reads them.

    :raises UsageError: with one line naming the setting to fix.
    """
    backend = STORAGE_BACKEND.given(options, environ) or STORAGE_BACKEND.default
    if backend not in STORAGE_BACKENDS:
        raise UsageError(
            "%s must be %s, not %r" % (
                STORAGE_BACKEND.label(True), " or ".join(STORAGE_BACKENDS), backend))
    storage_path = STORAGE_PATH.given(options, environ)
    gcs_bucket = GCS_BUCKET.given(options, environ)
    if backend == "filesystem" and storage_path is None:
        raise UsageError(
            "filesystem storage needs a directory: set STORAGE_PATH (or --storage-path)")
    if backend == "gcs" and gcs_bucket is None:
        raise UsageError("gcs storage needs a bucket: set GCS_BUCKET (or --gcs-bucket)")
    credentials = environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
    endpoint = _gcs_endpoint(options, environ)
    # Without a key file, real Cloud Storage is reached with the metadata
    # server's tokens; the start-up checks say what to set when there is none.
    return StorageConfig(
        storage_backend=backend, storage_path=storage_path, gcs_bucket=gcs_bucket,
        google_credentials=credentials, gcs_endpoint=endpoint,
        s3=_s3_config(options, environ) if backend == "s3" else None,
        gcs_public=GCS_PUBLIC.read(options, environ),
        gcs_signing_account=GCS_SIGNING_ACCOUNT.given(options, environ),
        gce_metadata_host=GCE_METADATA_HOST.given(options, environ),
        gcs_iam_endpoint=GCS_IAM_ENDPOINT.read(options, environ))


def config_from(options: Mapping[str, object], environ: Mapping[str, str]) -> Config:
    """
    Build and validate the configuration.

    :param options: parsed command-line options, keyed by long option name
        (``None`` or absent for options not given); ``nix-option`` is a list
        of ``NAME=VALUE`` strings.
    :param environ: the process environment.
    :raises UsageError: with one line naming the setting to fix.
    """
    listen = _listen(options, environ)
    source = read_source(options, environ)
    _check_source(source)

    storage = storage_config_from(options, environ)
    nix_timeout = NIX_TIMEOUT.read(options, environ)
    max_builds = MAX_BUILDS.read(options, environ)
    layer_budget = LAYER_BUDGET.read(options, environ)
    layer_threads = THREADS.read(options, environ)
    nix_options = read_nix_options(options, environ)

    return Config(
        listen=listen,
        source=source,
        storage_backend=storage.storage_backend,
        storage_path=storage.storage_path,
        gcs_bucket=storage.gcs_bucket,
        google_credentials=storage.google_credentials,
        gcs_endpoint=storage.gcs_endpoint,
        s3=storage.s3,
        gcs_public=storage.gcs_public,
        gcs_signing_account=storage.gcs_signing_account,
        gce_metadata_host=storage.gce_metadata_host,
        gcs_iam_endpoint=storage.gcs_iam_endpoint,
        nix_timeout=nix_timeout,
        popularity_url=POPULARITY_URL.given(options, environ),
        max_builds=max_builds,
        layer_budget=layer_budget,
        nix_options=nix_options,
        layer_threads=layer_threads,
        keep_builds=KEEP_BUILDS.read(options, environ),
        build_log_lines=BUILD_LOG_LINES.read(options, environ),
        max_queue=MAX_QUEUE.read(options, environ),
        failure_ttl=FAILURE_TTL.read(options, environ),
        head_timeout=HEAD_TIMEOUT.read(options, environ),
        idle_timeout=IDLE_TIMEOUT.read(options, environ),
        stall_timeout=STALL_TIMEOUT.read(options, environ),
        max_connections_per_client=MAX_CONNECTIONS_PER_CLIENT.read(options, environ),
        max_connections=MAX_CONNECTIONS.read(options, environ),
        private=check_tls_listen(private_config_from(options, environ), listen),
        platforms=PLATFORMS.read(options, environ) or (host_architecture(),),
    )

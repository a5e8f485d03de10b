"""
Every setting of the daemon and the build command, defined once.

A :class:`Setting` names the command-line option, the Nixery environment
variable it falls back to, its default (from :mod:`nixeryd.core.defaults`),
its help text and how a value is converted and checked.  The options of
``twistd nixery`` (:mod:`nixeryd.app.tap`) and of ``nixeryd build``
(:mod:`nixeryd.app.buildcmd`) are made from these definitions and read
through them, so both commands describe, check and refuse a setting the
same way.  The daemon reads the environment as well; the build command
reads only its command line, and its help and messages then name no
variable.  ``nixeryd gc`` (:mod:`nixeryd.app.gccmd`) reads the daemon's
storage settings as the daemon does.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable, ClassVar, Generic, Mapping, Optional, Sequence, TypeVar

from attrs import frozen
from twisted.python import usage
from twisted.python.usage import UsageError

from nixeryd.build.platforms import Architecture, known_platforms, parse_platforms
from nixeryd.core import defaults

T = TypeVar("T")

#: The storage backends the daemon knows.
STORAGE_BACKENDS = ("filesystem", "gcs", "s3")


def _anything(value: object) -> bool:
    return True


def _positive_seconds(seconds: float) -> bool:
    """A duration that must pass: finite and more than zero."""
    return math.isfinite(seconds) and seconds > 0


def _boolean(text: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _shown(value: object) -> str:
    """A default as the help shows it: ``600``, not ``600.0``."""
    return format(value, "g") if isinstance(value, float) else str(value)


@frozen
class Setting(Generic[T]):
    """
    One setting.

    :ivar option: the long option name, without ``--``.
    :ivar help: what it is, one phrase; the default and the variable are
        added by :meth:`describe`.
    :ivar default: the value when neither the option nor the variable is
        given (``None``: unset).
    :ivar convert: text to value; raises :class:`ValueError` for bad text.
    :ivar variable: the environment variable it falls back to, if any.
    :ivar check: whether a converted value is in range.
    :ivar unit: said after the name in messages, e.g. ``seconds``.
    :ivar variable_note: said after the variable in help texts.
    :ivar flag: an option without a value (``optFlags``: :func:`flags`);
        given, it reads as ``"1"``; its variable takes a boolean.
    """

    option: str
    help: str
    default: T
    convert: Callable[[str], T]
    variable: Optional[str] = None
    check: Callable[[T], bool] = _anything
    unit: str = ""
    variable_note: str = ""
    flag: bool = False

    def describe(self, variables: bool) -> str:
        """
        The help text: what it is, its default, and (when the command reads
        the environment) its variable.
        """
        text = self.help
        if self.default is not None and not self.flag:
            text += " (default %s)" % (_shown(self.default),)
        if variables and self.variable is not None:
            text += " [%s%s]" % (self.variable, self.variable_note)
        return text + "."

    def parameter(self, variables: bool) -> list[Any]:
        """
        The ``optParameters`` entry.  Its default is ``None`` so that an
        option not given can be told apart and fall back to the variable.
        """
        return [self.option, None, None, self.describe(variables)]

    def label(self, variables: bool) -> str:
        """How messages name the setting, e.g. ``NIX_TIMEOUT/--nix-timeout (seconds)``."""
        name = "--" + self.option
        if variables and self.variable is not None:
            name = self.variable + "/" + name
        return name + (" (%s)" % (self.unit,) if self.unit else "")

    def given(self, options: Mapping[str, object],
              environ: Optional[Mapping[str, str]]) -> Optional[str]:
        """
        The option's text if given, else the variable's if non-empty, else
        ``None``.

        :param environ: the environment, or ``None`` for a command that
            reads only its command line.
        """
        value = options.get(self.option)
        if self.flag:
            value = "1" if value else None
        if value is not None and value != "":
            return str(value)
        if environ is not None and self.variable is not None:
            from_env = environ.get(self.variable, "")
            if from_env != "":
                return from_env
        return None

    def read(self, options: Mapping[str, object],
             environ: Optional[Mapping[str, str]]) -> T:
        """
        The converted and checked value, or the default.

        :raises UsageError: one line naming the setting and the bad text.
        """
        text = self.given(options, environ)
        if text is None:
            return self.default
        label = self.label(environ is not None)
        try:
            value = self.convert(text)
        except ValueError:
            raise UsageError("%s: %r is not valid" % (label, text)) from None
        if not self.check(value):
            raise UsageError("%s: %r is out of range" % (label, text))
        return value


def _text(option: str, help: str, variable: Optional[str] = None) -> Setting[Optional[str]]:
    """A setting whose value is its text, unset by default."""
    return Setting(option, help, None, str, variable)


LISTEN = Setting(
    "listen", "Server endpoint to listen on, e.g. tcp:8080:interface=127.0.0.1",
    defaults.LISTEN, str)
PORT: Setting[Optional[int]] = Setting(
    "port", "TCP port to listen on, on all interfaces", None, int, "PORT",
    check=lambda port: port is not None and 0 <= port <= 65535,
    unit="a TCP port number")
CHANNEL = _text(
    "channel", "nixpkgs channel (branch or commit) to take packages from",
    "NIXERY_CHANNEL")
PKGS_REPO = _text(
    "pkgs-repo", "Git repository of a package set; the image tag selects the ref",
    "NIXERY_PKGS_REPO")
PKGS_PATH = _text("pkgs-path", "Local directory of a package set", "NIXERY_PKGS_PATH")
STORAGE_BACKEND = Setting(
    "storage-backend", " or ".join(STORAGE_BACKENDS), defaults.STORAGE_BACKEND, str,
    "NIXERY_STORAGE_BACKEND")
STORAGE_PATH = _text("storage-path", "Directory for filesystem storage", "STORAGE_PATH")
GCS_BUCKET = _text("gcs-bucket", "Bucket for gcs storage", "GCS_BUCKET")
GCS_ENDPOINT = _text(
    "gcs-endpoint", "GCS emulator URL, e.g. http://127.0.0.1:9023",
    "STORAGE_EMULATOR_HOST")
#: How an S3 bucket may be addressed.
S3_ADDRESSING_STYLES = ("path", "virtual")
S3_BUCKET = _text("s3-bucket", "Bucket for s3 storage", "S3_BUCKET")
S3_ENDPOINT = _text(
    "s3-endpoint",
    "URL of an S3-compatible server (MinIO, Ceph, R2...), e.g. http://127.0.0.1:9000;"
    " unset for AWS S3", "S3_ENDPOINT")
S3_REGION = Setting(
    "s3-region", "Region requests to the bucket are signed for (else AWS_REGION)",
    defaults.S3_REGION, str, "S3_REGION")
S3_ADDRESSING_STYLE: Setting[Optional[str]] = Setting(
    "s3-addressing-style",
    "path (<endpoint>/<bucket>) or virtual (<bucket>.<endpoint host>); virtual on AWS"
    " (path for a bucket name with dots, capitals or underscores), path with S3_ENDPOINT"
    " by default",
    None, str, "S3_ADDRESSING_STYLE", check=lambda style: style in S3_ADDRESSING_STYLES,
    unit="path or virtual")
S3_URL_LIFETIME = Setting(
    "s3-url-lifetime", "Seconds a presigned blob URL is valid, 1 to 604800",
    defaults.S3_URL_LIFETIME, int, "S3_URL_LIFETIME",
    check=lambda seconds: 1 <= seconds <= 604800, unit="seconds")
S3_PUBLIC_URL = _text(
    "s3-public-url",
    "Base URL where the bucket's objects are readable without credentials (a public"
    " bucket, a CDN); blobs are then redirected there unsigned", "S3_PUBLIC_URL")
#: The settings of s3 storage.
S3_SETTINGS: tuple[Setting[Any], ...] = (
    S3_BUCKET, S3_ENDPOINT, S3_REGION, S3_ADDRESSING_STYLE, S3_URL_LIFETIME, S3_PUBLIC_URL)
NIX_TIMEOUT = Setting(
    "nix-timeout", "Seconds allowed for each Nix step of an image, evaluation then build",
    defaults.NIX_TIMEOUT, float, "NIX_TIMEOUT",
    check=_positive_seconds, unit="seconds")
POPULARITY_URL = _text(
    "popularity-url", "File path or URL of package popularity data", "NIX_POPULARITY_URL")
MAX_BUILDS = Setting(
    "max-builds",
    "Nix builds started at once, and as many evaluations; slow ones leave"
    " their slot after %g s, up to twice as many" % (defaults.LONG_NIX_STEP,),
    defaults.MAX_BUILDS, int,
    "NIXERY_MAX_BUILDS", check=lambda n: n >= 1)
MAX_QUEUE = Setting(
    "max-queue",
    "Images in the making at once, running or waiting; one address may have a quarter"
    " of them, and cold requests beyond are answered 429",
    defaults.MAX_QUEUE, int, "NIXERY_MAX_QUEUE", check=lambda n: n >= 1)
FAILURE_TTL = Setting(
    "failure-ttl",
    "Seconds an unknown package or failed build is answered from memory"
    " (a moving source's at most as long as its images); 0 remembers none",
    defaults.FAILURE_TTL, float, "NIXERY_FAILURE_TTL",
    check=lambda seconds: math.isfinite(seconds) and seconds >= 0, unit="seconds")
LAYER_BUDGET = Setting(
    "layer-budget",
    "Most store-path layers an image may have, 1 to %d" % (defaults.MAX_LAYER_BUDGET,),
    defaults.LAYER_BUDGET, int, "NIXERY_LAYER_BUDGET",
    check=lambda n: 1 <= n <= defaults.MAX_LAYER_BUDGET,
    unit="1 to %d" % (defaults.MAX_LAYER_BUDGET,))
THREADS = Setting(
    "threads", "Threads writing layers: tar, gzip and hashing", defaults.LAYER_THREADS,
    int, check=lambda n: n >= 1)
KEEP_BUILDS = Setting(
    "keep-builds", "Finished builds whose pages and logs are kept",
    defaults.KEEP_BUILDS, int, "NIXERY_KEEP_BUILDS", check=lambda n: n >= 0)
BUILD_LOG_LINES = Setting(
    "build-log-lines", "Nix log lines kept per build (the last ones)",
    defaults.BUILD_LOG_LINES, int, "NIXERY_BUILD_LOG_LINES", check=lambda n: n >= 1)
HEAD_TIMEOUT = Setting(
    "head-timeout",
    "Seconds a client has to send a whole request, from connecting or from the"
    " request's first byte; then the connection is dropped",
    defaults.HEAD_TIMEOUT, float, "NIXERY_HEAD_TIMEOUT",
    check=_positive_seconds, unit="seconds")
IDLE_TIMEOUT = Setting(
    "idle-timeout", "Seconds a kept-alive connection waits for the next request",
    defaults.IDLE_TIMEOUT, float, "NIXERY_IDLE_TIMEOUT",
    check=_positive_seconds, unit="seconds")
STALL_TIMEOUT = Setting(
    "stall-timeout",
    "Seconds a response may wait for its client to read before the connection"
    " is dropped",
    defaults.STALL_TIMEOUT, float, "NIXERY_STALL_TIMEOUT",
    check=_positive_seconds, unit="seconds")
MAX_CONNECTIONS_PER_CLIENT = Setting(
    "max-connections-per-client", "Connections one client address may hold at once",
    defaults.MAX_CONNECTIONS_PER_CLIENT, int, "NIXERY_MAX_CONNECTIONS_PER_CLIENT",
    check=lambda n: n >= 1)
MAX_CONNECTIONS: Setting[Optional[int]] = Setting(
    "max-connections",
    "Connections at once from all clients; at most, and by default, what the"
    " open-file limit carries (each connection counted with a blob file)",
    None, int, "NIXERY_MAX_CONNECTIONS", check=lambda n: n is not None and n >= 1)
# -- private instances: authentication, tokens, TLS, limits per client ---------
HTPASSWD = _text(
    "htpasswd",
    "htpasswd file of bcrypt hashes (htpasswd -B): pulls need a user name and password",
    "NIXERY_HTPASSWD")
AUTH_RULES = _text(
    "auth-rules", "TOML rules file: which users may pull which packages",
    "NIXERY_AUTH_RULES")
TOKEN_KEY = _text(
    "token-key",
    "PEM private key (RSA or EC P-256) signing the tokens of nixeryd's own /token"
    " endpoint; turns on the token flow (needs --htpasswd)", "NIXERY_TOKEN_KEY")
TOKEN_PUBLIC_KEY = _text(
    "token-public-key",
    "PEM public key or certificate of an external token service whose tokens"
    " are accepted; turns on the token flow (needs --token-realm)",
    "NIXERY_TOKEN_PUBLIC_KEY")
TOKEN_REALM = _text(
    "token-realm",
    "URL of the token service clients are sent to (default: this registry's /token)",
    "NIXERY_TOKEN_REALM")
TOKEN_SERVICE = Setting(
    "token-service", "Service name of the tokens (challenges' service, tokens' aud)",
    defaults.TOKEN_SERVICE, str, "NIXERY_TOKEN_SERVICE", check=bool)
TOKEN_ISSUER = Setting(
    "token-issuer", "Issuer of the tokens (their iss)", defaults.TOKEN_ISSUER, str,
    "NIXERY_TOKEN_ISSUER", check=bool)
TOKEN_TTL = Setting(
    "token-ttl", "Seconds a token of nixeryd's own /token endpoint lasts",
    defaults.TOKEN_TTL, float, "NIXERY_TOKEN_TTL",
    check=lambda seconds: math.isfinite(seconds) and seconds >= 1, unit="seconds")
TLS_CERT = _text(
    "tls-cert",
    "PEM certificate (then intermediates) to serve HTTPS with; read again on SIGHUP",
    "NIXERY_TLS_CERT")
TLS_KEY = _text("tls-key", "PEM private key of --tls-cert", "NIXERY_TLS_KEY")
COLD_PER_MINUTE = Setting(
    "cold-per-minute",
    "Builds one user (or address, unauthenticated) may start per minute, answered 429"
    " beyond; 0 for no bound", defaults.COLD_PER_MINUTE, int, "NIXERY_COLD_PER_MINUTE",
    check=lambda n: n >= 0)

#: The settings of private instances, in the order the help lists them.
PRIVATE_SETTINGS: tuple[Setting[Any], ...] = (
    HTPASSWD, AUTH_RULES, TOKEN_KEY, TOKEN_PUBLIC_KEY, TOKEN_REALM, TOKEN_SERVICE,
    TOKEN_ISSUER, TOKEN_TTL, TLS_CERT, TLS_KEY, COLD_PER_MINUTE)

NIX_OPTION: Setting[Optional[str]] = Setting(
    "nix-option",
    "A Nix setting NAME=VALUE (e.g. substituters= to build offline); repeatable",
    None, str, "NIXERY_NIX_OPTIONS", variable_note=", ';'-separated")
PLATFORMS: Setting[Optional[tuple[Architecture, ...]]] = Setting(
    "platforms",
    "Platforms a name is built for, the default first, e.g. linux/amd64,linux/arm64:"
    " with several, a pull by tag gets an image index (default this machine's platform)",
    None if defaults.PLATFORMS is None else parse_platforms(defaults.PLATFORMS),
    parse_platforms, "NIXERY_PLATFORMS",
    unit="comma-separated, of " + ", ".join(known_platforms()))

KEEP_DAYS: Setting[Optional[int]] = Setting(
    "keep-days",
    "Keep the images pulled or built within this many days and remove the others;"
    " without it every image is kept and only what nothing references is removed",
    None, int, check=lambda days: days is not None and days >= 1, unit="days, at least 1")
GRACE = Setting(
    "grace", "Hours within which nothing written is removed (what builds in progress write)",
    defaults.GC_GRACE_HOURS, float,
    check=lambda hours: math.isfinite(hours) and hours >= 0, unit="hours")

# Cloud Storage without a key file: the metadata server's tokens, URLs
# signed through IAM or not at all.
GCS_PUBLIC = Setting(
    "gcs-public", "Redirect blob requests to plain, unsigned URLs of a public bucket"
    " (readable by allUsers) instead of signed ones", False, _boolean, "GCS_PUBLIC",
    flag=True)
GCS_SIGNING_ACCOUNT = _text(
    "gcs-signing-account", "Service account that signs blob URLs through IAM signBlob"
    " when there is no key file (by default the metadata server's default account)",
    "GCS_SIGNING_ACCOUNT")
GCE_METADATA_HOST = Setting(
    "gce-metadata-host", "Metadata server (host[:port]) giving tokens when there is no"
    " key file; given, it is used with an emulator too", defaults.GCE_METADATA_HOST, str,
    "GCE_METADATA_HOST")
GCS_IAM_ENDPOINT = Setting(
    "gcs-iam-endpoint", "IAM Credentials API that signs blob URLs without a key file",
    defaults.GCS_IAM_ENDPOINT, str, "GCS_IAM_ENDPOINT")
#: The credentials of Cloud Storage beside a key file.
GCS_CREDENTIAL_SETTINGS: tuple[Setting[Any], ...] = (
    GCS_PUBLIC, GCS_SIGNING_ACCOUNT, GCE_METADATA_HOST, GCS_IAM_ENDPOINT)

#: Where images are stored: the options the daemon and ``nixeryd gc`` share.
STORAGE_SETTINGS: tuple[Setting[Any], ...] = (
    STORAGE_BACKEND, STORAGE_PATH, GCS_BUCKET, GCS_ENDPOINT, *GCS_CREDENTIAL_SETTINGS,
    *S3_SETTINGS)

#: The package sources, as ``(kind, setting)`` in the order they are
#: chosen; the kinds are the keyword arguments of
#: :func:`nixeryd.build.sources.source_from_config`.
SOURCES: tuple[tuple[str, Setting[Optional[str]]], ...] = (
    ("channel", CHANNEL), ("repo", PKGS_REPO), ("path", PKGS_PATH))

#: What building an image needs: the options of both commands.
IMAGE_SETTINGS: tuple[Setting[Any], ...] = (
    CHANNEL, PKGS_REPO, PKGS_PATH, NIX_TIMEOUT, POPULARITY_URL, LAYER_BUDGET, THREADS)


@frozen
class SourceSetting:
    """
    Where Nix packages come from.

    :ivar kind: ``"channel"`` (a nixpkgs branch or commit), ``"repo"`` (a
        git repository URL; the image tag selects the ref) or ``"path"`` (a
        local directory).  The names are those of the keyword arguments of
        :func:`nixeryd.build.sources.source_from_config`, which turns this
        description into a working source:
        ``source_from_config(**{source.kind: source.location})``.
    :ivar location: the channel name, repository URL or directory.
    """

    kind: str
    location: str


def read_source(options: Mapping[str, object],
                environ: Optional[Mapping[str, str]]) -> SourceSetting:
    """
    The first source option given, else the first non-empty variable, each
    in the order channel, repository, path.

    :raises UsageError: when none is given.
    """
    for kind, setting in SOURCES:
        value = setting.given(options, None)
        if value is not None:
            return SourceSetting(kind, value)
    if environ is not None:
        for kind, setting in SOURCES:
            value = setting.given({}, environ)
            if value is not None:
                return SourceSetting(kind, value)
    options_text = _one_of(["--" + setting.option for _, setting in reversed(SOURCES)])
    if environ is None:
        raise UsageError("no package source: give %s" % (options_text,))
    raise UsageError("no package source: set %s (or %s)" % (
        _one_of([str(setting.variable) for _, setting in reversed(SOURCES)]),
        options_text))


def _one_of(names: Sequence[str]) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1]


def parse_nix_option(text: str) -> tuple[str, str]:
    """
    Split one ``NAME=VALUE`` Nix option; the value may be empty.

    :raises UsageError: if there is no ``=`` or the name is empty or has
        spaces.
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name):
        raise UsageError(
            "Nix option %r must be NAME=VALUE (e.g. substituters=)" % (text,))
    return (name, value.strip())


def parse_nix_options(text: str) -> list[tuple[str, str]]:
    """
    Parse ``NIXERY_NIX_OPTIONS``: ``NAME=VALUE`` entries separated by ``;``
    or newlines (values may contain spaces, as Nix list values do).
    """
    entries = text.replace("\n", ";").split(";")
    return [parse_nix_option(entry) for entry in entries if entry.strip()]


def read_nix_options(options: Mapping[str, object],
                     environ: Optional[Mapping[str, str]]) -> tuple[tuple[str, str], ...]:
    """
    The Nix options: those of the variable first, then the ``nix-option``
    ones (a list of ``NAME=VALUE`` texts), which replace a setting of the
    same name.

    :raises UsageError: for an entry that is not ``NAME=VALUE``.
    """
    merged: dict[str, str] = {}
    if environ is not None and NIX_OPTION.variable is not None:
        merged.update(parse_nix_options(environ.get(NIX_OPTION.variable, "")))
    given = options.get(NIX_OPTION.option)
    for text in given if isinstance(given, (list, tuple)) else ():
        name, value = parse_nix_option(str(text))
        merged[name] = value
    return tuple(merged.items())


def parameters(settings: Sequence[Setting[Any]], variables: bool) -> list[list[Any]]:
    """The ``optParameters`` of ``settings`` (flags left out: :func:`flags`)."""
    return [setting.parameter(variables) for setting in settings if not setting.flag]


def flags(settings: Sequence[Setting[Any]], variables: bool) -> list[list[Any]]:
    """The ``optFlags`` of the flags among ``settings``."""
    return [[setting.option, None, setting.describe(variables)]
            for setting in settings if setting.flag]


class ImageOptions(usage.Options):
    """
    The options of a command that builds images.  A subclass lists its
    ``optParameters`` with :func:`parameters` and says in :attr:`variables`
    whether it reads the environment, as its help texts then say.

    ``--nix-option`` may be given more than once; the texts are kept in
    order under ``"nix-option"`` for :func:`read_nix_options`.
    """

    #: Whether settings fall back to environment variables.
    variables: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self[NIX_OPTION.option] = []
        self.docs[NIX_OPTION.option] = NIX_OPTION.describe(self.variables)

    def opt_version(self) -> None:
        """Display the nixeryd version and exit."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            print("nixeryd", version("nixeryd"))
        except PackageNotFoundError:
            print("nixeryd (not installed)")
        sys.exit(0)

    def opt_nix_option(self, value: str) -> None:
        """A Nix setting NAME=VALUE (the help text comes from NIX_OPTION)."""
        self[NIX_OPTION.option].append(value)

"""
The server's configuration: one frozen value built once at startup.

Settings come from command-line options and, for each option not given,
from the environment variables Nixery uses, so existing deployments keep
working.  Empty environment values count as unset, as in Nixery.  Every
setting is checked here, so a bad configuration stops the server at once
with one line saying what to fix, and nothing reads ``os.environ`` later.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, TypeVar

from attrs import frozen
from twisted.python.usage import UsageError

DEFAULT_LISTEN = "tcp:8080"
DEFAULT_NIX_TIMEOUT = 600.0
DEFAULT_MAX_BUILDS = 2
DEFAULT_LAYER_BUDGET = 94
MAX_LAYER_BUDGET = 125
DEFAULT_THREADS = 4

STORAGE_BACKENDS = ("filesystem", "gcs")

_T = TypeVar("_T")


@frozen
class PackageSource:
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


@frozen
class Config:
    """
    Everything the server needs to know, validated.

    :ivar listen: a Twisted server endpoint string, e.g. ``tcp:8080``.
    :ivar source: the package source.
    :ivar storage_backend: ``"filesystem"`` or ``"gcs"``.
    :ivar storage_path: the storage directory (filesystem backend).
    :ivar gcs_bucket: the bucket name (gcs backend).
    :ivar google_credentials: path of a service-account JSON file, if set.
    :ivar gcs_endpoint: a GCS emulator's ``http://host:port``, or ``None``
        for Google Cloud Storage itself.
    :ivar nix_timeout: seconds allowed for each Nix step of an image
        (evaluation, then build).
    :ivar popularity_url: a file path or URL of package popularity data.
    :ivar max_builds: how many Nix builds may run at once.
    :ivar layer_budget: the most layers an image may have.
    :ivar nix_options: ``(name, value)`` pairs passed to Nix as
        ``--option name value``; those of ``NIXERY_NIX_OPTIONS`` first,
        then ``--nix-option`` ones, which replace a setting of the same name.
    :ivar threads: size of the thread pool for blocking work.
    """

    listen: str
    source: PackageSource
    storage_backend: str
    storage_path: Optional[str]
    gcs_bucket: Optional[str]
    google_credentials: Optional[str]
    gcs_endpoint: Optional[str]
    nix_timeout: float
    popularity_url: Optional[str]
    max_builds: int
    layer_budget: int
    nix_options: tuple[tuple[str, str], ...]
    threads: int


def _setting(options: Mapping[str, object], option: str,
             environ: Mapping[str, str], variable: Optional[str]) -> Optional[str]:
    """The option's value if given, else the variable's if non-empty."""
    value = options.get(option)
    if value is not None and value != "":
        return str(value)
    if variable is not None:
        from_env = environ.get(variable, "")
        if from_env != "":
            return from_env
    return None


def _parse(value: Optional[str], default: _T, convert: Callable[[str], _T],
           what: str, check: Callable[[_T], bool]) -> _T:
    """Convert and check one setting, or raise a one-line UsageError."""
    if value is None:
        return default
    try:
        result = convert(value.strip())
    except ValueError:
        raise UsageError("%s: %r is not valid" % (what, value)) from None
    if not check(result):
        raise UsageError("%s: %r is out of range" % (what, value))
    return result


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


def _listen(options: Mapping[str, object], environ: Mapping[str, str]) -> str:
    listen = _setting(options, "listen", {}, None)
    port = _setting(options, "port", environ, "PORT")
    if listen is not None:
        if options.get("port") not in (None, ""):
            raise UsageError("give either --listen or --port, not both")
        return listen
    if port is None:
        return DEFAULT_LISTEN
    number = _parse(port, 0, int, "PORT/--port (a TCP port number)",
                    lambda p: 0 <= p <= 65535)
    return "tcp:%d" % (number,)


_SOURCES = (("channel", "channel", "NIXERY_CHANNEL"),
            ("repo", "pkgs-repo", "NIXERY_PKGS_REPO"),
            ("path", "pkgs-path", "NIXERY_PKGS_PATH"))


def _source(options: Mapping[str, object], environ: Mapping[str, str]) -> PackageSource:
    """
    The first source option given, else the first non-empty variable, each
    in the order channel, repository, path.
    """
    for settings in (options, {}), ({}, environ):
        for kind, option, variable in _SOURCES:
            value = _setting(settings[0], option, settings[1], variable)
            if value is not None:
                return PackageSource(kind, value)
    raise UsageError(
        "no package source: set NIXERY_PKGS_PATH, NIXERY_PKGS_REPO or"
        " NIXERY_CHANNEL (or --pkgs-path, --pkgs-repo or --channel)")


def _gcs_endpoint(options: Mapping[str, object],
                  environ: Mapping[str, str]) -> Optional[str]:
    """
    ``--gcs-endpoint``, else ``STORAGE_EMULATOR_HOST`` (the variable Google's
    client libraries read); a bare ``host:port`` means plain HTTP.
    """
    endpoint = _setting(options, "gcs-endpoint", environ, "STORAGE_EMULATOR_HOST")
    if endpoint is None:
        return None
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    if not endpoint.startswith(("http://", "https://")):
        raise UsageError("STORAGE_EMULATOR_HOST/--gcs-endpoint must be an http(s) URL,"
                         " not %r" % (endpoint,))
    return endpoint.rstrip("/")


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
    source = _source(options, environ)

    backend = _setting(options, "storage-backend", environ,
                       "NIXERY_STORAGE_BACKEND") or "filesystem"
    if backend not in STORAGE_BACKENDS:
        raise UsageError(
            "NIXERY_STORAGE_BACKEND/--storage-backend must be filesystem or gcs,"
            " not %r" % (backend,))
    storage_path = _setting(options, "storage-path", environ, "STORAGE_PATH")
    gcs_bucket = _setting(options, "gcs-bucket", environ, "GCS_BUCKET")
    if backend == "filesystem" and storage_path is None:
        raise UsageError(
            "filesystem storage needs a directory: set STORAGE_PATH (or --storage-path)")
    if backend == "gcs" and gcs_bucket is None:
        raise UsageError("gcs storage needs a bucket: set GCS_BUCKET (or --gcs-bucket)")

    nix_timeout = _parse(
        _setting(options, "nix-timeout", environ, "NIX_TIMEOUT"),
        DEFAULT_NIX_TIMEOUT, float, "NIX_TIMEOUT/--nix-timeout (seconds)",
        lambda t: math.isfinite(t) and t > 0)
    max_builds = _parse(
        _setting(options, "max-builds", environ, "NIXERY_MAX_BUILDS"),
        DEFAULT_MAX_BUILDS, int, "NIXERY_MAX_BUILDS/--max-builds", lambda n: n >= 1)
    layer_budget = _parse(
        _setting(options, "layer-budget", environ, "NIXERY_LAYER_BUDGET"),
        DEFAULT_LAYER_BUDGET, int,
        "NIXERY_LAYER_BUDGET/--layer-budget (1 to %d)" % (MAX_LAYER_BUDGET,),
        lambda n: 1 <= n <= MAX_LAYER_BUDGET)
    threads = _parse(_setting(options, "threads", {}, None), DEFAULT_THREADS, int,
                     "--threads", lambda n: n >= 1)

    nix_options = dict(parse_nix_options(environ.get("NIXERY_NIX_OPTIONS", "")))
    given = options.get("nix-option") or ()
    for text in given:  # type: ignore[attr-defined]
        name, value = parse_nix_option(str(text))
        nix_options[name] = value

    return Config(
        listen=listen,
        source=source,
        storage_backend=backend,
        storage_path=storage_path,
        gcs_bucket=gcs_bucket,
        google_credentials=environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None,
        gcs_endpoint=_gcs_endpoint(options, environ),
        nix_timeout=nix_timeout,
        popularity_url=_setting(options, "popularity-url", environ, "NIX_POPULARITY_URL"),
        max_builds=max_builds,
        layer_budget=layer_budget,
        nix_options=tuple(nix_options.items()),
        threads=threads,
    )

"""
The start-up line: one log event saying what the daemon serves.

Logged once the start-up checks have passed and the port is open, so an
operator reading the log sees in one place where it listens, which
package set it builds from (and its revision, when known), where images
are stored and its limits.  It shows no secrets: the user part of a
repository URL is dropped and a GCS key is named by its path only.
"""

from __future__ import annotations

from typing import Optional

from twisted.logger import Logger

from nixeryd.app.config import Config
from nixeryd.app.preflight import Checked
from nixeryd.app.privateconfig import describe_access
from nixeryd.build.platforms import describe as describe_platforms
from nixeryd.core.text import describe_source_setting

def describe_source(config: Config, revision: Optional[str]) -> str:
    """``git https://host/pkgs.git at 1a2b3c4d5e6f`` and the like."""
    text = describe_source_setting(config.source.kind, config.source.location)
    if revision is not None and revision != config.source.location:
        text += " at %s" % (revision[:12],)
    return text


def describe_storage(config: Config) -> str:
    """
    ``filesystem /var/lib/nixeryd``, ``gcs gs://bucket`` with endpoint and
    key path, or ``s3 s3://bucket`` with endpoint, region and style.
    """
    if config.storage_backend == "gcs":
        text = "gcs gs://%s" % (config.gcs_bucket,)
        if config.gcs_endpoint is not None:
            text += " at %s" % (config.gcs_endpoint,)
        if config.google_credentials is not None:
            text += " (key %s)" % (config.google_credentials,)
        return text
    if config.storage_backend == "s3" and config.s3 is not None:
        s3 = config.s3
        return "s3 s3://%s at %s (region %s, %s style%s)" % (
            s3.bucket, s3.endpoint or "AWS", s3.region, s3.addressing_style,
            ", public at %s" % (s3.public_url,) if s3.public_url else "")
    return "filesystem %s" % (config.storage_path,)


def log_serving(log: Logger, config: Config, checked: Checked,
                address: Optional[str]) -> None:
    """
    Log the start-up line.

    :param checked: what the start-up checks learned.
    :param address: the address the port listens on (``host:port``), or
        ``None`` when only the configured endpoint is known.
    """
    access = describe_access(config.private)
    log.info(
        "Serving on {address}{access_note}: packages from {source} for {platforms};"
        " storage {storage}; {max_builds} Nix build{builds_s} at once, Nix timeout {nix_timeout:g} s a step,"
        " {layer_budget} layers an image (+1); {nix_version}",
        event="serving",
        address=address if address is not None else config.listen,
        listen=config.listen,
        access=access,
        access_note="" if access is None else " (%s)" % (access,),
        source=describe_source(config, checked.revision),
        source_kind=config.source.kind,
        platforms=describe_platforms(config.platforms),
        revision=checked.revision,
        storage=describe_storage(config),
        storage_backend=config.storage_backend,
        max_builds=config.max_builds,
        builds_s="" if config.max_builds == 1 else "s",
        nix_timeout=config.nix_timeout,
        layer_budget=config.layer_budget,
        layer_threads=config.layer_threads,
        nix_version=checked.nix_version)

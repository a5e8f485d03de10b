"""
``python -m nixeryd build``: build one image into an OCI image layout.

The same image service the daemon uses, with filesystem storage at the
output directory, so the directory is an OCI layout that skopeo and umoci
read directly and that can be built into again (layers are reused).

Exit codes: 0 on success (the OCI manifest digest is printed on stdout),
2 for unknown packages or invalid input, 1 for a failed build.  Progress
goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import (FilteringLogObserver, LogLevel,
                            LogLevelFilterPredicate, formatEvent,
                            globalLogBeginner)

from twisted.python.usage import UsageError

from nixeryd.app.config import parse_nix_option
from nixeryd.core.errors import BuildFailed, RegistryError, UnknownPackages

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def nix_option_argument(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` → ``(NAME, VALUE)`` for argparse, as the daemon parses it."""
    try:
        return parse_nix_option(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def argument_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m nixeryd build``."""
    parser = argparse.ArgumentParser(
        prog="python -m nixeryd build",
        description="Build the image for NAME (e.g. shell/git/htop) from Nix "
                    "packages and write it to an OCI image layout.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pkgs-path", help="a local package set (imported like nixpkgs)")
    source.add_argument("--pkgs-repo", help="a git repository holding a package set")
    source.add_argument("--channel", help="a nixpkgs channel or commit")
    parser.add_argument("--tag", default="latest",
                        help="the package-set revision (git sources) and the "
                             "reference name in index.json (default: latest)")
    parser.add_argument("--out", required=True, help="the OCI layout directory to write")
    parser.add_argument("--nix-option", action="append", default=[], type=nix_option_argument,
                        metavar="NAME=VALUE", help="passed to Nix as --option NAME VALUE")
    parser.add_argument("--nix-timeout", type=float, default=600.0,
                        help="seconds allowed for Nix (default 600)")
    parser.add_argument("--layer-budget", type=int, default=94,
                        help="most store-path layers (default 94)")
    parser.add_argument("--popularity", help="popularity data: a file or URL")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("name", help="the image name")
    return parser


def _progress_observer(stream: Any):
    def observe(event: dict) -> None:
        text = formatEvent(event)
        if text:
            stream.write("nixeryd: %s\n" % (text,))
            stream.flush()
    return FilteringLogObserver(
        observe, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)])


async def _build(reactor: Any, options: argparse.Namespace) -> int:
    from nixeryd.app.wiring import assemble_image_service
    from nixeryd.build.sources import source_from_config
    from nixeryd.build.childenv import child_environment
    from nixeryd.storage.filesystem import FilesystemStorage

    env = child_environment(os.environ)
    source = source_from_config(
        options.channel, options.pkgs_repo,
        options.pkgs_path and os.path.abspath(options.pkgs_path),
        reactor=reactor, env=env)
    os.makedirs(options.out, exist_ok=True)
    service = assemble_image_service(
        reactor, source=source, storage=lambda runner: FilesystemStorage(options.out, runner),
        nix_timeout=options.nix_timeout, nix_options=options.nix_option,
        layer_budget=options.layer_budget, popularity=options.popularity,
        reference=lambda name, tag: tag, env=env)
    service.startService()
    try:
        image = await service.image(options.name, options.tag)
    except UnknownPackages as e:
        sys.stderr.write("nixeryd: unknown packages: %s\n" % (", ".join(e.packages),))
        return EXIT_INVALID
    except BuildFailed as e:
        sys.stderr.write("nixeryd: %s\n" % (e.message,))
        for line in e.log_tail:
            sys.stderr.write("  | %s\n" % (line,))
        return EXIT_FAILED
    except RegistryError as e:
        sys.stderr.write("nixeryd: %s\n" % (e.message,))
        return EXIT_INVALID
    finally:
        await service.stopService()
    sys.stdout.write(image.oci.digest + "\n")
    sys.stdout.flush()
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    """Run the build command; returns the exit code."""
    options = argument_parser().parse_args(argv)
    if options.layer_budget < 1:
        sys.stderr.write("nixeryd: --layer-budget must be at least 1\n")
        return EXIT_INVALID
    observers = [] if options.quiet else [_progress_observer(sys.stderr)]
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)
    from twisted.internet import task

    result = []

    async def run(reactor: Any) -> None:
        try:
            result.append(await _build(reactor, options))
        except ValueError as e:
            sys.stderr.write("nixeryd: %s\n" % (e,))
            result.append(EXIT_INVALID)

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else EXIT_FAILED
    return result[0] if result else EXIT_FAILED

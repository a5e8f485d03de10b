"""
``nixeryd build``: build one image into an OCI image layout.

The same image service the daemon uses, with filesystem storage at the
output directory, so the directory is an OCI layout that skopeo and umoci
read directly and that can be built into again (layers are reused).  The
options that say how images are built (package source, Nix options and
timeout, layer budget, popularity data, threads) are the daemon's own
definitions (:mod:`nixeryd.app.settings`), checked the same way; the
command reads only its command line, never the environment.

Exit codes: 0 on success, 2 for usage errors, unknown packages or invalid
input, 1 for a failed build.  On success the digest the daemon would serve
to ``docker pull`` for this image (the Docker manifest's) is printed on
stdout, and stderr says which manifest that is and names the other.
Progress goes to stderr (:mod:`nixeryd.app.buildprogress`), from the
build's record.
"""

from __future__ import annotations

import getopt
import os
import sys
from typing import Any, Optional, Sequence

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.logger import (FilteringLogObserver, ILogFilterPredicate, ILogObserver, LogEvent,
                            LogLevel,
                            LogLevelFilterPredicate, PredicateResult, formatEvent,
                            globalLogBeginner)
from twisted.python.usage import UsageError
from zope.interface import implementer

from nixeryd.app.settings import (
    IMAGE_SETTINGS,
    LAYER_BUDGET,
    NIX_TIMEOUT,
    POPULARITY_URL,
    SOURCES,
    THREADS,
    ImageOptions,
    SourceSetting,
    parameters,
    read_nix_options,
    read_source,
)
from nixeryd.app.buildprogress import BuildDisplay, layer_sizes
from nixeryd.core.text import human_size
from nixeryd.core import defaults
from nixeryd.core.documents import Image, ManifestDocument
from nixeryd.core.errors import BuildFailed, RegistryError, UnknownPackages
from nixeryd.core.mediatypes import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from nixeryd.registry.negotiate import choose_manifest
from nixeryd.app.commandline import parse_or_exit_code

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


@frozen
class BuildRequest:
    """
    One checked ``nixeryd build`` command line.

    :ivar name: the image name, e.g. ``shell/git``.
    :ivar tag: the package-set revision (git sources) and the reference
        name in ``index.json``.
    :ivar out: the OCI layout directory to write.
    :ivar quiet: no progress on stderr.
    """

    name: str
    tag: str
    out: str
    quiet: bool
    source: SourceSetting
    nix_timeout: float
    nix_options: tuple[tuple[str, str], ...]
    layer_budget: int
    popularity_url: Optional[str]
    layer_threads: int


class BuildOptions(ImageOptions):
    """The options of ``nixeryd build``; the checked result is :attr:`request`."""

    variables = False
    synopsis = "Usage: nixeryd build [options] NAME"
    longdesc = ("Build the image for NAME (e.g. shell/git/htop) from Nix packages"
                " and write it to an OCI image layout; print the digest `docker pull`"
                " gets from the daemon for it (the Docker manifest's)."
                " Exit codes: 0 built, 2 usage error, unknown packages or invalid"
                " name, 1 failed build.")

    optFlags = [["quiet", None, "No progress on stderr."]]
    optParameters = parameters(IMAGE_SETTINGS, variables=False) + [
        ["out", None, None, "The OCI layout directory to write (required)."],
        ["tag", None, defaults.TAG,
         "The package-set revision (git sources) and the reference name in"
         " index.json."],
    ]

    request: BuildRequest

    opt_h = ImageOptions.opt_help

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        """
        Parse ``options`` (the process arguments when ``None``); NAME may
        come before options as well as after them.
        """
        argv = list(sys.argv[1:] if options is None else options)
        try:
            pairs, names = getopt.gnu_getopt(argv, self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise UsageError(str(e)) from None
        ordered: list[str] = []
        for option, value in pairs:
            takes_value = option.startswith("--") and option[2:] + "=" in self.longOpt
            ordered += [option, value] if takes_value else [option]
        super().parseOptions(ordered + ["--"] + names)  # type: ignore[no-untyped-call]

    def opt_popularity(self, value: str) -> None:
        """Same as --popularity-url."""
        self[POPULARITY_URL.option] = value

    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        """The image name."""
        self["name"] = name

    def postOptions(self) -> None:
        """Check every option, as the daemon checks its own."""
        given = [setting for _, setting in SOURCES if setting.given(self, None) is not None]
        if len(given) > 1:
            raise UsageError("give only one of %s" % (
                ", ".join("--" + setting.option for setting in given),))
        source = read_source(self, None)
        if not self["out"]:
            raise UsageError("--out is required: the OCI layout directory to write")
        self.request = BuildRequest(
            name=self["name"], tag=self["tag"], out=self["out"], quiet=bool(self["quiet"]),
            source=source,
            nix_timeout=NIX_TIMEOUT.read(self, None),
            nix_options=read_nix_options(self, None),
            layer_budget=LAYER_BUDGET.read(self, None),
            popularity_url=POPULARITY_URL.given(self, None),
            layer_threads=THREADS.read(self, None))


def parse(argv: Sequence[str]) -> BuildRequest:
    """
    The checked command line.

    :raises UsageError: one line saying what is wrong.
    :raises SystemExit: for ``--help`` and ``--version``, once printed.
    """
    options = BuildOptions()
    options.parseOptions(argv)
    return options.request


#: The media type of a Docker manifest list (never served: images have one
#: architecture), which ``docker pull`` accepts too.
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

#: The ``Accept`` header lines of ``docker pull`` asking for a manifest.
DOCKER_PULL_ACCEPT = tuple(media_type.encode("ascii") for media_type in (
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST))


def printed_manifest(image: Image) -> tuple[ManifestDocument, str]:
    """
    The manifest whose digest is printed: the one the daemon serves to
    ``docker pull`` (:mod:`nixeryd.registry.negotiate`), and a phrase
    saying which one it is and naming the other.
    """
    chosen = choose_manifest(image, DOCKER_PULL_ACCEPT)
    if chosen is image.docker:
        return chosen, ("printed the digest of the Docker manifest, what `docker pull`"
                        " gets; the OCI manifest is %s" % (image.oci.digest,))
    return chosen, ("printed the digest of the OCI manifest, what `docker pull` gets;"
                    " the Docker manifest is %s" % (image.docker.digest,))


@implementer(ILogObserver)
class WarningObserver:
    """Shows logged warnings and errors as lines of the display."""

    def __init__(self, display: BuildDisplay) -> None:
        self._display = display

    def __call__(self, event: LogEvent) -> None:
        """Show one event."""
        text = formatEvent(event)
        if text:
            self._display.say(text)


@implementer(ILogFilterPredicate)
class NotReportedOtherwise:
    """
    Leaves out the events the command reports itself: the lines of Nix and
    git (``argv0``; the failure's log tail is printed) and those about the
    image (``image``; its failure is printed).
    """

    def __call__(self, event: LogEvent) -> object:
        """``no`` for such an event, else ``maybe``."""
        if "argv0" in event or "image" in event:
            return PredicateResult.no
        return PredicateResult.maybe


def _warning_observer(display: BuildDisplay) -> ILogObserver:
    return FilteringLogObserver(
        WarningObserver(display), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn),
                                   NotReportedOtherwise()])


async def _build(reactor: Any, request: BuildRequest, display: BuildDisplay) -> int:
    from nixeryd.app.wiring import assemble_image_service, make_thread_pools
    from nixeryd.build.childenv import child_environment
    from nixeryd.storage.filesystem import FilesystemStorage

    env = child_environment(os.environ)
    os.makedirs(request.out, exist_ok=True)
    service = assemble_image_service(
        reactor, pools=make_thread_pools(reactor, request.layer_threads),
        source=request.source,
        storage=lambda runner: FilesystemStorage(request.out, runner),
        nix_timeout=request.nix_timeout, nix_options=request.nix_options,
        layer_budget=request.layer_budget, popularity=request.popularity_url,
        reference=lambda name, tag: tag, env=env)
    unfollow = display.follow(service.builds)
    service.startService()
    try:
        image = await service.image(request.name, request.tag)
    except UnknownPackages as e:
        display.say("unknown packages: %s" % (", ".join(e.packages),))
        return EXIT_INVALID
    except BuildFailed as e:
        display.say(e.message)
        for line in e.log_tail:
            display.say(line, prefix="  | ")
        return EXIT_FAILED
    except RegistryError as e:
        display.say(e.message)
        return EXIT_FAILED if e.status >= 500 else EXIT_INVALID
    finally:
        unfollow()
        await service.stopService()
        display.close()
    chosen, which = printed_manifest(image)
    if not request.quiet:
        if display.built is None:
            sizes = layer_sizes(image.oci)
            display.say("%s:%s was already built in %s: %d layers (%s)" % (
                request.name, request.tag, request.out, len(sizes), human_size(sum(sizes))))
        display.say("%s (named %s in %s)" % (
            which, request.tag, os.path.join(request.out, "index.json")))
    sys.stdout.write(chosen.digest + "\n")
    sys.stdout.flush()
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    """Run the build command; returns the exit code."""
    request = parse_or_exit_code(parse, argv, "nixeryd")
    if isinstance(request, int):
        return request
    from twisted.internet import reactor as global_reactor
    from twisted.internet import task

    display = BuildDisplay(sys.stderr, global_reactor,
                           progress=not request.quiet)
    observers = [] if request.quiet else [_warning_observer(display)]
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)
    result = []

    async def run(reactor: Any) -> None:
        try:
            result.append(await _build(reactor, request, display))
        except ValueError as e:
            display.say(str(e))
            result.append(EXIT_INVALID)

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else EXIT_FAILED
    return result[0] if result else EXIT_FAILED

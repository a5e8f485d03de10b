"""
What a failed Nix call means, in one line for the person pulling the image.

The Nix runner hands every failed call here with what it knows (the image,
the packages, the step); the answer is a registry error whose message
names the package (and the image, when it is not just that package) and
says what happened:

- a permanent failure of the name at this revision of the package set
  (a package that throws, a failed builder, a package set that does not
  evaluate, a step past ``NIX_TIMEOUT``, a derivation for a system this
  machine cannot build for, whose message says what the operator can
  configure) is a :class:`~nixeryd.core.errors.BuildFailed`;
- Nix itself being unavailable (no daemon to connect to, no Nix program),
  a download failing (the package set's archive, a substitute from a
  binary cache, a fixed-output fetch), a builder or Nix itself killed by
  ``SIGKILL`` (most likely the kernel's out-of-memory killer, while other
  builds held the memory), a remote builder that cannot be used now (the
  build for its system then falls back to this machine, which refuses
  it) or a disk full (the Nix store or the builders'
  temporary directory: ``No space left on device``, or a quota) is a
  transient :class:`~nixeryd.core.errors.Unavailable`: the same request
  can succeed once the network, the server, the memory or the disk is
  back, so it is never remembered.  A builder that exits with a status,
  or is killed by another signal, stays a permanent failure.

Pure: it reads log lines and process outcomes, nothing else.
"""

from __future__ import annotations

import re
import signal
from typing import Mapping, Sequence

from nixeryd.build.closure import store_path_name
from nixeryd.build.processresult import ProcessFailed, ProcessTimedOut
from nixeryd.core.text import without_credentials
from nixeryd.core.errors import BuildFailed, BuildTimedOut, Unavailable

#: How Nix says a builder failed: the derivation, then the exit code or
#: the signal (Nix 2.3 to 2.2x).
_BUILDER_FAILED = re.compile(
    r"builder for '(/nix/store/[^']+\.drv)' failed"
    r"(?: with exit code (\d+)| due to signal (\d+))?")

#: How Nix says this machine cannot build a derivation's system: one line
#: up to Nix 2.19, a ``Required system`` line (after ``Cannot build
#: '<drv>'``) since.
_WRONG_SYSTEM = re.compile(
    r"a '([^']+)' with features \{[^}]*\} is required to build '(/nix/store/[^']+\.drv)',"
    r" but I am a '([^']+)'")
_CANNOT_BUILD = re.compile(r"Cannot build '(/nix/store/[^']+\.drv)'")
_REQUIRED_SYSTEM = re.compile(r"Required system: '([^']+)'")
_CURRENT_SYSTEM = re.compile(r"Current system: '([^']+)'")

#: What the message of a build for a system this machine cannot build
#: tells the operator to configure (README, "Building for other platforms").
WRONG_SYSTEM_ADVICE = (
    "the registry's operator can add a remote builder for {system} (Nix option builders),"
    " emulation (extra-platforms = {system}, with binfmt_misc) or a binary cache that has"
    " it (substituters)")

#: How Nix says a remote builder it chose could not be used (it cannot
#: be reached, or refused the connection); the build then falls back to
#: this machine, which fails with :data:`_WRONG_SYSTEM`'s words.
_REMOTE_BUILDER_FAILED = re.compile(r"cannot build on '[^']*': .*")

#: How Nix says it starts a derivation's builder.
_BUILDING = re.compile(r"building '(/nix/store/[^']+\.drv)'")

#: How Nix says it cannot reach the daemon (or lost it).
_DAEMON_UNAVAILABLE = re.compile(
    r"cannot connect to (?:socket|daemon) at"
    r"|cannot open connection to remote store"
    r"|Nix daemon disconnected unexpectedly")

#: How Nix (and the fetchers it runs) say that a download failed for a
#: reason of the network or of the server, not of the package: curl's
#: words for an unresolvable host, a refused or timed-out connection, a
#: server error; git's "unable to access"; and Nix's own summary when
#: substitutes could not be fetched.
_DOWNLOAD_FAILED = re.compile(
    r"unable to download '"
    r"|Could(?:n't| not) resolve host"
    r"|Failed to connect to"
    r"|Connection timed out"
    r"|Network is unreachable"
    r"|HTTP error 5\d\d"
    r"|fatal: unable to access '"
    r"|failed \(usually happens due to networking issues\)")

#: How Nix says a builder was killed by ``SIGKILL``: nothing in a build
#: sends it, the kernel's out-of-memory killer does.
_BUILDER_KILLED = re.compile(
    r"builder for '(/nix/store/[^']+\.drv)' failed due to signal 9\b")

#: How a full disk (or an exhausted quota) shows in any line, Nix's own
#: (``error: writing to file: No space left on device``) or a builder's.
_DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded")

#: What the child wrapper of :mod:`nixeryd.build.process` writes when the
#: program cannot be started, with exit status 127.
_CANNOT_RUN = "cannot run "


def first_error_message(tail: Sequence[str]) -> str | None:
    """
    The message of the first ``error:`` line of a Nix log, without the
    prefix, and without the credentials of any URL in it (Nix names the
    repository it failed to fetch from).
    """
    for line in tail:
        stripped = line.strip()
        if stripped.startswith("error:"):
            return without_credentials(stripped[len("error:"):].strip())
    return None


def image_subject(image: str | None) -> str:
    """``image <name>``, or ``the image`` when the name is not known."""
    return "image %s" % (image,) if image else "the image"


def packages_subject(packages: Sequence[str], image: str | None) -> str:
    """
    ``package <name>`` (or ``packages <a>, <b>``), followed by ``in image
    <name>`` unless the image is just those packages.
    """
    subject = ("package %s" if len(packages) == 1 else "packages %s") % (
        ", ".join(packages),)
    if image and image != "/".join(packages):
        subject += " in image %s" % (image,)
    return subject


def nix_unavailable(failure: ProcessFailed) -> Unavailable | None:
    """
    The transient error for a Nix call that failed because Nix could not
    work at all (the program is missing, the daemon cannot be reached) or
    a download failed for a reason of the network or the server, or the
    registry ran out of memory (a builder, or Nix itself, killed by
    ``SIGKILL``) or of disk space, or the remote builder for another
    system cannot be used now.  ``None`` for every other failure.
    """
    if failure.exit_code == 127 and any(
            line.startswith(_CANNOT_RUN) for line in failure.tail):
        return Unavailable("Nix is unavailable on the registry (%s cannot be run);"
                           " try again later" % (failure.program,),
                           log_tail=failure.tail)
    if any(_DAEMON_UNAVAILABLE.search(line) for line in failure.tail):
        return Unavailable("the Nix daemon is unavailable; try again later",
                           log_tail=failure.tail)
    remote = _remote_builder_failed(failure.tail)
    if remote is not None:
        return remote
    if any(_DOWNLOAD_FAILED.search(line) for line in failure.tail):
        cause = first_error_message(failure.tail)
        return Unavailable("a download for the image failed%s; try again later" % (
            " (%s)" % (cause,) if cause else ""), log_tail=failure.tail)
    if any(_DISK_FULL.search(line) for line in failure.tail):
        return Unavailable("the registry is out of disk space for Nix builds;"
                           " try again later", log_tail=failure.tail)
    for line in failure.tail:
        match = _BUILDER_KILLED.search(line)
        if match is not None:
            name = store_path_name(match.group(1))[:-len(".drv")]
            return Unavailable("the builder of %s was killed (signal 9: out of"
                               " memory on the registry?); try again later" % (name,),
                               log_tail=failure.tail)
    if failure.signal == signal.SIGKILL and not isinstance(failure, ProcessTimedOut):
        return Unavailable("%s was killed (signal 9: out of memory on the registry?);"
                           " try again later" % (failure.program,),
                           log_tail=failure.tail)
    return None


def evaluation_failure(failure: ProcessFailed, timeout: float,
                       image: str | None) -> BuildFailed:
    """
    The error for an evaluation that failed as a whole: the package set
    does not evaluate (or cannot be fetched at that revision), a package
    aborts it, or it ran past the timeout.
    """
    subject = image_subject(image)
    if isinstance(failure, ProcessTimedOut):
        return BuildTimedOut("evaluation", timeout, subject, None, failure.tail)
    cause = first_error_message(failure.tail) or failure.describe()
    return BuildFailed("the evaluation of %s failed: %s" % (subject, cause),
                       None, failure.tail)


def unusable_packages(packages: Sequence[str], tail: Sequence[str],
                      image: str | None) -> BuildFailed:
    """
    The error for requested packages that throw when evaluated (removed
    aliases, broken, unfree or insecure packages): names every one, with
    Nix's own message for the first when ``tail`` (its strict evaluation)
    has it.
    """
    message = "%s cannot be evaluated" % (packages_subject(packages, image),)
    cause = first_error_message(tail)
    if cause is None:
        message += " (removed, broken, unfree or insecure?)"
    elif len(packages) == 1:
        message += ": %s" % (cause,)
    else:
        message += "; %s: %s" % (packages[0], cause)
    return BuildFailed(message, packages[0], tail)


def build_failure(failure: ProcessFailed, timeout: float, image: str | None,
                  requested: Mapping[str, str]) -> BuildFailed:
    """
    The error for a failed ``nix-build``: which package failed (the
    requested name when its own builder failed, else the dependency's
    derivation name) and how, or which package was building when the
    timeout passed.

    :param requested: the requested name of each derivation the image
        asked for, by derivation path.
    """
    if isinstance(failure, ProcessTimedOut):
        return _build_timeout(failure, timeout, image, requested)
    wrong_system = _wrong_system(failure.tail)
    if wrong_system is not None:
        required, drv_path, current = wrong_system
        package = requested.get(drv_path)
        if package is not None:
            subject = packages_subject([package], image)
        else:
            package = store_path_name(drv_path)[:-len(".drv")]
            subject = "%s, a dependency of %s," % (package, image_subject(image))
        return BuildFailed(
            "%s cannot be built for %s: this registry builds for %s only; %s" % (
                subject, required, current, WRONG_SYSTEM_ADVICE.format(system=required)),
            package, failure.tail)
    for line in failure.tail:
        match = _BUILDER_FAILED.search(line)
        if match is None:
            continue
        drv_path, exit_code, signal = match.groups()
        if exit_code is not None:
            how = "builder exited with status %s" % (exit_code,)
        elif signal is not None:
            how = "builder was killed by signal %s" % (signal,)
        else:
            how = "builder failed"
        package = requested.get(drv_path)
        if package is not None:
            return BuildFailed("the build of %s failed (%s)" % (
                packages_subject([package], image), how), package, failure.tail)
        name = store_path_name(drv_path)[:-len(".drv")]
        return BuildFailed("the build of %s, a dependency of %s, failed (%s)" % (
            name, image_subject(image), how), name, failure.tail)
    cause = first_error_message(failure.tail) or failure.describe()
    return BuildFailed("the build of %s failed: %s" % (image_subject(image), cause),
                       None, failure.tail)


def _remote_builder_failed(tail: Sequence[str]) -> Unavailable | None:
    """
    The transient error for a build for another system whose remote
    builder is configured but could not be used now (down, unreachable):
    Nix then tries this machine, which cannot build for that system.
    Not the advice to add a builder, nor a failure remembered: the same
    pull works once the builder is back.
    """
    reasons = [match.group(0) for match in map(_REMOTE_BUILDER_FAILED.search, tail)
               if match is not None]
    wrong_system = _wrong_system(tail)
    if not reasons or wrong_system is None:
        return None
    return Unavailable(
        "no remote builder for %s could be used now (%s); try again later"
        % (wrong_system[0], without_credentials(reasons[-1])), log_tail=tail)


def _wrong_system(tail: Sequence[str]) -> tuple[str, str, str] | None:
    """
    ``(required system, derivation, this machine's system)`` when Nix
    refused a build because this machine cannot build for its system.
    """
    cannot_build = required = None
    for line in tail:
        match = _WRONG_SYSTEM.search(line)
        if match is not None:
            return match.group(1), match.group(2), match.group(3)
        found = _CANNOT_BUILD.search(line)
        if found is not None:
            cannot_build = found.group(1)
        found = _REQUIRED_SYSTEM.search(line)
        if found is not None:
            required = found.group(1)
        found = _CURRENT_SYSTEM.search(line)
        if found is not None and cannot_build is not None and required is not None:
            return required, cannot_build, found.group(1)
    return None


def closure_failure(failure: ProcessFailed, timeout: float,
                    image: str | None) -> BuildFailed:
    """The error for a failed closure report (``nix path-info``)."""
    if isinstance(failure, ProcessTimedOut):
        return BuildTimedOut("build", timeout, image_subject(image), None, failure.tail)
    cause = first_error_message(failure.tail) or failure.describe()
    return BuildFailed("querying the closure of %s failed: %s" % (
        image_subject(image), cause), None, failure.tail)


def _build_timeout(failure: ProcessTimedOut, timeout: float, image: str | None,
                   requested: Mapping[str, str]) -> BuildTimedOut:
    """A build timeout, naming the package whose builder ran last."""
    building = None
    for line in failure.tail:
        match = _BUILDING.search(line)
        if match is not None:
            building = match.group(1)
    if building is not None and building in requested:
        package = requested[building]
        return BuildTimedOut("build", timeout, packages_subject([package], image),
                             package, failure.tail)
    if building is not None:
        name = store_path_name(building)[:-len(".drv")]
        return BuildTimedOut("build", timeout, "%s (building %s)" % (
            image_subject(image), name), name, failure.tail)
    if requested:
        # The builder's start was not in the log before the deadline: the
        # image's own packages are what was being built.
        packages = sorted(set(requested.values()))
        return BuildTimedOut("build", timeout, packages_subject(packages, image),
                             packages[0] if len(packages) == 1 else None, failure.tail)
    return BuildTimedOut("build", timeout, image_subject(image), None, failure.tail)

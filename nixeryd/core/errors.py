"""
Errors that reach a registry client.

Each carries the registry error code and HTTP status that the distribution
spec assigns to it, so the web layer can turn any of them into a JSON error
body without knowing where it was raised.  Lower layers (names, Nix, the
builder, storage) raise these directly.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

#: Line breaks and other control characters, kept out of messages.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

#: Seconds a client is asked to wait after a transient failure.
RETRY_AFTER = 10


class RegistryError(Exception):
    """
    An error with a registry error code.

    :cvar code: the spec's error code, e.g. ``MANIFEST_UNKNOWN``.
    :cvar status: the HTTP status that goes with it.
    :cvar retry_after: seconds a client should wait before trying again
        (the ``Retry-After`` header), or ``None``.
    :cvar headers: more headers the response carries.
    :ivar build_id: the build whose page explains the error, once the image
        service knows it; the web layer adds the page's address to the
        message.
    """

    code = "UNKNOWN"
    status = 500
    retry_after: int | None = None
    #: More response headers, ``(name, value)`` (an authentication
    #: challenge: ``WWW-Authenticate``).
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.build_id: str | None = None

    def to_json(self, build_page: str | None = None) -> dict[str, Any]:
        """
        The error as one entry of the spec's ``errors`` list.

        :param build_page: the address of the page of :attr:`build_id`,
            which ends the message and is named in the detail.
        """
        message = self.message
        detail = self.detail
        if self.build_id is not None:
            if build_page is not None:
                # Nix's own sentences end with a full stop.
                message = "%s; build log: %s" % (message.rstrip().rstrip("."), build_page)
            if detail is None:
                detail = {"build": self.build_id}
            elif isinstance(detail, dict):
                detail = {"build": self.build_id, **detail}
        return {"code": self.code, "message": one_line(message), "detail": detail}


def one_line(text: str) -> str:
    """``text`` with every line break and control character made a space."""
    return _CONTROL.sub(" ", text).strip()


class NameInvalid(RegistryError):
    """The image name breaks the registry grammar or our limits."""

    code = "NAME_INVALID"
    status = 400


class DigestInvalid(RegistryError):
    """A digest that is not ``sha256:`` and 64 lowercase hex characters."""

    code = "DIGEST_INVALID"
    status = 400


class ManifestUnknown(RegistryError):
    """No such manifest (unknown digest, or a tag that cannot exist)."""

    code = "MANIFEST_UNKNOWN"
    status = 404


class UnknownPackages(ManifestUnknown):
    """
    Some requested packages do not exist in the package set.

    :ivar packages: every unknown name, as the client wrote it.
    """

    def __init__(self, packages: Sequence[str]) -> None:
        self.packages = tuple(packages)
        super().__init__(
            "unknown Nix packages: " + ", ".join(self.packages),
            {"packages": list(self.packages)},
        )


class BlobUnknown(RegistryError):
    """No blob with that digest is stored."""

    code = "BLOB_UNKNOWN"
    status = 404


class Unsupported(RegistryError):
    """A method or operation this read-only registry does not offer."""

    code = "UNSUPPORTED"
    status = 405


class BuildFailed(RegistryError):
    """
    Nix cannot give this image at this revision of the package set: a
    package that throws when evaluated (removed, broken, unfree,
    insecure), a failed build, a package set that does not evaluate.

    A permanent failure of the name, so a 404 ``MANIFEST_UNKNOWN``: the one
    error every client shows as ``manifest unknown: <message>`` (the body
    of a 5xx is never shown).  The detail names the package only; the Nix
    log, which holds store paths and host details, is on the build's page.

    :ivar package: the package (requested name, or a dependency's
        derivation name) that failed, when known, else ``None``.
    :ivar log_tail: the last lines of the Nix log, for the service's own
        reports (never sent to clients).
    """

    code = "MANIFEST_UNKNOWN"
    status = 404

    def __init__(self, message: str, package: str | None = None,
                 log_tail: Sequence[str] = ()) -> None:
        self.package = package
        self.log_tail = tuple(log_tail)
        super().__init__(message, {"package": package} if package is not None else None)


class BuildTimedOut(BuildFailed):
    """
    A Nix step did not finish within ``NIX_TIMEOUT``.

    Also a 404, like every build failure, so that clients show the message;
    it says which step timed out and which setting sets the limit.

    :ivar step: ``evaluation`` or ``build``.
    :ivar seconds: the limit that passed.
    """

    def __init__(self, step: str, seconds: float, subject: str,
                 package: str | None = None, log_tail: Sequence[str] = ()) -> None:
        self.step = step
        self.seconds = seconds
        super().__init__(
            "the %s of %s timed out after %g seconds (NIX_TIMEOUT sets the limit)"
            % (step, subject, seconds), package, log_tail)


class TooManyRequests(RegistryError):
    """
    Cold work is refused: the registry already has as many images in the
    making as it takes (in all, or from the client's address).  A 429
    ``TOOMANYREQUESTS`` with ``Retry-After``; clients print the message,
    which says what is full and when to try again.

    :param retry_after: seconds the client should wait before trying again.
    """

    code = "TOOMANYREQUESTS"
    status = 429

    def __init__(self, message: str, detail: Any = None, *,
                 retry_after: int = RETRY_AFTER) -> None:
        super().__init__(message, detail)
        self.retry_after = retry_after


class Unavailable(RegistryError):
    """
    A transient condition: storage unreachable or failing, the Nix daemon
    unavailable, the package repository unreachable.  A 503 with
    ``Retry-After``; never remembered, so the next request tries again.

    :ivar log_tail: what the failing program logged, for the service's own
        reports (never sent to clients).
    """

    code = "UNAVAILABLE"
    status = 503
    retry_after = RETRY_AFTER

    def __init__(self, message: str, detail: Any = None,
                 log_tail: Sequence[str] = ()) -> None:
        self.log_tail = tuple(log_tail)
        super().__init__(message, detail)

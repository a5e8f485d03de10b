"""
Errors that reach a registry client.

Each carries the registry error code and HTTP status that the distribution
spec assigns to it, so the web layer can turn any of them into a JSON error
body without knowing where it was raised.  Lower layers (names, Nix, the
builder, storage) raise these directly.
"""

from __future__ import annotations

from typing import Any, Sequence


class RegistryError(Exception):
    """
    An error with a registry error code.

    :cvar code: the spec's error code, e.g. ``MANIFEST_UNKNOWN``.
    :cvar status: the HTTP status that goes with it.
    """

    code = "UNKNOWN"
    status = 500

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_json(self) -> dict[str, Any]:
        """The error as one entry of the spec's ``errors`` list."""
        return {"code": self.code, "message": self.message, "detail": self.detail}


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
    Nix failed to evaluate or build the image.

    :ivar package: the package (store path name or attribute) that failed,
        when the log says so, else ``None``.
    :ivar log_tail: the last lines of the Nix log.
    """

    def __init__(self, message: str, package: str | None = None,
                 log_tail: Sequence[str] = ()) -> None:
        self.package = package
        self.log_tail = tuple(log_tail)
        super().__init__(message, {"package": package, "log": list(self.log_tail)})


class BuildTimedOut(BuildFailed):
    """Nix did not finish within the configured time."""

    status = 504

    def __init__(self, seconds: float, log_tail: Sequence[str] = ()) -> None:
        super().__init__(
            "image build timed out after %g seconds" % (seconds,), None, log_tail)
        self.seconds = seconds

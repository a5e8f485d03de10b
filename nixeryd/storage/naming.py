"""
The names every storage backend accepts for cache documents and image
references, checked before they become paths or object names.
"""

from __future__ import annotations

import re

from nixeryd.core.digests import check_digest

_KEY = re.compile(r"[A-Za-z0-9._-]{1,200}\Z")
_NAMESPACE = re.compile(r"[a-z][a-z0-9-]{0,40}\Z")
#: What ``org.opencontainers.image.ref.name`` may hold (image-spec grammar).
_REFERENCE = re.compile(
    r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
    r"(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*\Z")
#: Namespaces a backend keeps for itself (the filesystem's temporary files).
RESERVED_NAMESPACES = frozenset({"tmp"})


def check_document_name(namespace: str, key: str) -> None:
    """
    :raises ValueError: for a namespace or key outside the grammar, or a
        reserved namespace.
    """
    if (not _NAMESPACE.match(namespace) or namespace in RESERVED_NAMESPACES
            or not _KEY.match(key)):
        raise ValueError("invalid document name %r/%r" % (namespace, key))


def check_namespace(namespace: str) -> None:
    """:raises ValueError: for a namespace outside the grammar, or a reserved one."""
    if not _NAMESPACE.match(namespace) or namespace in RESERVED_NAMESPACES:
        raise ValueError("invalid document namespace %r" % (namespace,))


def is_document_key(key: str) -> bool:
    """Whether ``key`` is a valid document key (names found when listing are checked)."""
    return bool(_KEY.match(key))


def check_reference(reference: str) -> None:
    """:raises ValueError: when ``reference`` is not a valid OCI reference name."""
    if not _REFERENCE.match(reference):
        raise ValueError("invalid image reference %r" % (reference,))


def check_index_entry(reference: str, manifest_digest: str) -> None:
    """
    What every backend checks before naming a manifest in its index.

    :raises ValueError: for an invalid reference.
    :raises DigestInvalid: for an invalid manifest digest.
    """
    check_reference(reference)
    check_digest(manifest_digest)

"""
Token scopes and ``access`` claims, as the distribution token
specification writes them: ``repository:shell/git:pull``.  Pure.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from attrs import frozen

#: The one action this read-only registry grants.
PULL = "pull"
#: The resource type of an image name.
REPOSITORY = "repository"


@frozen
class Scope:
    """
    Access to one resource: ``type:name:action,action``.

    :ivar type: ``repository`` (other types are carried, never granted).
    :ivar name: the image name.
    :ivar actions: the actions, e.g. ``("pull",)``.
    """

    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return "%s:%s:%s" % (self.type, self.name, ",".join(self.actions))

    def claim(self) -> dict[str, Any]:
        """The scope as one entry of a token's ``access`` claim."""
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def pull_scope(name: str) -> Scope:
    """The scope a pull of ``name`` needs."""
    return Scope(REPOSITORY, name, (PULL,))


def parse_scope(text: str) -> Scope | None:
    """
    One scope as clients send it to a token endpoint
    (``repository:name:pull,push``); ``None`` when malformed.  The name may
    hold a registry host's ``:port``, so type is the first field and the
    actions the last.
    """
    kind, sep, rest = text.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not kind or not name:
        return None
    return Scope(kind, name, tuple(a for a in actions.split(",") if a))


def parse_scopes(texts: Iterable[str]) -> list[Scope]:
    """Every well-formed scope of ``texts``; one text may hold several, space-separated."""
    scopes = []
    for text in texts:
        for part in text.split():
            scope = parse_scope(part)
            if scope is not None:
                scopes.append(scope)
    return scopes


def granted(access: object, name: str, action: str = PULL) -> bool:
    """
    Whether a token's ``access`` claim grants ``action`` on the repository
    ``name`` (a malformed claim grants nothing).
    """
    if not isinstance(access, list):
        return False
    for entry in access:
        if not isinstance(entry, dict):
            continue
        actions = entry.get("actions")
        if (entry.get("type") == REPOSITORY and entry.get("name") == name
                and isinstance(actions, list) and (action in actions or "*" in actions)):
            return True
    return False


def claims_of(scopes: Sequence[Scope]) -> list[dict[str, Any]]:
    """The ``access`` claim granting ``scopes``."""
    return [scope.claim() for scope in scopes]

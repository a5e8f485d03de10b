"""
Who may pull which images: the rules file (TOML).

::

    [groups]
    team = ["alice", "bob"]

    [[rule]]
    users = ["alice"]           # user names; "*" is every authenticated user
    packages = ["*"]            # every package

    [[rule]]
    groups = ["team"]
    packages = ["shell", "hello", "python3*"]   # patterns (fnmatch)
    pinned = true               # only tags that are a 40-hex commit

An image name is a list of packages (``shell/hello``).  A user may pull
it when one rule that names the user (directly, through a group, or by
``"*"``) allows every package of the name and, if the rule says
``pinned = true``, the tag is a 40-hex commit.  Content by digest counts
as pinned when an image of a pinned tag of the name refers to it
(:mod:`nixeryd.auth.membership`).  Patterns are matched case-insensitively against each path
component as written in the name (``python3packages.pyyaml``,
``shell``, ``arm64``).  Nothing else is allowed: a user no rule names may
pull nothing.  Pure, apart from :func:`read_rules`.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from typing import Any, Sequence

from attrs import frozen

from nixeryd.auth.errors import Denied

#: A tag that is a pinned revision: a git commit.
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
#: What a rule may say.
_RULE_KEYS = {"users", "groups", "packages", "pinned"}


@frozen
class Rule:
    """
    One ``[[rule]]``.

    :ivar users: user names it applies to (``*``: everyone authenticated).
    :ivar packages: lower-case patterns over the packages of a name.
    :ivar pinned: only pinned revisions.
    """

    users: frozenset[str]
    packages: tuple[str, ...]
    pinned: bool

    def blocked(self, packages: Sequence[str]) -> str | None:
        """The first package no pattern of this rule allows, or ``None``."""
        for package in packages:
            if not any(fnmatch.fnmatchcase(package, p) for p in self.packages):
                return package
        return None


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("%s must be a list of names" % (where,))
    return list(value)


def parse_rules(text: str) -> "Rules":
    """
    The rules of a rules file's text.

    :raises ValueError: saying what is wrong (TOML syntax, an unknown key,
        a group no one defined, a rule without users or packages).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError("not TOML: %s" % (e,)) from None
    unknown = set(data) - {"groups", "rule"}
    if unknown:
        raise ValueError("unknown section %s (there are [groups] and [[rule]])"
                         % (", ".join(sorted(unknown)),))
    groups_data = data.get("groups", {})
    if not isinstance(groups_data, dict):
        raise ValueError("[groups] must be a table of name = [users]")
    groups = {name: set(_strings(members, "group %s" % (name,)))
              for name, members in groups_data.items()}
    rules_data = data.get("rule", [])
    if not isinstance(rules_data, list):
        raise ValueError("rules are [[rule]] tables")
    rules = []
    for number, entry in enumerate(rules_data, 1):
        where = "rule %d" % (number,)
        extra = set(entry) - _RULE_KEYS
        if extra:
            raise ValueError("%s: unknown key %s" % (where, ", ".join(sorted(extra))))
        users = set(_strings(entry.get("users", []), where + ": users"))
        for group in _strings(entry.get("groups", []), where + ": groups"):
            if group not in groups:
                raise ValueError("%s: no group %s in [groups]" % (where, group))
            users |= groups[group]
        if not users:
            raise ValueError("%s names no users or groups" % (where,))
        packages = _strings(entry.get("packages"), where + ": packages")
        pinned = entry.get("pinned", False)
        if not isinstance(pinned, bool):
            raise ValueError("%s: pinned must be true or false" % (where,))
        rules.append(Rule(frozenset(users), tuple(p.lower() for p in packages), pinned))
    return Rules(tuple(rules))


def read_rules(path: str) -> "Rules":
    """Read and parse the rules file at ``path`` (blocking)."""
    with open(path, encoding="utf-8") as f:
        return parse_rules(f.read())


def is_pinned(tag: str | None) -> bool:
    """Whether a reference is pinned: content by digest (``None``) or a 40-hex commit."""
    return tag is None or _COMMIT.match(tag) is not None


@frozen
class Rules:
    """Every rule, in the file's order."""

    rules: tuple[Rule, ...]

    def _of(self, user: str) -> list[Rule]:
        return [rule for rule in self.rules if user in rule.users or "*" in rule.users]

    def allows_everything(self, user: str) -> bool:
        """Whether a rule allows ``user`` every package at every tag."""
        return any("*" in rule.packages and not rule.pinned for rule in self._of(user))

    def allows_name(self, user: str, name: str) -> bool:
        """Whether ``user`` may pull ``name`` at some reference (token grants)."""
        packages = name.lower().split("/")
        return any(rule.blocked(packages) is None for rule in self._of(user))

    def allows_unpinned(self, user: str, name: str) -> bool:
        """Whether a rule allows ``user`` ``name`` at any tag, not only pinned ones."""
        packages = name.lower().split("/")
        return any(rule.blocked(packages) is None and not rule.pinned
                   for rule in self._of(user))

    def check(self, user: str, name: str, tag: str | None) -> None:
        """
        Nothing if ``user`` may pull ``name`` at ``tag`` (``None``: by
        digest).

        :raises Denied: with a message naming what the rules keep from
            the user.
        """
        packages = name.lower().split("/")
        applying = self._of(user)
        if not applying:
            raise Denied("user %s may pull no image from this registry" % (user,),
                         {"name": name})
        blocked: str | None = None
        for rule in applying:
            first = rule.blocked(packages)
            if first is None:
                if not rule.pinned or is_pinned(tag):
                    return
            elif blocked is None:
                blocked = first
        if blocked is not None and not any(rule.blocked(packages) is None
                                           for rule in applying):
            raise Denied("user %s may not pull %s: the rules allow %s no image with"
                         " package %s" % (user, name, user, blocked), {"name": name})
        raise Denied("user %s may pull %s only at a pinned revision (a 40-hex commit"
                     " as the tag)" % (user, name), {"name": name})

"""
The customisation layer: what makes a pile of store paths a usable image.

The requested packages' outputs are merged into one tree of symbolic links
at the image root (``/bin/git -> /nix/store/...-git/bin/git``), as
``symlinkJoin`` would, plus ``/tmp`` (mode 1777), ``/usr/bin/env`` (linked
to an ``env`` the image really contains, never a dangling or foreign-arch
one) and minimal ``/etc/passwd`` and ``/etc/group`` when no package
provides them.  Built by walking the store, so it runs in the thread pool.
"""

from __future__ import annotations

import os
import stat
from typing import Sequence

from attrs import frozen

from nixeryd.build.archive import TreeEntry

#: Directories searched, in order, for the image's ``PATH``.
PATH_CANDIDATES = ("bin", "sbin", "usr/bin", "usr/sbin")
#: Where cacert puts the bundle; ``SSL_CERT_FILE`` points here when present.
CA_BUNDLE = "etc/ssl/certs/ca-bundle.crt"

_PASSWD = (b"root:x:0:0:System administrator:/root:/bin/sh\n"
           b"nobody:x:65534:65534:Unprivileged account:/var/empty:/bin/false\n")
_GROUP = b"root:x:0:\nnogroup:x:65534:\n"

_DIR, _LINK = "dir", "symlink"


@frozen
class Customisation:
    """
    The customisation layer's content and what the image config learns
    from it.

    :ivar entries: the layer's entries (directories, links, files).
    :ivar path: the image's ``PATH`` directories, absolute.
    :ivar ca_bundle: the CA bundle's absolute path, or ``None``.
    """

    entries: tuple[TreeEntry, ...]
    path: tuple[str, ...]
    ca_bundle: str | None


def _merge(tree: dict[str, tuple[str, str]], source: str, relative: str) -> None:
    """
    Merge the directory ``source`` into ``tree`` at ``relative``: real
    directories are merged, anything else becomes a link to its store
    location.  What is already in ``tree`` wins.
    """
    pending = [(source, relative)]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                name = prefix + "/" + entry.name if prefix else entry.name
                is_directory = entry.is_dir(follow_symlinks=False)
                existing = tree.get(name)
                if existing is None:
                    tree[name] = (_DIR, "") if is_directory else (_LINK, entry.path)
                    if is_directory:
                        pending.append((entry.path, name))
                elif existing[0] == _DIR and is_directory:
                    pending.append((entry.path, name))


def build_customisation(top_level: Sequence[str]) -> Customisation:
    """
    Build the customisation layer for the requested packages' outputs.

    :param top_level: output store paths of the requested packages; the
        first one providing a file wins, so pass them in a stable order.
    """
    tree: dict[str, tuple[str, str]] = {}
    for store_path in top_level:
        if stat.S_ISDIR(os.lstat(store_path).st_mode):
            _merge(tree, store_path, "")

    def resolves_to_directory(name: str) -> bool:
        kind, target = tree.get(name, ("", ""))
        return kind == _DIR or (kind == _LINK and os.path.isdir(target))

    path = tuple("/" + d for d in PATH_CANDIDATES if resolves_to_directory(d))
    ca_bundle = "/" + CA_BUNDLE if CA_BUNDLE in tree else None

    files: dict[str, bytes] = {}
    extra_dirs: dict[str, int] = {}
    # /tmp is always a real, world-writable directory, even when a package
    # ships a ``tmp`` of its own (a link into the read-only store would
    # make it unusable).
    if tree.get("tmp", (_LINK,))[0] != _DIR:
        tree["tmp"] = (_DIR, "")
    env = tree.get("bin/env")
    if env is not None and env[0] == _LINK and os.path.exists(env[1]) \
            and "usr/bin/env" not in tree \
            and tree.get("usr", (_DIR,))[0] == _DIR \
            and tree.get("usr/bin", (_DIR,))[0] == _DIR:
        for d in ("usr", "usr/bin"):
            if d not in tree:
                extra_dirs[d] = 0o755
        tree["usr/bin/env"] = env
    if tree.get("etc", (_DIR,))[0] == _DIR:
        for name, content in (("etc/passwd", _PASSWD), ("etc/group", _GROUP)):
            if name not in tree:
                files[name] = content
        if files and "etc" not in tree:
            extra_dirs["etc"] = 0o755

    entries = []
    for name, (kind, target) in tree.items():
        if kind == _DIR:
            entries.append(TreeEntry(name=name, kind="dir",
                                     mode=0o1777 if name == "tmp" else 0o755))
        else:
            entries.append(TreeEntry(name=name, kind="symlink", mode=0o777,
                                     target=target))
    for name, mode in extra_dirs.items():
        entries.append(TreeEntry(name=name, kind="dir", mode=mode))
    for name, content in files.items():
        entries.append(TreeEntry(name=name, kind="file", mode=0o644, content=content))
    entries.sort(key=lambda e: e.name)
    return Customisation(entries=tuple(entries), path=path, ca_bundle=ca_bundle)

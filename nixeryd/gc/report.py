"""
What a garbage-collection pass removed, or would remove: :class:`Report`,
counted by kind with their bytes, and its text for people.
"""

from __future__ import annotations

from attrs import Factory, define

from nixeryd.core.text import human_size
from nixeryd.gc.references import CONFIG, LAYER, MANIFEST, OTHER

#: How the kinds are named in the text (one, many), in its order.
KIND_NAMES = (
    ("manifest document", "manifest cache document", "manifest cache documents"),
    ("pull document", "pull document", "pull documents"),
    ("layer document", "layer cache document", "layer cache documents"),
    (MANIFEST, "manifest", "manifests"),
    (CONFIG, "config", "configs"),
    (LAYER, "layer", "layers"),
    (OTHER, "unreferenced blob", "unreferenced blobs"),
)
#: The kinds that are blobs.
BLOB_KINDS = (MANIFEST, CONFIG, LAYER, OTHER)


@define
class Tally:
    """A count and its bytes."""

    count: int = 0
    size: int = 0

    def add(self, size: int) -> None:
        self.count += 1
        self.size += size


@define
class Report:
    """
    One pass.

    :ivar dry_run: nothing was removed: the counts say what would have been.
    :ivar keep_days: the retention, or ``None`` when every image is kept.
    :ivar grace_hours: nothing younger was removed.
    :ivar images_kept: images pulled or built within the retention (or
        written within the grace period).
    :ivar images_removed: the other images, whose documents are removed.
    :ivar removed: kind → what was removed.
    :ivar items: ``(kind, name, size)`` of everything removed.
    :ivar index_entries: entries taken out of the image index.
    :ivar changed: entries written again during the pass, so kept.
    :ivar blobs_kept: the blobs left.
    """

    dry_run: bool
    keep_days: float | None
    grace_hours: float
    images_kept: int = 0
    images_removed: int = 0
    removed: dict[str, Tally] = Factory(dict)
    items: list[tuple[str, str, int]] = Factory(list)
    index_entries: int = 0
    changed: int = 0
    blobs_kept: Tally = Factory(Tally)

    def remove(self, kind: str, name: str, size: int) -> None:
        """Count something removed."""
        self.removed.setdefault(kind, Tally()).add(size)
        self.items.append((kind, name, size))

    def blobs_removed(self) -> Tally:
        """Every blob removed, whatever its kind."""
        total = Tally()
        for kind in BLOB_KINDS:
            tally = self.removed.get(kind, Tally())
            total.count += tally.count
            total.size += tally.size
        return total

    def lines(self, verbose: bool = False) -> list[str]:
        """The report for people: a line a kind, then each item if ``verbose``."""
        removed, kept = ("would remove", "would keep") if self.dry_run else ("removed", "kept")
        if self.keep_days is None:
            images = "%s %s (no --keep-days given)" % (kept, _count(self.images_kept, "image"))
        else:
            images = "%s %s pulled or built within %g days, %s %d" % (
                kept, _count(self.images_kept, "image"), self.keep_days, removed,
                self.images_removed)
        lines = ["%s; nothing written in the last %g hour%s %s" % (
            images, self.grace_hours, "" if self.grace_hours == 1 else "s",
            "would be removed" if self.dry_run else "was removed")]
        for kind, one, many in KIND_NAMES:
            tally = self.removed.get(kind, Tally())
            lines.append("%s %s (%s)" % (removed, _count(tally.count, one, many),
                                         human_size(tally.size)))
        lines.append("%s %s" % (removed, _count(self.index_entries, "index entry",
                                                "index entries")))
        total = self.blobs_removed()
        lines.append("%s %s in %s; %s %s in %s" % (
            removed, human_size(total.size), _count(total.count, "blob"), kept,
            human_size(self.blobs_kept.size), _count(self.blobs_kept.count, "blob")))
        if self.changed:
            lines.append("%s %s written again during the pass" % (
                kept, _count(self.changed, "entry", "entries")))
        if verbose:
            lines.extend("%s %s %s (%s)" % (removed, kind, name, human_size(size))
                         for kind, name, size in self.items)
        return lines


def _count(number: int, one: str, many: str | None = None) -> str:
    """``1 image``, ``2 images``."""
    return "%d %s" % (number, one if number == 1 else (many or one + "s"))

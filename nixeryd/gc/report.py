"""
What a garbage-collection pass removed, or would remove: :class:`Report`,
counted by kind with their bytes, and its text for people.
"""

from __future__ import annotations

from attrs import Factory, define

from nixeryd.build.progress import human_size
from nixeryd.gc.references import CONFIG, LAYER, MANIFEST, OTHER

#: How the kinds are named in the text, in its order.
KIND_NAMES = (
    ("manifest document", "manifest cache documents"),
    ("pull document", "pull documents"),
    ("layer document", "layer cache documents"),
    (MANIFEST, "manifests"),
    (CONFIG, "configs"),
    (LAYER, "layers"),
    (OTHER, "blobs nothing names"),
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
        removed = "would remove" if self.dry_run else "removed"
        gone = "would be removed" if self.dry_run else "removed"
        if self.keep_days is None:
            images = "%d images kept (no retention given)" % (self.images_kept,)
        else:
            images = "%d images kept (pulled or built within %g days), %d %s" % (
                self.images_kept, self.keep_days, self.images_removed, gone)
        lines = ["%s; nothing written within the last %g hours %s" % (
            images, self.grace_hours, "would be" if self.dry_run else "is")]
        for kind, name in KIND_NAMES:
            tally = self.removed.get(kind, Tally())
            lines.append("%s %d %s (%s)" % (removed, tally.count, name, human_size(tally.size)))
        lines.append("%s %d index entries" % (removed, self.index_entries))
        total = self.blobs_removed()
        lines.append("%s %s in %d blobs; kept %s in %d blobs" % (
            removed, human_size(total.size), total.count, human_size(self.blobs_kept.size),
            self.blobs_kept.count))
        if self.changed:
            lines.append("kept %d entries written again during the pass" % (self.changed,))
        if verbose:
            lines.extend("%s %s %s (%s)" % (removed, kind, name, human_size(size))
                         for kind, name, size in self.items)
        return lines

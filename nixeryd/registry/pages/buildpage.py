"""
The page of one build (``/builds/<id>``): what is built, from where, how
far it got, its timings, layers and log; and :func:`state_document`, the
same facts as the page's script receives them when they change.

Everything here reads a :class:`~nixeryd.service.builds.BuildRecord` and
returns text; every value from the build is escaped.
"""

from __future__ import annotations

from typing import Any

from nixeryd.registry.pages import formats
from nixeryd.registry.pages.html import frame, text
from nixeryd.service.builds import BuildPhase, BuildRecord

_PHASE_ORDER = {phase: index for index, phase in enumerate(BuildPhase)}


def build_path(record: BuildRecord) -> str:
    """The path of the build's page."""
    return "/builds/" + record.id


def phase_rows(record: BuildRecord) -> list[list[str]]:
    """
    One row per phase entered: its name, when it started (seconds after
    the record was made) and how long it took (empty while it runs, and
    for the final phase).
    """
    entered = sorted(record.phase_started.items(),
                     key=lambda item: (item[1], _PHASE_ORDER[item[0]]))
    rows = []
    for index, (phase, started) in enumerate(entered):
        if index + 1 < len(entered):
            took = formats.seconds(entered[index + 1][1] - started)
        else:
            took = ""
        rows.append([phase.value, "+" + formats.seconds(started - record.created), took])
    return rows


def layer_rows(record: BuildRecord) -> list[list[str]]:
    """One row per layer: digest, size, reused or built, what it holds."""
    return [[formats.short_digest(layer.digest), formats.size(layer.size),
             "reused" if layer.reused else "built", layer.description]
            for layer in record.layers]


def layer_summary(record: BuildRecord) -> str:
    """How many layers, their total size and how much was reused."""
    if not record.layers:
        return "No layers stored yet." if not record.finished else "No layers."
    reused = [layer for layer in record.layers if layer.reused]
    count = len(record.layers)
    return "%d layer%s, %s in all; %d reused (%s)." % (
        count, "" if count == 1 else "s", formats.size(record.total_layer_bytes()),
        len(reused), formats.size(sum(layer.size for layer in reused)))


def duration_text(record: BuildRecord) -> str:
    """The build's duration, marked as still growing while it runs."""
    shown = formats.seconds(record.duration())
    return shown if record.finished else shown + " so far"


def state_document(record: BuildRecord) -> dict[str, Any]:
    """
    The changing facts of a build, formatted as the page shows them, for
    the page's script (``state`` events): it sets them as text, never as
    markup.
    """
    return {
        "phase": record.phase.value,
        "finished": record.finished,
        "message": record.message,
        "duration": duration_text(record),
        "elapsed": round(record.duration(), 3),
        "finished_at": (formats.moment(record.finished_at)
                        if record.finished_at is not None else ""),
        "digest": record.manifest_digest or "",
        "layer_summary": layer_summary(record),
        "phases": phase_rows(record),
        "layers": layer_rows(record),
    }


def _table(body_id: str, headings: list[str], rows: list[list[str]],
           numeric: frozenset[int]) -> str:
    head = "".join("<th%s>%s</th>" % (' class="num"' if i in numeric else "", text(h))
                   for i, h in enumerate(headings))
    body = "".join(
        "<tr>%s</tr>\n" % ("".join("<td%s>%s</td>" % (' class="num"' if i in numeric else "",
                                                        text(cell))
                                   for i, cell in enumerate(row)),)
        for row in rows)
    return ("<table>\n<thead><tr>%s</tr></thead>\n<tbody id=\"%s\">\n%s</tbody>\n</table>"
            % (head, body_id, body))


def log_html(record: BuildRecord) -> str:
    """The kept log lines, escaped, after a note of the lines not kept."""
    dropped = record.log_lines - len(record.log)
    note = ('<span class="skipped">[%d lines not kept]\n</span>' % (dropped,)
            if dropped > 0 else "")
    return note + "".join(text(line) + "\n" for line in record.log)


def build_page(record: BuildRecord) -> str:
    """The whole page of ``record``."""
    path = build_path(record)
    name = "%s:%s" % (record.image, record.tag)
    packages = " ".join(record.packages) or "(none)"
    dd = [
        ("Image", text(record.image)),
        ("Tag", text(record.tag)),
        ("Packages", "<code>%s</code>" % (text(packages),)),
        ("System", text(record.system)),
        ("Source", text(record.source)),
        ("Revision", "<code>%s</code>" % (text(record.revision),)
         if record.revision else '<span class="muted">none (the source is not pinned)</span>'),
        ("Created", text(formats.moment(record.created))),
        ("Ended", '<span id="finished-at">%s</span>' % (
            text(formats.moment(record.finished_at)) if record.finished_at is not None else "",)),
        ("Duration", '<span id="duration">%s</span>' % (text(duration_text(record)),)),
        ("Manifest digest", '<code id="digest">%s</code>' % (text(record.manifest_digest or ""),)),
    ]
    details = "".join("<dt>%s</dt><dd>%s</dd>\n" % (label, value) for label, value in dd)
    body = (
        '<main id="build" data-events="%(events)s" data-lines="%(lines)d"'
        ' data-finished="%(finished)s" data-elapsed="%(elapsed).3f">\n'
        "<h1>%(name)s</h1>\n"
        '<p><span id="phase" class="phase %(phase)s">%(phase)s</span>'
        ' <span id="message">%(message)s</span></p>\n'
        "<dl>\n%(details)s</dl>\n"
        "<h2>Phases</h2>\n%(phases)s\n"
        '<h2>Layers</h2>\n<p id="layer-summary">%(summary)s</p>\n%(layers)s\n'
        "<h2>Log</h2>\n"
        '<p class="muted"><span id="log-count">%(lines)d</span> lines in all; the last'
        ' ones are kept. <a href="%(path)s/log">Plain text</a></p>\n'
        '<pre id="log" class="log">%(log)s</pre>\n'
        "</main>"
    ) % {
        "events": text(path + "/events"),
        "lines": record.log_lines,
        "finished": "true" if record.finished else "false",
        "elapsed": record.duration(),
        "name": text(name),
        "phase": text(record.phase.value),
        "message": text(record.message or ""),
        "details": details,
        "phases": _table("phases", ["Phase", "Started", "Took"], phase_rows(record),
                         frozenset({1, 2})),
        "summary": text(layer_summary(record)),
        "layers": _table("layers", ["Layer", "Size", "Stored", "Contents"], layer_rows(record),
                         frozenset({1, 2})),
        "path": text(path),
        "log": log_html(record),
    }
    return frame("%s: %s" % (name, record.phase.value), body, script=not record.finished)


def log_text(record: BuildRecord) -> str:
    """The kept log as plain text, after a note of the lines not kept."""
    dropped = record.log_lines - len(record.log)
    note = "[%d lines not kept]\n" % (dropped,) if dropped > 0 else ""
    return note + "".join(line + "\n" for line in record.log)

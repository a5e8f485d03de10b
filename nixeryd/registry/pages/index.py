"""
The front page (``/``): how to pull from this host, where the packages
come from, and the builds running, waiting and recently ended.

The pull commands are the ones that work against this very instance: a
plain-HTTP instance needs ``--tls-verify=false`` for skopeo and podman
and an ``insecure-registries`` entry for Docker; a TLS one needs
neither.  The host in them is the request's ``Host`` header when it is
a plain ``host[:port]`` (:mod:`nixeryd.registry.hosts`), and a
placeholder otherwise.
"""

from __future__ import annotations

from attrs import frozen

from nixeryd.registry.pages import formats
from nixeryd.registry.pages.buildpage import build_path
from nixeryd.registry.pages.html import frame, text
from nixeryd.service.builds import BuildHistory, BuildRecord

#: Ended builds listed on the page, newest first.
RECENT_BUILDS = 30
#: The image the examples pull.
EXAMPLE_IMAGE = "shell/hello"
#: Shown when the request's Host header cannot be repeated.
UNKNOWN_HOST = "<registry host>"


@frozen
class IndexFacts:
    """
    What the front page says, gathered from the request and the service.

    :ivar host: the host clients reach this registry at, if known.
    :ivar secure: whether the request came over TLS.
    :ivar source: the package source, described for people, if known.
    :ivar builds: the build history, if the site has one.
    """

    host: str | None
    secure: bool
    source: str | None
    builds: BuildHistory | None


def pull_section(host: str | None, secure: bool) -> str:
    """The commands that pull from this host, for its scheme."""
    shown = text(host or UNKNOWN_HOST)
    image = "%s/%s" % (shown, EXAMPLE_IMAGE)
    intro = (
        "<p>Each <code>/</code>-separated part of an image name is a Nix package;"
        " <code>shell</code> adds bash and core utilities. The tag selects the package"
        " set's revision where the source allows it (a git source: a branch, tag or"
        " commit).</p>\n")
    if secure:
        commands = ("docker pull %(i)s\npodman pull %(i)s\n"
                    "skopeo inspect docker://%(i)s\n" % {"i": image})
        return intro + "<pre id=\"pull\">%s</pre>\n" % (commands,)
    commands = ("skopeo inspect --tls-verify=false docker://%(i)s\n"
                "podman pull --tls-verify=false %(i)s\n" % {"i": image})
    return intro + (
        "<p>This instance serves plain HTTP, so clients must be told not to expect"
        " TLS:</p>\n<pre id=\"pull\">%(commands)s</pre>\n"
        "<p>Docker pulls over plain HTTP only from registries listed in"
        " <code>/etc/docker/daemon.json</code> (addresses in 127.0.0.0/8 excepted);"
        " add this host there and restart the Docker daemon"
        " (<code>systemctl restart docker</code>):</p>\n"
        "<pre id=\"docker-config\">{\n  \"insecure-registries\": [\"%(host)s\"]\n}</pre>\n"
        "<pre id=\"docker-pull\">docker pull %(i)s\n</pre>\n"
    ) % {"commands": commands, "host": shown, "i": image}


def latest_revision(builds: BuildHistory) -> BuildRecord | None:
    """The newest build that recorded a package set revision."""
    for record in reversed(list(builds)):
        if record.revision:
            return record
    return None


def source_section(source: str | None, builds: BuildHistory | None) -> str:
    """The package source and its latest revision seen in a build."""
    pinned = latest_revision(builds) if builds is not None else None
    if pinned is None:
        revision = '<span class="muted">none seen yet</span>'
    else:
        revision = '<code>%s</code> (build <a href="%s">%s</a>)' % (
            text(pinned.revision), text(build_path(pinned)), text(pinned.id))
    return "<dl>\n<dt>Source</dt><dd>%s</dd>\n<dt>Revision</dt><dd>%s</dd>\n</dl>\n" % (
        text(source) if source else '<span class="muted">not known</span>', revision)


def _link(record: BuildRecord) -> str:
    return '<a href="%s">%s:%s</a>' % (text(build_path(record)), text(record.image),
                                      text(record.tag))


def _phase(record: BuildRecord) -> str:
    return '<span class="phase %s">%s</span>' % (text(record.phase.value),
                                                text(record.phase.value))


def _rows(table_id: str, headings: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return '<p id="%s" class="muted">%s</p>\n' % (table_id, text(empty))
    head = "".join("<th>%s</th>" % (text(h),) for h in headings)
    body = "".join("<tr>%s</tr>\n" % ("".join("<td>%s</td>" % (cell,) for cell in row),)
                   for row in rows)
    return '<table id="%s">\n<thead><tr>%s</tr></thead>\n<tbody>\n%s</tbody>\n</table>\n' % (
        table_id, head, body)


def builds_section(builds: BuildHistory | None) -> str:
    """Builds running, waiting, and the most recent ended ones."""
    if builds is None:
        return '<p class="muted">This instance keeps no build records.</p>\n'
    waiting = builds.waiting()
    running = [r for r in builds.running() if r not in waiting]
    recent = builds.recent(RECENT_BUILDS)
    return (
        "<h3>Running (%d)</h3>\n%s<h3>Waiting for a slot (%d)</h3>\n%s"
        "<h3>Recent</h3>\n%s"
    ) % (
        len(running),
        _rows("running", ["Image", "Phase", "For", "Log lines"],
              [[_link(r), _phase(r), text(formats.seconds(r.duration())),
                "%d" % (r.log_lines,)] for r in running], "None."),
        len(waiting),
        _rows("waiting", ["Image", "Since"],
              [[_link(r), text(formats.moment(r.created))] for r in waiting], "None."),
        _rows("recent", ["Image", "Outcome", "Took", "Layers", "Size", "Ended", "Message"],
              [[_link(r), _phase(r), text(formats.seconds(r.duration())),
                "%d" % (len(r.layers),), text(formats.size(r.total_layer_bytes())),
                text(formats.moment(r.finished_at or r.created)), text(r.message or "")]
               for r in recent], "No build has ended yet."),
    )


def index_page(facts: IndexFacts) -> str:
    """The whole front page."""
    body = (
        "<main>\n<h1>nixeryd</h1>\n"
        "<p>A container registry that builds images from Nix packages on demand."
        " The registry API is served under <code>/v2/</code>.</p>\n"
        "<h2>Pull</h2>\n%s<h2>Packages</h2>\n%s<h2>Builds</h2>\n%s</main>"
    ) % (pull_section(facts.host, facts.secure), source_section(facts.source, facts.builds),
         builds_section(facts.builds))
    return frame("nixeryd", body)

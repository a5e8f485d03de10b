"""
The pages' one style sheet and one script, inlined in every page, and the
``Content-Security-Policy`` that allows exactly these two by hash.

Both are constants, so their hashes are computed once and the policy is
the same for every response: no nonce to generate, nothing else can run
or be styled, and nothing is loaded from anywhere (``default-src
'none'``); the script may only open its event stream on this host
(``connect-src 'self'``).
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
:root { color-scheme: light dark; --muted: #6b7280; --line: #d1d5db; }
body { font: 15px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 72rem;
       padding: 1rem 1.5rem 3rem; }
header a { font-weight: 600; text-decoration: none; }
h1 { font-size: 1.5rem; margin: .75rem 0; overflow-wrap: anywhere; }
h2 { font-size: 1.15rem; margin: 1.75rem 0 .5rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 1.25rem 0 .25rem; }
pre, code { font: 13px/1.45 ui-monospace, monospace; }
pre { background: rgba(127, 127, 127, .1); padding: .6rem .8rem; overflow-x: auto;
      border-radius: 4px; }
pre.log { max-height: 70vh; overflow-y: auto; white-space: pre-wrap;
          overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .2rem .6rem .2rem 0; vertical-align: top;
         border-bottom: 1px solid var(--line); }
td.num, th.num { text-align: right; white-space: nowrap; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
.muted, .skipped { color: var(--muted); }
.phase { font-weight: 600; padding: 0 .4rem; border-radius: 3px;
         background: rgba(127, 127, 127, .15); }
.phase.succeeded { background: #16a34a; color: #fff; }
.phase.failed { background: #dc2626; color: #fff; }
.phase.cancelled { background: #78716c; color: #fff; }
.phase.evaluating, .phase.building, .phase.layering { background: #2563eb; color: #fff; }
"""

SCRIPT = r"""
(function () {
  "use strict";
  var root = document.getElementById("build");
  if (!root || !window.EventSource || root.getAttribute("data-finished") === "true") {
    return;
  }
  var log = document.getElementById("log");
  var source = new EventSource(root.getAttribute("data-events") +
                               "?after=" + root.getAttribute("data-lines"));
  function text(id, value) {
    var element = document.getElementById(id);
    if (element) { element.textContent = value === null ? "" : value; }
  }
  function rows(id, cells) {
    var body = document.getElementById(id);
    if (!body) { return; }
    while (body.firstChild) { body.removeChild(body.firstChild); }
    cells.forEach(function (row) {
      var tr = document.createElement("tr");
      row.forEach(function (cell, index) {
        var td = document.createElement("td");
        td.textContent = cell;
        if (index > 0 && index < 3) { td.className = "num"; }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }
  // The duration grows between updates, as the server counts it.
  var elapsed = parseFloat(root.getAttribute("data-elapsed"));
  var since = Date.now();
  function seconds(s) {
    var whole = Math.floor(s);
    function two(n) { return (n < 10 ? "0" : "") + n; }
    if (s < 60) { return s.toFixed(1) + " s"; }
    if (whole < 3600) { return Math.floor(whole / 60) + " min " + two(whole % 60) + " s"; }
    return Math.floor(whole / 3600) + " h " + two(Math.floor((whole % 3600) / 60)) + " min";
  }
  var ticking = window.setInterval(function () {
    text("duration", seconds(elapsed + (Date.now() - since) / 1000) + " so far");
  }, 1000);
  function following() {
    return log.scrollTop + log.clientHeight >= log.scrollHeight - 24;
  }
  function append(node) {
    var follow = following();
    log.appendChild(node);
    if (follow) { log.scrollTop = log.scrollHeight; }
  }
  source.addEventListener("line", function (event) {
    append(document.createTextNode(event.data + "\n"));
    text("log-count", event.lastEventId);
  });
  source.addEventListener("skipped", function (event) {
    var note = document.createElement("span");
    note.className = "skipped";
    note.textContent = "[" + event.data + " lines not kept]\n";
    append(note);
  });
  source.addEventListener("state", function (event) {
    var state = JSON.parse(event.data);
    var phase = document.getElementById("phase");
    phase.textContent = state.phase;
    phase.className = "phase " + state.phase;
    text("message", state.message);
    elapsed = state.elapsed;
    since = Date.now();
    text("duration", state.duration);
    text("finished-at", state.finished_at);
    text("digest", state.digest);
    text("layer-summary", state.layer_summary);
    rows("phases", state.phases);
    rows("layers", state.layers);
    if (state.finished) {
      root.setAttribute("data-finished", "true");
      window.clearInterval(ticking);
      source.close();
    }
  });
  source.addEventListener("end", function () { source.close(); });
})();
"""


def _hash_source(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-%s'" % (base64.b64encode(digest).decode("ascii"),)


CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src %s; style-src %s; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    % (_hash_source(SCRIPT), _hash_source(STYLE))).encode("ascii")
"""The policy of every page: only the inline :data:`STYLE` and :data:`SCRIPT`."""

"""
The pages of a private instance (``/``, ``/builds/…``) for its users only:
:class:`GuardedPage`.

The pages show which images are built and their Nix logs, which a private
instance keeps to its users: a browser is asked for a user name and
password of the htpasswd file (HTTP Basic, checked as ``/v2`` checks it,
verdicts kept).  With a rules file, a build's page (and its log and event
stream) is shown only to a user who may pull its image, and the front
page lists the builds only to a user the rules allow every package;
others see how to pull, without the list.  An instance with no users of
its own (tokens of an external service only) keeps its pages closed.
``/metrics``, ``/healthz`` and ``/readyz`` stay open for probes.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from nixeryd.auth.challenge import basic_challenge
from nixeryd.auth.credentials import BasicCredentials, parse_authorization
from nixeryd.auth.errors import Denied, WWW_AUTHENTICATE
from nixeryd.auth.htpasswd import Htpasswd
from nixeryd.auth.rules import Rules
from nixeryd.auth.watchedfile import WatchedFile
from nixeryd.registry.pages.html import frame, send_page, text
from nixeryd.service.builds import BuildHistory

log = Logger()

#: Picks the page a user sees: from the user name to a resource.
Chooser = Callable[[Request, str], Resource]


class PageAccess:
    """
    Who may read the pages.

    :param htpasswd: the users; ``None``: the pages are closed.
    :param rules: the rules file, if any.
    :param builds: the build records, to find a build page's image.
    """

    def __init__(self, htpasswd: Htpasswd | None, rules: WatchedFile[Rules] | None,
                 builds: BuildHistory | None) -> None:
        self.htpasswd = htpasswd
        self._rules = rules
        self._builds = builds

    def sees_every_build(self, user: str) -> bool:
        """Whether the rules allow ``user`` every package (or there are none)."""
        rules = self._rules.loaded() if self._rules is not None else None
        return rules is None or rules.allows_everything(user)

    def check_build(self, request: Request, user: str) -> None:
        """
        Nothing if ``user`` may see the build the path names (or it names
        none this daemon keeps: the page says so).

        :raises Denied: the rules keep the build's image from the user.
        """
        rules = self._rules.loaded() if self._rules is not None else None
        parts = request.postpath or []
        if rules is None or self._builds is None or not parts:
            return
        record = self._builds.get(parts[0].decode("ascii", "replace"))
        if record is not None:
            rules.check(user, record.image, record.tag)


class GuardedPage(Resource):
    """
    A page for the users of :class:`PageAccess` only; ``choose`` picks the
    page resource a user sees.
    """

    isLeaf = True

    def __init__(self, access: PageAccess, choose: Chooser) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._access = access
        self._choose = choose

    def render(self, request: Request) -> bytes | int:
        """The page, once the user is known; a login challenge before."""
        htpasswd = self._access.htpasswd
        if htpasswd is None:
            return send_page(request, 403, frame("Closed", (
                "<main>\n<h1>Closed</h1>\n<p>The pages of this registry are closed: it"
                " has no users of its own.</p>\n</main>")))
        credentials = parse_authorization(request.getHeader(b"authorization"))
        if not isinstance(credentials, BasicCredentials):
            return _log_in(request)
        known = htpasswd.known(credentials)
        if known is not None:
            return self._serve(request, credentials.user) if known else _log_in(request)
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))

        def checked(ok: bool) -> None:
            if gone:
                return
            body = self._serve(request, credentials.user) if ok else _log_in(request)
            if isinstance(body, bytes):
                request.write(body)  # type: ignore[no-untyped-call]
                request.finish()  # type: ignore[no-untyped-call]

        def failed(failure: Failure) -> None:
            log.failure("Checking a page's credentials failed", failure)
            if not gone:
                request.setResponseCode(500)
                request.finish()  # type: ignore[no-untyped-call]

        Deferred.fromCoroutine(htpasswd.check(credentials)).addCallbacks(checked, failed)
        return NOT_DONE_YET

    def _serve(self, request: Request, user: str) -> bytes | int:
        try:
            page = self._choose(request, user)
        except Denied as e:
            return send_page(request, 403, frame("Not yours", (
                "<main>\n<h1>Not yours</h1>\n<p>%s</p>\n</main>" % (text(e.message),))))
        result: bytes | int = page.render(request)  # type: ignore[no-untyped-call]
        return result


def _log_in(request: Request) -> bytes:
    """401 with the Basic challenge: the browser asks for a user name and password."""
    body = send_page(request, 401, frame("Log in", (
        "<main>\n<h1>Log in</h1>\n<p>The pages of this registry are for its users: log"
        " in with your user name and password.</p>\n</main>")))
    request.responseHeaders.setRawHeaders(WWW_AUTHENTICATE, [basic_challenge()])
    return body


def guard_pages(access: PageAccess, index: Resource, index_without_builds: Resource,
                builds: Resource) -> tuple[Resource, Resource]:
    """
    The front page and ``/builds/`` for the users of ``access``: the front
    page with its builds for a user who sees every build, else without;
    a build's page for a user who may pull its image.
    """
    def choose_index(request: Request, user: str) -> Resource:
        return index if access.sees_every_build(user) else index_without_builds

    def choose_build(request: Request, user: str) -> Resource:
        access.check_build(request, user)
        return builds

    return GuardedPage(access, choose_index), GuardedPage(access, choose_build)

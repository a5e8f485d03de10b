"""
``nixeryd serve``: the registry daemon, in the foreground, as a service
manager runs it.

It takes the options of ``twistd nixery`` (:class:`~nixeryd.app.tap.Options`)
plus ``--log-format`` (one JSON object per line by default, for journald
and log collectors; ``text`` for a person at a terminal), and runs:

1. the options are parsed and checked: a usage or configuration error is
   one line on stderr and exit code 2;
2. the log observer is installed, the soft limit of open files raised to
   the hard limit (:func:`raise_open_file_limit`; the connection limits
   are sized from it, and one line says both), and the service tree made
   (a storage directory that cannot be created fails here);
3. on the reactor, the start-up checks (:mod:`nixeryd.app.preflight`:
   package source, Nix, storage) run, then the port is opened; a failure
   is one line on stderr and exit code 1, and where a check failed the
   port was never opened;
4. the service tree starts and one line says what is served
   (:mod:`nixeryd.app.startup`);
5. SIGTERM or SIGINT stop the tree and the reactor: exit code 0.

No traceback and no usage text is printed for any of these failures.
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Callable, Optional, Sequence, TextIO

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import ILogObserver, Logger, globalLogBeginner
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from nixeryd.app import logs
from nixeryd.app.preflight import (EXIT_FAILED, EXIT_USAGE, StartupFailed, run_checks,
                                   setting_name)
from nixeryd.app.settings import LISTEN, PORT
from nixeryd.app.tap import Options

#: ``--log-format`` values and the observer factories they select (with
#: ``twistd``, ``--logger=nixeryd.app.logs.json_observer`` and so on).
LOG_FORMATS: dict[str, Callable[[], ILogObserver]] = {
    "json": logs.json_observer,
    "text": logs.text_observer,
}
DEFAULT_LOG_FORMAT = "json"

#: The soft limit of open files asked for when the hard limit is unlimited.
UNLIMITED_OPEN_FILES = 1 << 20

log = Logger()


class ServeOptions(Options):
    """The options of ``nixeryd serve``: the plugin's, and ``--log-format``."""

    synopsis = "Usage: nixeryd serve [--log-format json|text] [options]"

    optParameters = [
        ["log-format", None, DEFAULT_LOG_FORMAT,
         "Log lines on stdout: json (one object a line) or text."],
    ]

    def postOptions(self) -> None:
        """Check the log format, then the daemon's configuration."""
        if self["log-format"] not in LOG_FORMATS:
            raise UsageError("--log-format must be json or text, not %r"
                             % (self["log-format"],))
        super().postOptions()

    def log_observer(self) -> ILogObserver:
        """A new observer of the chosen format."""
        return LOG_FORMATS[self["log-format"]]()


def parse(argv: Sequence[str], environ: Optional[dict[str, str]] = None) -> ServeOptions:
    """
    The checked command line.

    :raises UsageError: one line saying what is wrong.
    :raises SystemExit: for ``--help`` and ``--version``, once printed.
    """
    options = ServeOptions(environ)
    options.parseOptions(list(argv))  # type: ignore[no-untyped-call]
    return options


def listen_failure(listen: str, error: CannotListenError) -> StartupFailed:
    """The one-line failure of a port that cannot be opened."""
    socket_error = error.socketError
    reason = getattr(socket_error, "strerror", None) or str(socket_error)
    return StartupFailed("cannot listen on %s: %s; set %s or %s to a free port" % (
        listen, str(reason).lower(), setting_name(PORT), "--" + LISTEN.option))


def address_of(port: Optional[IListeningPort]) -> Optional[str]:
    """``host:port`` of a listening port, when it has those."""
    if port is None:
        return None
    host = port.getHost()
    if hasattr(host, "host") and hasattr(host, "port"):
        return "%s:%d" % (host.host, host.port)
    return str(host)


def raise_open_file_limit() -> tuple[int, int, int]:
    """
    Raise the soft limit of open files (``RLIMIT_NOFILE``) to the hard
    limit: each connection takes a descriptor, and the usual soft limit
    of 1024 is a few hundred clients.  Children inherit the raised limit.

    :return: the soft limit before, the soft limit now and the hard limit
        (``-1`` for unlimited); the soft limit stays as it was if it
        cannot be raised.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinity = resource.RLIM_INFINITY
    if soft == infinity:
        return (-1, -1, -1 if hard == infinity else hard)
    target = UNLIMITED_OPEN_FILES if hard == infinity else hard
    raised = soft
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            raised = target
        except (ValueError, OSError):
            pass
    return (soft, raised, -1 if hard == infinity else hard)


def log_connection_limits(options: Options, before: int, soft: int, hard: int) -> None:
    """One line: the open-file limits and the connection limits they carry."""
    from nixeryd.app.tap import connection_limits

    limits = connection_limits(options.config, None if soft < 0 else soft)
    log.info(
        "Open files: soft limit {soft}{raised}, hard limit {hard}; connections: at most"
        " {total} in all and {per_client} per client; deadlines: a whole request in"
        " {head_timeout:g} s, an idle connection {idle_timeout:g} s, a stalled response"
        " {stall_timeout:g} s",
        soft="unlimited" if soft < 0 else soft,
        raised="" if before == soft else " (raised from %d)" % (before,),
        hard="unlimited" if hard < 0 else hard, before=before,
        total=limits.total, per_client=limits.per_client,
        head_timeout=limits.head_timeout, idle_timeout=limits.idle_timeout,
        stall_timeout=limits.stall_timeout, event="open-files")


class Serving:
    """
    One run of the daemon on a reactor: checks, listening, the service
    tree, stopping; :attr:`exit_code` is the outcome.

    :param reactor: the reactor (running when :meth:`start` is called).
    :param options: the parsed options.
    :param top: the service tree (:func:`nixeryd.app.wiring.make_daemon_service`).
    :param stderr: where a failure is said, in one line.
    """

    def __init__(self, reactor: object, options: Options, top: MultiService,
                 stderr: TextIO) -> None:
        self._reactor = reactor
        self._config = options.config
        self._top = top
        self._stderr = stderr
        self._starting: Optional[Deferred[None]] = None
        self._started = False
        self._closed = False
        #: 0 once stopped after serving, or the failure's code.
        self.exit_code = 0

    def start(self) -> None:
        """Check, listen and start (on the running reactor)."""
        from nixeryd.app.wiring import IServiceReactor
        reactor = IServiceReactor(self._reactor)
        reactor.addSystemEventTrigger("before", "shutdown", self._stop)
        self._starting = Deferred.fromCoroutine(self._start(reactor))
        self._starting.addErrback(self._failed, reactor)

    async def _start(self, reactor: object) -> None:
        from nixeryd.app.startup import log_serving
        from nixeryd.app.storages import open_storage
        from nixeryd.app.wiring import HTTPServerService, IServiceReactor
        from nixeryd.build.childenv import child_environment
        from nixeryd.core.threads import ThreadPoolService

        running = IServiceReactor(reactor)
        config = self._config
        # The checks' own thread, for file system calls and the storage
        # probe: the tree's pools start with the tree, after the checks.
        pool = ThreadPoolService(running, 1, name="nixeryd-checks")
        pool.startService()
        try:
            checked = await run_checks(
                config, reactor=running, env=child_environment(os.environ), runner=pool,
                open_storage=lambda: open_storage(config, running, pool))
        finally:
            await pool.stopService()
        server = self._top.getServiceNamed("http")  # type: ignore[no-untyped-call]
        assert isinstance(server, HTTPServerService)
        try:
            self._top.privilegedStartService()  # type: ignore[no-untyped-call]
        except CannotListenError as e:
            raise listen_failure(config.listen, e) from None
        self._started = True
        self._top.startService()  # type: ignore[no-untyped-call]
        log_serving(log, config, checked, address_of(server.listening))

    def _failed(self, failure: Failure, reactor: object) -> None:
        from nixeryd.app.wiring import IServiceReactor

        error = failure.value
        if isinstance(error, CancelledError):
            return
        if isinstance(error, StartupFailed):
            message, self.exit_code = error.message, error.exit_code
        else:
            log.failure("Start-up failed", failure)
            message = "start-up failed: %s" % (failure.getErrorMessage(),)
            self.exit_code = EXIT_FAILED
        self._stderr.write("nixeryd: %s\n" % (" ".join(message.split()),))
        self._stderr.flush()
        IServiceReactor(reactor).stop()

    def _stop(self) -> Optional[Deferred[None]]:
        """
        Before the reactor stops: cancel the start-up, or stop the tree.
        A tree that never started (a failed or cancelled start-up) still
        closes its storage, which holds a temporary directory.
        """
        from nixeryd.app.wiring import close_unstarted_storages

        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        if self._started:
            self._started = False
            stopped: Deferred[None] = self._top.stopService()  # type: ignore[no-untyped-call]
            return stopped
        if self._closed:
            return None
        self._closed = True
        closed = close_unstarted_storages(self._top)
        closed.addErrback(lambda f: log.failure("Closing the storage failed", f))
        return closed


def run(options: ServeOptions, stderr: TextIO) -> int:
    """Run the daemon until it stops; the exit code."""
    from twisted.internet import reactor

    from nixeryd.app.tap import build_service
    from nixeryd.app.wiring import global_reactor

    running = global_reactor()
    log_connection_limits(options, *raise_open_file_limit())
    try:
        top = build_service(options, running, check_at_start=False)
    except StartupFailed as e:
        stderr.write("nixeryd: %s\n" % (e.message,))
        return e.exit_code
    serving = Serving(running, options, top, stderr)
    running.callWhenRunning(serving.start)
    reactor.run()
    return serving.exit_code


def main(argv: Sequence[str]) -> int:
    """``nixeryd serve``: run the daemon until it stops; returns the exit code."""
    stderr = sys.stderr
    try:
        options = parse(argv)
    except UsageError as e:
        stderr.write("nixeryd: %s\n" % (e,))
        return EXIT_USAGE
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
    globalLogBeginner.beginLoggingTo([options.log_observer()])
    return run(options, stderr)

"""
Tests for :mod:`nixeryd.app.tap`, the twistd plugin and :mod:`nixeryd.app.logs`.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from typing import Any, AnyStr, Callable, Mapping, Optional, Sequence

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProcessProtocol, IProcessTransport
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger, LogPublisher
from twisted.plugin import getPlugins
from twisted.python.threadpool import ThreadPool
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from nixeryd.app import logs
from nixeryd.app.config import Config
from nixeryd.app.tap import Options, makeService
from nixeryd.app.wiring import (HTTPServerService, IServiceReactor, ThreadPools,
                                global_reactor, make_daemon_service)
from nixeryd.core import defaults
from nixeryd.registry.site import RegistrySite, make_site
from nixeryd.service.images import ImageService
from nixeryd.service.pulls import PullRecorder
from nixeryd.storage.service import StorageService
from nixeryd.testing.images import FakeImageService

ENV = {"NIXERY_PKGS_PATH": "/srv/pkgs", "STORAGE_PATH": "/srv/storage"}
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parsed(argv: list[str], environ: dict[str, str] = ENV) -> Options:
    """Options parsed from ``argv`` with ``environ``."""
    options = Options(environ=environ)
    options.parseOptions(argv)
    return options


class OptionsTests(SynchronousTestCase):
    """Command-line parsing."""

    def test_environment(self) -> None:
        """Without options the environment gives the configuration."""
        config = parsed([]).config
        self.assertEqual((config.source.location, config.storage_path, config.listen),
                         ("/srv/pkgs", "/srv/storage", "tcp:8080"))

    def test_options(self) -> None:
        """Options override the environment; --nix-option repeats."""
        config = parsed(["--listen", "tcp:0:interface=127.0.0.1", "--channel", "c",
                         "--nix-option", "substituters=", "--nix-option",
                         "sandbox=false", "--max-builds", "5"]).config
        self.assertEqual(config.listen, "tcp:0:interface=127.0.0.1")
        self.assertEqual((config.source.kind, config.source.location), ("channel", "c"))
        self.assertEqual(config.nix_options, (("substituters", ""), ("sandbox", "false")))
        self.assertEqual(config.max_builds, 5)

    def test_bad_configuration(self) -> None:
        """A bad configuration is a usage error at parse time."""
        error = self.assertRaises(UsageError, parsed, [], {"STORAGE_PATH": "/s"})
        self.assertIn("no package source", str(error))

    def test_bad_endpoint(self) -> None:
        """A listen endpoint Twisted cannot parse is a usage error."""
        for listen in ("nonsense:1", "tcp:notaport"):
            with self.subTest(listen=listen):
                error = self.assertRaises(UsageError, parsed, ["--listen", listen])
                self.assertIn("invalid listen endpoint", str(error))


@implementer(IServiceReactor)
class TreeReactor(MemoryReactorClock):
    """
    A memory reactor for building the service tree: it records listening
    ports; the tree only hands it to the process and thread users, which
    never call it before they are used.
    """

    def spawnProcess(self, processProtocol: IProcessProtocol, executable: bytes | str,
                     args: Sequence[bytes | str],
                     env: Optional[Mapping[AnyStr, AnyStr]] = None,
                     path: bytes | str | None = None, uid: Optional[int] = None,
                     gid: Optional[int] = None, usePTY: bool = False,
                     childFDs: Optional[Mapping[int, int | str]] = None,
                     ) -> IProcessTransport:
        raise NotImplementedError("no processes in these tests")

    def callInThread(self, callable: Callable[..., Any], *args: object,
                     **kwargs: object) -> None:
        raise NotImplementedError("no threads in these tests")

    def callFromThread(self, callable: Callable[..., Any], *args: object,
                       **kwargs: object) -> None:
        raise NotImplementedError("no threads in these tests")

    def getThreadPool(self) -> ThreadPool:
        raise NotImplementedError("no threads in these tests")

    def suggestThreadPoolSize(self, size: int) -> None:
        pass


class MakeServiceTests(SynchronousTestCase):
    """The service tree."""

    def test_tree(self) -> None:
        """
        The image service comes first, then the blob-sending thread pool,
        then the site on the configured endpoint; every pool is sized from
        the configuration and the defaults.
        """
        made: list[tuple[Config, IServiceReactor, ThreadPools]] = []
        fake = FakeImageService()

        def images(config: Config, given_reactor: IServiceReactor,
                   pools: ThreadPools) -> FakeImageService:
            made.append((config, given_reactor, pools))
            return fake

        memory = TreeReactor()
        options = parsed(["--port", "8123", "--threads", "3"])
        top = make_daemon_service(options.config, memory, site=make_site, images=images)
        self.assertIsInstance(top, MultiService)
        [(config, given_reactor, pools)] = made
        self.assertEqual((config, given_reactor), (options.config, memory))
        self.assertEqual((pools.storage.size, pools.layers.size, pools.blobs.size),
                         (defaults.STORAGE_THREADS, 3, defaults.BLOB_THREADS))
        image_service, blob_pool, server = list(top)
        self.assertIs(image_service, fake)
        self.assertIs(blob_pool, pools.blobs)
        self.assertIsInstance(server, StreamServerEndpointService)
        top.startService()
        self.addCleanup(top.stopService)
        self.assertTrue(fake.running)
        [(port, factory_used, _, interface)] = memory.tcpServers
        self.assertEqual((port, interface), (8123, ""))
        self.assertIsInstance(factory_used, RegistrySite)

    def test_image_service_children(self) -> None:
        """
        The daemon's image service holds the storage (first, so it is
        closed last), then the storage pool, then the layer pool, then the
        pull recorder (stopped first, writing while the pools run).
        """
        options = parsed(["--storage-path", os.path.abspath(self.mktemp()),
                          "--threads", "3"])
        top = makeService(options, reactor=TreeReactor())
        image_service = list(top)[0]
        self.assertIsInstance(image_service, ImageService)
        storage, storage_pool, layer_pool, pulls = list(image_service)
        self.assertIsInstance(storage, StorageService)
        self.assertIsInstance(pulls, PullRecorder)
        self.assertEqual([(pool.pool.name, pool.size) for pool in (storage_pool, layer_pool)],
                         [("nixeryd-storage", defaults.STORAGE_THREADS), ("nixeryd-layers", 3)])


    def test_storage_unusable(self) -> None:
        """
        For ``twistd nixery``, a storage directory that cannot be made ends
        it with one line and exit code 1, before anything starts.
        """
        options = parsed(["--storage-path", "/etc/passwd"])
        error = self.assertRaises(SystemExit, makeService, options, reactor=TreeReactor())
        self.assertTrue(str(error.code).startswith(
            "nixeryd: STORAGE_PATH /etc/passwd cannot be used: "), error.code)
        self.assertNotIn("\n", str(error.code))

    def test_server_listens_at_once(self) -> None:
        """
        The HTTP server opens its port in ``privilegedStartService``,
        raising there when it cannot, and remembers the port it opened.
        """
        memory = TreeReactor()
        options = parsed(["--listen", "tcp:8124:interface=127.0.0.1"])
        top = make_daemon_service(options.config, memory, site=make_site,
                                  images=lambda config, r, pools: FakeImageService())
        server = top.getServiceNamed("http")
        self.assertIsInstance(server, HTTPServerService)
        self.assertIsNone(server.listening)
        top.privilegedStartService()
        self.assertEqual(server.listening.getHost().port, 8124)
        self.assertEqual(memory.tcpServers[0][3], "127.0.0.1")

    def test_server_cannot_listen(self) -> None:
        """A port in use raises CannotListenError from privilegedStartService."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            options = parsed(["--listen", "tcp:%d:interface=127.0.0.1" % (port,)])
            top = make_daemon_service(options.config, global_reactor(), site=make_site,
                                      images=lambda config, r, pools: FakeImageService())
            self.assertRaises(CannotListenError, top.privilegedStartService)
        self.assertIsNone(top.getServiceNamed("http").listening)


class PluginTests(SynchronousTestCase):
    """The twistd plugin."""

    def test_found(self) -> None:
        """twistd finds the plugin under the tap name nixery."""
        import twisted.plugins

        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker,
                                                               twisted.plugins)}
        self.assertIn("nixery", makers)
        self.assertIs(makers["nixery"].options, Options)

    def test_light(self) -> None:
        """The plugin module imports neither the web layer nor the reactor."""
        with open(os.path.join(REPOSITORY, "twisted", "plugins",
                               "nixeryd_plugin.py")) as source:
            text = source.read()
        imports = [line for line in text.splitlines()
                   if line.startswith(("import ", "from "))]
        self.assertEqual(imports, ["from twisted.application.service import ServiceMaker"])


class TwistdTests(TestCase):
    """``twistd nixery`` as a real child process."""

    async def test_bad_configuration_exits(self) -> None:
        """A bad configuration prints one line and exits non-zero, no traceback."""
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": REPOSITORY,
               "NIXERY_PKGS_PATH": "/srv/pkgs"}
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "nixery"],
            env=env, path=REPOSITORY, reactor=reactor)
        output = (out + err).decode()
        self.assertNotEqual(code, 0)
        self.assertNotIn("Traceback", output)
        self.assertIn(
            "filesystem storage needs a directory: set STORAGE_PATH (or --storage-path)",
            output.splitlines()[-1])


    async def test_failed_check_stops(self) -> None:
        """
        A start-up check that fails when the image service starts is one
        critical log line, and the daemon stops by itself (twistd's exit
        code is 0 whatever happened: ``nixeryd serve`` exits 1).
        """
        missing = os.path.abspath(self.mktemp())
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": REPOSITORY}
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "--logger=nixeryd.app.logs.json_observer", "nixery",
             "--pkgs-path", missing, "--storage-path", os.path.abspath(self.mktemp()),
             "--listen", "tcp:0:interface=127.0.0.1"],
            env=env, path=REPOSITORY, reactor=reactor)
        events = [json.loads(line) for line in out.decode().splitlines()]
        [failed] = [event for event in events if event.get("event") == "startup-failed"]
        self.assertEqual(failed["log_level"], "critical")
        self.assertEqual(
            failed["log_text"],
            "Start-up check failed, stopping: NIXERY_PKGS_PATH %s does not exist; set"
            " NIXERY_PKGS_PATH (or --pkgs-path) to a package set directory" % (missing,))
        self.assertEqual(code, 0)
        self.assertNotIn(b"Traceback", out + err)


class JSONObserverTests(SynchronousTestCase):
    """:func:`nixeryd.app.logs.json_observer`."""

    def emit_to_json(self) -> tuple[Logger, io.StringIO]:
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        return Logger(namespace="test", observer=LogPublisher(logs.json_observer())), stdout

    def test_one_object_per_line(self) -> None:
        """Events become one JSON object per line on stdout, fields kept."""
        log, stdout = self.emit_to_json()
        log.info("built {image}", image="shell/git", layers=3)
        log.warn("second\nline")
        lines = stdout.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual(
            (first["image"], first["layers"], first["log_namespace"], first["log_level"],
             first["log_text"]),
            ("shell/git", 3, "test", "info", "built shell/git"))
        self.assertIsInstance(first["log_time"], float)
        self.assertEqual((second["log_text"], second["log_level"]), ("second\nline", "warn"))

    def test_twisted_format_features(self) -> None:
        """Call syntax and missing fields render as Twisted renders them."""
        log, stdout = self.emit_to_json()
        log.info("{size()} {x!r}", size=lambda: 7, x="q")
        log.info("{missing}")
        first, second = (json.loads(line) for line in stdout.getvalue().splitlines())
        self.assertEqual(first["log_text"], "7 'q'")
        self.assertIn("Unable to format event", second["log_text"])

    def test_values_that_are_not_json(self) -> None:
        """Objects JSON cannot hold are written as their repr."""
        log, stdout = self.emit_to_json()
        log.info("x", thing=object(), items=[1, "a"], bad=[object()])
        event = json.loads(stdout.getvalue())
        self.assertTrue(event["thing"].startswith("<object object"))
        self.assertEqual(event["items"], [1, "a"])
        self.assertIsInstance(event["bad"], str)

    def test_failure(self) -> None:
        """A logged failure is written as its traceback text."""
        log, stdout = self.emit_to_json()
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("broke {what}", what="it")
        event = json.loads(stdout.getvalue())
        self.assertEqual((event["log_text"], event["log_level"]), ("broke it", "critical"))
        self.assertIn("ZeroDivisionError", event["log_failure"])


class TextObserverTests(SynchronousTestCase):
    """:func:`nixeryd.app.logs.text_observer`."""

    def test_lines(self) -> None:
        """Events are time, [namespace#level] and text; tracebacks are indented."""
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        log = Logger(namespace="test", observer=LogPublisher(logs.text_observer()))
        log.info("hello {who}", who="you")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("broke")
        lines = stdout.getvalue().splitlines()
        self.assertRegex(lines[0], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} "
                                   r"\[test#info\] hello you$")
        self.assertTrue(lines[1].endswith(" [test#critical] broke"))
        self.assertTrue(lines[2].startswith("\tTraceback"))
        self.assertIn("ZeroDivisionError", lines[-1])

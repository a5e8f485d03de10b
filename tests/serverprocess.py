"""
A server the tests started as a child process (a storage emulator, an S3
server): :func:`spawn_server` runs it, :class:`ServerProcess` keeps the
tail of its output, says whether it still runs, and stops it.
"""

from __future__ import annotations

from typing import Mapping

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

#: Seconds a server has to exit after TERM before it is killed.
STOP_GRACE_SECONDS = 5.0
#: How much of its output (stdout and stderr together) is kept.
OUTPUT_TAIL = 8192


class _ServerProtocol(ProcessProtocol):
    """Keeps the tail of the server's output and reports its end."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()
        self.running = True

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output = (self.output + data)[-OUTPUT_TAIL:]

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self.ended.callback(None)


@define
class ServerProcess:
    """
    A server process a test started.

    :ivar clock: times the grace period of :meth:`stop`.
    """

    clock: IReactorTime
    _process: IProcessTransport
    _protocol: _ServerProtocol

    @property
    def running(self) -> bool:
        """Whether it has not exited yet."""
        return self._protocol.running

    @property
    def output(self) -> str:
        """The tail of its output."""
        return self._protocol.output.decode("utf-8", "replace")

    async def stop(self) -> None:
        """Terminate it (TERM, then KILL after a grace period)."""
        if self._protocol.running:
            self._signal("TERM")
            killer = self.clock.callLater(STOP_GRACE_SECONDS, self._signal, "KILL")
            await self._protocol.ended
            if killer.active():
                killer.cancel()

    def _signal(self, name: str) -> None:
        try:
            self._process.signalProcess(name)
        except ProcessExitedAlready:
            pass


def spawn_server(reactor: IReactorProcess, executable: str, argv: list[str],
                 env: Mapping[str, str], path: str) -> ServerProcess:
    """Run ``argv`` in the directory ``path``; the caller must stop it."""
    protocol = _ServerProtocol()
    process = reactor.spawnProcess(protocol, executable, argv, env=dict(env), path=path)
    return ServerProcess(IReactorTime(reactor), process, protocol)


@define
class BucketServer:
    """
    A storage server a test started with one bucket in it (a Cloud
    Storage emulator, an S3 server).

    :ivar clock: times its start-up and the grace period of :meth:`stop`.
    :ivar endpoint: its base URL, ``http://127.0.0.1:<port>``.
    :ivar bucket: the bucket made at start.
    :ivar process: its process.
    """

    clock: IReactorTime
    endpoint: str
    bucket: str
    process: ServerProcess

    async def stop(self) -> None:
        """Terminate it (TERM, then KILL after a grace period)."""
        await self.process.stop()

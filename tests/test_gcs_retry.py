"""
Retries of Cloud Storage requests: which failures are retried, how long
the waits are, when they stop (on a :class:`~twisted.internet.task.Clock`,
with scripted answers); and the bucket client's requests retried against
a small in-process server.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from treq.client import HTTPClient

from nixeryd.core.threads import InlineRunner
from nixeryd.metrics.daemon import DaemonMetrics
from nixeryd.service.failures import storage_unavailable
from nixeryd.storage.gcs.bucket import BucketClient
from nixeryd.storage.gcs.http import GCSError, RequestTimedOut, cancel_after
from nixeryd.storage.gcs.circuit import CLOSED, HALF_OPEN, OPEN, Circuit, CircuitOpen
from nixeryd.storage.gcs.retry import NO_RETRY, Retrier, RetryPolicy
from nixeryd.testing.network import serve_locally

POLICY = RetryPolicy(initial=0.5, multiplier=2, cap=16, deadline=60)


class EmptyResponse:
    """An answer with a status, headers and an empty body (enough for the retrier)."""

    def __init__(self, code: int, headers: dict[bytes, list[bytes]] | None = None) -> None:
        self.code = code
        self.headers = Headers(headers or {})

    def deliverBody(self, protocol: object) -> None:
        protocol.connectionLost(ResponseDone())  # type: ignore[attr-defined]


Outcome = int | BaseException


class Script:
    """A ``send`` that answers with the next status or raises the next error."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def __call__(self) -> Deferred[IResponse]:
        self.calls += 1
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        response: IResponse = EmptyResponse(outcome)  # type: ignore[assignment]
        return succeed(response)


class RetrierTests(SynchronousTestCase):
    """The retrier, on a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.jitter = 0.5

    def start(self, send: Callable[[], Deferred[IResponse]], *,
              safe: bool = True) -> Deferred[IResponse]:
        retrier = Retrier(self.clock, POLICY, jitter=lambda: self.jitter)

        async def call() -> IResponse:
            return await send()

        return Deferred.fromCoroutine(retrier.request(
            call, method="GET", target="gs://bucket/object", safe=safe))

    def test_unavailable_then_ok(self) -> None:
        """A 503 then a 200 succeeds after one wait within the first bound, logged once."""
        script = Script(503, 200)
        with capturedLogs() as events:
            result = self.start(script)
            self.assertNoResult(result)
            self.clock.advance(0.24)
            self.assertEqual(script.calls, 1)
            self.clock.advance(0.02)
        self.assertEqual(self.successResultOf(result).code, 200)
        self.assertEqual(script.calls, 2)
        [event] = [e for e in events if "Retrying" in e.get("log_format", "")]
        self.assertEqual((event["method"], event["target"], event["attempt"],
                          event["status"], event["delay"]),
                         ("GET", "gs://bucket/object", 2, 503, 0.25))

    def test_transient_outcomes_retried(self) -> None:
        """429, 408, 500 and a refused connection are each tried again."""
        for outcome in (429, 408, 500, ConnectionRefusedError()):
            script = Script(outcome, 200)
            result = self.start(script)
            self.clock.advance(1)
            self.assertEqual(self.successResultOf(result).code, 200, outcome)
            self.assertEqual(script.calls, 2)

    def test_full_jitter_bounds(self) -> None:
        """The waits stay below 0.5, 1, 2... 16 s; a jitter near 1 waits nearly the bound."""
        self.jitter = 0.999
        script = Script(503, 503, 503, 200)
        result = self.start(script)
        for bound in (0.5, 1, 2):
            self.clock.advance(bound * 0.99)
            self.assertNoResult(result)
            self.clock.advance(bound * 0.01)
        self.assertEqual(self.successResultOf(result).code, 200)
        self.assertEqual([POLICY.bound(n) for n in (1, 5, 6, 10)], [0.5, 8, 16, 16])

    def test_permanent_statuses_not_retried(self) -> None:
        """404, 403, 400 and 412 are answered at once."""
        for status in (404, 403, 400, 412):
            script = Script(status, 200)
            self.assertEqual(self.successResultOf(self.start(script)).code, status)
            self.assertEqual(script.calls, 1)

    def test_unsafe_not_retried(self) -> None:
        """A request not safe to repeat is tried once, answer or error."""
        script = Script(503, 200)
        self.assertEqual(self.successResultOf(self.start(script, safe=False)).code, 503)
        refused = Script(ConnectionRefusedError(), 200)
        self.failureResultOf(self.start(refused, safe=False), ConnectionRefusedError)
        self.assertEqual((script.calls, refused.calls), (1, 1))

    def test_other_errors_not_retried(self) -> None:
        """An error that is no network failure ends the request at once."""
        script = Script(ValueError("bug"), 200)
        self.failureResultOf(self.start(script), ValueError)
        self.assertEqual(script.calls, 1)

    def test_deadline_ends_with_last_answer(self) -> None:
        """After 60 s of failures, the last answer stands; no attempt starts later."""
        self.jitter = 1.0
        script = Script(503)
        result = self.start(script)
        self.clock.pump([1] * 120)
        self.assertEqual(self.successResultOf(result).code, 503)
        # Waits of 0.5 + 1 + 2 + 4 + 8 + 16 + 16 = 47.5 s; the next 16 s would pass 60.
        self.assertEqual(script.calls, 8)

    def test_deadline_ends_with_last_error(self) -> None:
        """A connection that keeps failing fails with its error, as a storage failure (503)."""
        script = Script(ConnectionRefusedError())
        result = self.start(script)
        self.clock.pump([1] * 120)
        failure = self.failureResultOf(result, ConnectionRefusedError)
        self.assertIsNotNone(storage_unavailable(failure.value))
        self.assertGreater(script.calls, 5)


class Counts:
    """A retry observer that keeps every retry told."""

    def __init__(self) -> None:
        self.retries: list[tuple[str, str]] = []

    def gcs_retry(self, reason: str, method: str) -> None:
        self.retries.append((reason, method))


class RetryReportTests(SynchronousTestCase):
    """Each retry is counted by reason and method, and the server's Retry-After honoured."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.counts = Counts()
        self.retrier = Retrier(self.clock, POLICY, jitter=lambda: 0.0, observer=self.counts)

    def start(self, script: Callable[[], Deferred[IResponse]],
              method: str = "GET") -> Deferred[IResponse]:
        async def call() -> IResponse:
            return await script()

        return Deferred.fromCoroutine(self.retrier.request(
            call, method=method, target="gs://bucket/object", safe=True))

    def test_reasons_counted(self) -> None:
        """503, 429, 408, a refused connection and a timeout: one count each, by reason."""
        script = Script(503, 429, 408, ConnectionRefusedError(), RequestTimedOut("t"), 200)
        result = self.start(script, "PUT")
        self.clock.pump([0.1] * 10)
        self.assertEqual(self.successResultOf(result).code, 200)
        self.assertEqual(self.counts.retries, [
            ("server_error", "PUT"), ("throttled", "PUT"), ("timeout", "PUT"),
            ("connection", "PUT"), ("timeout", "PUT")])

    def test_retry_after_honoured(self) -> None:
        """A 429 asking for 3 s is sent again after 3 s, not before (even with no jitter)."""
        answers = [EmptyResponse(429, {b"Retry-After": [b"3"]}), EmptyResponse(200)]
        calls: list[int] = []

        def script() -> Deferred[IResponse]:
            calls.append(1)
            response: IResponse = answers.pop(0)  # type: ignore[assignment]
            return succeed(response)

        result = self.start(script)
        self.clock.advance(2.9)
        self.assertEqual(len(calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(result).code, 200)

    def test_not_counted_when_not_retried(self) -> None:
        """A failure after the deadline is not a retry: nothing counted for it."""
        retrier = Retrier(self.clock, NO_RETRY, observer=self.counts)

        async def call() -> IResponse:
            return await Script(503)()

        result = Deferred.fromCoroutine(retrier.request(
            call, method="GET", target="gs://b/o", safe=True))
        self.assertEqual(self.successResultOf(result).code, 503)
        self.assertEqual(self.counts.retries, [])


class RetryMetricTests(SynchronousTestCase):
    """The daemon's metrics count retries by reason and method, every series from zero."""

    def test_counted(self) -> None:
        metrics = DaemonMetrics()
        before = metrics.exposition().decode()
        self.assertIn('nixeryd_gcs_retries_total{method="PUT",reason="connection"} 0.0', before)
        clock = Clock()
        attempts = Retrier(clock, NO_RETRY, observer=metrics).attempts("PUT", "gs://b/o")
        waited = Deferred.fromCoroutine(attempts.wait(0, "connection", "a lost connection"))
        clock.advance(0)
        self.successResultOf(waited)
        metrics.gcs_retry("server_error", "GET")
        metrics.gcs_retry("unknown", "GET")
        after = metrics.exposition().decode()
        self.assertIn('nixeryd_gcs_retries_total{method="PUT",reason="connection"} 1.0', after)
        self.assertIn('nixeryd_gcs_retries_total{method="GET",reason="server_error"} 1.0', after)
        self.assertNotIn('reason="unknown"', after)


class CircuitTests(SynchronousTestCase):
    """The outage circuit on a Clock: opens on a sustained outage, probes, closes."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.circuit = Circuit(self.clock, failures=3, sustained=5, open_for=10)
        self.retrier = Retrier(self.clock, POLICY, jitter=lambda: 1.0, circuit=self.circuit)

    def start(self, script: Script) -> Deferred[IResponse]:
        async def call() -> IResponse:
            return await script()

        return Deferred.fromCoroutine(self.retrier.request(
            call, method="GET", target="gs://bucket/object", safe=True))

    def test_burst_does_not_open(self) -> None:
        """Many failures within less than the sustained time leave it closed."""
        script = Script(503, 503, 503, 503, 200)
        result = self.start(script)
        self.clock.pump([0.5, 1, 2, 4])
        self.assertEqual(self.successResultOf(result).code, 200)
        self.assertEqual(self.circuit.state, CLOSED)

    def test_sustained_outage_opens_and_fails_at_once(self) -> None:
        """
        Failures for 5 s open it: the request in retries fails with
        CircuitOpen (503 with Retry-After, logged as opened once), and the
        next request fails at once without being sent.
        """
        script = Script(ConnectionRefusedError())
        with capturedLogs() as events:
            first = self.start(script)
            self.clock.pump([0.5, 1, 2, 4])
        error = self.failureResultOf(first, CircuitOpen).value
        self.assertEqual(self.circuit.state, OPEN)
        self.assertEqual(len([e for e in events if e.get("event") == "gcs-circuit-open"]), 1)
        sent = script.calls
        self.clock.advance(3)
        second = self.failureResultOf(self.start(script), CircuitOpen).value
        self.assertEqual(script.calls, sent)
        self.assertEqual(second.retry_after, 7)
        unavailable = storage_unavailable(second)
        assert unavailable is not None
        self.assertEqual((unavailable.status, unavailable.retry_after), (503, 7))
        self.assertLessEqual(error.retry_after, 10)

    def open(self) -> Script:
        """Open the circuit with a request answered 503 for 7.5 s."""
        script = Script(503)
        result = self.start(script)
        self.clock.pump([0.5, 1, 2, 4])
        self.failureResultOf(result, CircuitOpen)
        self.assertEqual(self.circuit.state, OPEN)
        return script

    def probing(self) -> tuple[Deferred[IResponse], Deferred[IResponse]]:
        """Open the circuit, let open_for pass, start a probe: its answer to give, its result."""
        self.open()
        self.clock.advance(10)
        pending: Deferred[IResponse] = Deferred()

        async def slow() -> IResponse:
            return await pending

        return pending, Deferred.fromCoroutine(self.retrier.request(
            slow, method="GET", target="gs://b/o", safe=True))

    def test_probe_closes(self) -> None:
        """After open_for, one request probes; while it runs others fail; its success closes."""
        pending, probing = self.probing()
        self.assertEqual(self.circuit.state, HALF_OPEN)
        self.failureResultOf(self.start(Script(200)), CircuitOpen)
        response: IResponse = EmptyResponse(404)  # type: ignore[assignment]
        pending.callback(response)
        self.assertEqual(self.successResultOf(probing).code, 404)
        self.assertEqual(self.circuit.state, CLOSED)
        self.assertEqual(self.successResultOf(self.start(Script(200))).code, 200)

    def test_failed_probe_reopens(self) -> None:
        """A probe that fails opens it again for open_for."""
        self.open()
        self.clock.advance(10)
        self.failureResultOf(self.start(Script(ConnectionRefusedError())), CircuitOpen)
        self.assertEqual(self.circuit.state, OPEN)
        self.assertEqual(self.circuit.retry_after(), 10)

    def test_cancelled_probe_lets_another_probe(self) -> None:
        """A probe cancelled by its client does not hold the circuit half-open."""
        _, probing = self.probing()
        probing.cancel()
        self.failureResultOf(probing, CancelledError)
        self.assertEqual(self.successResultOf(self.start(Script(200))).code, 200)
        self.assertEqual(self.circuit.state, CLOSED)


class FlakyServer(Resource):
    """Answers with the scripted statuses, then 200 with ``body``; counts requests."""

    isLeaf = True

    def __init__(self, statuses: list[int], body: bytes) -> None:
        super().__init__()
        self.statuses = statuses
        self.body = body
        self.methods: list[str] = []

    def render(self, request: Request) -> bytes:
        self.methods.append(request.method.decode())
        request.setHeader(b"content-type", b"application/json")
        if self.statuses:
            request.setResponseCode(self.statuses.pop(0))
            return b"{}"
        return self.body


class BucketClientRetryTests(TestCase):
    """The bucket client's requests, retried or not, with short real waits."""

    def client(self, server: FlakyServer) -> BucketClient:
        pool = HTTPConnectionPool(reactor, persistent=False)
        client = BucketClient(
            reactor, InlineRunner(), HTTPClient(Agent(reactor, pool=pool)), pool, "bucket",
            endpoint=serve_locally(self, Site(server)),
            retrier=Retrier(reactor, RetryPolicy(initial=0.01, cap=0.02, deadline=1)))
        self.addCleanup(client.close)
        return client

    async def test_metadata_retried(self) -> None:
        """A metadata lookup answered 503 then 200 returns the metadata."""
        server = FlakyServer([503, 429], b'{"size": "3"}')
        self.assertEqual(await self.client(server).metadata("blob"), {"size": "3"})
        self.assertEqual(server.methods, ["GET", "GET", "GET"])

    async def test_guarded_upload_retried(self) -> None:
        """An upload guarded by a generation is sent again after a 503."""
        server = FlakyServer([503], b'{"size": "1"}')
        await self.client(server).upload_bytes("blob", b"x", "md5", "0")
        self.assertEqual(server.methods, ["POST", "POST"])

    async def test_unguarded_upload_not_retried(self) -> None:
        """An upload without a precondition is tried once."""
        server = FlakyServer([503], b'{"size": "1"}')
        with self.assertRaises(GCSError) as caught:
            await self.client(server).upload_bytes("blob", b"x", "md5")
        self.assertEqual(caught.exception.status, 503)
        self.assertEqual(server.methods, ["POST"])

    async def test_forbidden_not_retried(self) -> None:
        """A 403 fails at once."""
        server = FlakyServer([403], b"{}")
        with self.assertRaises(GCSError):
            await self.client(server).metadata("blob")
        self.assertEqual(server.methods, ["GET"])

    async def test_guarded_delete_retried_unguarded_not(self) -> None:
        """A deletion guarded by a generation is retried; one without is not."""
        server = FlakyServer([503], b"")
        self.assertTrue(await self.client(server).delete("blob", "7", "1"))
        self.assertEqual(server.methods, ["DELETE", "DELETE"])
        server = FlakyServer([503], b"")
        with self.assertRaises(GCSError):
            await self.client(server).delete("blob")
        self.assertEqual(server.methods, ["DELETE"])


class TimeoutTests(SynchronousTestCase):
    """A request without an answer in time fails as a retried, transient failure."""

    def test_timeout_is_request_timed_out(self) -> None:
        """The timer's cancellation becomes RequestTimedOut; the caller's stays CancelledError."""
        clock = Clock()
        timed = cancel_after(Deferred[int](), 5, clock)
        clock.advance(5)
        self.assertIsInstance(self.failureResultOf(timed, RequestTimedOut).value, GCSError)
        cancelled = cancel_after(Deferred[int](), 5, clock)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])

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
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from treq.client import HTTPClient

from nixeryd.core.threads import InlineRunner
from nixeryd.service.failures import storage_unavailable
from nixeryd.storage.gcs.bucket import BucketClient
from nixeryd.storage.gcs.http import GCSError, RequestTimedOut, cancel_after
from nixeryd.storage.gcs.retry import Retrier, RetryPolicy
from nixeryd.testing.network import serve_locally

POLICY = RetryPolicy(initial=0.5, multiplier=2, cap=16, deadline=60)


class EmptyResponse:
    """An answer with a status and an empty body (enough for the retrier)."""

    def __init__(self, code: int) -> None:
        self.code = code

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

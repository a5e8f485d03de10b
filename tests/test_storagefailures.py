"""
Tests for :mod:`nixeryd.service.failures`: which storage failures become
503 ``UNAVAILABLE``, and how few log lines an incident makes.
"""

from __future__ import annotations

import errno
import os

from twisted.internet.task import Clock
from twisted.logger import LogLevel, Logger, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.core.errors import BuildFailed
from nixeryd.service.buildlog import BuildLog
from nixeryd.service.builds import BuildHistory
from nixeryd.service.failures import (StorageIncidents, StorageUnavailable,
                                      failure_kind, report_storage_failure,
                                      storage_unavailable)
from nixeryd.storage.circuit import CircuitOpen
from nixeryd.storage.gcs.http import GCSError
from nixeryd.storage.httpcalls import RequestTimedOut
from nixeryd.storage.s3.http import S3Error


def os_error(number: int, path: str = "storage/nixeryd/tmp/x.layer.tmp") -> OSError:
    """The error the system gives for ``number`` on ``path``."""
    return OSError(number, os.strerror(number), path)


class StorageUnavailableTests(SynchronousTestCase):
    """From an exception to the error clients get."""

    def test_disk_errors(self) -> None:
        """A full disk, a read-only one, a quota, no permission: 503 with Retry-After, the system's words, no path."""
        for number in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES):
            error = storage_unavailable(os_error(number))
            assert error is not None
            self.assertIsInstance(error, StorageUnavailable)
            self.assertEqual((error.status, error.code), (503, "UNAVAILABLE"))
            self.assertIsNotNone(error.retry_after)
            self.assertEqual(error.message, "the registry cannot store images now (%s); "
                             "try again later" % (os.strerror(number),))
            self.assertNotIn("/srv", error.message)

    def test_other_storage_errors(self) -> None:
        """
        Cloud Storage's and S3's errors, and those both share (a timeout),
        are unavailability too, in words that name no bucket.
        """
        for failure in (GCSError("bucket b: 500", 500), S3Error("s3://b/k: 500", 500, "x"),
                        RequestTimedOut("no answer within 300 s")):
            error = storage_unavailable(failure)
            assert error is not None
            self.assertEqual(error.message,
                             "the registry's storage is unavailable; try again later")

    def test_circuit_open(self) -> None:
        """An open circuit, of either backend: 503 with the Retry-After it gives."""
        error = storage_unavailable(CircuitOpen("s3://b is failing", 7))
        assert error is not None
        self.assertEqual((error.status, error.code, error.retry_after), (503, "UNAVAILABLE", 7))

    def test_not_storage(self) -> None:
        """Other exceptions are not storage failures."""
        self.assertIsNone(storage_unavailable(ValueError("x")))
        with self.assertRaises(TypeError):
            report_storage_failure(ValueError("x"), "testing")

    def test_kinds(self) -> None:
        """A failure's kind is its errno's name, or its type."""
        self.assertEqual(failure_kind(os_error(errno.ENOSPC)), "ENOSPC")
        self.assertEqual(failure_kind(os_error(errno.EROFS)), "EROFS")
        self.assertEqual(failure_kind(GCSError("x")), "GCSError")


class StorageIncidentsTests(SynchronousTestCase):
    """Few warnings for many failures."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.incidents = StorageIncidents(interval=60, clock=self.clock.seconds)
        self.log = Logger(namespace="test")

    def report(self, error: BaseException, times: int = 1) -> list[dict[str, object]]:
        """Report ``error`` ``times`` times; the events logged."""
        with capturedLogs() as events:
            for _ in range(times):
                self.incidents.report(error, "storing a layer", self.log)
        return list(events)

    @staticmethod
    def warnings(events: list[dict[str, object]]) -> list[dict[str, object]]:
        return [e for e in events if e["log_level"] == LogLevel.warn]

    def test_one_warning_a_minute(self) -> None:
        """
        The first failure is a warning and the next ones within a minute
        only DEBUG events; the first after the minute is a warning that
        counts those in between.
        """
        events = self.report(os_error(errno.ENOSPC), 10)
        [first] = self.warnings(events)
        self.assertEqual(first["kind"], "ENOSPC")
        self.assertIn("No space left on device", str(first["cause"]))
        self.assertEqual(len([e for e in events if e["log_level"] == LogLevel.debug]), 10)
        self.clock.advance(59)
        self.assertEqual(self.warnings(self.report(os_error(errno.ENOSPC), 5)), [])
        self.clock.advance(1)
        [again] = self.warnings(self.report(os_error(errno.ENOSPC)))
        self.assertEqual(again["count"], 14)
        self.assertEqual(again["failures"], 15)
        self.assertIn("14 more such failures since the last report, 60 s ago",
                      formatEvent(again))

    def test_kinds_apart(self) -> None:
        """Another kind of failure is warned of at once, in its own count."""
        self.report(os_error(errno.ENOSPC))
        [warning] = self.warnings(self.report(os_error(errno.EROFS)))
        self.assertEqual(warning["kind"], "EROFS")
        self.assertEqual(self.warnings(self.report(os_error(errno.ENOSPC))), [])


class BuildOutcomeTests(SynchronousTestCase):
    """How a build ended by a storage failure says so."""

    def test_storage_failure_is_not_a_warning(self) -> None:
        """A build ended by the storage logs its end at INFO; other failures at WARN."""
        history = BuildHistory(Clock())
        levels = []
        for error in (StorageUnavailable("the registry cannot store images now"),
                      BuildFailed("the build of package x failed", "x")):
            build = BuildLog(history.start(image="x", tag="latest", packages=("x",),
                                           system="x86_64-linux", source="path",
                                           revision=None))
            with capturedLogs() as events:
                build.failed(error)
            [ended] = [e for e in events if "failed" in e.get("log_format", "")]
            levels.append(ended["log_level"])
            self.assertEqual(build.record.id, error.build_id)
        self.assertEqual(levels, [LogLevel.info, LogLevel.warn])

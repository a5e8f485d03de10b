"""
Tests for :mod:`nixeryd.app.startup`: the one line saying what the daemon
serves.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import ILogObserver, Logger, LogEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from nixeryd.app.config import Config, config_from
from nixeryd.app.logs import render_message
from nixeryd.app.preflight import Checked
from nixeryd.app.startup import describe_source, describe_storage, log_serving

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def config(**environ: str) -> Config:
    return config_from({}, {"STORAGE_PATH": "/var/lib/nixeryd", **environ})


class DescribeTests(SynchronousTestCase):
    """How the source and the storage read."""

    def test_sources(self) -> None:
        """Each kind of source, with its revision when it has one; no credentials."""
        for environ, revision, expected in (
                ({"NIXERY_PKGS_PATH": "/srv/pkgs"}, None, "path /srv/pkgs"),
                ({"NIXERY_PKGS_REPO": "https://token@host/pkgs.git"}, COMMIT,
                 "git https://host/pkgs.git at 0123456789ab"),
                ({"NIXERY_CHANNEL": "nixos-unstable"}, None, "channel nixos-unstable"),
                ({"NIXERY_CHANNEL": COMMIT}, COMMIT, "channel " + COMMIT)):
            with self.subTest(environ=environ):
                self.assertEqual(describe_source(config(**environ), revision), expected)

    def test_storage(self) -> None:
        """A directory; a bucket with its emulator and the key's path, never its content."""
        self.assertEqual(describe_storage(config(NIXERY_PKGS_PATH="/p")),
                         "filesystem /var/lib/nixeryd")
        gcs = config(NIXERY_PKGS_PATH="/p", NIXERY_STORAGE_BACKEND="gcs", GCS_BUCKET="imgs",
                     STORAGE_EMULATOR_HOST="127.0.0.1:9023",
                     GOOGLE_APPLICATION_CREDENTIALS="/etc/nixeryd/key.json")
        self.assertEqual(describe_storage(gcs),
                         "gcs gs://imgs at http://127.0.0.1:9023 (key /etc/nixeryd/key.json)")
        s3 = config(NIXERY_PKGS_PATH="/p", NIXERY_STORAGE_BACKEND="s3", S3_BUCKET="imgs",
                    AWS_ACCESS_KEY_ID="AKIA", AWS_SECRET_ACCESS_KEY="s3cret")
        self.assertEqual(describe_storage(s3),
                         "s3 s3://imgs at AWS (region us-east-1, virtual style)")
        s3 = config(NIXERY_PKGS_PATH="/p", NIXERY_STORAGE_BACKEND="s3", S3_BUCKET="imgs",
                    S3_ENDPOINT="http://127.0.0.1:9000", S3_PUBLIC_URL="https://cdn.example")
        self.assertEqual(describe_storage(s3),
                         "s3 s3://imgs at http://127.0.0.1:9000 (region us-east-1, path style,"
                         " public at https://cdn.example)")


class LineTests(SynchronousTestCase):
    """The start-up line."""

    def serving(self, address: Any, **environ: str) -> LogEvent:
        events: list[LogEvent] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            events.append(event)

        log_serving(Logger(observer=observe), config(**environ),
                    Checked(COMMIT, "nix-instantiate (Nix) 2.18.1"), address)
        [event] = events
        return event

    def test_line(self) -> None:
        """Address, source, storage and limits, in one info line with the same fields."""
        event = self.serving("127.0.0.1:8080", NIXERY_PKGS_REPO="https://u:p@h/pkgs.git",
                             NIXERY_MAX_BUILDS="1", NIX_TIMEOUT="90.5",
                             NIXERY_LAYER_BUDGET="20")
        self.assertEqual(
            render_message(event),
            "Serving on 127.0.0.1:8080: packages from git https://h/pkgs.git at"
            " 0123456789ab for linux/amd64; storage filesystem /var/lib/nixeryd;"
            " 1 Nix build at once,"
            " Nix timeout 90.5 s a step, 20 layers an image (+1);"
            " nix-instantiate (Nix) 2.18.1")
        self.assertEqual(event["log_level"].name, "info")
        self.assertEqual(
            {key: event[key] for key in ("event", "address", "listen", "revision",
                                         "storage_backend", "max_builds", "nix_timeout",
                                         "layer_budget", "source_kind")},
            {"event": "serving", "address": "127.0.0.1:8080", "listen": "tcp:8080",
             "revision": COMMIT, "storage_backend": "filesystem", "max_builds": 1,
             "nix_timeout": 90.5, "layer_budget": 20, "source_kind": "repo"})
        self.assertNotIn("u:p", repr(event))

    def test_endpoint_when_address_unknown(self) -> None:
        """Without the port's address, the configured endpoint is named."""
        event = self.serving(None, NIXERY_PKGS_PATH="/p", PORT="5000")
        self.assertTrue(render_message(event).startswith("Serving on tcp:5000: "))

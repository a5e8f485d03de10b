"""
Tests for :mod:`nixeryd.app.privateconfig`: the settings of private
instances, read from options and variables and checked together, and
how the start-up line describes them.
"""

from __future__ import annotations

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.app.config import config_from
from nixeryd.app.privateconfig import PrivateConfig, describe_access

BASE_ENV = {"NIXERY_PKGS_PATH": "/srv/pkgs", "STORAGE_PATH": "/srv/storage"}


class PrivateConfigTests(SynchronousTestCase):

    def test_off_by_default(self) -> None:
        private = config_from({}, BASE_ENV).private
        self.assertEqual(private, PrivateConfig())
        self.assertFalse(private.authenticated)
        self.assertIsNone(describe_access(private))

    def test_variables_and_options(self) -> None:
        private = config_from({"htpasswd": "/etc/h", "token-ttl": "60"}, {
            **BASE_ENV, "NIXERY_HTPASSWD": "/ignored", "NIXERY_AUTH_RULES": "/etc/r",
            "NIXERY_TOKEN_KEY": "/etc/k", "NIXERY_TLS_CERT": "/etc/c",
            "NIXERY_TLS_KEY": "/etc/ck"}).private
        self.assertEqual((private.htpasswd, private.rules, private.token_key,
                          private.token_ttl, private.tls_cert, private.tls_key),
                         ("/etc/h", "/etc/r", "/etc/k", 60.0, "/etc/c", "/etc/ck"))
        self.assertTrue(private.tokens)
        self.assertEqual(describe_access(private),
                         "HTTPS, token authentication (tokens of /token), rules /etc/r")

    def test_settings_that_do_not_go_together(self) -> None:
        """Each refusal names what to set."""
        cases = [
            ({"token-key": "/k"}, "NIXERY_HTPASSWD/--htpasswd"),
            ({"token-public-key": "/p"}, "NIXERY_TOKEN_REALM/--token-realm"),
            ({"auth-rules": "/r"}, "needs authentication"),
            ({"tls-cert": "/c"}, "TLS needs both"),
            ({"tls-key": "/k"}, "TLS needs both"),
            ({"tls-cert": "/c", "tls-key": "/k", "listen": "ssl:443:privateKey=/k"},
             "already speaks TLS"),
            ({"token-ttl": "0"}, "out of range"),
            ({"token-service": ""}, None),
        ]
        for options, expected in cases:
            if expected is None:
                config_from(options, BASE_ENV)
                continue
            with self.assertRaises(UsageError) as raised:
                config_from(options, BASE_ENV)
            self.assertIn(expected, str(raised.exception), options)

    def test_external_tokens(self) -> None:
        private = config_from({"token-public-key": "/p", "token-realm": "https://a/t"},
                              BASE_ENV).private
        self.assertTrue(private.authenticated)
        self.assertEqual(describe_access(private),
                         "HTTP, token authentication (tokens of https://a/t)")

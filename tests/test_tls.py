"""
Tests for :mod:`nixeryd.registry.tls`: the certificate and key loaded
with modern defaults, refused with a clear reason, and read again
without giving up the pair in use when the new one is broken.
"""

from __future__ import annotations

import os
import shutil

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.core.threads import InlineRunner
from nixeryd.registry.tls import ReloadingContextFactory, load_options
from tests.e2e import require_tools
from tests.test_private_e2e import make_ca, make_server_cert


def subject_of(context: SSL.Context) -> str:
    """The common name of the certificate a context serves."""
    connection = SSL.Connection(context, None)
    certificate = connection.get_certificate()
    assert certificate is not None
    return str(certificate.get_issuer().CN)


class TLSTests(SynchronousTestCase):

    def setUp(self) -> None:
        require_tools("openssl")
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.ca = make_ca(self.directory)
        self.cert, self.key = make_server_cert(self.directory, self.ca)

    def test_loaded(self) -> None:
        """TLS 1.0 and 1.1 are refused; the chain's first certificate is served."""
        context = load_options(self.cert, self.key).getContext()
        options = context.set_options(0)  # adds nothing; the options in force
        self.assertTrue(options & SSL.OP_NO_TLSv1)
        self.assertTrue(options & SSL.OP_NO_TLSv1_1)
        self.assertFalse(options & SSL.OP_NO_TLSv1_2)
        self.assertEqual(subject_of(context), "nixeryd test CA ca")

    def test_refused(self) -> None:
        """A key of another certificate, a file with no certificate, a missing file."""
        _, other_key = make_server_cert(self.directory, self.ca, "other")
        with self.assertRaises(ValueError) as raised:
            load_options(self.cert, other_key)
        self.assertIn("does not match", str(raised.exception))
        with self.assertRaises(ValueError) as raised:
            load_options(self.key, self.key)
        self.assertIn("holds no PEM certificate", str(raised.exception))
        with self.assertRaises(OSError):
            load_options(self.cert, self.directory + "/missing.key")

    def test_reload(self) -> None:
        """A new pair serves new connections; a broken one leaves the old in place."""
        factory = ReloadingContextFactory(self.cert, self.key)
        second = make_ca(self.directory, "second")
        new_cert, new_key = make_server_cert(self.directory, second, "renewed")
        shutil.copy(new_cert, self.cert)
        shutil.copy(new_key, self.key)
        self.assertTrue(self.successResultOf(Deferred.fromCoroutine(
            factory.reload(InlineRunner()))))
        self.assertEqual(subject_of(factory.getContext()), "nixeryd test CA second")
        with open(self.key, "w") as f:
            f.write("broken")
        self.assertFalse(self.successResultOf(Deferred.fromCoroutine(
            factory.reload(InlineRunner()))))
        self.assertEqual(subject_of(factory.getContext()), "nixeryd test CA second")

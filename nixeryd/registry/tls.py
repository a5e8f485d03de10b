"""
TLS built in: the site served over TLS from a certificate and key, read
again on ``SIGHUP``.

:class:`ReloadingContextFactory` hands each new connection the current
OpenSSL context; :meth:`~ReloadingContextFactory.reload` reads the files
again (in a runner) and swaps the context in only once it is whole, so a
renewed certificate is served from the next handshake while the
connections already open keep theirs, and a broken pair of files leaves
the old one in place (logged).  The defaults are Twisted's
``CertificateOptions`` (no compression, no renegotiation, server cipher
preference) with TLS 1.2 as the lowest version and, for TLS 1.2, only
forward-secret AEAD suites (:data:`CIPHERS`).

:func:`tls_factory` wraps the HTTP site; :class:`TLSReloadService` installs
the ``SIGHUP`` handler while the daemon runs.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any, Callable, Optional

from OpenSSL import SSL, crypto
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (IOpenSSLContextFactory, IProtocolFactory,
                                         IReactorFromThreads)
from twisted.internet.ssl import (AcceptableCiphers, Certificate, CertificateOptions,
                                  KeyPair, TLSVersion)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.tls import TLSMemoryBIOFactory

from zope.interface import implementer

from nixeryd.core.threads import Runner

log = Logger()

#: The lowest TLS version offered.
MINIMUM_TLS = TLSVersion.TLSv1_2
#: The TLS 1.2 cipher suites offered: forward-secret key exchange and
#: authenticated encryption only (the "intermediate" choice of Mozilla's
#: server guidelines); TLS 1.3's suites are all of that kind.
CIPHERS = "ECDH+AESGCM:ECDH+CHACHA20:DH+AESGCM:DH+CHACHA20:!aNULL:!MD5:!DSS"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def load_options(cert_path: str, key_path: str) -> CertificateOptions:
    """
    The TLS options of a PEM certificate file (the server's certificate
    first, then any intermediates) and a PEM private key (blocking).

    :raises ValueError: saying what is wrong with the files.
    :raises OSError: when one cannot be read.
    """
    pem = _read(cert_path)
    blocks = [b"-----BEGIN CERTIFICATE-----" + part
              for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
    if not blocks:
        raise ValueError("%s holds no PEM certificate" % (cert_path,))
    try:
        chain = [Certificate.loadPEM(block).original for block in blocks]
        key = KeyPair.load(_read(key_path), crypto.FILETYPE_PEM).original
    except (crypto.Error, SSL.Error) as e:
        raise ValueError("cannot load the TLS certificate or key: %s" % (e,)) from None
    options = CertificateOptions(
        privateKey=key, certificate=chain[0], extraCertChain=chain[1:],
        raiseMinimumTo=MINIMUM_TLS,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(  # type: ignore[no-untyped-call]
            CIPHERS))
    try:
        options.getContext()
    except SSL.Error as e:
        raise ValueError("the TLS key does not match the certificate (%s)" % (e,)) from None
    return options


@implementer(IOpenSSLContextFactory)
class ReloadingContextFactory:
    """
    The current TLS context for each new connection (an old-style context
    factory, which :class:`TLSMemoryBIOFactory` asks once per connection).

    :param cert_path: the certificate (chain) file.
    :param key_path: the private key file.
    """

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self._options = load_options(cert_path, key_path)

    def getContext(self) -> SSL.Context:
        """The context new connections use."""
        return self._options.getContext()

    async def reload(self, runner: Runner) -> bool:
        """
        Read the files again and use them for new connections; whether
        they could be used (if not, the old ones stay, and it is logged).
        """
        try:
            options = await runner.run(load_options, self.cert_path, self.key_path)
        except (OSError, ValueError) as e:
            log.warn("Kept the TLS certificate in use: cannot use {cert} and {key} ({error})",
                     cert=self.cert_path, key=self.key_path, error=str(e),
                     event="tls-reload-failed")
            return False
        self._options = options
        log.info("Serving TLS with the certificate read again from {cert}",
                 cert=self.cert_path, event="tls-reloaded")
        return True


def tls_factory(context: ReloadingContextFactory, site: IProtocolFactory) -> IProtocolFactory:
    """The ``site`` served over TLS with ``context``."""
    factory: IProtocolFactory = TLSMemoryBIOFactory(context, False, site)
    return factory


class TLSReloadService(Service):
    """
    While running, ``SIGHUP`` reads the certificate and key again
    (:meth:`ReloadingContextFactory.reload`); the handler it replaced is
    put back when it stops.

    Without TLS (``context`` is ``None``) ``SIGHUP`` is only logged: its
    default action would end the daemon at once, and ``systemctl reload``
    (the unit's and the NixOS module's ``ExecReload``) sends it whatever
    the configuration.
    """

    def __init__(self, context: Optional[ReloadingContextFactory], runner: Runner,
                 reactor: IReactorFromThreads) -> None:
        self._context = context
        self._runner = runner
        self._reactor = reactor
        self._previous: Any = None
        #: The reloads started, for tests to wait on.
        self.reloads: list[Deferred[bool]] = []

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self._reactor.callFromThread(self.reload_now)

    def reload_now(self) -> Deferred[bool]:
        """Read the files again now."""
        def failed(failure: Failure) -> bool:
            log.failure("Reloading the TLS certificate failed", failure)
            return False

        if self._context is None:
            log.info("SIGHUP: nothing to read again (no TLS certificate); the htpasswd and"
                     " rules files are read again by themselves when they change",
                     event="reload-nothing")
            return succeed(False)
        done = Deferred.fromCoroutine(self._context.reload(self._runner))
        done.addErrback(failed)
        self.reloads.append(done)
        del self.reloads[:-4]
        return done

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._previous = signal.signal(signal.SIGHUP, self._on_signal)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        handler: Callable[..., Any] | int | None = self._previous
        signal.signal(signal.SIGHUP, handler if handler is not None else signal.SIG_DFL)

"""
The configured storage backend, made in one place.

:func:`storage_maker` gives the call that makes the backend the
configuration names from the runner it is to use: the service tree
(:mod:`nixeryd.app.wiring`) makes its storage with it.  :func:`open_storage`
makes one off the reactor thread and checks that it answers, for the
start-up checks (:mod:`nixeryd.app.preflight`), which write a probe
through it before the daemon opens its port.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP
from twisted.logger import Logger
from twisted.python.failure import Failure

from nixeryd.app.config import StorageConfig
from nixeryd.app.preflight import EXIT_FAILED, EXIT_USAGE, StartupFailed, storage_words
from nixeryd.core.threads import Runner
from nixeryd.storage.gcs.retry import NO_OBSERVER, RetryObserver
from nixeryd.storage.interface import IStorage

log = Logger()


def unusable(config: StorageConfig, error: BaseException,
             exit_code: int = EXIT_FAILED) -> StartupFailed:
    """The start-up failure of a storage that could not be made."""
    what, fix = storage_words(config)
    reason = " ".join((str(error) or type(error).__name__).split())
    return StartupFailed("%s cannot be used: %s; %s" % (what, reason, fix), exit_code)


def s3_unusable(config: StorageConfig, error: BaseException) -> StartupFailed:
    """
    The start-up failure of an S3 bucket: a configuration error (exit
    code 2) when there are no credentials or S3 refuses the key itself (a
    wrong secret), a failed check otherwise.
    """
    from nixeryd.storage.s3 import CREDENTIAL_ERRORS, NoCredentials, S3Error

    wrong_key = isinstance(error, NoCredentials) or (
        isinstance(error, S3Error) and error.code in CREDENTIAL_ERRORS)
    return unusable(config, error, EXIT_USAGE if wrong_key else EXIT_FAILED)


def storage_maker(config: StorageConfig, reactor: IReactorTCP, *,
                  retry_observer: RetryObserver = NO_OBSERVER) -> Callable[[Runner], IStorage]:
    """
    The call making the configured storage from the runner of its blocking
    calls.  The call may block: a filesystem storage creates its
    directories.  It raises :class:`OSError` (a directory that cannot be
    created), :class:`~nixeryd.storage.gcs.GCSError` or
    :class:`~nixeryd.storage.s3.S3Error` (no credentials found).

    This loads the GCS service-account key file, if one is set (blocking).
    ``retry_observer`` is told of GCS requests retried (the daemon's metrics).

    :raises StartupFailed: (a usage error) when the key file cannot be
        used.
    """
    if config.storage_backend == "gcs":
        from nixeryd.storage.gcs import GCSError, build_gcs_storage, load_service_account_key

        bucket = config.gcs_bucket
        assert bucket is not None, "config_from requires a bucket for gcs"
        try:
            key = (load_service_account_key(config.google_credentials)
                   if config.google_credentials else None)
        except GCSError as e:
            raise StartupFailed(
                "%s; set GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
                % (e,), EXIT_USAGE) from None

        def gcs_storage(runner: Runner) -> IStorage:
            return build_gcs_storage(
                reactor, runner, bucket, key, config.gcs_endpoint,
                public=config.gcs_public, metadata_host=config.gce_metadata_host,
                signing_account=config.gcs_signing_account,
                iam_endpoint=config.gcs_iam_endpoint, retry_observer=retry_observer)

        return gcs_storage

    if config.storage_backend == "s3":
        from nixeryd.storage.s3 import build_s3_storage

        s3 = config.s3
        assert s3 is not None, "config_from requires the bucket for s3"

        def s3_storage(runner: Runner) -> IStorage:
            return build_s3_storage(
                reactor, runner, s3.bucket, region=s3.region,
                environ=dict(s3.aws_environment), endpoint=s3.endpoint,
                addressing_style=s3.addressing_style, url_lifetime=s3.url_lifetime,
                public_url=s3.public_url)

        return s3_storage

    from nixeryd.storage.filesystem import FilesystemStorage

    path = config.storage_path
    assert path is not None, "config_from requires a path for filesystem storage"

    def filesystem_storage(runner: Runner) -> IStorage:
        return FilesystemStorage(path, runner)

    return filesystem_storage


def make_storage(config: StorageConfig, reactor: IReactorTCP, runner: Runner, *,
                 retry_observer: RetryObserver = NO_OBSERVER) -> IStorage:
    """
    The configured storage, made now (blocking: call it before the reactor
    runs, or in a thread); GCS retries are told to ``retry_observer``.

    :raises StartupFailed: when it cannot be made, saying what to set.
    """
    maker = storage_maker(config, reactor, retry_observer=retry_observer)
    try:
        return maker(runner)
    except (OSError, ValueError) as e:
        raise unusable(config, e) from None
    except Exception as e:
        from nixeryd.storage.gcs import GCSError
        from nixeryd.storage.s3 import S3Error
        if isinstance(e, GCSError):
            raise unusable(config, e) from None
        if isinstance(e, S3Error):
            raise s3_unusable(config, e) from None
        raise


async def open_storage(config: StorageConfig, reactor: IReactorTCP, runner: Runner) -> IStorage:
    """
    The configured storage, made in ``runner``'s thread and checked to
    answer (a GCS or S3 bucket is asked for); the caller closes it.

    :raises StartupFailed: when it cannot be made or does not answer.
    """
    if config.storage_backend == "gcs":
        from nixeryd.storage.gcs import GCSError, GCSStorage
        from nixeryd.storage.gcs.metadata import NoCredentials

        maker = await runner.run(storage_maker, config, reactor)
        try:
            storage = maker(runner)
        except GCSError as e:
            raise unusable(config, e) from None
        assert isinstance(storage, GCSStorage)
        try:
            await storage.check_bucket()
        except NoCredentials as e:
            # Nothing to retry: a setting to give (exit code 2).
            await storage.close()
            raise StartupFailed("%s cannot be used: %s" % (storage_words(config)[0], e),
                                EXIT_USAGE) from None
        except BaseException:
            await storage.close()
            raise
        return storage
    if config.storage_backend == "s3":
        from nixeryd.storage.s3 import S3Error, S3Storage

        made = await closed_when_abandoned(runner.run(make_storage, config, reactor, runner))
        assert isinstance(made, S3Storage)
        try:
            await made.check_bucket()
        except S3Error as e:
            await made.close()
            raise s3_unusable(config, e) from None
        except BaseException:
            await made.close()
            raise
        return made
    return await closed_when_abandoned(runner.run(make_storage, config, reactor, runner))


def closed_when_abandoned(made: Deferred[IStorage]) -> Deferred[IStorage]:
    """
    The storage ``made`` gives, for a waiter that may be cancelled first:
    a storage made after that (in its thread, which cannot be interrupted)
    is closed, so that its temporary directory is given back.
    """
    waiter: Deferred[IStorage] = Deferred()

    def arrived(storage: IStorage) -> None:
        if not waiter.called:
            waiter.callback(storage)
            return
        closing = storage.close()
        closing.addErrback(lambda f: log.failure("Closing an abandoned storage failed", f))

    def failed(failure: Failure) -> None:
        if not waiter.called:
            waiter.errback(failure)

    made.addCallbacks(arrived, failed)
    return waiter

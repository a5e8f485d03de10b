"""
The storage's place in the service hierarchy: closed when the daemon stops.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from nixeryd.storage.interface import IStorage


class StorageService(Service):
    """
    Closes ``storage`` (:meth:`~nixeryd.storage.interface.IStorage.close`)
    when the service stops.  Starting does nothing: a backend is usable
    from its construction.

    Stop it after everything that uses the storage has stopped (add it to
    a parent before the services that use the storage, when the parent
    stops its children in reverse order).
    """

    def __init__(self, storage: IStorage) -> None:
        self.storage = storage

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return self.storage.close()

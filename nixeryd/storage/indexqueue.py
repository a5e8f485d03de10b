"""
Index updates written together: :class:`IndexQueue`.

Naming an image in the index rewrites the whole index.  When builds end
close together, the updates asked for while one is being written wait for
it and are then written together, in one rewrite; an update asked for
while none is being written starts at once, so a lone build never waits.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.python.failure import Failure

from nixeryd.storage.naming import check_index_entry
from nixeryd.storage.ociindex import Descriptor, descriptor


class IndexQueue:
    """
    Gathers index updates and hands them to ``write`` in batches, one
    batch at a time.  Used on the reactor thread only.

    :param write: writes a batch (reference → descriptor); a Deferred
        firing when it is written.
    """

    def __init__(self, write: Callable[[dict[str, Descriptor]], Deferred[None]]) -> None:
        self._write = write
        self._pending: dict[str, Descriptor] = {}
        self._waiting: list[Deferred[None]] = []
        self._writing = False

    def record(self, reference: str, entry: Descriptor) -> Deferred[None]:
        """
        Have ``reference`` name ``entry``; a Deferred firing once it is
        written, or failing as the write of its batch failed.
        """
        self._pending[reference] = entry
        done: Deferred[None] = Deferred()
        self._waiting.append(done)
        if not self._writing:
            self._next()
        return done

    def record_reference(self, reference: str, manifest_digest: str,
                         media_type: str, size: int) -> Deferred[None]:
        """
        :meth:`record` the index entry of :meth:`IStorage.record_reference
        <nixeryd.storage.interface.IStorage.record_reference>`; an invalid
        reference or digest fails it at once.
        """
        try:
            check_index_entry(reference, manifest_digest)
        except Exception:
            return fail()
        return self.record(reference, descriptor(reference, manifest_digest, media_type, size))

    def _next(self) -> None:
        batch, self._pending = self._pending, {}
        waiting, self._waiting = self._waiting, []
        self._writing = True

        def written(result: object) -> None:
            self._writing = False
            for done in waiting:
                if isinstance(result, Failure):
                    done.errback(result)
                else:
                    done.callback(None)
            if self._pending:
                self._next()

        maybeDeferred(self._write, batch).addBoth(written)

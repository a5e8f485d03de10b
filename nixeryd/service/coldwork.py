"""
Cold work in flight, by key: admitted, followed, and cancelled once
nobody waits for it.

The image service makes each image it does not have at most once however
many ask (:class:`~nixeryd.core.sharedwork.SharedWork`).  :class:`ColdWork`
keeps a :class:`ColdJob` for each such piece of work:

- it is **admitted** when it starts (:class:`~nixeryd.service.admission.Admission`:
  the queue and the client's share), and counts until it ends;
- it knows its build record once Nix is to be asked, and so its phase;
- when its **last waiter goes away** (every client disconnected),
  :meth:`ColdWork.abandoned` cancels it, unless it is nearly done:

  - work waiting for start-up, a slot, or still pinning the tag or reading
    the cache is cancelled before it asks Nix anything;
  - a running evaluation or Nix build is cancelled: its process group is
    killed (what Nix finished before stays in the store: only the
    derivations building at that moment are lost) and its record ends as
    cancelled;
  - work in the layering phase goes on: Nix is done, and the layers it
    writes serve the next pull of this image and of any image sharing
    them.

Bookkeeping on the reactor thread only.
"""

from __future__ import annotations

from typing import Any, Hashable, TypeVar

from attrs import define
from twisted.internet.defer import Deferred

from nixeryd.build.progress import BuildPhase
from nixeryd.service.admission import Admission, Ticket
from nixeryd.service.buildlog import BuildLog

#: What a build record says when every client went away.
ABANDONED = "every client went away"

T = TypeVar("T")


@define(eq=False)
class ColdJob:
    """
    One piece of cold work.

    :ivar key: its key among the work in flight.
    :ivar ticket: its admission, held until it ends.
    :ivar build: its build record, once Nix is to be asked.
    :ivar abandoned: set when it is cancelled because nobody waits.
    """

    key: Hashable
    ticket: Ticket
    build: BuildLog | None = None
    abandoned: bool = False

    def nearly_done(self) -> bool:
        """Whether Nix is done and the layers are being written."""
        return self.build is not None and self.build.record.phase is BuildPhase.LAYERING


class ColdWork:
    """
    The cold work in flight (see the module's docstring).

    :param admission: the bounds new work is admitted within.
    """

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self._jobs: dict[Hashable, ColdJob] = {}

    def __len__(self) -> int:
        """How many pieces of cold work are in flight."""
        return len(self._jobs)

    def start(self, key: Hashable, client: str | None) -> ColdJob:
        """
        Admit new work for ``key``, asked for by the client at ``client``.

        :raises TooManyRequests: the queue or the client's share is full.
        """
        job = ColdJob(key, self.admission.admit(client))
        self._jobs[key] = job
        return job

    def follow(self, job: ColdJob, work: Deferred[T]) -> Deferred[T]:
        """End ``job`` when ``work`` ends, whatever its outcome; returns ``work``."""
        def ended(outcome: Any) -> Any:
            self._end(job)
            return outcome

        return work.addBoth(ended)

    def abandoned(self, key: Hashable, work: Deferred[Any]) -> bool:
        """
        Nobody waits for the work of ``key`` any more: cancel ``work``
        unless it is nearly done (:meth:`ColdJob.nearly_done`); returns
        whether it was cancelled.  The hook of
        :class:`~nixeryd.core.sharedwork.SharedWork`: a request coming while
        cancelled work ends (Nix's processes are being stopped) starts new
        work, admitted as any.
        """
        job = self._jobs.get(key)
        if job is None:
            return False
        if job.nearly_done():
            assert job.build is not None
            job.build.log.info("Every client went away; writing the layers goes on, "
                               "for the next pull")
            return False
        job.abandoned = True
        work.cancel()
        return True

    def _end(self, job: ColdJob) -> None:
        job.ticket.release()
        if self._jobs.get(job.key) is job:
            del self._jobs[job.key]

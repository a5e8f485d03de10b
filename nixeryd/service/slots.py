"""
Slots for Nix steps, fair to short ones: :class:`NixSlots`.

The image service gives evaluations and builds a :class:`NixSlots` each
(so an evaluation never waits behind a build).  A plain semaphore of
``size`` would let ``size`` slow packages hold every slot until they end
or reach ``NIX_TIMEOUT``, and every other image wait behind them.  Here a
step that has run for ``long_after`` seconds becomes *long*, and the rule
is:

    a step starts while fewer than ``size`` steps younger than
    ``long_after`` seconds run, and fewer than ``2 × size`` run in all.

So ``size`` steps start at once as before; slow ones delay the others by
``long_after`` seconds at most (then a short image gets a slot beside
them), until ``2 × size`` long steps run at once.  Waiting steps start in
the order they came.  Cancelling a wait (its client went away) takes it
out of the line.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from nixeryd.core import defaults


class _Held:
    """One step holding a slot; young until its timer fires."""

    def __init__(self) -> None:
        self.young = True
        self.timer: IDelayedCall | None = None


class NixSlots:
    """
    Slots for one kind of Nix step (see the module's docstring).

    :param clock: keeps time for the steps' ages.
    :param size: steps that may start at once (``MAX_BUILDS``), at least 1.
    :param long_after: seconds after which a running step is long.
    """

    def __init__(self, clock: IReactorTime, size: int,
                 long_after: float = defaults.LONG_NIX_STEP) -> None:
        if size < 1:
            raise ValueError("size must be at least 1, not %r" % (size,))
        self._clock = clock
        self.size = size
        self._long_after = long_after
        self._held: set[_Held] = set()
        self._young = 0
        self._waiting: deque[Deferred[_Held]] = deque()

    @property
    def running(self) -> int:
        """Steps holding a slot."""
        return len(self._held)

    @property
    def young(self) -> int:
        """Steps holding a slot that are not long yet."""
        return self._young

    @property
    def waiting(self) -> int:
        """Steps waiting for a slot."""
        return len(self._waiting)

    def full(self) -> bool:
        """Whether a step asking now would wait."""
        return bool(self._waiting) or not self._room()

    def slot(self) -> Slot:
        """
        A slot to hold with ``async with``: entering waits for one
        (cancellable), leaving frees it.
        """
        return Slot(self)

    def _acquire(self) -> Deferred[_Held]:
        waiter: Deferred[_Held] = Deferred(self._forget_waiter)
        self._waiting.append(waiter)
        self._dispatch()
        return waiter

    def _release(self, held: _Held) -> None:
        if held not in self._held:
            return
        self._held.discard(held)
        if held.young:
            self._young -= 1
        if held.timer is not None and held.timer.active():
            held.timer.cancel()
        self._dispatch()

    def _room(self) -> bool:
        return self._young < self.size and len(self._held) < 2 * self.size

    def _dispatch(self) -> None:
        """Start waiting steps, in order, while the rule allows."""
        while self._waiting and self._room():
            waiter = self._waiting.popleft()
            held = _Held()
            self._held.add(held)
            self._young += 1
            held.timer = self._clock.callLater(self._long_after, self._grew_long, held)
            waiter.callback(held)

    def _grew_long(self, held: _Held) -> None:
        if held in self._held and held.young:
            held.young = False
            self._young -= 1
            self._dispatch()

    def _forget_waiter(self, waiter: Deferred[_Held]) -> None:
        if waiter in self._waiting:
            self._waiting.remove(waiter)


class Slot:
    """One use of a :class:`NixSlots`, as an asynchronous context manager."""

    def __init__(self, slots: NixSlots) -> None:
        self._slots = slots
        self._held: _Held | None = None

    async def __aenter__(self) -> None:
        self._held = await self._slots._acquire()

    async def __aexit__(self, kind: type[BaseException] | None,
                        error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if self._held is not None:
            self._slots._release(self._held)
            self._held = None

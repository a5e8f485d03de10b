"""
Admission of cold work: how many images may be in the making at once, in
all and for one client.

A request whose image is not in memory starts *cold work*: the tag is
pinned, the manifest cache asked, the names evaluated, the closure built
and layered.  Nix is the scarce resource, and a client that asks for many
images it does not wait for could otherwise keep it busy for everyone.
:class:`Admission` keeps two bounds:

- the **queue**: at most ``max_queue`` pieces of cold work at once, running
  or waiting for a slot;
- the **share of one client**: at most ``max(1, max_queue // 4)`` of them
  started by one address (:func:`client_share`), so that one client cannot
  fill the queue.  An IPv4 address counts as one client, an IPv6 address
  by its ``/64`` network (what one host or one customer usually has); a
  request without an address (a UNIX socket, the build command) is held to
  the queue only.

A third bound, when set, limits the **rate**: at most ``per_minute``
builds started by one client in any minute (a user, when the request is
authenticated: :func:`client_key` keeps ``user:<name>`` as it is; else
the address), so that a client cannot keep Nix busy with a stream of new
images even one at a time.  The bound is checked, and a build counted,
when the build starts (:meth:`Ticket.building`: evaluation found no image
stored for the store paths); cold work answered from the manifest cache,
or evaluated again to serve an image already stored (a moving source's,
after its minute), is never refused by it and counts for nothing.

A request beyond any bound fails at once with
:class:`~nixeryd.core.errors.TooManyRequests` (429 with ``Retry-After``),
whose message says which bound is full.  A request for an image already in
the making joins that work and is never refused: it costs no Nix call.

Each admitted piece of work holds a :class:`Ticket` until it ends.  Pure
bookkeeping on the reactor thread: nothing here blocks; the rate is
timed on an injected clock.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter, deque

from twisted.internet.interfaces import IReactorTime

from nixeryd.core.errors import RETRY_AFTER, TooManyRequests
from nixeryd.service.lru import LRU

#: Seconds a refused client is asked to wait.  skopeo and podman wait that
#: long and ask again, four times, before they show the message: with 10 s
#: a pull waits about 40 s for room, then says why it failed.
RETRY_AFTER_FULL = RETRY_AFTER
#: The window of the rate bound, in seconds.
RATE_WINDOW = 60.0
#: Clients whose recent starts are remembered for the rate bound.
RATE_CLIENTS = 100_000
#: How a user's key for the rate and share starts.
USER_PREFIX = "user:"


def client_share(max_queue: int) -> int:
    """The most pieces of cold work one client may have: a quarter of the queue, at least one."""
    return max(1, max_queue // 4)


def client_key(address: str | None) -> str | None:
    """
    Who a client is for its share: an IPv4 address as it is, an IPv6
    address by its ``/64`` network (an IPv4-mapped one as its IPv4
    address), anything else as given; ``None`` when there is no address.
    """
    if not address:
        return None
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


def _images(count: int) -> str:
    return "1 image" if count == 1 else "%d images" % (count,)


def _builds(count: int) -> str:
    return "1 build" if count == 1 else "%d builds" % (count,)


class Ticket:
    """
    One admitted piece of cold work, counted until :meth:`release`.

    :ivar client: the client it counts for (:func:`client_key`), or ``None``.
    """

    def __init__(self, admission: Admission, client: str | None) -> None:
        self._admission = admission
        self.client = client
        self._held = True
        #: Whether the work builds (counted in the client's rate).
        self.built = False

    def building(self) -> None:
        """
        The work starts a build now: count it in its client's rate (once).

        :raises TooManyRequests: the client started as many builds in the
            last minute as the rate allows.
        """
        if self._held and not self.built:
            self._admission._building(self)
            self.built = True

    def release(self) -> None:
        """The work has ended: it no longer counts (a second call does nothing)."""
        if self._held:
            self._held = False
            self._admission._release(self)


class Admission:
    """
    The bounds on cold work (see the module's docstring).

    :param max_queue: pieces of cold work allowed at once, at least 1.
    :param retry_after: seconds a refused client is asked to wait.
    :param per_minute: builds one client may start in any minute; 0 for
        no bound.
    :param clock: times the rate bound (needed with ``per_minute``).
    """

    def __init__(self, max_queue: int, retry_after: int = RETRY_AFTER_FULL, *,
                 per_minute: int = 0, clock: IReactorTime | None = None) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1, not %r" % (max_queue,))
        if per_minute and clock is None:
            raise ValueError("a rate bound needs a clock")
        self.per_minute = per_minute
        self._clock = clock
        self._starts: LRU[str, deque[float]] = LRU(RATE_CLIENTS)
        self.max_queue = max_queue
        self.per_client = client_share(max_queue)
        self._retry_after = retry_after
        self._total = 0
        self._by_client: Counter[str] = Counter()

    def __len__(self) -> int:
        """How many pieces of cold work hold a ticket."""
        return self._total

    def of(self, address: str | None) -> int:
        """How many pieces of cold work count for the client at ``address``."""
        key = client_key(address)
        return 0 if key is None else self._by_client[key]

    def admit(self, address: str | None) -> Ticket:
        """
        A ticket for new cold work asked for by the client at ``address``.

        :raises TooManyRequests: the queue, or the client's share of it, is
            full.
        """
        key = client_key(address)
        if self._total >= self.max_queue:
            raise TooManyRequests(
                "the registry is already making %s, the most it takes at once;"
                " try again in %d seconds" % (_images(self._total), self._retry_after),
                {"limit": self.max_queue, "for": "registry"},
                retry_after=self._retry_after)
        if key is not None and self._by_client[key] >= self.per_client:
            held = self._by_client[key]
            raise TooManyRequests(
                "%s asked for from your address %s already being made, the most one"
                " address may have at once; try again in %d seconds when one is done"
                % (_images(held), "is" if held == 1 else "are", self._retry_after),
                {"limit": self.per_client, "for": "address"},
                retry_after=self._retry_after)
        self._total += 1
        if key is not None:
            self._by_client[key] += 1
        return Ticket(self, key)

    def _recent_starts(self, key: str) -> deque[float]:
        """The times of ``key``'s builds started within the last minute."""
        assert self._clock is not None
        now = self._clock.seconds()
        starts = self._starts.get_recent(key)
        if starts is None:
            starts = deque()
            self._starts.put(key, starts)
        while starts and starts[0] <= now - RATE_WINDOW:
            starts.popleft()
        return starts

    def _building(self, ticket: Ticket) -> None:
        """
        Count a build of the ticket's client, within the rate bound.

        :raises TooManyRequests: the client started as many in the last minute.
        """
        key = ticket.client
        if key is None or not self.per_minute or self._clock is None:
            return
        starts = self._recent_starts(key)
        now = self._clock.seconds()
        if len(starts) >= self.per_minute:
            wait = max(1, math.ceil(starts[0] + RATE_WINDOW - now))
            who = ("user " + key[len(USER_PREFIX):] if key.startswith(USER_PREFIX)
                   else "your address")
            raise TooManyRequests(
                "%s started %s in the last minute, the most one client may start;"
                " try again in %d seconds" % (who, _builds(len(starts)), wait),
                {"limit": self.per_minute, "for": "rate"}, retry_after=wait)
        starts.append(now)

    def _release(self, ticket: Ticket) -> None:
        self._total -= 1
        if ticket.client is not None:
            self._by_client[ticket.client] -= 1
            if self._by_client[ticket.client] <= 0:
                del self._by_client[ticket.client]

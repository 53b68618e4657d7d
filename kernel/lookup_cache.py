"""Bounded caches for lookups that anyone can trigger without credentials (issue 12 §4).

An unknown bearer token, an unknown public site id, a preflight or ``GET
/api/billing/public-keys`` must never cost a database connection each, or a flood of them
starves the ingest pool. Three limits make every unauthenticated path cheap:

- **Caching, positive and negative.** A found value is kept ``ttl_s``, a miss ``negative_ttl_s``.
  The two halves are bounded separately (least recently used goes first), so a flood of random
  tokens can fill only the negative half and never evicts a live key.
- **Single flight.** Concurrent misses of one key share one database lookup.
- **A gate.** Every lookup that reaches the database takes one of ``LOOKUP_DB_SLOTS`` slots of
  its process (the app pool has ``kernel.app.POOL_MAX_SIZE`` connections), waits at most
  ``LOOKUP_WAIT_S`` for one, and at most ``LOOKUP_MAX_WAITING`` lookups wait at a time. Past that
  the caller answers 503 ``lookup_busy`` with ``Retry-After`` at once, instead of queueing on the
  pool ahead of the ledger writes of clients whose keys are already cached. Refreshing a value
  that was found before (a live key whose cache entry expired) takes one of
  ``LOOKUP_KNOWN_SLOTS`` slots of its own: random tokens are never found, so a flood of them can
  never delay the refresh of a real client's key.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Generic, TypeVar

from kernel.errors import KernelError

if TYPE_CHECKING:
    from kernel.web import AppState

__all__ = [
    "LOOKUP_DB_SLOTS",
    "LOOKUP_KNOWN_SLOTS",
    "LOOKUP_MAX_WAITING",
    "LOOKUP_WAIT_S",
    "BoundedCache",
    "LookupBusy",
    "LookupCache",
    "LookupGate",
    "lookup_gate_of",
]

LOOKUP_DB_SLOTS = 4  # database connections one process may spend on credential lookups at a time
LOOKUP_KNOWN_SLOTS = 2  # and on refreshing values found before (never taken by unknown keys)
LOOKUP_MAX_WAITING = 256  # lookups waiting for a slot; more are refused at once
LOOKUP_WAIT_S = 1.0  # longest wait for a slot
LOOKUP_RETRY_AFTER_S = 1
GATE_EXTRAS_KEY = "lookup_gate"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LookupBusy(KernelError):
    """Every lookup slot of this process is busy: retry in a second (503)."""

    code = "lookup_busy"
    http_status = 503
    retry_after_s = LOOKUP_RETRY_AFTER_S


class LookupGate:
    """At most ``slots`` lookups (plus ``known_slots`` refreshes of values found before) use the
    database at once; the rest wait briefly, or are refused."""

    def __init__(
        self,
        slots: int = LOOKUP_DB_SLOTS,
        *,
        known_slots: int = LOOKUP_KNOWN_SLOTS,
        max_waiting: int = LOOKUP_MAX_WAITING,
        wait_s: float = LOOKUP_WAIT_S,
    ) -> None:
        self._slots = asyncio.Semaphore(slots)
        self._known_slots = asyncio.Semaphore(known_slots)
        self._max_waiting = max_waiting
        self._wait_s = wait_s
        self._waiting = 0
        self.refused = 0

    @asynccontextmanager
    async def slot(self, *, known: bool = False) -> AsyncIterator[None]:
        """Hold one slot for the body; raises ``LookupBusy`` when none frees up in time."""
        slots = self._known_slots if known else self._slots
        if self._waiting >= self._max_waiting:
            self.refused += 1
            raise LookupBusy("too many credential lookups in progress; retry in a second")
        self._waiting += 1
        try:
            await asyncio.wait_for(slots.acquire(), self._wait_s)
        except TimeoutError as exc:
            self.refused += 1
            raise LookupBusy("too many credential lookups in progress; retry in a second") from exc
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            slots.release()


class BoundedCache(Generic[K, V]):
    """A TTL cache whose found and missing entries are bounded separately (``None`` = missing)."""

    def __init__(self, *, ttl_s: float, negative_ttl_s: float, max_entries: int, max_negative_entries: int) -> None:
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._found: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._missing: OrderedDict[K, float] = OrderedDict()
        self._max_found = max_entries
        self._max_missing = max_negative_entries

    def peek(self, key: K) -> tuple[bool, V | None]:
        """(hit, value): a hit with None is a cached miss."""
        now = time.monotonic()
        found = self._found.get(key)
        if found is not None and found[0] > now:
            self._found.move_to_end(key)
            return True, found[1]
        until = self._missing.get(key)
        if until is not None:
            if until > now:
                return True, None
            del self._missing[key]
        return False, None

    def put(self, key: K, value: V | None) -> None:
        now = time.monotonic()
        if value is None:
            self._found.pop(key, None)
            self._missing[key] = now + self._negative_ttl_s
            self._missing.move_to_end(key)
            while len(self._missing) > self._max_missing:
                self._missing.popitem(last=False)
        else:
            self._missing.pop(key, None)
            self._found[key] = (now + self._ttl_s, value)
            self._found.move_to_end(key)
            while len(self._found) > self._max_found:
                self._found.popitem(last=False)

    def known(self, key: K) -> bool:
        """Whether ``key`` was found before (its entry may have expired since)."""
        return key in self._found

    def drop(self, key: K) -> None:
        self._found.pop(key, None)
        self._missing.pop(key, None)

    def __len__(self) -> int:
        return len(self._found) + len(self._missing)


class LookupCache(Generic[K, V]):
    """A ``BoundedCache`` filled through a ``LookupGate``, one database lookup per missing key."""

    def __init__(self, cache: BoundedCache[K, V], gate: LookupGate) -> None:
        self.cache = cache
        self._gate = gate
        self._inflight: dict[K, asyncio.Future[V | None]] = {}
        self.loads = 0  # lookups that reached the loader (for tests and metrics)

    async def get(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        """The cached value of ``key``, else ``load()`` once for every concurrent caller.

        Raises:
            LookupBusy: no slot of the gate freed up in time.
            Exception: whatever ``load`` raised (nothing is cached then).
        """
        hit, value = self.cache.peek(key)
        if hit:
            return value
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            async with self._gate.slot(known=self.cache.known(key)):
                self.loads += 1
                value = await load()
            self.cache.put(key, value)
            future.set_result(value)
            return value
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: waiters re-raise it, a lone caller raises below
            raise
        finally:
            del self._inflight[key]


def lookup_gate_of(state: AppState) -> LookupGate:
    """The process's one gate for unauthenticated database lookups (kept in ``AppState.extras``)."""
    gate = state.extras.get(GATE_EXTRAS_KEY)
    if gate is None:
        gate = state.extras[GATE_EXTRAS_KEY] = LookupGate()
    assert isinstance(gate, LookupGate)
    return gate

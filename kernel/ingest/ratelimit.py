"""Rate limits: events per minute per site, and per client address for public (keyless) sites.

SPEC §4.1 and issue 12 §3. The unit is the **event**: a batch of 100 costs 100, so a script
cannot multiply its budget by batching. The window is the clock's UTC minute. A request is
admitted only when every window it counts against has room for all its events; a refused
request consumes nothing (a client that backs off gets through with a smaller batch). Public
sites (``ingest_auth = 'public'``, where the Origin header is the only check and is trivially
forged) are also limited per client address (``kernel.ingest.clients``), at the plan's
``client_rate_limit_per_minute``.

**Shared through Redis** when ``REDIS_URL`` is set: both windows are checked and taken in one Lua
call, their keys hash-tagged by site so they live on one cluster slot. At most
``REDIS_MAX_IN_FLIGHT`` calls per process are in flight on as many connections; more requests
wait their turn (at most ``REDIS_SLOT_WAIT_S``, then 503 ``ratelimit_busy``): being busy is not a
Redis failure and never turns the shared limit into a per-process one silently.

**Local fallback only on a real Redis failure** (an error, a refused connection, no answer
within ``REVKERNEL_REDIS_TIMEOUT_S``): Redis is never a financial authority (golden rule 4), so
each process then uses its own windows (the limit becomes per process), answers with
``x-opsmantik-degraded: ratelimit_local``, counts ``billing_ratelimit_degraded_total`` and logs
one line; billing never depends on Redis and stays exact. After a failure Redis is not tried
again for ``REDIS_RETRY_INTERVAL_S``, so a dead Redis costs no latency. Without ``REDIS_URL``
the local windows are the limiter (exact with one worker; ``revkernel serve`` warns when several
workers run without Redis).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kernel.clock import Clock
from kernel.errors import KernelError

__all__ = [
    "REDIS_MAX_IN_FLIGHT",
    "WINDOW_S",
    "LocalWindows",
    "RateDecision",
    "RateLimitBusy",
    "SiteRateLimiter",
]

_log = logging.getLogger("kernel.ingest.ratelimit")

WINDOW_S = 60
REDIS_TIMEOUT_S = 0.25  # default connect and read timeout; a slower Redis counts as down
REDIS_RETRY_INTERVAL_S = 1.0  # after a failure, use the local limiter this long before trying again
REDIS_MAX_IN_FLIGHT = 32  # calls (and connections) per process
REDIS_SLOT_WAIT_S = 2.0  # longest wait for one of them
LOCAL_MAX_WINDOWS = 100_000  # local windows kept; older windows are dropped first

# Check every window for room for ARGV[1] events, then take them from all, atomically.
# KEYS[1] the site's window, KEYS[2] (optional) the client's; ARGV[2], ARGV[3] their limits.
# Returns {1, site count} when admitted, {0, site count} or {-1, client count} when refused.
_TAKE = """
local units = tonumber(ARGV[1])
local site = tonumber(redis.call('GET', KEYS[1]) or '0')
if site + units > tonumber(ARGV[2]) then return {0, site} end
if #KEYS == 2 then
  local client = tonumber(redis.call('GET', KEYS[2]) or '0')
  if client + units > tonumber(ARGV[3]) then return {-1, client} end
  if redis.call('INCRBY', KEYS[2], units) == units then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
end
local count = redis.call('INCRBY', KEYS[1], units)
if count == units then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return {1, count}
"""


class RateLimitBusy(KernelError):
    """Every Redis slot of this process stayed busy: retry (503, never a silent local limit)."""

    code = "ratelimit_busy"
    http_status = 503


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after_s: int  # whole seconds to the window's end, at least 1
    degraded: bool  # decided by the local fallback because Redis failed
    scope: str = "site"  # which window refused: "site" or "client"


class LocalWindows:
    """In-process fixed windows: the fallback (and the limiter when no Redis is configured)."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, int], int] = {}

    def take(self, keys: list[tuple[str, int]], window: int, units: int) -> int:
        """Take ``units`` from every (key, limit) window if all have room; 0 = admitted, else the
        1-based position of the window that refused."""
        counts = [self._windows.get((key, window), 0) for key, _ in keys]
        for position, ((_, limit), count) in enumerate(zip(keys, counts, strict=True), start=1):
            if count + units > limit:
                return position
        if len(self._windows) + len(keys) > LOCAL_MAX_WINDOWS:
            self._windows = {k: v for k, v in self._windows.items() if k[1] == window}
            if len(self._windows) + len(keys) > LOCAL_MAX_WINDOWS:
                self._windows.clear()
        for (key, _), count in zip(keys, counts, strict=True):
            self._windows[(key, window)] = count + units
        return 0


class SiteRateLimiter:
    """Counts events per site (and client) and minute; ``hit`` says whether a request is admitted."""

    def __init__(
        self,
        redis_url: str | None,
        clock: Clock,
        *,
        prefix: str = "rk",
        timeout_s: float = REDIS_TIMEOUT_S,
        max_in_flight: int = REDIS_MAX_IN_FLIGHT,
        slot_wait_s: float = REDIS_SLOT_WAIT_S,
    ) -> None:
        self._clock = clock
        self._timeout_s = timeout_s
        self._prefix = f"{prefix}:rl:"
        self._local = LocalWindows()
        self._redis: aioredis.Redis[bytes] | None = None
        self._redis_url = redis_url
        self._redis_down_until = 0.0  # time.monotonic() before which Redis is not tried
        self._max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)
        self._slot_wait_s = slot_wait_s
        self.degraded_hits = 0

    async def hit(
        self,
        site_id: uuid.UUID,
        limit_per_minute: int,
        *,
        units: int = 1,
        client: str | None = None,
        client_limit_per_minute: int | None = None,
    ) -> RateDecision:
        """Take ``units`` events for the site (and ``client``, a hashed address) if both have room.

        Raises:
            RateLimitBusy: Redis is healthy but every slot of this process stayed busy.
        """
        now = self._clock.now().astimezone(UTC)
        window = int(now.timestamp()) // WINDOW_S
        retry_after_s = max(1, WINDOW_S - int(now.timestamp() - window * WINDOW_S))
        keys = [(f"{{{site_id}}}", limit_per_minute)]
        if client is not None:
            keys.append((f"{{{site_id}}}:c:{client}", client_limit_per_minute or limit_per_minute))
        refused: int | None = None
        if self._redis_url is not None and time.monotonic() >= self._redis_down_until:
            refused = await self._redis_take(keys, window, units, site_id)
        degraded = self._redis_url is not None and refused is None
        if refused is None:
            refused = self._local.take(keys, window, units)
        if degraded:
            self.degraded_hits += 1
        scope = "client" if refused == 2 else "site"
        return RateDecision(refused == 0, retry_after_s, degraded, scope)

    async def _redis_take(self, keys: list[tuple[str, int]], window: int, units: int, site_id: uuid.UUID) -> int | None:
        """0 admitted, 1/2 refused by the site/client window; None when Redis failed."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self._slot_wait_s)
        except TimeoutError as exc:
            raise RateLimitBusy("the shared rate limiter is busy; retry in a second") from exc
        try:
            if time.monotonic() < self._redis_down_until:
                return None  # failed while this request waited for its slot
            client = self._client()
            names = [f"{self._prefix}{key}:{window}" for key, _ in keys]
            limits = [str(limit) for _, limit in keys] + ([] if len(keys) == 2 else ["0"])
            result = await client.eval(_TAKE, len(names), *names, str(units), *limits, str(WINDOW_S * 2))  # type: ignore[no-untyped-call]
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_down_until = time.monotonic() + REDIS_RETRY_INTERVAL_S
            _log.warning(
                "rate limit degraded to the local limiter for site %s: Redis failed: %s",
                site_id,
                type(exc).__name__,
            )
            return None
        finally:
            self._slots.release()
        verdict = int(result[0])
        return 0 if verdict == 1 else (1 if verdict == 0 else 2)

    def _client(self) -> aioredis.Redis[bytes]:
        if self._redis is None:
            assert self._redis_url is not None
            self._redis = aioredis.Redis.from_url(
                self._redis_url,
                socket_timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s,
                max_connections=self._max_in_flight,
                retry=None,
            )
        return self._redis

    async def close(self) -> None:
        if self._redis is not None:
            # types-redis lags redis-py: aclose() (5.0+) replaces the deprecated close().
            await self._redis.aclose()  # type: ignore[attr-defined]
            self._redis = None


def window_start(instant: datetime) -> datetime:
    """First instant of the rate-limit window holding ``instant`` (for tests and docs)."""
    seconds = int(instant.astimezone(UTC).timestamp()) // WINDOW_S * WINDOW_S
    return datetime.fromtimestamp(seconds, UTC)

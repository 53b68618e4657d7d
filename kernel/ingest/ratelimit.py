"""Per-site rate limit: one shared fixed window per minute in Redis, a local fallback without it.

SPEC §4.1: ``rate_limit_per_minute`` per site, shared by every worker through Redis when
``REDIS_URL`` is set. The window is the clock's UTC minute; one request (or one batch) is one unit.
Redis is never a financial authority (golden rule 4): when it fails, each process falls back to
its own in-memory window (so the effective limit becomes per process), answers with
``x-opsmantik-degraded: ratelimit_local``, counts ``billing_ratelimit_degraded_total`` and logs
one line; billing itself never depends on Redis, so it stays exact. After a failure the limiter
does not try Redis again for ``REDIS_RETRY_INTERVAL_S`` so a dead Redis costs no latency.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kernel.clock import Clock

__all__ = ["WINDOW_S", "LocalWindows", "RateDecision", "SiteRateLimiter"]

_log = logging.getLogger("kernel.ingest.ratelimit")

WINDOW_S = 60
REDIS_TIMEOUT_S = 0.25  # default connect and read timeout; a slower Redis counts as down
REDIS_RETRY_INTERVAL_S = 1.0  # after a failure, use the local limiter this long before trying again
REDIS_MAX_CONNECTIONS = 32  # per process
LOCAL_MAX_SITES = 10_000  # local windows kept; older windows are dropped first

# INCR and set the expiry in one atomic round trip.
_INCR_WINDOW = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after_s: int  # whole seconds to the window's end, at least 1
    degraded: bool  # decided by the local fallback because Redis failed


class LocalWindows:
    """In-process fixed windows: the fallback (and the limiter when no Redis is configured)."""

    def __init__(self) -> None:
        self._windows: dict[uuid.UUID, tuple[int, int]] = {}

    def hit(self, site_id: uuid.UUID, window: int) -> int:
        start, count = self._windows.get(site_id, (window, 0))
        count = count + 1 if start == window else 1
        if len(self._windows) >= LOCAL_MAX_SITES and site_id not in self._windows:
            self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
            if len(self._windows) >= LOCAL_MAX_SITES:
                self._windows.clear()
        self._windows[site_id] = (window, count)
        return count


class SiteRateLimiter:
    """Counts requests per site and minute; ``hit`` says whether this one is within the limit."""

    def __init__(
        self,
        redis_url: str | None,
        clock: Clock,
        *,
        prefix: str = "rk",
        timeout_s: float = REDIS_TIMEOUT_S,
    ) -> None:
        self._clock = clock
        self._timeout_s = timeout_s
        self._prefix = f"{prefix}:rl:"
        self._local = LocalWindows()
        self._redis: aioredis.Redis[bytes] | None = None
        self._redis_url = redis_url
        self._redis_down_until = 0.0  # time.monotonic() before which Redis is not tried
        self.degraded_hits = 0

    async def hit(self, site_id: uuid.UUID, limit_per_minute: int) -> RateDecision:
        """Count one unit for ``site_id`` and say whether it is within the limit."""
        now = self._clock.now().astimezone(UTC)
        window = int(now.timestamp()) // WINDOW_S
        retry_after_s = max(1, WINDOW_S - int(now.timestamp() - window * WINDOW_S))
        count: int | None = None
        if self._redis_url is not None and time.monotonic() >= self._redis_down_until:
            try:
                count = await self._redis_hit(site_id, window)
            except (RedisError, OSError) as exc:
                self._redis_down_until = time.monotonic() + REDIS_RETRY_INTERVAL_S
                _log.warning(
                    "rate limit degraded to the local limiter for site %s: Redis failed: %s",
                    site_id,
                    type(exc).__name__,
                )
        degraded = self._redis_url is not None and count is None
        if count is None:
            count = self._local.hit(site_id, window)
        if degraded:
            self.degraded_hits += 1
        return RateDecision(count <= limit_per_minute, retry_after_s, degraded)

    async def _redis_hit(self, site_id: uuid.UUID, window: int) -> int:
        if self._redis is None:
            assert self._redis_url is not None
            self._redis = aioredis.Redis.from_url(
                self._redis_url,
                socket_timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s,
                max_connections=REDIS_MAX_CONNECTIONS,
                retry=None,
            )
        key = f"{self._prefix}{site_id}:{window}"
        count = await self._redis.eval(_INCR_WINDOW, 1, key, str(WINDOW_S * 2))  # type: ignore[no-untyped-call]
        return int(count)

    async def close(self) -> None:
        if self._redis is not None:
            # types-redis lags redis-py: aclose() (5.0+) replaces the deprecated close().
            await self._redis.aclose()  # type: ignore[attr-defined]
            self._redis = None


def window_start(instant: datetime) -> datetime:
    """First instant of the rate-limit window holding ``instant`` (for tests and docs)."""
    seconds = int(instant.astimezone(UTC).timestamp()) // WINDOW_S * WINDOW_S
    return datetime.fromtimestamp(seconds, UTC)

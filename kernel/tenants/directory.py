"""Per-process, bounded caches of credential lookups: ingest keys, user tokens, public site ids.

Every request that names a credential or a site is unauthenticated until the lookup answers, so
these lookups go through ``kernel.lookup_cache`` (positive and negative caching, single flight,
one gate of a few database slots per process): a flood of unknown tokens or site ids costs at
most ``LOOKUP_DB_SLOTS`` connections and never the ingest pool (issue 12 §4).

Freshness: a found key or site is reused for ``FOUND_TTL_S`` (a revoked key is refused within
that time; an expiring key stops at its own ``expires_at``, checked on every use); a miss for
``MISSING_TTL_S`` (secrets are 256-bit random, so a new key is never a cached miss; a site
created after someone probed its public id waits at most that long for keyless ingest). The plan
that decides billing is not taken from here: the ledger function reads it in its transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from kernel.lookup_cache import BoundedCache, LookupCache, LookupGate, lookup_gate_of
from kernel.tenants.keys import ApiKey, authenticate_async, hash_secret
from kernel.tenants.sites import Site, site_by_key_hash_async, site_by_public_id_async
from kernel.web import AppState

__all__ = ["FOUND_TTL_S", "MISSING_TTL_S", "CredentialDirectory", "credentials_of"]

FOUND_TTL_S = 2.0
MISSING_TTL_S = 10.0
MAX_FOUND = 10_000
MAX_MISSING = 10_000
EXTRAS_KEY = "credentials"


def _cache() -> BoundedCache[str, Any]:
    return BoundedCache(
        ttl_s=FOUND_TTL_S, negative_ttl_s=MISSING_TTL_S, max_entries=MAX_FOUND, max_negative_entries=MAX_MISSING
    )


@dataclass
class CredentialDirectory:
    """The caches of one process; ``credentials_of(state)`` gives the app's."""

    ingest_keys: LookupCache[str, tuple[Site, datetime | None]]
    public_sites: LookupCache[str, Site]
    user_tokens: LookupCache[str, ApiKey]

    @classmethod
    def create(cls, gate: LookupGate) -> CredentialDirectory:
        return cls(LookupCache(_cache(), gate), LookupCache(_cache(), gate), LookupCache(_cache(), gate))

    async def site_of_ingest_key(self, pool: AsyncConnectionPool, secret: str, now: datetime) -> Site | None:
        """The site of a live ingest key, or None (unknown, revoked, expired, not an ingest key)."""
        digest = hash_secret(secret)

        async def load() -> tuple[Site, datetime | None] | None:
            async with pool.connection() as conn:
                return await site_by_key_hash_async(conn, digest, now)

        entry = await self.ingest_keys.get(digest, load)
        if entry is None:
            return None
        site, expires_at = entry
        if expires_at is not None and expires_at <= now:
            self.ingest_keys.cache.put(digest, None)
            return None
        return site

    async def site_by_public_id(self, pool: AsyncConnectionPool, public_id: str) -> Site | None:
        async def load() -> Site | None:
            async with pool.connection() as conn:
                return await site_by_public_id_async(conn, public_id)

        return await self.public_sites.get(public_id, load)

    async def user_token(self, pool: AsyncConnectionPool, secret: str, now: datetime) -> ApiKey | None:
        """The live user token (or any live key: callers check the role) for ``secret``, or None."""
        digest = hash_secret(secret)

        async def load() -> ApiKey | None:
            async with pool.connection() as conn:
                return await authenticate_async(conn, secret, now=now)

        key = await self.user_tokens.get(digest, load)
        if key is not None and not key.live_at(now):
            self.user_tokens.cache.put(digest, None)
            return None
        return key


def credentials_of(state: AppState) -> CredentialDirectory:
    """The app's credential caches (built on first use, kept in ``AppState.extras``)."""
    directory = state.extras.get(EXTRAS_KEY)
    if directory is None:
        directory = state.extras[EXTRAS_KEY] = CredentialDirectory.create(lookup_gate_of(state))
    assert isinstance(directory, CredentialDirectory)
    return directory

"""Ingest keys and user tokens: random secrets shown once, stored as SHA-256 only.

A key is live while it is not revoked (``revoked_at`` set: dead at once, whatever any clock
says) and has not expired (``expires_at``, the end of a rotation's overlap window: the old and
the new key both work until then; checked against the service's clock and the database's, so a
key is dead as soon as either has passed it). ``LIVE_KEY_SQL`` is that rule, used by every
lookup. Keys are only ever created with INSERT; revoking and rotating go through the SECURITY
DEFINER function ``revkernel_revoke_key`` (migration 0020), which can only move a key's end
earlier and writes ``audit_log`` with the values before and after.

Keys are recognised by their id (UUID), the secret itself, or their prefix: the kind
(``rk_ingest_`` or ``rk_user_``) and ``PREFIX_RANDOM_CHARS`` random characters, which is what
``key list`` and ``token list`` print (a trailing ``…`` is accepted).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from kernel.errors import InputError, NotFound

__all__ = [
    "KEY_ROLES",
    "LIVE_KEY_SQL",
    "MAX_ROTATION_OVERLAP",
    "USER_ROLES",
    "ApiKey",
    "KeyRecord",
    "authenticate",
    "authenticate_async",
    "find_key",
    "hash_secret",
    "issue_key",
    "key_prefix",
    "list_keys",
    "new_secret",
    "revoke_key",
    "rotate_key",
]

USER_ROLES = ("viewer", "billing", "admin")
KEY_ROLES = ("ingest", *USER_ROLES)
SECRET_BYTES = 32
PREFIX_RANDOM_CHARS = 8  # after the kind: enough to tell keys apart in a list, useless to guess
PREFIX_MAX_CHARS = 24  # a longer reference is taken for the secret itself
MAX_ROTATION_OVERLAP = timedelta(days=30)
_ELLIPSES = ("…", "...")

# The one rule of a live key; bound parameter: the instant of the check.
LIVE_KEY_SQL = "(k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > greatest(%s::timestamptz, now())))"
_KEY_COLUMNS = "k.id, k.site_id, k.role, k.key_prefix, k.revoked_at, k.expires_at"
_RECORD_COLUMNS = "k.id, k.site_id, k.role, k.key_prefix, k.label, k.created_at, k.revoked_at, k.expires_at"
_AUTH_SQL = f"SELECT {_KEY_COLUMNS} FROM api_keys k WHERE k.key_hash = %s AND {LIVE_KEY_SQL}"


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    site_id: uuid.UUID | None  # None: platform-wide
    role: str
    key_prefix: str
    revoked_at: datetime | None
    expires_at: datetime | None = None  # a rotation's overlap end

    @property
    def is_platform(self) -> bool:
        return self.site_id is None

    def live_at(self, now: datetime) -> bool:
        """The Python side of ``LIVE_KEY_SQL`` for a key already read as live (caches re-check it)."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class KeyRecord:
    """A key as ``key list`` / ``token list`` show it (never the secret)."""

    id: uuid.UUID
    site_id: uuid.UUID | None
    role: str
    key_prefix: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None

    def state(self, now: datetime) -> str:
        """``live``, ``expiring`` (inside a rotation's overlap), ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is None:
            return "live"
        return "expiring" if self.expires_at > now else "expired"

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "key_id": str(self.id),
            "site_id": str(self.site_id) if self.site_id else None,
            "role": self.role,
            "key_prefix": self.key_prefix,
            "label": self.label,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "state": self.state(now),
        }


def _kind(role: str) -> str:
    return "rk_ingest_" if role == "ingest" else "rk_user_"


def new_secret(role: str) -> str:
    return f"{_kind(role)}{secrets.token_urlsafe(SECRET_BYTES)}"


def key_prefix(secret: str, role: str) -> str:
    """The recognisable, unguessable-from beginning of a secret that lists print."""
    return secret[: len(_kind(role)) + PREFIX_RANDOM_CHARS]


def hash_secret(secret: str) -> str:
    # The secrets are 256-bit random, so a plain SHA-256 is enough (no password stretching needed).
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def issue_key(
    conn: psycopg.Connection[Any],
    *,
    site_id: uuid.UUID | None,
    role: str,
    secret: str | None = None,
    label: str | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key for ``site_id`` (None = platform) and return it with its secret."""
    if role not in KEY_ROLES:
        raise InputError(f"role must be one of {', '.join(KEY_ROLES)}, got {role!r}", code="invalid_role")
    if role == "ingest" and site_id is None:
        raise InputError("an ingest key belongs to one site: give --site", code="invalid_role")
    if label is not None and len(label) > 200:
        raise InputError("a label is at most 200 characters", code="invalid_label")
    secret = secret or new_secret(role)
    row = conn.execute(
        f"""
        INSERT INTO api_keys AS k (site_id, role, key_hash, key_prefix, label)
        VALUES (%s, %s, %s, %s, %s)
        RETURNING {_KEY_COLUMNS}
        """,
        (site_id, role, hash_secret(secret), key_prefix(secret, role), label),
    ).fetchone()
    assert row is not None
    return ApiKey(*row), secret


def authenticate(conn: psycopg.Connection[Any], secret: str, *, now: datetime | None = None) -> ApiKey | None:
    """The live key for ``secret`` at ``now`` (default: the system clock), or None."""
    row = conn.execute(_AUTH_SQL, (hash_secret(secret), now or _now())).fetchone()
    return ApiKey(*row) if row is not None else None


async def authenticate_async(conn: psycopg.AsyncConnection[Any], secret: str, *, now: datetime) -> ApiKey | None:
    """``authenticate`` on an async connection (the same SQL)."""
    cur = await conn.execute(_AUTH_SQL, (hash_secret(secret), now))
    row = await cur.fetchone()
    return ApiKey(*row) if row is not None else None


def _key_lookup(ref: str) -> tuple[str, str]:
    try:
        return "k.id = %s", str(uuid.UUID(ref))
    except ValueError:
        pass
    for ellipsis in _ELLIPSES:
        ref = ref.removesuffix(ellipsis)
    if not ref:
        raise InputError("give a key id, a prefix or the secret", code="unknown_key")
    if len(ref) > PREFIX_MAX_CHARS:
        return "k.key_hash = %s", hash_secret(ref)
    return "k.key_prefix = %s", ref


def find_key(conn: psycopg.Connection[Any], ref: str, *, roles: tuple[str, ...] = KEY_ROLES) -> KeyRecord:
    """The one key ``ref`` names (id, secret or prefix as listed) among ``roles``.

    Raises:
        NotFound: no key of those roles matches.
        InputError: a prefix matches several keys (give the key id).
    """
    where, param = _key_lookup(ref)
    rows = conn.execute(
        f"""
        SELECT {_RECORD_COLUMNS}
        FROM api_keys k WHERE {where} AND k.role = ANY(%s) ORDER BY k.created_at LIMIT 2
        """,
        (param, list(roles)),
    ).fetchall()
    shown = ref[:PREFIX_MAX_CHARS] if len(ref) <= PREFIX_MAX_CHARS else ref[:PREFIX_MAX_CHARS] + "…"
    if not rows:
        raise NotFound(f"no key matches {shown!r}", code="unknown_key")
    if len(rows) > 1:
        raise InputError(f"{shown!r} matches several keys; give the key id", code="ambiguous_key")
    return KeyRecord(*rows[0])


def _end_key(
    conn: psycopg.Connection[Any],
    key_id: uuid.UUID,
    now: datetime,
    expires_at: datetime | None,
    actor: str,
    reason: str,
) -> ApiKey:
    row = conn.execute(
        "SELECT id, site_id, role, key_prefix, revoked_at, expires_at FROM revkernel_revoke_key(%s, %s, %s, %s, %s)",
        (key_id, now, expires_at, actor, reason),
    ).fetchone()
    assert row is not None
    return ApiKey(*row)


def revoke_key(
    conn: psycopg.Connection[Any],
    ref: str,
    *,
    now: datetime,
    actor: str = "cli",
    roles: tuple[str, ...] = KEY_ROLES,
) -> ApiKey:
    """Revoke the key ``ref`` names (``find_key``) at ``now``; audit-logged, idempotent."""
    key = find_key(conn, ref, roles=roles)
    return _end_key(conn, key.id, now, None, actor, "revoked")


def rotate_key(
    conn: psycopg.Connection[Any],
    ref: str,
    *,
    now: datetime,
    overlap: timedelta,
    actor: str = "cli",
) -> tuple[ApiKey, str, ApiKey]:
    """Replace an ingest key: a new key now, the old one working until ``now + overlap``.

    Returns (new key, its secret, the old key with its end). Run it in one transaction.

    Raises:
        InputError: the overlap is negative or longer than ``MAX_ROTATION_OVERLAP``, or the old
            key is not live (already revoked, expired or being rotated out).
    """
    if not timedelta(0) <= overlap <= MAX_ROTATION_OVERLAP:
        raise InputError(f"the overlap must be between 0 and {MAX_ROTATION_OVERLAP.days} days", code="invalid_overlap")
    old = find_key(conn, ref, roles=("ingest",))
    state = old.state(now)
    if state != "live":
        raise InputError(f"key {old.id} is {state}: rotate a live key (or create a new one)", code="key_not_live")
    assert old.site_id is not None
    new, secret = issue_key(conn, site_id=old.site_id, role="ingest", label=f"rotated from {old.key_prefix}")
    ended = _end_key(conn, old.id, now, now + overlap, actor, f"rotated: replaced by {new.id}")
    return new, secret, ended


def list_keys(
    conn: psycopg.Connection[Any],
    *,
    site_id: uuid.UUID | None,
    roles: tuple[str, ...],
    now: datetime,
    include_revoked: bool = False,
) -> list[KeyRecord]:
    """The keys of a site (or the platform's, ``site_id`` None) among ``roles``, oldest first."""
    rows = conn.execute(
        f"""
        SELECT {_RECORD_COLUMNS}
        FROM api_keys k
        WHERE k.site_id IS NOT DISTINCT FROM %s AND k.role = ANY(%s) AND (%s OR {LIVE_KEY_SQL})
        ORDER BY k.created_at, k.id
        """,
        (site_id, list(roles), include_revoked, now),
    ).fetchall()
    return [KeyRecord(*row) for row in rows]

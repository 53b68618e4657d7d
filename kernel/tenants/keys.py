"""Ingest keys and user tokens: random secrets shown once, stored as SHA-256 only."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from kernel.errors import InputError, NotFound

__all__ = [
    "KEY_ROLES",
    "USER_ROLES",
    "ApiKey",
    "authenticate",
    "hash_secret",
    "issue_key",
    "new_secret",
    "revoke_key",
]

USER_ROLES = ("viewer", "billing", "admin")
KEY_ROLES = ("ingest", *USER_ROLES)
SECRET_BYTES = 32
PREFIX_CHARS = 12  # "rk_ingest_" + a few characters: enough to recognise, useless to guess


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    site_id: uuid.UUID | None  # None: platform-wide
    role: str
    key_prefix: str
    revoked_at: datetime | None

    @property
    def is_platform(self) -> bool:
        return self.site_id is None


def new_secret(role: str) -> str:
    kind = "ingest" if role == "ingest" else "user"
    return f"rk_{kind}_{secrets.token_urlsafe(SECRET_BYTES)}"


def hash_secret(secret: str) -> str:
    # The secrets are 256-bit random, so a plain SHA-256 is enough (no password stretching needed).
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


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
    secret = secret or new_secret(role)
    row = conn.execute(
        """
        INSERT INTO api_keys (site_id, role, key_hash, key_prefix, label)
        VALUES (%s, %s, %s, %s, %s)
        ON CONFLICT (key_hash) DO UPDATE SET key_hash = EXCLUDED.key_hash
        RETURNING id, site_id, role, key_prefix, revoked_at
        """,
        (site_id, role, hash_secret(secret), secret[:PREFIX_CHARS], label),
    ).fetchone()
    assert row is not None
    return ApiKey(*row), secret


def authenticate(conn: psycopg.Connection[Any], secret: str) -> ApiKey | None:
    """The live (not revoked) key for ``secret``, or None."""
    row = conn.execute(
        """
        SELECT id, site_id, role, key_prefix, revoked_at FROM api_keys
        WHERE key_hash = %s AND revoked_at IS NULL
        """,
        (hash_secret(secret),),
    ).fetchone()
    return ApiKey(*row) if row is not None else None


def revoke_key(conn: psycopg.Connection[Any], key: str, *, now: datetime) -> ApiKey:
    """Revoke by key id (UUID), by the secret itself, or by its unique prefix."""
    where, param = _key_lookup(key)
    rows = conn.execute(
        f"""
        UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s)
        WHERE {where}
        RETURNING id, site_id, role, key_prefix, revoked_at
        """,
        (now, param),
    ).fetchall()
    if not rows:
        raise NotFound(f"no key matches {key[:PREFIX_CHARS]!r}", code="unknown_key")
    if len(rows) > 1:
        raise InputError("that prefix matches several keys; give the key id", code="ambiguous_key")
    return ApiKey(*rows[0])


def _key_lookup(key: str) -> tuple[str, str]:
    try:
        return "id = %s", str(uuid.UUID(key))
    except ValueError:
        pass
    if len(key) > PREFIX_CHARS:
        return "key_hash = %s", hash_secret(key)
    return "key_prefix = %s", key

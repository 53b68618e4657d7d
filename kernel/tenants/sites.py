"""Sites (tenants) and their plans."""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg

from kernel.errors import Conflict, InputError, NotFound
from kernel.tenants.keys import issue_key

__all__ = [
    "BILLING_MODES",
    "DEFAULT_RATE_LIMIT_PER_MINUTE",
    "NewSite",
    "Site",
    "create_site",
    "get_site",
    "list_sites",
    "resolve_site",
]

BILLING_MODES = ("enforce", "shadow", "off")
DEFAULT_RATE_LIMIT_PER_MINUTE = 2000
MAX_MONTHLY_LIMIT = 10**12
MAX_HARD_CAP_MULTIPLIER = Decimal(100)
_PUBLIC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,63}$")


@dataclass(frozen=True)
class Site:
    id: uuid.UUID
    public_id: str
    name: str
    billing_mode: str
    ingest_auth: str
    allowed_origins: tuple[str, ...]
    monthly_limit: int
    soft_limit_enabled: bool
    hard_cap_multiplier: Decimal
    rate_limit_per_minute: int

    @property
    def hard_cap(self) -> int:
        """H = floor(L * hard_cap_multiplier) with a soft limit; L without one (SPEC §4.1)."""
        if not self.soft_limit_enabled:
            return self.monthly_limit
        return int((Decimal(self.monthly_limit) * self.hard_cap_multiplier).to_integral_value("ROUND_FLOOR"))


@dataclass(frozen=True)
class NewSite:
    site: Site
    ingest_key: str


_SITE_COLUMNS = """
    s.id, s.public_id, s.name, s.billing_mode, s.ingest_auth, s.allowed_origins,
    p.monthly_limit, p.soft_limit_enabled, p.hard_cap_multiplier, p.rate_limit_per_minute
"""


def _site(row: tuple[Any, ...]) -> Site:
    values = list(row)
    values[5] = tuple(values[5] or ())
    return Site(*values)


def _validate(
    name: str,
    monthly_limit: int,
    hard_cap_multiplier: Decimal,
    rate_limit_per_minute: int,
    billing_mode: str,
) -> None:
    if not name or len(name) > 200:
        raise InputError("site name must be 1-200 characters", code="invalid_name")
    if not 0 <= monthly_limit <= MAX_MONTHLY_LIMIT:
        raise InputError(f"monthly limit must be 0..{MAX_MONTHLY_LIMIT}", code="invalid_monthly_limit")
    if not Decimal(1) <= hard_cap_multiplier <= MAX_HARD_CAP_MULTIPLIER:
        raise InputError(
            f"hard cap multiplier must be between 1 and {MAX_HARD_CAP_MULTIPLIER}",
            code="invalid_hard_cap_multiplier",
        )
    if not 1 <= rate_limit_per_minute <= 10**7:
        raise InputError("rate limit per minute must be 1..10000000", code="invalid_rate_limit")
    if billing_mode not in BILLING_MODES:
        raise InputError(f"billing mode must be one of {', '.join(BILLING_MODES)}", code="invalid_billing_mode")


def parse_multiplier(text: str | Decimal | float) -> Decimal:
    try:
        value = Decimal(str(text))
    except InvalidOperation as exc:
        raise InputError(
            f"hard cap multiplier must be a number, got {text!r}",
            code="invalid_hard_cap_multiplier",
        ) from exc
    if not value.is_finite():
        raise InputError("hard cap multiplier must be finite", code="invalid_hard_cap_multiplier")
    return value


def create_site(
    conn: psycopg.Connection[Any],
    *,
    name: str,
    monthly_limit: int,
    soft_limit_enabled: bool = False,
    hard_cap_multiplier: Decimal = Decimal(1),
    rate_limit_per_minute: int = DEFAULT_RATE_LIMIT_PER_MINUTE,
    billing_mode: str = "enforce",
    public_id: str | None = None,
    site_id: uuid.UUID | None = None,
    ingest_auth: str = "key",
    allowed_origins: tuple[str, ...] = (),
    ingest_key: str | None = None,
) -> NewSite:
    """Create a site, its plan and one ingest key, in the caller's transaction."""
    _validate(name, monthly_limit, hard_cap_multiplier, rate_limit_per_minute, billing_mode)
    public_id = public_id or f"site_{secrets.token_hex(6)}"
    if not _PUBLIC_ID.match(public_id):
        raise InputError(
            "public id must be 2-64 of [A-Za-z0-9_-], starting alphanumeric",
            code="invalid_public_id",
        )
    if ingest_auth not in ("key", "public"):
        raise InputError("ingest auth must be 'key' or 'public'", code="invalid_ingest_auth")
    site_id = site_id or uuid.uuid4()
    try:
        with conn.transaction():
            conn.execute(
                """
                INSERT INTO sites (id, public_id, name, billing_mode, ingest_auth, allowed_origins)
                VALUES (%s, %s, %s, %s, %s, %s)
                """,
                (site_id, public_id, name, billing_mode, ingest_auth, list(allowed_origins)),
            )
            conn.execute(
                """
                INSERT INTO site_plans
                    (site_id, monthly_limit, soft_limit_enabled, hard_cap_multiplier, rate_limit_per_minute)
                VALUES (%s, %s, %s, %s, %s)
                """,
                (
                    site_id,
                    monthly_limit,
                    soft_limit_enabled,
                    hard_cap_multiplier,
                    rate_limit_per_minute,
                ),
            )
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict(f"a site with public id {public_id!r} or id {site_id} exists", code="site_exists") from exc
    _, secret = issue_key(conn, site_id=site_id, role="ingest", secret=ingest_key)
    return NewSite(get_site(conn, site_id), secret)


def get_site(conn: psycopg.Connection[Any], site_id: uuid.UUID) -> Site:
    row = conn.execute(
        f"SELECT {_SITE_COLUMNS} FROM sites s JOIN site_plans p ON p.site_id = s.id WHERE s.id = %s",
        (site_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"unknown site {site_id}", code="unknown_site")
    return _site(row)


def resolve_site(conn: psycopg.Connection[Any], ref: str) -> Site:
    """A site by its UUID or its public id; ``NotFound`` with one clear line otherwise."""
    try:
        return get_site(conn, uuid.UUID(ref))
    except ValueError:
        pass
    row = conn.execute(
        f"SELECT {_SITE_COLUMNS} FROM sites s JOIN site_plans p ON p.site_id = s.id WHERE s.public_id = %s",
        (ref,),
    ).fetchone()
    if row is None:
        raise NotFound(f"unknown site {ref!r}", code="unknown_site")
    return _site(row)


def list_sites(conn: psycopg.Connection[Any]) -> list[Site]:
    rows = conn.execute(
        f"SELECT {_SITE_COLUMNS} FROM sites s JOIN site_plans p ON p.site_id = s.id ORDER BY s.public_id"
    ).fetchall()
    return [_site(r) for r in rows]

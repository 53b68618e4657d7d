"""Sites (tenants) and their plans."""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from kernel.errors import Conflict, InputError, NotFound
from kernel.tenants.keys import LIVE_KEY_SQL, issue_key

__all__ = [
    "BILLING_MODES",
    "DEFAULT_CLIENT_RATE_LIMIT_PER_MINUTE",
    "DEFAULT_RATE_LIMIT_PER_MINUTE",
    "INGEST_AUTHS",
    "SITE_COLUMNS",
    "NewSite",
    "Site",
    "SiteChange",
    "create_site",
    "get_site",
    "list_sites",
    "parse_origin",
    "resolve_site",
    "site_by_key_hash_async",
    "site_by_public_id_async",
    "site_from_row",
    "update_site",
]

BILLING_MODES = ("enforce", "shadow", "off")
INGEST_AUTHS = ("key", "public")
DEFAULT_RATE_LIMIT_PER_MINUTE = 2000  # events per minute, per site
DEFAULT_CLIENT_RATE_LIMIT_PER_MINUTE = 300  # events per minute, per client address (public mode)
MAX_RATE_LIMIT_PER_MINUTE = 10**7
MAX_MONTHLY_LIMIT = 10**12
MAX_HARD_CAP_MULTIPLIER = Decimal(100)
MAX_ALLOWED_ORIGINS = 100
_PUBLIC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,63}$")
# A browser Origin: scheme, host (name, IPv4 or [IPv6]) and optional port; no path, no slash.
_ORIGIN = re.compile(
    r"^https?://(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$"
)
# The fields ``update_site`` may change: the columns of revkernel_update_site (migration 0020).
UPDATABLE_FIELDS = (
    "name",
    "billing_mode",
    "ingest_auth",
    "allowed_origins",
    "monthly_limit",
    "soft_limit_enabled",
    "hard_cap_multiplier",
    "rate_limit_per_minute",
    "client_rate_limit_per_minute",
)


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
    rate_limit_per_minute: int  # events per minute for the site, over every client
    client_rate_limit_per_minute: int = DEFAULT_CLIENT_RATE_LIMIT_PER_MINUTE  # per address, public mode

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


@dataclass(frozen=True)
class SiteChange:
    """What ``update_site`` changed: the fields' values before and after (also in ``audit_log``)."""

    site: Site
    before: dict[str, Any]
    after: dict[str, Any]


# The columns of a site and its plan, in ``Site`` field order (every site lookup selects these).
SITE_COLUMNS = """
    s.id, s.public_id, s.name, s.billing_mode, s.ingest_auth, s.allowed_origins,
    p.monthly_limit, p.soft_limit_enabled, p.hard_cap_multiplier, p.rate_limit_per_minute,
    p.client_rate_limit_per_minute
"""


def site_from_row(row: tuple[Any, ...]) -> Site:
    """A ``Site`` from a row of ``SITE_COLUMNS``."""
    values = list(row)
    values[5] = tuple(values[5] or ())
    return Site(*values)


def parse_origin(text: str) -> str:
    """A browser origin as the ``Origin`` header sends it (``https://shop.example[:port]``)."""
    if not _ORIGIN.match(text):
        raise InputError(
            f"an allowed origin is scheme://host[:port] with no path, like https://shop.example; got {text!r}",
            code="invalid_origin",
        )
    return text


def _validate(
    name: str,
    monthly_limit: int,
    hard_cap_multiplier: Decimal,
    rate_limit_per_minute: int,
    billing_mode: str,
    *,
    client_rate_limit_per_minute: int = DEFAULT_CLIENT_RATE_LIMIT_PER_MINUTE,
    ingest_auth: str = "key",
    allowed_origins: tuple[str, ...] = (),
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
    if not 1 <= rate_limit_per_minute <= MAX_RATE_LIMIT_PER_MINUTE:
        raise InputError(f"rate limit per minute must be 1..{MAX_RATE_LIMIT_PER_MINUTE}", code="invalid_rate_limit")
    if not 1 <= client_rate_limit_per_minute <= MAX_RATE_LIMIT_PER_MINUTE:
        raise InputError(
            f"client rate limit per minute must be 1..{MAX_RATE_LIMIT_PER_MINUTE}", code="invalid_rate_limit"
        )
    if billing_mode not in BILLING_MODES:
        raise InputError(f"billing mode must be one of {', '.join(BILLING_MODES)}", code="invalid_billing_mode")
    if ingest_auth not in INGEST_AUTHS:
        raise InputError("ingest auth must be 'key' or 'public'", code="invalid_ingest_auth")
    if len(allowed_origins) > MAX_ALLOWED_ORIGINS:
        raise InputError(f"a site allows at most {MAX_ALLOWED_ORIGINS} origins", code="invalid_origin")
    for origin in allowed_origins:
        parse_origin(origin)
    if ingest_auth == "public" and not allowed_origins:
        # Keyless ingest is accepted only from allowed origins: with none, it would accept nothing.
        raise InputError("public ingest needs at least one allowed origin", code="invalid_ingest_auth")


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
    client_rate_limit_per_minute: int = DEFAULT_CLIENT_RATE_LIMIT_PER_MINUTE,
    billing_mode: str = "enforce",
    public_id: str | None = None,
    site_id: uuid.UUID | None = None,
    ingest_auth: str = "key",
    allowed_origins: tuple[str, ...] = (),
    ingest_key: str | None = None,
    key_label: str | None = None,
) -> NewSite:
    """Create a site, its plan and one ingest key, in the caller's transaction."""
    _validate(
        name,
        monthly_limit,
        hard_cap_multiplier,
        rate_limit_per_minute,
        billing_mode,
        client_rate_limit_per_minute=client_rate_limit_per_minute,
        ingest_auth=ingest_auth,
        allowed_origins=allowed_origins,
    )
    public_id = public_id or f"site_{secrets.token_hex(6)}"
    if not _PUBLIC_ID.match(public_id):
        raise InputError(
            "public id must be 2-64 of [A-Za-z0-9_-], starting alphanumeric",
            code="invalid_public_id",
        )
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
                    (site_id, monthly_limit, soft_limit_enabled, hard_cap_multiplier, rate_limit_per_minute,
                     client_rate_limit_per_minute)
                VALUES (%s, %s, %s, %s, %s, %s)
                """,
                (
                    site_id,
                    monthly_limit,
                    soft_limit_enabled,
                    hard_cap_multiplier,
                    rate_limit_per_minute,
                    client_rate_limit_per_minute,
                ),
            )
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict(f"a site with public id {public_id!r} or id {site_id} exists", code="site_exists") from exc
    _, secret = issue_key(conn, site_id=site_id, role="ingest", secret=ingest_key, label=key_label)
    return NewSite(get_site(conn, site_id), secret)


def get_site(conn: psycopg.Connection[Any], site_id: uuid.UUID) -> Site:
    row = conn.execute(
        f"SELECT {SITE_COLUMNS} FROM sites s JOIN site_plans p ON p.site_id = s.id WHERE s.id = %s",
        (site_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"unknown site {site_id}", code="unknown_site")
    return site_from_row(row)


def resolve_site(conn: psycopg.Connection[Any], ref: str) -> Site:
    """A site by its UUID or its public id; ``NotFound`` with one clear line otherwise."""
    try:
        return get_site(conn, uuid.UUID(ref))
    except ValueError:
        pass
    row = conn.execute(
        f"SELECT {SITE_COLUMNS} FROM sites s JOIN site_plans p ON p.site_id = s.id WHERE s.public_id = %s",
        (ref,),
    ).fetchone()
    if row is None:
        raise NotFound(f"unknown site {ref!r}", code="unknown_site")
    return site_from_row(row)


def list_sites(conn: psycopg.Connection[Any]) -> list[Site]:
    rows = conn.execute(
        f"SELECT {SITE_COLUMNS} FROM sites s JOIN site_plans p ON p.site_id = s.id ORDER BY s.public_id"
    ).fetchall()
    return [site_from_row(r) for r in rows]


def update_site(
    conn: psycopg.Connection[Any],
    site_id: uuid.UUID,
    changes: dict[str, Any],
    *,
    actor: str,
    now: datetime,
) -> SiteChange:
    """Change a site and its plan through ``revkernel_update_site``; audit-logged before/after.

    The new values are validated as a whole (the same rules as ``create_site``) before the
    database function applies them under the site's row lock. The ledger transaction reads the
    plan itself, so a new limit or billing mode applies to the next event and re-decides nothing.

    Raises:
        InputError: no change given, an unknown field, or an invalid value.
        NotFound: the site does not exist.
    """
    unknown = sorted(set(changes) - set(UPDATABLE_FIELDS))
    if unknown:
        raise InputError(f"unknown site fields: {', '.join(unknown)}", code="invalid_change")
    if not changes:
        raise InputError("nothing to change: give at least one option", code="invalid_change")
    current = get_site(conn, site_id)
    normalised: dict[str, Any] = {k: tuple(v) if k == "allowed_origins" else v for k, v in changes.items()}
    merged = replace(current, **normalised)
    _validate(
        merged.name,
        merged.monthly_limit,
        merged.hard_cap_multiplier,
        merged.rate_limit_per_minute,
        merged.billing_mode,
        client_rate_limit_per_minute=merged.client_rate_limit_per_minute,
        ingest_auth=merged.ingest_auth,
        allowed_origins=merged.allowed_origins,
    )
    wire = {
        k: (str(v) if isinstance(v, Decimal) else list(v) if isinstance(v, tuple) else v)
        for k, v in asdict(merged).items()
        if k in changes
    }
    try:
        row = conn.execute(
            "SELECT revkernel_update_site(%s, %s, %s, %s)", (site_id, Jsonb(wire), actor, now)
        ).fetchone()
    except psycopg.errors.NoDataFound as exc:
        raise NotFound(f"unknown site {site_id}", code="unknown_site") from exc
    except (psycopg.errors.CheckViolation, psycopg.errors.InvalidParameterValue) as exc:
        raise InputError(str(exc).strip().splitlines()[0], code="invalid_change") from exc
    assert row is not None
    diff: dict[str, dict[str, Any]] = row[0]
    return SiteChange(get_site(conn, site_id), diff["before"], diff["after"])


# The key's own expiry comes along, so a cached entry stops at that instant (a rotation's end).
_SITE_BY_KEY_HASH = f"""
SELECT k.expires_at, {SITE_COLUMNS}
FROM api_keys k JOIN sites s ON s.id = k.site_id JOIN site_plans p ON p.site_id = s.id
WHERE k.key_hash = %s AND k.role = 'ingest' AND {LIVE_KEY_SQL}
"""
_SITE_BY_PUBLIC_ID = f"SELECT {SITE_COLUMNS} FROM sites s JOIN site_plans p ON p.site_id = s.id WHERE s.public_id = %s"


async def site_by_key_hash_async(
    conn: psycopg.AsyncConnection[Any], key_hash: str, now: datetime
) -> tuple[Site, datetime | None] | None:
    """The site of an ingest key live at ``now``, with the key's expiry; None for an unknown,
    revoked, expired or non-ingest key."""
    cur = await conn.execute(_SITE_BY_KEY_HASH, (key_hash, now))
    row = await cur.fetchone()
    return (site_from_row(row[1:]), row[0]) if row is not None else None


async def site_by_public_id_async(conn: psycopg.AsyncConnection[Any], public_id: str) -> Site | None:
    cur = await conn.execute(_SITE_BY_PUBLIC_ID, (public_id,))
    row = await cur.fetchone()
    return site_from_row(row) if row is not None else None

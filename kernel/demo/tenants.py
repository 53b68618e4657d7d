"""The deterministic demo tenants: four plans and billing modes, the same on every machine.

Their ids and keys are derived from fixed names so that `make demo` is repeatable and the
notebooks' default parameters point at them. Demo keys are public knowledge: never reuse them.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg

from kernel.tenants import create_site, issue_key
from kernel.tenants.keys import hash_secret

__all__ = ["DEMO_SITES", "DemoSite", "demo_token", "ensure_demo_tenants"]

_NAMESPACE = uuid.UUID("6f1c1d2e-8a55-4d3c-9a53-2b0e6f0c1a10")


@dataclass(frozen=True)
class DemoSite:
    public_id: str
    name: str
    monthly_limit: int
    soft_limit_enabled: bool
    hard_cap_multiplier: Decimal
    rate_limit_per_minute: int
    billing_mode: str
    story: str

    @property
    def site_id(self) -> uuid.UUID:
        return uuid.uuid5(_NAMESPACE, self.public_id)

    @property
    def ingest_key(self) -> str:
        return f"rk_ingest_demo_{_derive(self.public_id, 'ingest')}"


DEMO_SITES: tuple[DemoSite, ...] = (
    DemoSite(
        "demo-hardcap",
        "Acme Analytics",
        400,
        False,
        Decimal(1),
        600,
        "enforce",
        "enforce, hard cap: rejected past 400 a month, then a retry storm",
    ),
    DemoSite(
        "demo-overage",
        "Globex Shop",
        300,
        True,
        Decimal("1.5"),
        600,
        "enforce",
        "enforce, soft limit: OVERAGE from 301 to 450, rejected past 450",
    ),
    DemoSite(
        "demo-shadow",
        "Initech Blog",
        200,
        False,
        Decimal(1),
        600,
        "shadow",
        "shadow: decisions recorded, never rejected",
    ),
    DemoSite(
        "demo-off",
        "Umbrella Labs",
        1000,
        False,
        Decimal(1),
        600,
        "off",
        "billing off: every event recorded non-billable",
    ),
)


def _derive(public_id: str, purpose: str) -> str:
    return hashlib.sha256(f"revkernel-demo:{public_id}:{purpose}".encode()).hexdigest()[:32]


def demo_token(role: str, public_id: str | None = None) -> str:
    """The demo user token for ``role`` on a demo site (or platform-wide when no site)."""
    return f"rk_user_demo_{_derive(public_id or 'platform', role)}"


def ensure_demo_tenants(conn: psycopg.Connection[Any]) -> list[tuple[DemoSite, bool]]:
    """Create the demo sites, keys and tokens that are missing; report which were created now."""
    result: list[tuple[DemoSite, bool]] = []
    for demo in DEMO_SITES:
        exists = conn.execute("SELECT 1 FROM sites WHERE id = %s", (demo.site_id,)).fetchone()
        if exists is None:
            create_site(
                conn,
                name=demo.name,
                monthly_limit=demo.monthly_limit,
                soft_limit_enabled=demo.soft_limit_enabled,
                hard_cap_multiplier=demo.hard_cap_multiplier,
                rate_limit_per_minute=demo.rate_limit_per_minute,
                billing_mode=demo.billing_mode,
                public_id=demo.public_id,
                site_id=demo.site_id,
                ingest_key=demo.ingest_key,
            )
        for role in ("viewer", "billing", "admin"):
            _ensure_token(conn, demo.site_id, role, demo_token(role, demo.public_id))
        result.append((demo, exists is None))
    _ensure_token(conn, None, "admin", demo_token("admin"))
    return result


def _ensure_token(conn: psycopg.Connection[Any], site_id: uuid.UUID | None, role: str, secret: str) -> None:
    found = conn.execute("SELECT 1 FROM api_keys WHERE key_hash = %s", (hash_secret(secret),)).fetchone()
    if found is None:
        issue_key(conn, site_id=site_id, role=role, secret=secret, label="demo")

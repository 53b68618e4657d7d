"""Shared pieces of the hardening tests: tenants of two sites, and "nothing was written" probes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from kernel.tenants import create_site, issue_key, revoke_key

# Every table a request could write. A rejected request must leave all of them as they were.
WRITABLE_TABLES = (
    "sites",
    "site_plans",
    "api_keys",
    "ingest_idempotency",
    "site_usage_monthly",
    "ingest_outbox",
    "ingest_publish_failures",
    "billing_reconciliation_jobs",
    "reconciliation_drift_log",
    "invoice_snapshot",
    "ledger_archive",
    "dispute_holds",
    "cron_runs",
    "audit_log",
)


def table_state(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Row counts of every writable table plus the counters' sums (counters change in place)."""
    state: dict[str, Any] = {}
    for table in WRITABLE_TABLES:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # table names are constants
        assert row is not None
        state[table] = int(row[0])
    counters = conn.execute(
        "SELECT coalesce(sum(event_count), 0), coalesce(sum(overage_count), 0), coalesce(sum(rejected_count), 0), "
        "coalesce(sum(non_billable_count), 0), coalesce(sum(dedup_count), 0) FROM site_usage_monthly"
    ).fetchone()
    state["counters"] = tuple(int(v) for v in counters or ())
    return state


@dataclass(frozen=True)
class Tenant:
    site_id: uuid.UUID
    public_id: str
    ingest_key: str
    viewer: str
    billing: str
    admin: str
    revoked_ingest: str
    revoked_billing: str


@dataclass(frozen=True)
class Tenants:
    a: Tenant
    b: Tenant
    platform_admin: str
    revoked_platform_admin: str


def _tenant(conn: psycopg.Connection[Any], name: str) -> Tenant:
    new = create_site(conn, name=f"isolation {name}", public_id=f"iso-{name}", monthly_limit=10_000)
    site_id = new.site.id
    tokens = {role: issue_key(conn, site_id=site_id, role=role)[1] for role in ("viewer", "billing", "admin")}
    _, revoked_ingest = issue_key(conn, site_id=site_id, role="ingest")
    _, revoked_billing = issue_key(conn, site_id=site_id, role="billing")
    now = datetime.now(UTC)
    revoke_key(conn, revoked_ingest, now=now)
    revoke_key(conn, revoked_billing, now=now)
    return Tenant(
        site_id=site_id,
        public_id=new.site.public_id,
        ingest_key=new.ingest_key,
        viewer=tokens["viewer"],
        billing=tokens["billing"],
        admin=tokens["admin"],
        revoked_ingest=revoked_ingest,
        revoked_billing=revoked_billing,
    )


def make_tenants(conn: psycopg.Connection[Any]) -> Tenants:
    """Sites A and B with every role, revoked keys, and a (live and a revoked) platform admin."""
    _, platform_admin = issue_key(conn, site_id=None, role="admin")
    _, revoked_platform = issue_key(conn, site_id=None, role="admin")
    revoke_key(conn, revoked_platform, now=datetime.now(UTC))
    return Tenants(
        a=_tenant(conn, "a"),
        b=_tenant(conn, "b"),
        platform_admin=platform_admin,
        revoked_platform_admin=revoked_platform,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}

"""Fixtures of the export tests: tenants with every kind of token, ledger rows, frozen months.

Ledger rows are INSERTed directly with the exact columns of ``ingest_idempotency`` (the ingest
path is tested on its own); months are frozen with the real ``kernel.cron.freeze`` code.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from kernel.clock import ManualClock
from kernel.cron.freeze import FrozenSite, freeze_site_month
from kernel.cron.keystore import register_public_key
from kernel.cron.runs import CronContext
from kernel.db.connect import Database
from kernel.ledger import SigningKey
from kernel.settings import Settings
from kernel.tenants import create_site, issue_key, revoke_key

MONTH = "2026-10"
MONTH_START = datetime(2026, 10, 1, tzinfo=UTC)
FROZEN_AT = datetime(2026, 11, 1, 0, 10, tzinfo=UTC)

LEDGER_COLUMNS = (
    "site_id",
    "idempotency_key",
    "idempotency_version",
    "created_at",
    "billable",
    "billing_state",
    "billing_reason",
    "event_category",
    "event_action",
    "event_label",
    "event_url",
    "fingerprint",
    "payload_hash",
    "occurred_at",
    "response_status",
    "quota_remaining",
    "request_id",
)


@dataclass
class Tenant:
    site_id: uuid.UUID
    tokens: dict[str, str] = field(default_factory=dict)  # role -> secret; "revoked" is a revoked billing token


def make_tenant(conn: psycopg.Connection[Any], public_id: str) -> Tenant:
    new = create_site(conn, name=public_id, monthly_limit=1000, public_id=public_id)
    tenant = Tenant(new.site.id, {"ingest": new.ingest_key})
    for role in ("viewer", "billing", "admin"):
        _, tenant.tokens[role] = issue_key(conn, site_id=new.site.id, role=role)
    key, tenant.tokens["revoked"] = issue_key(conn, site_id=new.site.id, role="billing")
    revoke_key(conn, str(key.id), now=datetime(2026, 10, 2, tzinfo=UTC))
    return tenant


def platform_tokens(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return {role: issue_key(conn, site_id=None, role=role)[1] for role in ("viewer", "billing", "admin")}


def ledger_row(
    key: str,
    created_at: datetime,
    *,
    billable: bool = True,
    state: str = "ACCEPTED",
    reason: str = "billable",
    category: str | None = "page",
    action: str | None = "view",
    label: str | None = None,
    version: int = 2,
) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "idempotency_version": version,
        "created_at": created_at,
        "billable": billable,
        "billing_state": state,
        "billing_reason": reason,
        "event_category": category,
        "event_action": action,
        "event_label": label,
        "event_url": "https://shop.example/p",
        "fingerprint": "fp1",
        # Deterministic across runs (Python's hash() of a str is salted per process).
        "payload_hash": hashlib.sha256(key.encode("utf-8")).hexdigest(),
        "occurred_at": created_at - timedelta(seconds=1),
        "response_status": 429 if state == "REJECTED_QUOTA" else 200,
        "quota_remaining": 0,
        "request_id": None,
    }


def insert_rows(conn: psycopg.Connection[Any], site_id: uuid.UUID, rows: list[dict[str, Any]]) -> None:
    placeholders = ", ".join(["%s"] * len(LEDGER_COLUMNS))
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO ingest_idempotency ({', '.join(LEDGER_COLUMNS)}) VALUES ({placeholders})",
            [tuple([site_id] + [row[c] for c in LEDGER_COLUMNS[1:]]) for row in rows],
        )


def freeze(settings: Settings, site_id: uuid.UUID, year_month: str, key: SigningKey) -> FrozenSite:
    """Freeze one site-month with the real freeze code, signed by ``key``."""
    ctx = CronContext(settings=settings, clock=ManualClock(FROZEN_AT), db=Database(settings), trigger="cli")
    with ctx.db.connect("app", autocommit=True) as conn:
        register_public_key(conn, key, FROZEN_AT)
    return freeze_site_month(ctx, key, str(site_id), year_month, FROZEN_AT)


def sample_rows() -> list[dict[str, Any]]:
    """A small month: billable, overage, rejected, non-billable, ties on created_at, hostile cells."""
    t = MONTH_START + timedelta(days=3, hours=9)
    return [
        ledger_row("evt-0001", t, label="=cmd|' /C calc'!A0"),
        ledger_row("evt-0002", t + timedelta(seconds=1), label="+1+1", category="-2"),
        # Same instant: ordered by the key's bytes ("B" 0x42 before "a" 0x61).
        ledger_row("a-tie", t + timedelta(seconds=2), label="@SUM(A1:A2)"),
        ledger_row("B-tie", t + timedelta(seconds=2), label="\tTabbed", action="\rCarriage"),
        ledger_row("evt-0005", t + timedelta(seconds=3), label='plain, with "quotes"\nand a newline'),
        ledger_row("'quoted-key", t + timedelta(seconds=4), label="'already quoted"),
        ledger_row("-dash-key", t + timedelta(seconds=5), state="OVERAGE", reason="overage"),
        ledger_row("evt-0008", t + timedelta(seconds=6), state="OVERAGE", reason="overage", label="Ünïcode ✓"),
        ledger_row(
            "evt-0009", t + timedelta(seconds=7), billable=False, state="REJECTED_QUOTA", reason="rejected_quota"
        ),
        ledger_row(
            "evt-0010",
            t + timedelta(days=1),
            billable=False,
            reason="scroll_depth",
            category="interaction",
            action="scroll_depth",
            label=None,
            version=1,
        ),
        ledger_row("evt-0011", t + timedelta(days=2), category=None, action=None, label=""),
    ]


@pytest.fixture
def signing_key() -> SigningKey:
    return SigningKey.generate()

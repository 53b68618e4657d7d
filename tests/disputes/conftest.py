"""Fixtures of the dispute tests: two tenants with every kind of token, a frozen month each.

Ledger rows are the export tests' sample month (``tests/export/conftest.py``: billable, OVERAGE,
REJECTED_QUOTA and non-billable rows); months are frozen by the real freeze code with the
deployment's own signing key (``kernel.cron.keystore``), which is also the key a resolve signs
corrections with, so one trusted key verifies a whole packet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from kernel.clock import ManualClock
from kernel.cron.keystore import load_signing_key
from kernel.ledger import SigningKey
from kernel.settings import Settings
from tests.export.conftest import (
    MONTH,
    Tenant,
    freeze,
    insert_rows,
    ledger_row,
    make_tenant,
    platform_tokens,
    sample_rows,
)

# The dispute happens a few days after the freeze of MONTH (2026-10).
OPENED_AT = datetime(2026, 11, 5, 9, 30, tzinfo=UTC)
BILLABLE = ("evt-0001", "evt-0002", "a-tie", "B-tie", "evt-0005", "'quoted-key", "-dash-key", "evt-0008", "evt-0011")
OVERAGE = ("-dash-key", "evt-0008")
REJECTED = "evt-0009"
NON_BILLABLE = "evt-0010"


@dataclass
class World:
    own: Tenant
    other: Tenant
    platform: dict[str, str]
    key: SigningKey
    clock: ManualClock

    @property
    def own_site(self) -> str:
        return str(self.own.site_id)


@pytest.fixture
def world(settings: Settings, app_conn: psycopg.Connection[Any]) -> World:
    own = make_tenant(app_conn, "own-shop")
    other = make_tenant(app_conn, "other-shop")
    insert_rows(app_conn, own.site_id, sample_rows())
    # The other tenant's month: its keys must never be creditable to the own site.
    other_rows = [ledger_row(f"other-{n}", datetime(2026, 10, 9, 12, n, tzinfo=UTC)) for n in range(3)]
    insert_rows(app_conn, other.site_id, other_rows)
    key = load_signing_key(settings)
    freeze(settings, own.site_id, MONTH, key)
    freeze(settings, other.site_id, MONTH, key)
    return World(own, other, platform_tokens(app_conn), key, ManualClock(OPENED_AT))


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


def counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows of every table a dispute move writes (a refused move must leave them all as they were)."""
    tables = ("dispute_cases", "dispute_holds", "invoice_corrections", "correction_credits", "audit_log")
    found = {}
    for table in tables:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        found[table] = int(row[0]) if row else 0
    states = conn.execute("SELECT string_agg(case_id || ':' || state, ',' ORDER BY case_id) FROM dispute_cases")
    found["states"] = hash((states.fetchone() or ("",))[0])
    return found

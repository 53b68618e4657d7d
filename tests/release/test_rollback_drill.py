"""Runbook §6 rollback drill: with ``BILLING_ENABLED=false`` nothing becomes billable.

Events are still recorded (the ledger stays the evidence) but non-billable with reason
``billing_disabled``; the runbook's drift query returns the same count before and after, and
turning the flag back on bills the next event again.
"""

from __future__ import annotations

from typing import Any

import psycopg
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.settings import Settings
from kernel.tenants import create_site

DRIFT_SQL = "SELECT COUNT(*) FROM ingest_idempotency WHERE billable=true"


def _drift(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(DRIFT_SQL).fetchone()
    assert row is not None
    return int(row[0])


def _post(client: TestClient[Any], key: str, body: dict[str, Any]) -> Any:
    return client.post("/api/sync", json=body, headers={"Authorization": f"Bearer {key}"})


def test_billing_disabled_records_non_billable_and_drift_count_is_unchanged(
    settings: Settings, owner_conn: psycopg.Connection[Any]
) -> None:
    site = create_site(owner_conn, name="rollback drill", public_id="rollback-drill", monthly_limit=1)
    key = site.ingest_key
    with TestClient(create_app(settings)) as client:
        assert _post(client, key, {"event_id": "before-1", "ec": "cta", "ea": "click"}).status_code == 200
    before = _drift(owner_conn)
    assert before == 1

    with TestClient(create_app(settings.with_overrides(billing_enabled=False))) as client:
        single = _post(client, key, {"event_id": "off-1", "ec": "cta", "ea": "click"})
        # The plan's limit of 1 is used up: with billing off that must not turn into a quota 429.
        assert single.status_code == 200, single.text
        assert single.headers.get("x-opsmantik-quota-exceeded") is None
        batch = _post(
            client,
            key,
            {"events": [{"event_id": f"off-batch-{i}", "ec": "form", "ea": "submit"} for i in range(5)]},
        )
        assert batch.status_code == 200, batch.text
        duplicate = _post(client, key, {"event_id": "off-1", "ec": "cta", "ea": "click"})
        assert duplicate.headers.get("x-opsmantik-dedup") == "1"

    rows = owner_conn.execute(
        "SELECT idempotency_key, billable, billing_reason FROM ingest_idempotency "
        "WHERE site_id = %s AND idempotency_key LIKE 'off-%%' ORDER BY idempotency_key",
        (site.site.id,),
    ).fetchall()
    assert len(rows) == 6
    assert all(billable is False and reason == "billing_disabled" for _, billable, reason in rows), rows
    assert _drift(owner_conn) == before
    counted = owner_conn.execute(
        "SELECT sum(event_count) FROM site_usage_monthly WHERE site_id = %s", (site.site.id,)
    ).fetchone()
    assert counted is not None and counted[0] == before

    # Flag back on: billing resumes (and the plan's quota applies again).
    with TestClient(create_app(settings)) as client:
        again = _post(client, key, {"event_id": "after-1", "ec": "cta", "ea": "click"})
        assert again.status_code == 429 and again.headers.get("x-opsmantik-quota-exceeded") == "1"
    assert _drift(owner_conn) == before

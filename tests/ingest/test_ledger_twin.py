"""The ledger function (SQL) and ``service.decide`` (Python) agree on every branch: one rule, two paths."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from kernel.db.connect import Database
from kernel.ingest import queries
from kernel.ingest.keys import keyed_event
from kernel.ingest.schemas import EventIn
from kernel.ingest.service import decide
from tests.ingest.support import make_site

NOW = datetime(2026, 5, 31, 23, 59, 59, 999000, tzinfo=UTC)
CLASSES = [None, None, "scroll_depth", None, "system", None, None, None, None, None, None]


def _event(i: int, event_class: str | None) -> EventIn:
    if event_class == "scroll_depth":
        return EventIn(event_id=f"e{i}", ec="interaction", ea="scroll_depth")
    if event_class == "system":
        return EventIn(event_id=f"e{i}", ec="system", ea="ping")
    return EventIn(event_id=f"e{i}", ec="shop", ea="buy")


@pytest.mark.parametrize(
    ("mode", "limit", "soft", "multiplier", "enabled"),
    [
        ("enforce", 3, False, "1", True),
        ("enforce", 3, True, "2", True),
        ("enforce", 0, True, "3", True),
        ("shadow", 2, True, "1.5", True),
        ("off", 2, False, "1", True),
        ("enforce", 2, False, "1", False),
    ],
)
def test_sql_decisions_equal_python_decisions(
    database: Database,
    app_conn: psycopg.Connection[Any],
    mode: str,
    limit: int,
    soft: bool,
    multiplier: str,
    enabled: bool,
) -> None:
    site = make_site(
        app_conn,
        monthly_limit=limit,
        soft_limit_enabled=soft,
        hard_cap_multiplier=Decimal(multiplier),
        billing_mode=mode,
    )
    site_id = site.site.id
    events = [
        keyed_event(_event(i, c), site_id=site_id, now_ms=0, header_key=None, field_prefix="")
        for i, c in enumerate(CLASSES)
    ]
    # One batch with a duplicate of its own first event at the end, then one event per call.
    first = [*events[:6], events[0]]
    rest = events[6:]

    async def write() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(database.conninfo("app"), autocommit=True) as conn:
            results = await queries.write_events(
                conn, site_id=site_id, now=NOW, request_id="twin", billing_enabled=enabled, events=first
            )
            for event in rest:
                results += await queries.write_events(
                    conn, site_id=site_id, now=NOW, request_id="twin", billing_enabled=enabled, events=[event]
                )
        return results

    results = asyncio.run(write())
    billable_so_far = 0
    expected_counts = {"event_count": 0, "overage_count": 0, "rejected_count": 0, "non_billable_count": 0}
    for event, result in zip([*first[:6], *rest], [*results[:6], *results[7:]], strict=True):
        d = decide(
            position=billable_so_far + 1,
            quota_limit=limit,
            hard_cap=site.site.hard_cap,
            billing_mode=mode,
            billing_enabled=enabled,
            event_class=event.event_class,
        )
        assert result is not None and result.inserted
        assert (result.billable, result.billing_state, result.billing_reason) == (
            d.billable,
            d.billing_state,
            d.billing_reason,
        )
        assert (result.response_status, result.quota_remaining) == (d.response_status, d.quota_remaining)
        billable_so_far += d.billable
        expected_counts["event_count"] += d.billable
        expected_counts["overage_count"] += d.billing_state == "OVERAGE"
        expected_counts["rejected_count"] += d.billing_state == "REJECTED_QUOTA"
        expected_counts["non_billable_count"] += not d.billable and d.billing_state != "REJECTED_QUOTA"
    duplicate = results[6]
    assert duplicate is not None and not duplicate.inserted and duplicate.billing_state == results[0].billing_state
    row = app_conn.execute(
        """SELECT event_count, overage_count, rejected_count, non_billable_count, dedup_count
           FROM site_usage_monthly WHERE site_id = %s AND year_month = '2026-05'""",
        (site_id,),
    ).fetchone()
    assert row == (*expected_counts.values(), 1)
    # The counters are caches of the ledger: recount them from the rows.
    recount = app_conn.execute(
        """SELECT count(*) FILTER (WHERE billable), count(*) FILTER (WHERE billing_state = 'OVERAGE'),
                  count(*) FILTER (WHERE billing_state = 'REJECTED_QUOTA'),
                  count(*) FILTER (WHERE NOT billable AND billing_state <> 'REJECTED_QUOTA')
           FROM ingest_idempotency WHERE site_id = %s AND year_month = '2026-05'""",
        (site_id,),
    ).fetchone()
    assert recount == tuple(expected_counts.values())
    published = app_conn.execute("SELECT count(*) FROM ingest_outbox WHERE site_id = %s", (site_id,)).fetchone()
    assert published == (len(CLASSES) - expected_counts["rejected_count"],)


def test_unknown_site_fails_the_transaction(database: Database) -> None:
    event = keyed_event(EventIn(event_id="x"), site_id=uuid.uuid4(), now_ms=0, header_key=None, field_prefix="")

    async def write() -> None:
        async with await psycopg.AsyncConnection.connect(database.conninfo("app"), autocommit=True) as conn:
            await queries.write_events(
                conn, site_id=uuid.uuid4(), now=NOW, request_id="r", billing_enabled=True, events=[event]
            )

    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        asyncio.run(write())

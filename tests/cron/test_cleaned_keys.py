"""Issue 11 §2: keys re-sent after their month was archived and cleaned up.

A cleaned client key is a duplicate for the dedup horizon (never a 5xx, never a failed batch,
never billed again); cleanup deletes only through ``ledger_cleanup_month``, which re-checks its
preconditions in the database; the outbox and the key record stay bounded.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from cron_support import add_month, cron_ctx, make_site
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.cron.cleanup import cleanup
from kernel.cron.freeze import freeze_month
from kernel.errors import ConfigError
from kernel.ingest.keys import keyed_event, server_ms
from kernel.ingest.queries import WRITE_EVENTS, write_params
from kernel.ingest.schemas import to_events
from kernel.months import year_month_of
from kernel.settings import Settings

JAN = datetime(2026, 1, 5, tzinfo=UTC)
LATER = datetime(2026, 5, 20, tzinfo=UTC)  # January is > 90 days old


def _cleaned_january(settings: Settings, conn: psycopg.Connection[Any], n: int = 6) -> tuple[str, str, list[str]]:
    site, key = make_site(conn)
    keys = add_month(conn, site, JAN, billable=n - 1, rejected=1)
    ctx = cron_ctx(settings, ManualClock(LATER))
    assert freeze_month(ctx, "2026-01")["frozen"] == 1
    result = cleanup(ctx)
    assert result["ok"] is True and result["deleted"] == n, result
    return site, key, keys


def test_cleanup_records_the_keys_and_removes_their_outbox_rows(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    site, _, keys = _cleaned_january(settings, app_conn)
    recorded = app_conn.execute(
        "SELECT idempotency_key, year_month FROM ingest_cleaned_keys WHERE site_id = %s ORDER BY 1", (site,)
    ).fetchall()
    assert recorded == sorted((k, "2026-01") for k in keys)
    assert app_conn.execute("SELECT count(*) FROM ingest_outbox WHERE site_id = %s", (site,)).fetchone() == (0,)
    audit = app_conn.execute(
        "SELECT details FROM audit_log WHERE action = 'idempotency_cleanup' AND site_id = %s", (site,)
    ).fetchone()
    assert audit is not None
    assert (audit[0]["deleted"], audit[0]["keys_recorded"], audit[0]["outbox_removed"]) == (6, 6, 5)


def test_a_re_sent_cleaned_key_is_an_archived_duplicate_and_never_fails_its_batch(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    site, ingest_key, keys = _cleaned_january(settings, app_conn)
    auth = {"Authorization": f"Bearer {ingest_key}"}
    with TestClient(create_app(settings, clock=ManualClock(LATER))) as client:
        single = client.post("/api/sync", json={"event_id": keys[0], "ec": "test", "ea": "event"}, headers=auth)
        assert single.status_code == 200, single.text
        body = single.json()
        assert body["status"] == "duplicate" and body["ok"] is True
        assert body["original"] == {"status": "archived", "archived": True, "year_month": "2026-01"}
        assert single.headers["x-opsmantik-dedup"] == "1"
        assert "x-opsmantik-quota-remaining" not in single.headers
        # The same key with another payload: its payload is gone, it stays an archived duplicate.
        other = client.post("/api/sync", json={"event_id": keys[1], "ec": "something-else"}, headers=auth)
        assert other.status_code == 200 and other.json()["status"] == "duplicate"
        events = [{"event_id": f"may-{i}", "ec": "click"} for i in range(99)] + [{"event_id": keys[2], "ec": "x"}]
        batch = client.post("/api/sync", json={"events": events}, headers=auth)
        assert batch.status_code == 200, batch.text
        statuses = [r["status"] for r in batch.json()["results"]]
        assert statuses == ["accepted"] * 99 + ["duplicate"]
        assert batch.json()["results"][99]["original"]["year_month"] == "2026-01"
    rows = app_conn.execute(
        "SELECT year_month, count(*) FROM ingest_idempotency WHERE site_id = %s GROUP BY 1", (site,)
    ).fetchall()
    assert rows == [("2026-05", 99)]  # none of the cleaned keys was billed again
    assert app_conn.execute("SELECT count(*) FROM ingest_outbox WHERE site_id = %s", (site,)).fetchone() == (99,)
    counter = app_conn.execute(
        "SELECT event_count, dedup_count FROM site_usage_monthly WHERE site_id = %s AND year_month = '2026-05'",
        (site,),
    ).fetchone()
    assert counter == (99, 3)


def _scans(conn: psycopg.Connection[Any], site: str, keys: list[str]) -> dict[str, int]:
    """Index probes of one real ledger statement for ``keys`` (in a transaction, rolled back)."""
    events, _, _ = to_events({"events": [{"event_id": k, "ec": "test", "ea": "event"} for k in keys]})
    keyed = [
        keyed_event(e, site_id=uuid.UUID(site), now_ms=server_ms(LATER), header_key=None, field_prefix="")
        for e in events
    ]
    with conn.transaction(force_rollback=True):
        conn.execute(WRITE_EVENTS, write_params(uuid.UUID(site), LATER, "probe", True, keyed))
        found = conn.execute(
            "SELECT pg_stat_get_xact_numscans('ingest_idempotency_pkey'::regclass),"
            " pg_stat_get_xact_numscans('ingest_cleaned_keys_pkey'::regclass)"
        ).fetchone()
    assert found is not None
    return {"ingest_idempotency_pkey": int(found[0]), "ingest_cleaned_keys_pkey": int(found[1])}


def test_a_90_day_old_backlog_re_sent_costs_no_more_than_ordinary_duplicates(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    """Counted in index probes of the real ledger statement: an archived key is one probe of the
    cleaned-key record, an ordinary duplicate at least one probe of the ledger plus that one."""
    site, _, cleaned = _cleaned_january(settings, app_conn, n=40)
    recent = add_month(app_conn, site, datetime(2026, 5, 2, tzinfo=UTC), billable=40, prefix="recent")
    with psycopg.connect(app_conn.info.dsn) as conn:
        backlog = _scans(conn, site, cleaned)
        ordinary = _scans(conn, site, recent)
    assert backlog.get("ingest_cleaned_keys_pkey", 0) == 40
    assert backlog.get("ingest_idempotency_pkey", 0) == 0
    assert ordinary.get("ingest_idempotency_pkey", 0) >= 40
    assert sum(backlog.values()) <= sum(ordinary.values())


def test_cleanup_works_with_no_delete_right_on_the_ledger_and_refuses_forged_calls(
    settings: Settings, app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any]
) -> None:
    """The app role loses UPDATE/DELETE on the ledger (issue 12 §2); cleanup still works through
    its SECURITY DEFINER function, and a direct call with forged arguments deletes nothing."""
    owner_conn.execute("REVOKE UPDATE, DELETE, TRUNCATE ON ingest_idempotency FROM revkernel_app")
    site, _ = make_site(app_conn)
    add_month(app_conn, site, JAN, billable=3)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute("DELETE FROM ingest_idempotency WHERE site_id = %s", (site,))
    ctx = cron_ctx(settings, ManualClock(LATER))
    freeze_month(ctx, "2026-01")

    def forged(sha256: str) -> tuple[Any, ...]:
        row = app_conn.execute(
            "SELECT deleted, reason FROM ledger_cleanup_month(%s, '2026-01', 'infinity', 1000, %s, true, 'x', '{}')",
            (site, sha256),
        ).fetchone()
        assert row is not None
        return tuple(row)

    assert forged("0" * 64) == (0, "archive_mismatch")  # never archived
    result = cleanup(ctx)
    assert result["deleted"] == 3 and result["keys_recorded"] == 3
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute("DELETE FROM ingest_cleaned_keys")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute("INSERT INTO ingest_cleaned_keys VALUES (%s, 'forged', '2026-01', now())", (site,))


def test_a_host_clock_far_ahead_cannot_delete_young_rows(settings: Settings, app_conn: psycopg.Connection[Any]) -> None:
    """Retention is checked against the database clock too: rows 40 days old stay, whatever the
    host's cutoff says."""
    site, _ = make_site(app_conn)
    row = app_conn.execute("SELECT clock_timestamp() - interval '40 days'").fetchone()
    assert row is not None
    young = row[0]
    add_month(app_conn, site, young, billable=2)
    month = year_month_of(young)
    honest = cron_ctx(settings, ManualClock(young + timedelta(days=40)))
    assert freeze_month(honest, month)["frozen"] == 1
    ahead = cron_ctx(settings, ManualClock(young + timedelta(days=400)))
    result = cleanup(ahead)
    assert result["ok"] is True and result["deleted"] == 0 and result["archived"] == 1
    left = app_conn.execute("SELECT count(*) FROM ingest_idempotency WHERE site_id = %s", (site,)).fetchone()
    assert left == (2,)


def test_a_dispute_hold_is_re_checked_inside_the_deleting_statement(
    settings: Settings, app_conn: psycopg.Connection[Any], database: Any
) -> None:
    """A hold being created while the cleanup runs: the deletion waits for it and then sees it."""
    site, _ = make_site(app_conn)
    add_month(app_conn, site, JAN, billable=4)
    ctx = cron_ctx(settings, ManualClock(LATER))
    freeze_month(ctx, "2026-01")
    assert cleanup(ctx, max_rows=1)["deleted"] == 1  # archived now; 3 rows left
    digest_row = app_conn.execute("SELECT sha256 FROM ledger_archive WHERE site_id = %s", (site,)).fetchone()
    assert digest_row is not None
    hold = database.connect("app")
    hold.execute("INSERT INTO dispute_holds (site_id, year_month, reason) VALUES (%s, '2026-01', 'disputed')", (site,))
    outcome: list[Any] = []

    def delete() -> None:
        with database.connect("app", autocommit=True) as conn:
            outcome.append(
                conn.execute(
                    "SELECT deleted, reason FROM ledger_cleanup_month(%s, '2026-01', %s, 1000, %s, true, 'test', '{}')",
                    (site, LATER - timedelta(days=90), digest_row[0]),
                ).fetchone()
            )

    worker = threading.Thread(target=delete)
    worker.start()
    worker.join(0.5)
    assert worker.is_alive(), "the deletion did not wait for the hold being created"
    hold.commit()
    hold.close()
    worker.join(30)
    assert outcome == [(0, "on_hold")]
    left = app_conn.execute("SELECT count(*) FROM ingest_idempotency WHERE site_id = %s", (site,)).fetchone()
    assert left == (3,)


def test_cleaned_keys_are_pruned_only_after_the_horizon(
    settings: Settings, app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any]
) -> None:
    site, _ = make_site(app_conn)
    row = app_conn.execute(
        "SELECT to_char(date_trunc('month', clock_timestamp() AT TIME ZONE 'UTC') - interval '14 months', 'YYYY-MM'),"
        " to_char(date_trunc('month', clock_timestamp() AT TIME ZONE 'UTC') - interval '13 months', 'YYYY-MM')"
    ).fetchone()
    assert row is not None
    past_horizon, at_horizon = row
    for key, month in (("old-1", past_horizon), ("kept-1", at_horizon)):
        owner_conn.execute("INSERT INTO ingest_cleaned_keys VALUES (%s, %s, %s, now())", (site, key, month))
    longer = cron_ctx(settings.with_overrides(dedup_horizon_months=15), ManualClock(LATER))
    assert cleanup(longer)["keys_pruned"] == 0
    result = cleanup(cron_ctx(settings, ManualClock(LATER)))
    assert result["keys_pruned"] == 1
    left = app_conn.execute("SELECT idempotency_key FROM ingest_cleaned_keys WHERE site_id = %s", (site,)).fetchall()
    assert left == [("kept-1",)]
    # Asking the database for a shorter horizon than 13 months changes nothing.
    assert app_conn.execute("SELECT prune_cleaned_keys(1, 1000)").fetchone() == (0,)


@pytest.mark.parametrize("text", ["12", "0", "-3", "thirteen", "13.5"])
def test_a_horizon_under_13_months_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="REVKERNEL_DEDUP_HORIZON_MONTHS"):
        Settings.from_env({"REVKERNEL_DEDUP_HORIZON_MONTHS": text})
    assert Settings.from_env({"REVKERNEL_DEDUP_HORIZON_MONTHS": "24"}).dedup_horizon_months == 24

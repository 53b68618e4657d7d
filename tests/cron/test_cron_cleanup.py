"""Idempotency cleanup: only old rows of frozen, unheld, archived-and-proven months."""

from __future__ import annotations

import gzip
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from cron_support import CRON_HEADERS, add_month, cron_ctx, make_site
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.cron.cleanup import archive_root, cleanup
from kernel.cron.freeze import freeze_month
from kernel.settings import Settings

JAN = datetime(2026, 1, 5, tzinfo=UTC)
LATER = datetime(2026, 5, 20, tzinfo=UTC)  # January rows are > 90 days old; February's are not all


def _count(conn: psycopg.Connection[Any], site: str, month: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM ingest_idempotency WHERE site_id = %s AND year_month = %s", (site, month)
    ).fetchone()
    return int(row[0]) if row else 0


def _setup(settings: Settings, conn: psycopg.Connection[Any]) -> tuple[str, str, ManualClock]:
    site, _ = make_site(conn, "Old")
    held, _ = make_site(conn, "Held")
    add_month(conn, site, JAN, billable=5, overage=1, rejected=2, non_billable=1)
    add_month(conn, held, JAN, billable=3)
    add_month(conn, site, datetime(2026, 4, 2, tzinfo=UTC), billable=2, prefix="apr")  # too young
    clock = ManualClock(LATER)
    freeze_month(cron_ctx(settings, clock), "2026-01")
    conn.execute("INSERT INTO dispute_holds (site_id, year_month, reason) VALUES (%s, '2026-01', 'disputed')", (held,))
    return site, held, clock


def test_dry_run_changes_nothing_then_cleanup_archives_proves_and_deletes(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    site, held, clock = _setup(settings, app_conn)
    with TestClient(create_app(settings, clock=clock)) as client:
        dry = client.post("/api/cron/idempotency-cleanup", params={"dry_run": "true"}, headers=CRON_HEADERS)
        assert dry.status_code == 200, dry.text
        body = dry.json()
        assert body["ok"] is True and body["dry_run"] is True and body["deleted"] == 0 and body["would_delete"] == 8
        assert [(m["site_id"], m["year_month"], m["rows"]) for m in body["months"]] == [(site, "2026-01", 8)]
        assert _count(app_conn, site, "2026-01") == 8
        assert app_conn.execute("SELECT count(*) FROM ledger_archive").fetchone() == (0,)
        assert not (settings.data_dir / "archive").exists()
        assert app_conn.execute("SELECT count(*) FROM audit_log WHERE action <> 'invoice_freeze'").fetchone() == (0,)

        real = client.post("/api/cron/idempotency-cleanup", headers=CRON_HEADERS)
        assert real.status_code == 200, real.text
        assert real.json()["deleted"] == 8 and real.json()["archived"] == 1
    assert _count(app_conn, site, "2026-01") == 0
    assert _count(app_conn, held, "2026-01") == 3  # on hold: untouched
    assert _count(app_conn, site, "2026-04") == 2  # not frozen, not old: untouched
    archive = app_conn.execute(
        "SELECT a.file_path, a.sha256, a.row_count, a.merkle_root, s.merkle_root FROM ledger_archive a"
        " JOIN invoice_snapshot s USING (site_id, year_month)"
    ).fetchone()
    assert archive is not None
    path = Path(archive[0])
    assert path.is_relative_to(settings.data_dir) and path.exists()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == archive[1]
    assert archive[2] == 8 and archive[3] == archive[4] == archive_root(path)[0]
    header = gzip.decompress(path.read_bytes()).decode().splitlines()[0]
    assert header.startswith("idempotency_key,created_at,year_month,billable,billing_state")
    actions = app_conn.execute("SELECT action FROM audit_log ORDER BY id").fetchall()
    assert [a for (a,) in actions if a != "invoice_freeze"] == ["ledger_archive", "idempotency_cleanup"]


def test_at_most_max_rows_per_run_and_a_tampered_archive_stops_deletion(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    site, _, clock = _setup(settings, app_conn)
    ctx = cron_ctx(settings, clock)
    first = cleanup(ctx, max_rows=4)
    assert first["ok"] is True and first["deleted"] == 4
    assert _count(app_conn, site, "2026-01") == 4
    path = Path(first["months"][0]["archive"])
    path.write_bytes(gzip.compress(b"idempotency_key\nforged\n"))
    second = cleanup(ctx, max_rows=4)
    assert second["ok"] is False and second["deleted"] == 0
    assert "sha256" in next(iter(second["errors"].values()))
    assert _count(app_conn, site, "2026-01") == 4  # the rows stay while the archive is not proven


def test_archive_that_does_not_match_the_snapshot_is_refused(
    settings: Settings, app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any]
) -> None:
    site, _, clock = _setup(settings, app_conn)
    # The ledger no longer matches the snapshot (a row was changed behind the kernel's back: the
    # app role cannot rewrite ledger rows, the owner can).
    owner_conn.execute(
        "UPDATE ingest_idempotency SET billing_state = 'OVERAGE' WHERE site_id = %s AND year_month = '2026-01'"
        " AND billing_state = 'ACCEPTED' AND billable",
        (site,),
    )
    result = cleanup(cron_ctx(settings, clock))
    assert result["ok"] is False and result["deleted"] == 0
    assert "root" in next(iter(result["errors"].values()))
    assert _count(app_conn, site, "2026-01") == 8
    assert app_conn.execute("SELECT count(*) FROM ledger_archive").fetchone() == (0,)
    assert not list((settings.data_dir / "archive").rglob("*.csv.gz"))
    assert clock.now() - timedelta(days=90) > JAN

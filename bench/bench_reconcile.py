"""Reconcile of a multi-million-row site-month while clients ingest into it (issue 11 §4).

Same run, same server, same site-month of ``ROWS`` ledger rows (set-based insert), four client
threads sending single events through the production ledger statement (``WRITE_EVENTS``):

- ``idle``: ingest alone, the baseline;
- ``reconcile``: ingest while ``reconcile_site_month`` recounts the month (one snapshot, no lock,
  the correction as a delta);
- ``locked_recount``: ingest while the same recount runs holding the counter row lock, as
  reconcile did before issue 11, for contrast.

Reported: p50/p99/max ingest latency of each phase, the ratio of p99 during reconcile to idle
(goal: at most 2x, i.e. no request waits behind reconcile), and that the counter equals the ledger
afterwards (the delta is exact while ingest commits).
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench.context import BenchContext
from kernel.cron.freeze import COUNTS_SQL
from kernel.cron.reconcile import reconcile_site_month
from kernel.ingest.keys import keyed_event, server_ms
from kernel.ingest.queries import WRITE_EVENTS, write_params
from kernel.ingest.schemas import to_events
from kernel.tenants import create_site

ROWS = 2_000_000
YEAR_MONTH = "2026-03"
NOW = datetime(2026, 3, 20, 12, tzinfo=UTC)
CLIENTS = 4
IDLE_S = 5.0
GOAL_P99_RATIO = 2.0

_LOAD_SQL = """
INSERT INTO ingest_idempotency (site_id, idempotency_key, idempotency_version, created_at, billable,
    billing_state, billing_reason, event_category, event_action, payload_hash)
SELECT %(site)s, 'bulk-' || i, 2, TIMESTAMPTZ '2026-03-01 00:00:00+00' + i * INTERVAL '1 ms', true,
       'ACCEPTED', 'within_quota', 'click', 'buy', md5(i::text)
FROM generate_series(1, %(rows)s) AS i
"""


def _load(app: str) -> uuid.UUID:
    with psycopg.connect(app, autocommit=True) as conn:
        with conn.transaction():
            site = create_site(conn, name="Reconcile bench", monthly_limit=10**9, rate_limit_per_minute=10**6)
        conn.execute(_LOAD_SQL, {"site": site.site.id, "rows": ROWS})
        # The counter drifted by +5: reconcile has something to correct.
        conn.execute(
            "INSERT INTO site_usage_monthly (site_id, year_month, event_count) VALUES (%s, %s, %s)",
            (site.site.id, YEAR_MONTH, ROWS + 5),
        )
        conn.execute("ANALYZE ingest_idempotency")
    return site.site.id


def _ingest(
    app: str, site_id: uuid.UUID, stop: threading.Event, latencies: list[float], errors: list[str], tag: str
) -> None:
    with psycopg.connect(app, autocommit=True) as conn:
        n = 0
        while not stop.is_set():
            events, _, _ = to_events({"event_id": f"{tag}-{threading.get_ident()}-{n}", "ec": "click"})
            keyed = [keyed_event(events[0], site_id=site_id, now_ms=server_ms(NOW), header_key=None, field_prefix="")]
            started = time.perf_counter()
            try:
                conn.execute(WRITE_EVENTS, write_params(site_id, NOW, f"bench-{n}", True, keyed)).fetchall()
            except psycopg.Error as exc:  # what a client would get as 500 billing_gate_closed
                errors.append(type(exc).__name__)
            latencies.append(time.perf_counter() - started)
            n += 1


def _phase(app: str, site_id: uuid.UUID, tag: str, job: Any | None) -> dict[str, Any]:
    """Ingest from ``CLIENTS`` threads for ``IDLE_S`` seconds, or for as long as ``job`` runs."""
    stop = threading.Event()
    latencies: list[float] = []
    errors: list[str] = []
    clients = [
        threading.Thread(target=_ingest, args=(app, site_id, stop, latencies, errors, f"{tag}{i}"))
        for i in range(CLIENTS)
    ]
    for client in clients:
        client.start()
    time.sleep(0.5)  # clients warmed up
    latencies.clear()
    errors.clear()
    started = time.perf_counter()
    job_result = job() if job is not None else time.sleep(IDLE_S)
    job_s = time.perf_counter() - started
    stop.set()
    for client in clients:
        client.join()
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "failed": len(errors),  # ledger errors (lock timeouts): 500s for a client
        "wall_s": round(job_s, 3),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "job": job_result,
    }


def _locked_recount(app: str, site_id: uuid.UUID) -> dict[str, Any]:
    """The pre-issue-11 shape: counter row locked for the whole recount."""
    with psycopg.connect(app) as conn, conn.transaction():
        conn.execute(
            "SELECT 1 FROM site_usage_monthly WHERE site_id = %s AND year_month = %s FOR UPDATE", (site_id, YEAR_MONTH)
        )
        row = conn.execute(COUNTS_SQL, (site_id, YEAR_MONTH)).fetchone()
    assert row is not None
    return {"ledger_billable": int(row[0])}


def run(ctx: BenchContext) -> dict[str, Any]:
    settings = ctx.fresh_database()
    assert settings.database_url is not None
    from kernel.db.connect import Database

    app = Database(settings).conninfo("app")
    load_started = time.perf_counter()
    site_id = _load(app)
    load_s = time.perf_counter() - load_started
    with psycopg.connect(app, autocommit=True) as conn:
        conn.execute(COUNTS_SQL, (site_id, YEAR_MONTH)).fetchone()  # warm the cache for every phase
    idle = _phase(app, site_id, "idle", None)

    def reconcile_job() -> dict[str, Any]:
        with psycopg.connect(app, autocommit=True) as conn:
            return reconcile_site_month(conn, None, str(site_id), YEAR_MONTH, NOW)

    during = _phase(app, site_id, "rec", reconcile_job)
    with psycopg.connect(app, autocommit=True) as conn:
        counter = conn.execute(
            "SELECT event_count FROM site_usage_monthly WHERE site_id = %s AND year_month = %s", (site_id, YEAR_MONTH)
        ).fetchone()
        ledger = conn.execute(COUNTS_SQL, (site_id, YEAR_MONTH)).fetchone()
    assert counter is not None and ledger is not None
    locked = _phase(app, site_id, "lock", lambda: _locked_recount(app, site_id))
    ratio = during["p99_ms"] / idle["p99_ms"] if idle["p99_ms"] else float("inf")
    return {
        "rows": ROWS,
        "clients": CLIENTS,
        "load_s": round(load_s, 2),
        "ingest_idle": idle,
        "ingest_during_reconcile": during,
        "ingest_during_locked_recount": locked,
        "p99_ratio_during_reconcile_vs_idle": round(ratio, 2),
        "p99_ratio_locked_recount_vs_idle": round(locked["p99_ms"] / idle["p99_ms"], 2) if idle["p99_ms"] else None,
        "goal_p99_ratio": GOAL_P99_RATIO,
        "goal_met": ratio <= GOAL_P99_RATIO,
        "counter_equals_ledger_after": int(counter[0]) == int(ledger[0]),
    }

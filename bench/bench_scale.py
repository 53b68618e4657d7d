"""Scale, measured rather than assumed (issue 17 §3): the product on a 50M-row ledger.

Opt-in: ``make bench BENCH=scale`` (``make bench`` alone skips it). Size from the environment:
``BENCH_SCALE_ROWS`` (default 50,000,000 ledger rows), ``BENCH_SCALE_SITES`` (default 10,000);
``BENCH_SCALE_KEEP=1`` keeps the databases afterwards (they are dropped by default: at 50M rows
they hold tens of GB). The ledger (``bench.scale_ledger``) is three months, Zipf-sized sites,
non-billable, overage and rejected rows, outbox rows and counters, built by set-based SQL.

Measured, each against a baseline of the same run where one exists:

1. **Fleet freeze** of the first two months with the real ``freeze_month`` (every snapshot the
   later steps need comes from it).
2. **Reconcile** recount of the biggest unfrozen site-month (``reconcile_site_month``).
3. **Freeze of the biggest site-month** against ``bench_freeze``'s bare baseline (server-side
   ``SELECT`` of the leaves + hashlib RFC 6962 root) over the same rows, each in its own process.
4. **Fleet findings** for every site of the second month (``kernel.audit.fleet.audit_fleet``,
   every Merkle root recomputed) against the fleet freeze of that month.
5. **Dispute export** of the biggest site-month over HTTP against raw COPY
   (``bench_export.export_figures``).
6. **Single-event ingest** over HTTP (``bench_ingest``'s server, wrk script and 64 keyed sites)
   on the big ledger against the same sites with an empty ledger, alternated twice.
7. **Plans**: ``bench.scale_plans`` — every statement the hot paths run, judged for Citus (its
   cleanup run is the first, so it archives a month and deletes from it).
8. **Cleanup** throughput (the real cron through ``run_named``: plan, archive, prove, delete) in
   rows/s, against what a retention of 1M events a day needs.

Sizes on disk (table, indexes, per million rows) are taken after the fleet freeze.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import bench_export, bench_freeze, bench_ingest
from bench.context import BenchContext
from bench.scale_ledger import DISK_MARGIN_BYTES, MONTHS, LedgerShape, build_ledger, create_sites, plan_sites
from bench.scale_plans import COORDINATOR, DISTRIBUTED, REFERENCE, CapturingDatabase, PlanCapture, auto_explain, judge
from kernel.audit.connect import connect_analyst
from kernel.audit.fleet import audit_fleet
from kernel.clock import ManualClock
from kernel.cron.cleanup import CLEANUP_MAX_ROWS_PER_RUN, RETENTION
from kernel.cron.freeze import freeze_month, freeze_site_month
from kernel.cron.jobs import run_named
from kernel.cron.keystore import load_signing_key
from kernel.cron.reconcile import reconcile_site_month
from kernel.cron.runs import CronContext
from kernel.db.connect import Database
from kernel.export.csv import export_chunks
from kernel.export.queries import (
    cleaned_up_rows_async,
    load_snapshot_async,
    record_audit_async,
    site_exists_async,
)
from kernel.ingest import queries as ingest_queries
from kernel.ingest.keys import keyed_event, server_ms
from kernel.ingest.schemas import EventIn
from kernel.settings import Settings
from kernel.tenants import issue_key
from kernel.tenants.keys import authenticate_async, hash_secret
from kernel.tenants.sites import site_by_key_hash_async, site_by_public_id_async

PARTIAL = Path(__file__).resolve().parent.parent / "reports" / "bench" / "scale.partial.json"
DEFAULT_ROWS = 50_000_000
EXACT_COUNT_BELOW_ROWS = 1_000_000  # sizes: tables under this many (estimated) rows are counted
DEFAULT_SITES = 10_000
FROZEN_MONTHS = MONTHS[:2]
FLEET_MONTH = MONTHS[1]
FREEZE_CLOCK = datetime(2026, 3, 5, tzinfo=UTC)  # both frozen months are closed
LARGEST_FREEZE_AT = datetime(2026, 4, 2, tzinfo=UTC)  # bench_freeze's clock for its 2026-03
CLEANUP_AT = datetime(2026, 5, 5, 3, 0, tzinfo=UTC)  # January and the first days of February expired
CLEANUP_SAMPLE_S = 180.0  # cleanup runs until this much time or CLEANUP_SAMPLE_RUNS runs
CLEANUP_SAMPLE_RUNS = 12
RETENTION_EVENTS_PER_DAY = 1_000_000
SECONDS_PER_DAY = 86_400
INGEST_ROUNDS = 2  # empty, big, empty, big: the machine's load drifts, so alternate
# Bytes on disk per ledger row with its outbox row, indexes and the load's temporary files
# (1,176 measured at 300k rows), and what must stay free for everybody else on the machine.
DISK_PER_ROW_ESTIMATE = 1_300


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").replace("_", "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {os.environ[name]!r}")
    return int(raw)


def _say(text: str) -> None:
    print(f"   {datetime.now(UTC):%H:%M:%S} {text}", flush=True)


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def run(ctx: BenchContext) -> dict[str, Any]:
    rows = _env_int("BENCH_SCALE_ROWS", DEFAULT_ROWS)
    sites = _env_int("BENCH_SCALE_SITES", DEFAULT_SITES)
    keep = os.environ.get("BENCH_SCALE_KEEP", "") == "1"
    free = shutil.disk_usage(ctx.data_dir).free
    if rows * DISK_PER_ROW_ESTIMATE + DISK_MARGIN_BYTES > free:
        raise RuntimeError(
            f"{rows:,} ledger rows need about {rows * DISK_PER_ROW_ESTIMATE / 2**30:.0f} GiB on disk plus"
            f" {DISK_MARGIN_BYTES / 2**30:.0f} GiB left free; {free / 2**30:.0f} GiB are free: set a smaller"
            " BENCH_SCALE_ROWS"
        )
    shape = plan_sites(rows, sites, keyed=bench_ingest.SITES)
    empty = ctx.fresh_database()
    big: Settings | None = None
    try:
        _say(f"creating {sites:,} sites with create_site")
        with Database(empty).transaction("app") as conn:
            _, sites_s = _timed(create_sites, conn, shape, key_prefix=bench_ingest.KEY_PREFIX)
        big = ctx.clone_database(empty, "ledger")
        _say(f"building {rows:,} ledger rows")
        result: dict[str, Any] = {"setup": _setup(shape, sites_s)}
        result["load"] = build_ledger(_owner(big), shape, big.data_dir)
        _checkpoint(result)
        result.update(_measure(empty, big, shape, result))
        return result
    finally:
        if not keep:
            ctx.drop_database(empty)
            if big is not None:
                ctx.drop_database(big)


def _owner(settings: Settings) -> str:
    assert settings.database_url is not None
    return settings.database_url


def _setup(shape: LedgerShape, sites_s: float) -> dict[str, Any]:
    site, year_month, month_rows = shape.largest_site_month()
    sizes = sorted((s.rows for s in shape.sites), reverse=True)
    return {
        "rows": shape.rows,
        "sites": len(shape.sites),
        "months": list(MONTHS),
        "rows_per_month": {m: shape.month_rows(m) for m in MONTHS},
        "largest_site_month": {"site_id": str(site.site_id), "year_month": year_month, "rows": month_rows},
        "largest_site_rows": sizes[0],
        "top_10_sites_share": round(sum(sizes[:10]) / shape.rows, 3),
        "median_site_rows": sizes[len(sizes) // 2],
        "smallest_site_rows": sizes[-1],
        "soft_limit_sites": sum(1 for s in shape.sites if s.soft_limit),
        "keyed_sites": sum(1 for s in shape.sites if s.keyed),
        "create_sites_s": round(sites_s, 1),
    }


def _measure(empty: Settings, big: Settings, shape: LedgerShape, out: dict[str, Any]) -> dict[str, Any]:
    db = Database(big)
    largest, largest_month, largest_rows = shape.largest_site_month()
    assert largest_month == bench_freeze.YEAR_MONTH, largest_month  # the freeze baseline's month

    _say("freezing the fleet's first two months with freeze_month")
    cron = CronContext(big, ManualClock(FREEZE_CLOCK), db, trigger="cli")
    fleet_freeze: dict[str, Any] = {}
    for month in FROZEN_MONTHS:
        body, seconds = _timed(freeze_month, cron, month)
        assert body["ok"] and body["frozen"] == len(shape.sites), body
        fleet_freeze[month] = {
            "site_months": body["frozen"],
            "rows": shape.month_rows(month),
            "wall_s": round(seconds, 1),
            "rows_per_s": round(shape.month_rows(month) / seconds),
            "ms_per_site_month": round(seconds * 1000 / body["frozen"], 2),
        }
    out["fleet_freeze"] = fleet_freeze
    out["sizes"] = _sizes(_owner(big), shape.rows)
    _checkpoint(out)

    _say("reconcile recount of the biggest site-month")
    with db.connect("app", autocommit=True) as conn:
        recount, seconds = _timed(reconcile_site_month, conn, None, str(largest.site_id), largest_month, FREEZE_CLOCK)
    assert recount["counter_drift"] == 0, recount
    out["reconcile_largest"] = {
        "rows": largest_rows,
        "wall_s": round(seconds, 2),
        "rows_per_s": round(largest_rows / seconds),
    }

    _say("freeze of the biggest site-month against the bare baseline")
    site_id = str(largest.site_id)
    bench_freeze._in_child("baseline", _owner(big), site_id)  # warm the cache for both sides
    baseline = bench_freeze._in_child("baseline", _owner(big), site_id)
    frozen = bench_freeze._in_child("freeze", _owner(big), site_id, str(big.data_dir))
    assert frozen["root"] == baseline["root"] and frozen["rows"] == baseline["rows"], (frozen, baseline)
    out["freeze_largest"] = {
        "rows": largest_rows,
        "billable_leaves": frozen["rows"],
        "baseline_wall_s": round(baseline["wall_s"], 2),
        "freeze_wall_s": round(frozen["wall_s"], 2),
        "ratio_vs_baseline": round(frozen["wall_s"] / baseline["wall_s"], 3),
        "goal_ratio": bench_freeze.GOAL_RATIO,
        "freeze_peak_rss_mib": frozen["peak_rss_mib"],
    }

    _say("fleet findings for every site of the second month")
    with connect_analyst(db.uri("analyst")) as conn:
        audit, seconds = _timed(audit_fleet, conn, FLEET_MONTH, clock=ManualClock(FREEZE_CLOCK))
    verified = sum(1 for check in audit.snapshots.values() if check.status == "verified")
    failing = sorted({f.code for f in audit.findings if f.severity.value == "fail"})
    assert len(audit.records) == len(shape.sites), len(audit.records)
    out["fleet_findings"] = {
        "year_month": FLEET_MONTH,
        "sites": len(audit.records),
        "rows": shape.month_rows(FLEET_MONTH),
        "snapshots_verified": verified,
        "findings": len(audit.findings),
        "fail_codes": failing,
        "wall_s": round(seconds, 1),
        "rows_per_s": round(shape.month_rows(FLEET_MONTH) / seconds),
        "baseline_fleet_freeze_s": fleet_freeze[FLEET_MONTH]["wall_s"],
        "ratio_vs_fleet_freeze": round(seconds / fleet_freeze[FLEET_MONTH]["wall_s"], 3),
    }
    del audit

    _say("dispute export of the biggest site-month")
    with db.connect("app", autocommit=True) as conn:
        _, token = issue_key(conn, site_id=largest.site_id, role="billing")
    out["export_largest"] = {
        "rows": largest_rows,
        **bench_export.export_figures(big, largest.site_id, token, largest_month, largest_rows),
    }

    _checkpoint(out)
    # The last steps report their own failure and leave the figures above standing.
    _step(out, "ingest", _ingest, empty, big)
    # Plans before the cleanup sample: the plans' cleanup run then archives a month for the first time.
    _step(out, "plans", _plans, big, shape)
    _step(out, "cleanup", _cleanup, big)
    out["ratios"] = {
        "ingest_p99_big_vs_empty": out["ingest"].get("p99_ratio_big_vs_empty"),
        "ingest_rps_big_vs_empty": out["ingest"].get("rps_ratio_big_vs_empty"),
        "freeze_largest_vs_bare_baseline": out["freeze_largest"]["ratio_vs_baseline"],
        "fleet_findings_vs_fleet_freeze": out["fleet_findings"]["ratio_vs_fleet_freeze"],
        "export_http_vs_copy": out["export_largest"]["http_vs_copy_ratio"],
        "cleanup_rows_per_s_vs_needed": out["cleanup"].get("headroom_vs_needed"),
    }
    return out


def _step(out: dict[str, Any], name: str, fn: Any, *args: Any) -> None:
    try:
        out[name] = fn(*args)
    except Exception as exc:  # one failed step is reported; the figures of the others stand
        out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    _checkpoint(out)


def _checkpoint(out: dict[str, Any]) -> None:
    """The figures so far, for a run that is stopped before it ends (hours at full size)."""
    PARTIAL.parent.mkdir(parents=True, exist_ok=True)
    PARTIAL.write_text(json.dumps(out, indent=2, sort_keys=True, default=str) + "\n")


def _sizes(owner: str, ledger_rows: int) -> dict[str, Any]:
    """Table + indexes on disk for every table of the schema, and per million rows."""
    with psycopg.connect(owner, autocommit=True) as conn:
        # No ANALYZE here: fresh statistics of the tiny tables would change the plans step's plans.
        rows = conn.execute(
            """
            SELECT c.relname, c.reltuples::bigint, pg_relation_size(c.oid), pg_indexes_size(c.oid),
                   pg_total_relation_size(c.oid)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
            WHERE c.relkind = 'r'
            ORDER BY pg_total_relation_size(c.oid) DESC
            """
        ).fetchall()
        indexes = conn.execute(
            """
            SELECT i.indrelid::regclass::text, i.indexrelid::regclass::text, pg_relation_size(i.indexrelid)
            FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
            ORDER BY 3 DESC
            """
        ).fetchall()
        database = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    mib = 2**20
    tables: dict[str, Any] = {}
    for name, tuples, heap, index, total in rows:
        if total < mib:
            continue
        count = int(tuples)
        if count < EXACT_COUNT_BELOW_ROWS:  # never analysed (-1), or small enough to count
            with psycopg.connect(owner) as conn:
                row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))).fetchone()
            count = int(row[0]) if row else 0
        tables[name] = {
            "rows": count,
            "table_mib": round(heap / mib, 1),
            "indexes_mib": round(index / mib, 1),
            "total_mib": round(total / mib, 1),
            "total_mib_per_million_rows": round(total / mib / (count / 1e6), 1) if count else None,
            "bytes_per_row": round(total / count) if count else None,
        }
    per_ledger_row = sum(t["total_mib"] for t in tables.values()) * mib / ledger_rows
    return {
        "tables": tables,
        "indexes_mib": {f"{t}.{i}": round(size / mib, 1) for t, i, size in indexes if size >= mib},
        "database_mib": round(int(database[0]) / mib, 1) if database else None,
        "all_tables_mib_per_million_ledger_rows": round(per_ledger_row * 1e6 / mib, 1),
        "note": "indexes of ingest_idempotency and ingest_outbox were built after the load (fillfactor 90);"
        " indexes grown by random inserts are typically 20-40% larger",
    }


def _ingest(empty: Settings, big: Settings) -> dict[str, Any]:
    """Single-event HTTP ingest (bench_ingest's server and wrk script) on both ledgers, alternated."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return {"error": "wrk is not installed: run `apt-get install -y wrk` (Debian) and rerun"}
    runs: dict[str, list[dict[str, Any]]] = {"empty": [], "big": []}
    with tempfile.TemporaryDirectory(prefix="bench-scale-ingest-") as tmp_dir:
        tmp = Path(tmp_dir)
        for round_no in range(INGEST_ROUNDS):
            for label, settings in (("empty", empty), ("big", big)):
                _say(f"single-event ingest on the {label} ledger, round {round_no + 1}")
                script = bench_ingest._lua(tmp, batch=1, tag=f"s{label}{round_no}")
                with bench_ingest._serve(_owner(settings), tmp) as url:
                    runs[label].append(bench_ingest._wrk(wrk, url + "/api/sync", tmp, script=script))
    best = {label: min(r["latency_ms_p99"] for r in results) for label, results in runs.items()}
    rps = {label: max(r["requests_per_s"] for r in results) for label, results in runs.items()}
    return {
        "runs": runs,
        "connections": bench_ingest.WRK_CONNECTIONS,
        "duration_s": bench_ingest.DURATION_S,
        "p99_ms_empty": best["empty"],
        "p99_ms_big": best["big"],
        "p99_ratio_big_vs_empty": round(best["big"] / best["empty"], 3),
        "requests_per_s_empty": rps["empty"],
        "requests_per_s_big": rps["big"],
        "rps_ratio_big_vs_empty": round(rps["big"] / rps["empty"], 3),
        "non_2xx": sum(r["non_2xx"] for results in runs.values() for r in results),
    }


def _cleanup(big: Settings) -> dict[str, Any]:
    """Cleanup runs (the scheduler's path) on the expired months, against the 1M/day need."""
    ctx = CronContext(big, ManualClock(CLEANUP_AT), Database(big), trigger="scheduler")
    _say("cleanup: a dry run (the run's planning query), then real runs")
    plan, plan_s = _timed(run_named, ctx, "idempotency-cleanup", dry_run=True)
    with psycopg.connect(_owner(big)) as conn:
        # Every expired row here belongs to a frozen month: the whole backlog is eligible.
        row = conn.execute(
            "SELECT count(*) FROM ingest_idempotency WHERE created_at < %s", (CLEANUP_AT - RETENTION,)
        ).fetchone()
    backlog = int(row[0]) if row else 0
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    while len(runs) < CLEANUP_SAMPLE_RUNS and time.perf_counter() - started < CLEANUP_SAMPLE_S:
        body, seconds = _timed(run_named, ctx, "idempotency-cleanup")
        assert body["ok"], body
        runs.append(
            {
                "deleted": body["deleted"],
                "archived": body["archived"],
                "months": len(body["months"]),
                "wall_s": round(seconds, 2),
            }
        )
        if body["deleted"] == 0:
            break
    wall = sum(r["wall_s"] for r in runs)
    deleted = sum(r["deleted"] for r in runs)
    rows_per_s = deleted / wall if wall else 0.0
    needed_rows_per_s = RETENTION_EVENTS_PER_DAY / SECONDS_PER_DAY
    runs_needed = math.ceil(RETENTION_EVENTS_PER_DAY / CLEANUP_MAX_ROWS_PER_RUN)
    mean_run_s = wall / len(runs) if runs else 0.0
    return {
        "clock": CLEANUP_AT.isoformat(),
        "retention_days": RETENTION.days,
        "expired_rows_at_clock": backlog,
        "hours_to_drain_backlog_at_measured_rate": round(backlog / rows_per_s / 3600, 1) if rows_per_s else None,
        "days_to_drain_backlog_at_daily_schedule": math.ceil(backlog / CLEANUP_MAX_ROWS_PER_RUN),
        "dry_run_would_delete": plan.get("would_delete"),
        "dry_run_s": round(plan_s, 2),
        "runs": runs,
        "deleted": deleted,
        "wall_s": round(wall, 2),
        "mean_run_s": round(mean_run_s, 2),
        "rows_per_s": round(rows_per_s, 1),
        "max_rows_per_run": CLEANUP_MAX_ROWS_PER_RUN,
        "retention_events_per_day": RETENTION_EVENTS_PER_DAY,
        "needed_rows_per_s": round(needed_rows_per_s, 2),
        "headroom_vs_needed": round(rows_per_s / needed_rows_per_s, 1),
        "runs_needed_per_day": runs_needed,
        "scheduled_runs_per_day": 1,
        "scheduled_rows_per_day": CLEANUP_MAX_ROWS_PER_RUN,
        "backlog_growth_rows_per_day_at_daily_schedule": RETENTION_EVENTS_PER_DAY - CLEANUP_MAX_ROWS_PER_RUN,
        "keeps_pace_daily_schedule": CLEANUP_MAX_ROWS_PER_RUN >= RETENTION_EVENTS_PER_DAY,
        "keeps_pace_if_rerun_while_backlog": rows_per_s >= needed_rows_per_s,
        "busy_s_per_day_if_rerun": round(runs_needed * mean_run_s),
    }


def _plans(big: Settings, shape: LedgerShape) -> dict[str, Any]:
    """The hot statements' plans, captured from the product's own calls (``bench.scale_plans``)."""
    _say("plans: auto_explain over the hot paths")
    capture = PlanCapture()
    db = CapturingDatabase(big, capture)
    dbname = str(psycopg.conninfo.conninfo_to_dict(_owner(big))["dbname"])
    keyed = next(s for s in shape.sites if s.keyed)
    # Small sites, so that freezing and recounting them costs nothing: neither is the biggest.
    small = sorted((s for s in shape.sites if not s.keyed), key=lambda s: s.rows)[len(shape.sites) // 2 :]
    freeze_site, recount_site = small[0], small[1]
    with auto_explain(_owner(big), dbname):
        capture.step = "ingest"
        asyncio.run(_ingest_calls(db, keyed.site_id, f"{bench_ingest.KEY_PREFIX}{keyed.number:04d}", keyed.public_id))
        capture.step = "cleanup"
        body = run_named(CronContext(big, ManualClock(CLEANUP_AT), db, trigger="cli"), "idempotency-cleanup")
        assert body["ok"] and body["deleted"] > 0, body
        with Database(big).connect("app", autocommit=True) as conn:  # the bench's own lookups: not captured
            archived = conn.execute("SELECT site_id, year_month FROM ledger_archive ORDER BY id LIMIT 1").fetchone()
            assert archived is not None
            _, token = issue_key(conn, site_id=archived[0], role="billing")
        capture.step = "export"
        asyncio.run(_export_access_calls(db, archived[0], archived[1], token))
        with db.connect("app", autocommit=True) as conn:
            for _ in export_chunks(conn, recount_site.site_id, FLEET_MONTH):
                pass
        capture.step = "freeze"
        key = load_signing_key(big)
        cron = CronContext(big, ManualClock(LARGEST_FREEZE_AT), db, trigger="cli")
        freeze_site_month(cron, key, str(freeze_site.site_id), MONTHS[2], LARGEST_FREEZE_AT)
        capture.step = "reconcile"
        with db.connect("app", autocommit=True) as conn:
            reconcile_site_month(conn, None, str(recount_site.site_id), MONTHS[2], LARGEST_FREEZE_AT)
        capture.step = "audit_one_site"
        with db.connect("analyst", autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = on")
            audit_fleet(conn, FLEET_MONTH, site_ids=[keyed.site_id], clock=ManualClock(FREEZE_CLOCK))
    with psycopg.connect(_owner(big)) as conn:
        verdicts = judge(conn, capture.plans)
    # The hot paths: every statement single-shard (or local), every scan through an index. Cleanup:
    # its writes and month reads are single-shard; its planning query spans the fleet once a run.
    hot_steps = ("ingest", "export", "freeze", "reconcile")
    problems = [
        v
        for v in verdicts
        if (v["step"] in hot_steps and (v["shape"] not in ("single-shard", "local") or not v["every_scan_indexed"]))
        or (v["step"] == "cleanup" and v["writes_distributed"] and v["shape"] != "single-shard")
    ]
    return {
        "captured_statements": len(capture.plans),
        "distinct_statements": len(verdicts),
        "by_step": {
            step: {
                shape: sum(1 for v in verdicts if v["step"] == step and v["shape"] == shape)
                for shape in ("single-shard", "local", "multi-shard")
            }
            for step in dict.fromkeys(v["step"] for v in verdicts)
        },
        "hot_queries_keyed_by_site": not problems,
        "problems": problems,
        "tables": {
            "distributed": sorted(DISTRIBUTED),
            "reference": sorted(REFERENCE),
            "coordinator": sorted(COORDINATOR),
        },
        "verdicts": verdicts,
    }


async def _ingest_calls(db: CapturingDatabase, site_id: uuid.UUID, ingest_key: str, public_id: str) -> None:
    """The ingest path's statements: key and public-id lookups, a new event, its duplicate."""
    conn = await psycopg.AsyncConnection.connect(db.conninfo("app"), autocommit=True)
    conn.add_notice_handler(db.capture.on_notice)
    async with conn:
        now = datetime.now(UTC)
        found = await site_by_key_hash_async(conn, hash_secret(ingest_key), now)
        assert found is not None and found[0].id == site_id
        await site_by_public_id_async(conn, public_id)
        event = keyed_event(
            EventIn(event_id=f"scale-plan-{uuid.uuid4().hex[:12]}", ec="ecommerce", ea="add_to_cart"),
            site_id=site_id,
            now_ms=server_ms(now),
            header_key=None,
            field_prefix="",
        )
        for _ in range(2):  # the second call is the duplicate path
            await ingest_queries.write_events(
                conn, site_id=site_id, now=now, request_id="scale-plan", billing_enabled=True, events=[event]
            )
        await ingest_queries.read_original(conn, site_id, event.idempotency_key)


async def _export_access_calls(db: CapturingDatabase, site_id: uuid.UUID, year_month: str, token: str) -> None:
    """The export route's access checks for an archived month (the count runs only then)."""
    conn = await psycopg.AsyncConnection.connect(db.conninfo("app"), autocommit=True)
    conn.add_notice_handler(db.capture.on_notice)
    async with conn:
        key = await authenticate_async(conn, token, now=datetime.now(UTC))
        assert key is not None
        assert await site_exists_async(conn, site_id)
        snapshot = await load_snapshot_async(conn, site_id, year_month)
        assert snapshot is not None
        await cleaned_up_rows_async(conn, site_id, year_month, snapshot)
        await record_audit_async(
            conn,
            at=CLEANUP_AT,
            actor="bench",
            action="dispute_export",
            site_id=site_id,
            year_month=year_month,
            details={"bench": "scale"},
        )


__all__ = ["run"]

"""Invoice freeze of one site-month of 1,000,000 billable rows against its bare baseline.

Baseline (same run, same server, same rows): the bare ``SELECT`` of the leaves in leaf order
through a server-side cursor plus a bare ``hashlib`` RFC 6962 root over them (a minimal stack
merge, no kernel code). Target: the full freeze (REPEATABLE READ transaction, counts, streamed
``RootBuilder``, canonical document, Ed25519 signature, snapshot + audit rows) in at most 2x the
baseline's wall time, with memory bounded (peak RSS of each run measured in its own process).
"""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench.context import BenchContext

ROWS = 1_000_000
YEAR_MONTH = "2026-03"
GOAL_RATIO = 2.0
FETCH_ROWS = 20_000

_LOAD_SQL = """
INSERT INTO ingest_idempotency (site_id, idempotency_key, idempotency_version, created_at, billable,
    billing_state, billing_reason, event_category, event_action, payload_hash)
SELECT %(site)s, md5(i::text), 1, TIMESTAMPTZ '2026-03-01 00:00:00+00' + i * INTERVAL '2 ms', true,
       CASE WHEN i %% 10 = 0 THEN 'OVERAGE' ELSE 'ACCEPTED' END, 'billable', 'click', 'buy', md5('p' || i::text)
FROM generate_series(1, %(rows)s) AS i
"""


def _child_baseline(conninfo: str, site_id: str) -> dict[str, Any]:
    from kernel.cron.freeze import LEAVES_SQL

    started = time.perf_counter()
    stack: list[tuple[int, bytes]] = []
    count = 0
    sha = hashlib.sha256
    with psycopg.connect(conninfo) as conn, conn.cursor(name="baseline") as cur:
        cur.itersize = FETCH_ROWS
        cur.execute(LEAVES_SQL, (site_id, YEAR_MONTH))
        for key, created_at, state in cur:
            node = sha(b"\x00" + f"{key}\t{created_at}\t{state}".encode()).digest()
            size = 1
            while stack and stack[-1][0] == size:
                left_size, left = stack.pop()
                node = sha(b"\x01" + left + node).digest()
                size += left_size
            stack.append((size, node))
            count += 1
    node = stack[-1][1]
    for _, left in reversed(stack[:-1]):
        node = sha(b"\x01" + left + node).digest()
    return {"wall_s": time.perf_counter() - started, "rows": count, "root": node.hex()}


def _child_freeze(conninfo: str, site_id: str, data_dir: str) -> dict[str, Any]:
    from pathlib import Path

    from kernel.clock import ManualClock
    from kernel.cron.freeze import freeze_site_month
    from kernel.cron.keystore import load_signing_key
    from kernel.cron.runs import CronContext
    from kernel.db.connect import Database
    from kernel.settings import Settings

    settings = Settings(database_url=conninfo, data_dir=Path(data_dir))
    key = load_signing_key(settings)
    clock = ManualClock(datetime(2026, 4, 2, tzinfo=UTC))
    ctx = CronContext(settings, clock, Database(settings), trigger="cli")
    started = time.perf_counter()
    frozen = freeze_site_month(ctx, key, site_id, YEAR_MONTH, clock.now())
    return {"wall_s": time.perf_counter() - started, "rows": frozen.billable_count, "root": frozen.merkle_root}


def _in_child(kind: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_freeze", kind, *args], capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _load(conninfo: str) -> str:
    from kernel.tenants import create_site

    with psycopg.connect(conninfo) as conn:
        site_id = str(create_site(conn, name="Bench freeze", monthly_limit=10 * ROWS).site.id)
        conn.commit()
        conn.execute(_LOAD_SQL, {"site": site_id, "rows": ROWS})
        conn.execute(
            "INSERT INTO site_usage_monthly (site_id, year_month, event_count, overage_count) VALUES (%s, %s, %s, %s)",
            (site_id, YEAR_MONTH, ROWS, ROWS // 10),
        )
        conn.commit()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE ingest_idempotency")
    return site_id


def run(ctx: BenchContext) -> dict[str, Any]:
    settings = ctx.fresh_database()
    assert settings.database_url is not None
    owner = settings.database_url
    load_started = time.perf_counter()
    site_id = _load(owner)
    load_s = time.perf_counter() - load_started
    # Warm the cache once so neither side pays the first read from disk.
    _in_child("baseline", owner, site_id)
    baseline = _in_child("baseline", owner, site_id)
    freeze = _in_child("freeze", owner, site_id, str(settings.data_dir))
    assert freeze["root"] == baseline["root"] and freeze["rows"] == baseline["rows"] == ROWS
    ratio = freeze["wall_s"] / baseline["wall_s"]
    return {
        "rows": ROWS,
        "load_s": round(load_s, 2),
        "baseline_wall_s": round(baseline["wall_s"], 3),
        "freeze_wall_s": round(freeze["wall_s"], 3),
        "ratio_vs_baseline": round(ratio, 3),
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio <= GOAL_RATIO,
        "baseline_peak_rss_mib": baseline["peak_rss_mib"],
        "freeze_peak_rss_mib": freeze["peak_rss_mib"],
        "freeze_rows_per_s": round(ROWS / freeze["wall_s"]),
        "merkle_root": freeze["root"],
    }


def _main(argv: list[str]) -> None:
    kind, *args = argv
    result = _child_baseline(*args) if kind == "baseline" else _child_freeze(*args)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1:])

"""Dispute export of a 1,000,000-row site-month over HTTP vs raw ``COPY … TO STDOUT CSV`` (same run).

Targets (issue 7): HTTP rows/s ≥ 0.5 x COPY rows/s; the server's RSS grows < 100 MB while it
streams the month. Also timed: building the evidence packet of that month (with its rendered
report and three inclusion proofs) and verifying it offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from psycopg import sql

from bench.context import BenchContext
from kernel.clock import ManualClock
from kernel.cron.freeze import freeze_site_month
from kernel.cron.keystore import register_public_key
from kernel.cron.runs import CronContext
from kernel.db.connect import Database
from kernel.export.csv import export_copy_statement
from kernel.export.packet import build_packet
from kernel.export.verify import verify_packet
from kernel.ledger import SigningKey
from kernel.settings import Settings
from kernel.tenants import create_site, issue_key

ROWS = 1_000_000
MONTH = "2026-10"
MONTH_START = datetime(2026, 10, 1, tzinfo=UTC)
FROZEN_AT = datetime(2026, 11, 1, 0, 10, tzinfo=UTC)
RUNS = 2  # best of, for both sides: the machine is noisy
RSS_SAMPLE_S = 0.02
READY_TIMEOUT_S = 60
RATIO_GOAL = 0.5
RSS_GROWTH_GOAL_MB = 100

_BULK_SQL = """
INSERT INTO ingest_idempotency (site_id, idempotency_key, idempotency_version, created_at, billable,
    billing_state, billing_reason, event_category, event_action, event_label, event_url, fingerprint,
    payload_hash, occurred_at, response_status, quota_remaining, request_id)
SELECT %(site_id)s, md5('key' || i), 1, %(start)s::timestamptz + (i * 2) * interval '1 millisecond',
       i %% 20 <> 0, CASE WHEN i %% 20 = 0 THEN 'REJECTED_QUOTA' WHEN i > 900000 THEN 'OVERAGE' ELSE 'ACCEPTED' END,
       CASE WHEN i %% 20 = 0 THEN 'rejected_quota' WHEN i > 900000 THEN 'overage' ELSE 'billable' END,
       'ecommerce', 'add_to_cart', 'sku-' || (i %% 5000), 'https://shop.example/p/' || (i %% 5000), 'fp' || (i %% 977),
       md5('payload' || i) || md5('p' || i), NULL, 200, 0, NULL
FROM generate_series(1, %(rows)s) AS i
"""
_PLAIN_COPY = """
COPY (SELECT idempotency_key, created_at, year_month, billable, billing_state, billing_reason, event_category,
             event_action, event_label, payload_hash, idempotency_version
      FROM ingest_idempotency WHERE site_id = %s AND year_month = %s
      ORDER BY created_at, idempotency_key COLLATE "C") TO STDOUT WITH (FORMAT csv)
"""


# The neutralisation rule before issue 12 §6 (the first character only): the "before" of the same
# run, so the cost of the rule that also looks past leading blanks is measured, not remembered.
_PREVIOUS_RULE = "CASE WHEN ascii({c}) IN (9, 13, 39, 43, 45, 61, 64) THEN '''' || {c} ELSE {c} END"


def _previous_rule(column: str) -> sql.Composable:
    return sql.SQL(_PREVIOUS_RULE).format(c=sql.Identifier(column))


def _psql_rows_per_s(conninfo: str, statement: Any, params: tuple[Any, ...], rows: int = ROWS) -> float:
    """The rawest COPY: the server's psql client writing the CSV to /dev/null."""
    from kernel.db import embedded

    with psycopg.connect(conninfo, autocommit=True) as conn:
        text = psycopg.ClientCursor(conn).mogrify(
            statement if isinstance(statement, str) else statement.as_string(conn), params
        )
    best = 0.0
    for _ in range(RUNS):
        started = time.perf_counter()
        subprocess.run(
            [str(embedded.bin_dir() / "psql"), conninfo, "-X", "-q", "-c", text],
            stdout=subprocess.DEVNULL,
            check=True,
        )
        best = max(best, rows / (time.perf_counter() - started))
    return best


def _copy_rows_per_s(conninfo: str, statement: Any, params: tuple[Any, ...], rows: int = ROWS) -> tuple[float, int]:
    best, size = 0.0, 0
    for _ in range(RUNS):
        with psycopg.connect(conninfo, autocommit=True) as conn, conn.cursor() as cur:
            started = time.perf_counter()
            size = 0
            with cur.copy(statement, params) as copy:
                for data in copy:
                    size += len(data)
            best = max(best, rows / (time.perf_counter() - started))
    return best, size


class _RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(RSS_SAMPLE_S)


def _serve(settings_url: str, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": settings_url, "REVKERNEL_DATA_DIR": str(data_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "kernel.app:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_export(
    url: str, params: dict[str, str], headers: dict[str, str], pid: int, rows: int = ROWS
) -> dict[str, Any]:
    best_rate, peak_growth, size, lines = 0.0, 0, 0, 0
    with httpx.Client(timeout=600) as client:
        # Warm-up: imports, pool, first query plans (not measured).
        client.get(url + "/api/billing/dispute-export", params={**params, "year_month": "2026-09"}, headers=headers)
        for _ in range(RUNS):
            baseline = psutil.Process(pid).memory_info().rss
            sampler = _RssSampler(pid)
            sampler.start()
            started = time.perf_counter()
            size = lines = 0
            with client.stream("GET", url + "/api/billing/dispute-export", params=params, headers=headers) as response:
                assert response.status_code == 200, response.status_code
                for chunk in response.iter_raw():
                    size += len(chunk)
                    lines += chunk.count(b"\n")
            elapsed = time.perf_counter() - started
            sampler.stop.set()
            sampler.join()
            assert lines == rows + 1, lines  # header + every row (no label holds a newline)
            best_rate = max(best_rate, rows / elapsed)
            peak_growth = max(peak_growth, sampler.peak - baseline)
    return {"rows_per_s": round(best_rate), "rss_growth_mb": round(peak_growth / 2**20, 1), "bytes": size}


def export_figures(settings: Settings, site_id: uuid.UUID, token: str, year_month: str, rows: int) -> dict[str, Any]:
    """The dispute export of one site-month of ``rows`` rows over HTTP against raw COPY, same run.

    Also used by ``bench_scale`` for the biggest month of its big ledger.
    """
    app_url = Database(settings).conninfo("app")
    plain_rate, plain_bytes = _copy_rows_per_s(app_url, _PLAIN_COPY, (site_id, year_month), rows)
    formatted_rate, _ = _copy_rows_per_s(app_url, export_copy_statement(), (site_id, year_month), rows)
    psql_rate = _psql_rows_per_s(app_url, _PLAIN_COPY, (site_id, year_month), rows)
    baseline = max(plain_rate, psql_rate)  # the faster raw COPY is the bar

    port = _free_port()
    server = _serve(settings.database_url or "", settings.data_dir, port)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("uvicorn did not become ready")
            time.sleep(0.1)
        http = _http_export(
            url,
            {"site_id": str(site_id), "year_month": year_month},
            {"Authorization": f"Bearer {token}"},
            server.pid,
            rows,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    ratio = http["rows_per_s"] / baseline
    return {
        "copy_plain_rows_per_s": round(plain_rate),
        "copy_psql_rows_per_s": round(psql_rate),
        "copy_baseline_rows_per_s": round(baseline),
        "copy_plain_bytes": plain_bytes,
        "copy_export_statement_rows_per_s": round(formatted_rate),
        "http_rows_per_s": http["rows_per_s"],
        "http_bytes": http["bytes"],
        "http_vs_copy_ratio": round(ratio, 3),
        "http_vs_copy_goal": RATIO_GOAL,
        "server_rss_growth_mb": http["rss_growth_mb"],
        "server_rss_growth_goal_mb": RSS_GROWTH_GOAL_MB,
        "goals_met": ratio >= RATIO_GOAL and http["rss_growth_mb"] < RSS_GROWTH_GOAL_MB,
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    settings = ctx.fresh_database()
    db = Database(settings)
    with db.connect("app", autocommit=True) as conn:
        site = create_site(conn, name="bench export", monthly_limit=10**7, public_id="bench-export").site
        _, token = issue_key(conn, site_id=site.id, role="billing")
        started = time.perf_counter()
        conn.execute(_BULK_SQL, {"site_id": site.id, "start": MONTH_START, "rows": ROWS})
        load_s = time.perf_counter() - started
    with db.connect("owner", autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE ingest_idempotency")
    key = SigningKey.generate()
    cron = CronContext(settings=settings, clock=ManualClock(FROZEN_AT), db=db, trigger="cli")
    with db.connect("app", autocommit=True) as conn:
        register_public_key(conn, key, FROZEN_AT)
        disputed = [
            str(r[0])
            for r in conn.execute(
                "SELECT idempotency_key FROM ingest_idempotency WHERE site_id = %s AND billable "
                "ORDER BY created_at LIMIT 3 OFFSET 400000",
                (site.id,),
            )
        ]
    started = time.perf_counter()
    freeze_site_month(cron, key, str(site.id), MONTH, FROZEN_AT)
    freeze_s = time.perf_counter() - started

    figures = export_figures(settings, site.id, token, MONTH, ROWS)
    app_url = db.conninfo("app")
    formatted_rate = figures["copy_export_statement_rows_per_s"]
    previous_rate, _ = _copy_rows_per_s(
        app_url, export_copy_statement(neutralise=_previous_rule), (site.id, MONTH), ROWS
    )

    packet_path = settings.data_dir / "bench-packet.zip"
    clock = ManualClock(FROZEN_AT + timedelta(days=2))
    started = time.perf_counter()
    build_packet(db, site_ref=str(site.id), year_month=MONTH, disputed_keys=disputed, out=packet_path, clock=clock)
    packet_s = time.perf_counter() - started
    started = time.perf_counter()
    verification = verify_packet(packet_path, trusted_keys=[key.public_key.hex()])
    verify_s = time.perf_counter() - started
    return {
        "rows": ROWS,
        "load_s": round(load_s, 2),
        "freeze_s": round(freeze_s, 2),
        **figures,
        "copy_export_statement_previous_rule_rows_per_s": round(previous_rate),
        "neutralisation_after_vs_before_ratio": round(formatted_rate / previous_rate, 3),
        "packet_build_s": round(packet_s, 2),
        "packet_bytes": packet_path.stat().st_size,
        "packet_verify_s": round(verify_s, 2),
        "packet_verified": verification.ok,
        "disputed_keys": len(disputed),
        "goals_met": figures["goals_met"] and verification.ok,
        "site_id": str(uuid.UUID(str(site.id))),
    }

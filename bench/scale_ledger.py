"""A big, realistic ledger built by set-based SQL, for the scale benchmark (``bench_scale``).

Shape (deterministic for a given row and site count):

- ``sites`` sites made by the production ``create_site`` (site, plan, ingest key). Their sizes
  follow a Zipf law (weight 1/rank): at 50M rows over 10,000 sites the largest holds about 10%
  of the ledger (≈ 1.9M rows in its largest month), the smallest a few hundred rows. Ranks are
  shuffled against the site order, so the first sites (the ones with ingest keys the HTTP
  benchmark uses, ``bench_ingest.KEY_PREFIX``) are a mix of sizes.
- Three months, ``MONTHS``, growing 30% / 33% / 37% of each site's rows; inside a month the rows
  are spread evenly over time in ``created_at`` order.
- One row in 20 is non-billable (``scroll_depth``, one in 400 ``system``): ``ACCEPTED``, not
  billable, not counted. 8% of the sites have a soft limit (limit = 90% of their first month's
  billable rows, hard cap x1.5): the rows past the limit are ``OVERAGE``. 4% have a hard limit at
  95% of their second month: the rows past it are ``REJECTED_QUOTA`` (429, not billable). The
  quota position of a row is the product's (billable rows before it + 1; non-billable and
  rejected rows do not count), so the counters, the states and the findings agree.
- Keys: three in four are client keys (v2, ``evt_`` + 20 hex), one in four derived (v1, 64 hex).
- For every row that was not rejected: its ``ingest_outbox`` row, with the payload ``ingest_write``
  builds (client fields + billing decision), published three seconds later.
- ``site_usage_monthly``: the counters the ledger implies (what ingest would have left).

Snapshots are not made here: the benchmark freezes months with the real freeze function.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from kernel.months import month_bounds
from kernel.tenants import create_site

__all__ = ["MONTHS", "LedgerShape", "SitePlan", "build_ledger", "create_sites", "plan_sites"]

MONTHS = ("2026-01", "2026-02", "2026-03")
MONTH_SHARES = (Decimal("0.30"), Decimal("0.33"), Decimal("0.37"))
MIN_ROWS_PER_SITE = 6
CHUNK_ROWS = 250_000  # ledger rows per INSERT statement (bounded RETURNING tuplestore)
SOFT_LIMIT_SHARE = 8  # % of sites with a soft limit (overage)
HARD_LIMIT_SHARE = 4  # % of sites with a hard limit (quota rejections)
SHUFFLE_SEED = 17
KEYED_SITE_LIMIT = 10**12  # sites the HTTP benchmark loads: never throttled, never over quota
KEYED_SITE_RATE = 10**7


@dataclass(frozen=True)
class SitePlan:
    """One generated site: its id, public id, plan and rows per month."""

    number: int  # 1-based; sites 1..keyed have the bench_ingest ingest keys
    site_id: uuid.UUID
    public_id: str
    month_rows: tuple[int, ...]
    monthly_limit: int
    soft_limit: bool
    keyed: bool

    @property
    def rows(self) -> int:
        return sum(self.month_rows)


@dataclass(frozen=True)
class LedgerShape:
    """The sites of a ledger and where its biggest site-month is."""

    sites: tuple[SitePlan, ...]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.sites)

    def largest_site_month(self) -> tuple[SitePlan, str, int]:
        """(site, year_month, rows) of the site-month with the most ledger rows."""
        site = max(self.sites, key=lambda s: max(s.month_rows))
        index = max(range(len(MONTHS)), key=lambda i: site.month_rows[i])
        return site, MONTHS[index], site.month_rows[index]

    def month_rows(self, year_month: str) -> int:
        index = MONTHS.index(year_month)
        return sum(s.month_rows[index] for s in self.sites)


def _billable_rows(rows: int) -> int:
    """Billable candidates among rows 1..rows: one in 20 is non-billable."""
    return rows - rows // 20


def plan_sites(total_rows: int, sites: int, *, keyed: int) -> LedgerShape:
    """Sizes and plans of ``sites`` sites holding ``total_rows`` ledger rows (module docstring)."""
    if sites < keyed or total_rows < sites * MIN_ROWS_PER_SITE:
        raise ValueError(f"{total_rows} rows over {sites} sites is too small (at least {MIN_ROWS_PER_SITE} a site)")
    ranks = list(range(1, sites + 1))
    random.Random(SHUFFLE_SEED).shuffle(ranks)
    harmonic = sum(1 / r for r in range(1, sites + 1))
    spare = total_rows - sites * MIN_ROWS_PER_SITE
    sizes = [MIN_ROWS_PER_SITE + int(spare / (rank * harmonic)) for rank in ranks]
    sizes[ranks.index(1)] += total_rows - sum(sizes)  # rounding goes to the largest site
    plans = []
    for number, size in enumerate(sizes, start=1):
        month_rows = [int(size * share) for share in MONTH_SHARES]
        month_rows[-1] += size - sum(month_rows)
        kind = int(uuid.uuid5(uuid.NAMESPACE_OID, f"plan-{number}").int % 100)
        is_keyed = number <= keyed
        if is_keyed or kind >= SOFT_LIMIT_SHARE + HARD_LIMIT_SHARE:
            limit, soft = (KEYED_SITE_LIMIT if is_keyed else 10 * max(month_rows) + 100), False
        elif kind < SOFT_LIMIT_SHARE:
            limit, soft = max(1, _billable_rows(month_rows[0]) * 9 // 10), True
        else:
            limit, soft = max(1, _billable_rows(month_rows[1]) * 95 // 100), False
        plans.append(
            SitePlan(
                number=number,
                site_id=uuid.UUID(bytes=uuid.uuid5(uuid.NAMESPACE_OID, f"scale-site-{number}").bytes),
                public_id=f"scale-{number:05d}",
                month_rows=tuple(month_rows),
                monthly_limit=limit,
                soft_limit=soft,
                keyed=is_keyed,
            )
        )
    return LedgerShape(tuple(plans))


def create_sites(conn: psycopg.Connection[Any], shape: LedgerShape, *, key_prefix: str) -> None:
    """Every site of ``shape`` through the production ``create_site``, in one transaction."""
    with conn.transaction():
        for site in shape.sites:
            create_site(
                conn,
                name=f"Scale site {site.number}",
                monthly_limit=site.monthly_limit,
                soft_limit_enabled=site.soft_limit,
                hard_cap_multiplier=Decimal("1.5") if site.soft_limit else Decimal(1),
                rate_limit_per_minute=KEYED_SITE_RATE if site.keyed else 2000,
                public_id=site.public_id,
                site_id=site.site_id,
                ingest_key=f"{key_prefix}{site.number:04d}" if site.keyed else None,
            )


# One statement per chunk of (site, month, row range) parts: the ledger rows, their outbox rows
# and the counters they imply. Quota position of row i = billable candidates up to i
# (i - i/20); rows past the hard cap are rejected and, like in ingest_write, never counted.
_CHUNK_SQL = """
WITH part AS (
    SELECT * FROM unnest(%(site_ids)s::uuid[], %(months)s::text[], %(lows)s::int[], %(highs)s::int[],
                         %(totals)s::int[], %(limits)s::bigint[], %(caps)s::bigint[],
                         %(starts)s::timestamptz[], %(spans)s::bigint[])
        AS p(site_id, year_month, lo, hi, total, quota_limit, quota_cap, month_start, month_us)
), generated AS (
    SELECT p.site_id, p.year_month, i, h, md5(h) AS h2,
           i %% 20 = 0 AS non_billable, i %% 4 = 0 AS derived,
           p.month_start + ((i - 1) * p.month_us / p.total) * interval '1 microsecond' AS created_at,
           i - i / 20 AS position, p.quota_limit, p.quota_cap, p.site_id::text AS site_text
    FROM part p
    CROSS JOIN LATERAL generate_series(p.lo, p.hi) AS i
    CROSS JOIN LATERAL (SELECT md5(p.site_id::text || p.year_month || i) AS h) AS seed
), decided AS (
    SELECT g.*,
           CASE WHEN g.non_billable THEN CASE WHEN g.i %% 400 = 0 THEN 'system' ELSE 'scroll_depth' END
                WHEN g.position <= g.quota_limit THEN 'within_quota'
                WHEN g.position <= g.quota_cap THEN 'overage'
                ELSE 'rejected_quota' END AS reason,
           CASE WHEN g.derived THEN g.h || g.h2 ELSE 'evt_' || substr(g.h, 1, 20) END AS key
    FROM generated g
), ledger AS (
    INSERT INTO ingest_idempotency (site_id, idempotency_key, idempotency_version, created_at, billable,
        billing_state, billing_reason, event_category, event_action, event_label, event_url, fingerprint,
        payload_hash, occurred_at, response_status, quota_remaining, request_id)
    SELECT d.site_id, d.key, CASE WHEN d.derived THEN 1 ELSE 2 END, d.created_at,
           d.reason IN ('within_quota', 'overage'),
           CASE d.reason WHEN 'overage' THEN 'OVERAGE' WHEN 'rejected_quota' THEN 'REJECTED_QUOTA'
                ELSE 'ACCEPTED' END,
           d.reason,
           CASE WHEN d.reason = 'system' THEN 'system' WHEN d.non_billable THEN 'interaction'
                WHEN d.i %% 7 = 0 THEN 'conversion' ELSE 'ecommerce' END,
           CASE WHEN d.reason = 'system' THEN 'heartbeat' WHEN d.non_billable THEN 'scroll_depth'
                WHEN d.i %% 7 = 0 THEN 'purchase' ELSE 'add_to_cart' END,
           CASE WHEN d.i %% 3 = 0 THEN 'sku-' || (d.i %% 5000) END,
           'https://s' || substr(d.site_text, 1, 8) || '.example/p/' || (d.i %% 997),
           CASE WHEN d.i %% 2 = 0 THEN substr(d.h2, 1, 16) END,
           md5(d.h2) || d.h,
           CASE WHEN d.i %% 2 = 1 THEN d.created_at - interval '250 milliseconds' END,
           CASE WHEN d.reason = 'rejected_quota' THEN 429 ELSE 200 END,
           CASE WHEN d.reason = 'within_quota' THEN d.quota_limit - d.position
                WHEN d.non_billable THEN greatest(d.quota_limit - least(d.position, d.quota_cap), 0)
                ELSE 0 END,
           substr(d.h2, 1, 32)
    FROM decided d
    RETURNING site_id, idempotency_key, idempotency_version, year_month, created_at, billable, billing_state,
              billing_reason, event_category, event_action, event_label, event_url, fingerprint
), outbox AS (
    INSERT INTO ingest_outbox (site_id, idempotency_key, payload, created_at, published_at)
    SELECT l.site_id, l.idempotency_key,
           jsonb_build_object('site_id', l.site_id, 'idempotency_key', l.idempotency_key,
                              'event_id', CASE WHEN l.idempotency_version = 2 THEN l.idempotency_key END,
                              'ec', l.event_category, 'ea', l.event_action, 'el', l.event_label,
                              'url', l.event_url, 'fp', l.fingerprint, 'ts', NULL, 'meta', NULL)
           || jsonb_build_object('billable', l.billable, 'billing_state', l.billing_state,
                                 'billing_reason', l.billing_reason, 'created_at', l.created_at),
           l.created_at, l.created_at + interval '3 seconds'
    FROM ledger l
    WHERE l.billing_state <> 'REJECTED_QUOTA'
)
INSERT INTO site_usage_monthly AS u (site_id, year_month, event_count, overage_count, rejected_count,
    non_billable_count, dedup_count, updated_at)
SELECT site_id, year_month, count(*) FILTER (WHERE billable), count(*) FILTER (WHERE billing_state = 'OVERAGE'),
       count(*) FILTER (WHERE billing_state = 'REJECTED_QUOTA'),
       count(*) FILTER (WHERE NOT billable AND billing_state <> 'REJECTED_QUOTA'), count(*) / 100, max(created_at)
FROM ledger
GROUP BY site_id, year_month
ON CONFLICT (site_id, year_month) DO UPDATE SET
    event_count = u.event_count + EXCLUDED.event_count,
    overage_count = u.overage_count + EXCLUDED.overage_count,
    rejected_count = u.rejected_count + EXCLUDED.rejected_count,
    non_billable_count = u.non_billable_count + EXCLUDED.non_billable_count,
    dedup_count = u.dedup_count + EXCLUDED.dedup_count,
    updated_at = greatest(u.updated_at, EXCLUDED.updated_at)
"""


@dataclass(frozen=True)
class _Part:
    site: SitePlan
    year_month: str
    lo: int
    hi: int
    total: int


def _parts(shape: LedgerShape) -> Iterator[list[_Part]]:
    """Chunks of at most ``CHUNK_ROWS`` rows, sites in ``site_id`` order (index locality)."""
    chunk: list[_Part] = []
    size = 0
    for site in sorted(shape.sites, key=lambda s: s.site_id.bytes):
        for year_month, rows in zip(MONTHS, site.month_rows, strict=True):
            lo = 1
            while lo <= rows:
                hi = min(rows, lo + CHUNK_ROWS - size - 1)
                chunk.append(_Part(site, year_month, lo, hi, rows))
                size += hi - lo + 1
                lo = hi + 1
                if size >= CHUNK_ROWS:
                    yield chunk
                    chunk, size = [], 0
    if chunk:
        yield chunk


def _chunk_params(chunk: list[_Part]) -> dict[str, Any]:
    def cap_of(site: SitePlan) -> int:
        return int(site.monthly_limit * Decimal("1.5")) if site.soft_limit else site.monthly_limit

    return {
        "site_ids": [p.site.site_id for p in chunk],
        "months": [p.year_month for p in chunk],
        "lows": [p.lo for p in chunk],
        "highs": [p.hi for p in chunk],
        "totals": [p.total for p in chunk],
        "limits": [p.site.monthly_limit for p in chunk],
        "caps": [cap_of(p.site) for p in chunk],
        "starts": [month_bounds(p.year_month)[0] for p in chunk],
        "spans": [_month_us(p.year_month) for p in chunk],
    }


def _month_us(year_month: str) -> int:
    start, end = month_bounds(year_month)
    return (end - start) // timedelta(microseconds=1)


# The two big tables are loaded without their indexes and constraints, which are then rebuilt
# from their own catalog definitions (pg_get_indexdef / pg_get_constraintdef: nothing re-typed).
# The foreign keys to sites are not checked during the load (session_replication_role = replica):
# every row references a site made by create_site, by construction.
BULK_TABLES = ("ingest_idempotency", "ingest_outbox")
_DEPENDENT_DDL = """
SELECT 'fk' AS kind, c.conrelid::regclass::text AS tbl, c.conname AS name, pg_get_constraintdef(c.oid) AS def
FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid = ANY(%(tables)s::regclass[])
UNION ALL
SELECT 'constraint', c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
FROM pg_constraint c WHERE c.contype IN ('p', 'u') AND c.conrelid = ANY(%(tables)s::regclass[])
UNION ALL
SELECT 'index', i.indrelid::regclass::text, i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
FROM pg_index i
WHERE i.indrelid = ANY(%(tables)s::regclass[])
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
ORDER BY 1, 2, 3
"""
LOAD_WORKERS = 2
DISK_MARGIN_BYTES = 10 * 2**30  # stop the load before the machine's disk gets this close to full


def _ddl(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str, str]]:
    return [tuple(r) for r in conn.execute(_DEPENDENT_DDL, {"tables": list(BULK_TABLES)}).fetchall()]


def _drop_indexes(conn: psycopg.Connection[Any], ddl: list[tuple[str, str, str, str]]) -> None:
    order = {"fk": 0, "constraint": 1, "index": 2}
    for kind, table, name, _ in sorted(ddl, key=lambda d: order[d[0]]):
        if kind == "index":
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        else:
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(table), sql.Identifier(name))
            )


def _rebuild_indexes(conn: psycopg.Connection[Any], ddl: list[tuple[str, str, str, str]]) -> None:
    order = {"index": 0, "constraint": 1, "fk": 2}
    for kind, table, name, definition in sorted(ddl, key=lambda d: order[d[0]]):
        if kind == "index":
            conn.execute(definition)
        else:
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    sql.Identifier(table), sql.Identifier(name), sql.SQL(definition)
                )
            )


def _check_disk(path: Path) -> None:
    free = shutil.disk_usage(path).free
    if free < DISK_MARGIN_BYTES:
        raise RuntimeError(
            f"stopping the ledger load: {free / 2**30:.1f} GiB left on the disk of {path}, below the"
            f" {DISK_MARGIN_BYTES / 2**30:.0f} GiB margin (run with a smaller BENCH_SCALE_ROWS)"
        )


def build_ledger(conninfo: str, shape: LedgerShape, data_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Insert every ledger, outbox and counter row of ``shape``; returns rows and seconds."""
    data_dir.mkdir(parents=True, exist_ok=True)
    _check_disk(data_dir)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        ddl = _ddl(conn)
        _drop_indexes(conn, ddl)
    chunks = list(_parts(shape))
    lock = threading.Lock()
    done = [0]
    failures: list[BaseException] = []
    started = time.perf_counter()

    def worker() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            # A bulk load: losing the last commits to a crash only means rebuilding the bench ledger.
            conn.execute("SET synchronous_commit = off")
            conn.execute("SET session_replication_role = replica")
            conn.execute("SET statement_timeout = 0")
            while not failures:
                with lock:
                    if not chunks:
                        return
                    chunk = chunks.pop(0)
                try:
                    _check_disk(data_dir)
                    conn.execute(_CHUNK_SQL, _chunk_params(chunk))
                except BaseException as exc:
                    failures.append(exc)
                    return
                with lock:
                    done[0] += sum(p.hi - p.lo + 1 for p in chunk)
                    if progress:
                        elapsed = time.perf_counter() - started
                        print(f"   ledger {done[0]:,}/{shape.rows:,} rows, {done[0] / elapsed:,.0f} rows/s", flush=True)

    threads = [threading.Thread(target=worker) for _ in range(LOAD_WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("SET statement_timeout = 0")
        _rebuild_indexes(conn, ddl)
        rebuilt = _ddl(conn)
    # The rebuilt schema is the migrated one, definition for definition.
    assert sorted(rebuilt) == sorted(ddl), (rebuilt, ddl)
    index_s = time.perf_counter() - started
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")
        # What autovacuum would have done by now on an insert-only table: visibility map + statistics.
        conn.execute("VACUUM (ANALYZE) ingest_idempotency, ingest_outbox, site_usage_monthly")
    return {
        "rows": done[0],
        "load_s": round(load_s, 1),
        "load_rows_per_s": round(done[0] / load_s),
        "index_build_s": round(index_s, 1),
        "vacuum_analyze_s": round(time.perf_counter() - started, 1),
        "load_workers": LOAD_WORKERS,
        "built_at": datetime.now(UTC).isoformat(),
    }

"""A deterministic sample ledger for tests, benchmarks and the notebooks' golden outputs.

It writes plain rows as the owner role, exactly as the ingest path and the freeze cron would
leave them (ledger rows, counters, outbox rows, drift log, chained signed snapshots), and can
also write the bad cases an audit must catch. The service never calls it.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from kernel.clock import format_utc
from kernel.ledger import RootBuilder, SigningKey, SnapshotDocument, leaf_bytes
from kernel.months import month_bounds

__all__ = [
    "SAMPLE_MONTHS",
    "SAMPLE_SIGNING_KEY",
    "TAMPERED_SITE",
    "TAMPER_DELTA",
    "MonthPlan",
    "freeze_site_month",
    "log_drift",
    "seed_demo_sample",
    "seed_site_month",
]

SAMPLE_MONTHS = ("2026-09", "2026-10")
# Public knowledge: signs sample snapshots only, never a real invoice.
SAMPLE_SIGNING_KEY = SigningKey.from_seed(hashlib.sha256(b"revkernel-audit-sample-signing-key").digest())
# Sample events are spread over the first days of the month, this far apart.
_EVENT_SPACING = timedelta(minutes=37, seconds=11, microseconds=250)


@dataclass(frozen=True)
class MonthPlan:
    """How many rows of each kind one site-month gets."""

    accepted: int = 0
    overage: int = 0
    rejected: int = 0
    non_billable: int = 0
    non_billable_reason: str = "scroll_depth"
    accepted_reason: str = "within_quota"
    rejected_in_one_hour: bool = False  # a retry storm: every rejected row within one hour
    dedup: int = 0
    billable: bool = True  # False: billing off, "accepted" rows are recorded non-billable


def _key(site_id: uuid.UUID, year_month: str, n: int) -> str:
    return hashlib.sha256(f"{site_id}:{year_month}:{n}".encode()).hexdigest()


def seed_site_month(conn: psycopg.Connection[Any], site_id: uuid.UUID, year_month: str, plan: MonthPlan) -> int:
    """Write one site-month's ledger, outbox (published) and counter rows; return the row count."""
    start, _ = month_bounds(year_month)
    rows: list[tuple[Any, ...]] = []
    at = start + timedelta(hours=1)
    n = 0

    def add(state: str, billable: bool, reason: str, category: str, action: str, when: datetime) -> None:
        nonlocal n
        key = _key(site_id, year_month, n)
        payload = hashlib.sha256(f"payload:{key}".encode()).hexdigest()
        rows.append((site_id, key, 1, when, billable, state, reason, category, action, f"label-{n % 7}", payload))
        n += 1

    # Interleave accepted and non-billable events evenly, deterministically.
    mixed = sorted(
        [((j + 0.5) / plan.accepted, "A") for j in range(plan.accepted)]
        + [((j + 0.5) / plan.non_billable, "N") for j in range(plan.non_billable)]
    )
    accepted_reason = plan.accepted_reason if plan.billable else plan.non_billable_reason
    for _, kind in mixed:
        at += _EVENT_SPACING
        if kind == "A":
            add("ACCEPTED", plan.billable, accepted_reason, "conversion", "signup", at)
        else:
            add("ACCEPTED", False, plan.non_billable_reason, "interaction", "scroll_depth", at)
    for _ in range(plan.overage):
        at += _EVENT_SPACING
        add("OVERAGE", True, "soft_limit_overage", "conversion", "signup", at)
    storm_step = timedelta(seconds=20) if plan.rejected_in_one_hour else _EVENT_SPACING
    for _ in range(plan.rejected):
        at += storm_step
        add("REJECTED_QUOTA", False, "rejected_quota", "conversion", "signup", at)

    with conn.cursor() as cur:
        with cur.copy(
            "COPY ingest_idempotency (site_id, idempotency_key, idempotency_version, created_at, billable, "
            "billing_state, billing_reason, event_category, event_action, event_label, payload_hash) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
        with cur.copy(
            "COPY ingest_outbox (site_id, idempotency_key, payload, created_at, attempts, published_at) FROM STDIN"
        ) as copy:
            for row in rows:
                if row[5] != "REJECTED_QUOTA":  # ingest publishes every row it did not reject
                    copy.write_row((site_id, row[1], Jsonb({"k": row[1]}), row[3], 1, row[3]))
    billable = sum(1 for r in rows if r[4])
    overage = sum(1 for r in rows if r[5] == "OVERAGE")
    rejected = sum(1 for r in rows if r[5] == "REJECTED_QUOTA")
    conn.execute(
        "INSERT INTO site_usage_monthly (site_id, year_month, event_count, overage_count, rejected_count, "
        "non_billable_count, dedup_count, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (site_id, year_month, billable, overage, rejected, len(rows) - billable - rejected, plan.dedup, at),
    )
    return len(rows)


def freeze_site_month(
    conn: psycopg.Connection[Any],
    site_id: uuid.UUID,
    year_month: str,
    *,
    key: SigningKey = SAMPLE_SIGNING_KEY,
    merkle_root: str | None = None,
) -> str:
    """Snapshot a site-month from its ledger as the freeze cron does; return the snapshot hash.

    ``merkle_root`` overrides the computed root: a tampered snapshot for the audit's tests.
    """
    builder = RootBuilder()
    counts = {"ACCEPTED": 0, "OVERAGE": 0, "REJECTED_QUOTA": 0}
    non_billable = 0
    cur = conn.execute(
        "SELECT idempotency_key, created_at, billing_state, billable FROM ingest_idempotency "
        'WHERE site_id = %s AND year_month = %s ORDER BY created_at, idempotency_key COLLATE "C"',
        (site_id, year_month),
    )
    for idem_key, created_at, state, billable in cur:
        if billable:
            builder.add_leaf(leaf_bytes(idem_key, format_utc(created_at), state))
            counts[state] += 1
        elif state == "REJECTED_QUOTA":
            counts[state] += 1
        else:
            non_billable += 1
    prev = conn.execute(
        "SELECT snapshot_hash FROM invoice_snapshot WHERE site_id = %s AND year_month < %s "
        "ORDER BY year_month DESC LIMIT 1",
        (site_id, year_month),
    ).fetchone()
    _, end = month_bounds(year_month)
    frozen_at = end + timedelta(minutes=5)
    document = SnapshotDocument(
        site_id=str(site_id),
        year_month=year_month,
        billable_count=builder.size,
        overage_count=counts["OVERAGE"],
        rejected_count=counts["REJECTED_QUOTA"],
        non_billable_count=non_billable,
        merkle_root=merkle_root or builder.root().hex(),
        prev_snapshot_hash=None if prev is None else str(prev[0]),
        frozen_at=format_utc(frozen_at),
    )
    conn.execute(
        "INSERT INTO signing_keys (key_id, public_key) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (key.key_id, key.public_key.hex()),
    )
    body = document.to_bytes()
    conn.execute(
        "INSERT INTO invoice_snapshot (site_id, year_month, billable_count, overage_count, rejected_count, "
        "non_billable_count, merkle_root, prev_snapshot_hash, snapshot_hash, document, signature, key_id, frozen_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            site_id,
            year_month,
            document.billable_count,
            document.overage_count,
            document.rejected_count,
            document.non_billable_count,
            document.merkle_root,
            document.prev_snapshot_hash,
            document.snapshot_hash,
            body.decode("utf-8"),
            key.sign(body),
            key.key_id,
            frozen_at,
        ),
    )
    return document.snapshot_hash


def log_drift(
    conn: psycopg.Connection[Any], site_id: uuid.UUID, year_month: str, checks: list[tuple[int, int | None]]
) -> None:
    """Drift log rows as reconcile writes them: (counter drift, Redis drift) per run, ledger unchanged."""
    ledger = conn.execute(
        "SELECT count(*) FILTER (WHERE billable) FROM ingest_idempotency WHERE site_id = %s AND year_month = %s",
        (site_id, year_month),
    ).fetchone()
    billable = int(ledger[0]) if ledger else 0
    start, _ = month_bounds(year_month)
    for i, (counter_drift, redis_drift) in enumerate(checks):
        conn.execute(
            "INSERT INTO reconciliation_drift_log (site_id, year_month, ledger_billable, counter_billable, "
            "redis_billable, counter_drift, redis_drift, corrected, checked_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                site_id,
                year_month,
                billable,
                billable + counter_drift,
                None if redis_drift is None else billable + redis_drift,
                counter_drift,
                redis_drift,
                counter_drift != 0 or bool(redis_drift),
                start + timedelta(days=3 * i + 2, hours=6),
            ),
        )


# The sample story per demo site and month (see kernel.demo.tenants for the plans).
_DEMO_PLANS: dict[str, dict[str, MonthPlan]] = {
    "demo-hardcap": {
        "2026-09": MonthPlan(accepted=260, non_billable=40, dedup=6),
        "2026-10": MonthPlan(accepted=400, non_billable=60, rejected=140, rejected_in_one_hour=True, dedup=31),
    },
    "demo-overage": {
        "2026-09": MonthPlan(accepted=220, non_billable=20, dedup=2),
        "2026-10": MonthPlan(accepted=300, overage=150, rejected=12, non_billable=30, dedup=4),
    },
    "demo-shadow": {
        "2026-09": MonthPlan(accepted=150, non_billable=10),
        "2026-10": MonthPlan(accepted=240, non_billable=15, accepted_reason="shadow_within_quota"),
    },
    "demo-off": {
        "2026-09": MonthPlan(accepted=90, billable=False, non_billable_reason="billing_disabled"),
        "2026-10": MonthPlan(accepted=120, billable=False, non_billable_reason="billing_disabled"),
    },
}
# demo-overage's October counter is tampered (+7) after the fact: the audit must fail it.
TAMPERED_SITE = "demo-overage"
TAMPER_DELTA = 7


def seed_demo_sample(conn: psycopg.Connection[Any]) -> dict[str, uuid.UUID]:
    """Demo tenants plus two frozen months of sample traffic, drift history and one tampered counter.

    Run on a fresh database as the owner role; returns public id -> site id.
    """
    from kernel.demo.tenants import DEMO_SITES, ensure_demo_tenants

    ensure_demo_tenants(conn)
    ids = {d.public_id: d.site_id for d in DEMO_SITES}
    for public_id, months in _DEMO_PLANS.items():
        for year_month, plan in months.items():
            seed_site_month(conn, ids[public_id], year_month, plan)
            freeze_site_month(conn, ids[public_id], year_month)
            log_drift(conn, ids[public_id], year_month, [(0, 0), (0, None), (0, 0)])
    log_drift(conn, ids["demo-hardcap"], "2026-10", [(0, 3)])
    log_drift(conn, ids[TAMPERED_SITE], "2026-10", [(TAMPER_DELTA, 0)])
    conn.execute(
        "UPDATE site_usage_monthly SET event_count = event_count + %s WHERE site_id = %s AND year_month = '2026-10'",
        (TAMPER_DELTA, ids[TAMPERED_SITE]),
    )
    return ids

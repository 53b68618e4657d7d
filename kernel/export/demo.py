"""Demo step "dispute": a customer of ``demo-overage`` disputes October's overage charges.

Picks three events of the frozen month (an accepted one, the first OVERAGE one and a rejected
one), assembles the evidence packet with its rendered report, verifies it offline against the
deployment's published key, and prints where it is. If the invoice-freeze step has not run yet,
the demo months are frozen first through the cron (idempotent, in month order so the snapshot
chain never forks).
"""

from __future__ import annotations

import functools
import uuid
from typing import TYPE_CHECKING, Any

import psycopg

from kernel.clock import SystemClock
from kernel.cron.freeze import freeze_month
from kernel.cron.runs import CronContext, run_cron
from kernel.demo.tenants import DEMO_SITES
from kernel.export.packet import build_packet
from kernel.export.queries import load_snapshot
from kernel.export.verify import verify_packet
from kernel.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from kernel.demo import DemoRun

__all__ = ["DEMO_DISPUTE_MONTH", "DEMO_DISPUTE_SITE", "demo_disputed_keys", "run_dispute_demo"]

DEMO_DISPUTE_SITE = "demo-overage"
DEMO_DISPUTE_MONTH = "2026-10"
DEMO_MONTHS_IN_ORDER = ("2026-09", "2026-10")
DEMO_PACKET_DIR = PROJECT_ROOT / "reports" / "disputes"

_DISPUTED_SQL = """
SELECT (SELECT idempotency_key FROM ingest_idempotency
        WHERE site_id = %(s)s AND year_month = %(m)s AND billing_state = %(state)s
        ORDER BY created_at, idempotency_key COLLATE "C" LIMIT 1)
"""


def demo_disputed_keys(conn: psycopg.Connection[Any], site_id: uuid.UUID) -> list[str]:
    """The demo dispute's keys: the month's first ACCEPTED, first OVERAGE and first rejected event."""
    keys = []
    for state in ("ACCEPTED", "OVERAGE", "REJECTED_QUOTA"):
        row = conn.execute(_DISPUTED_SQL, {"s": site_id, "m": DEMO_DISPUTE_MONTH, "state": state}).fetchone()
        if row is not None and row[0] is not None:
            keys.append(str(row[0]))
    return keys


def run_dispute_demo(run: DemoRun) -> None:
    demo = next(d for d in DEMO_SITES if d.public_id == DEMO_DISPUTE_SITE)
    clock = SystemClock()
    with run.db.connect("app", autocommit=True) as conn:
        frozen = load_snapshot(conn, demo.site_id, DEMO_DISPUTE_MONTH) is not None
    if not frozen:
        ctx = CronContext(settings=run.settings, clock=clock, db=run.db, trigger="cli")
        for month in DEMO_MONTHS_IN_ORDER:
            run_cron(ctx, "invoice-freeze", functools.partial(freeze_month, year_month=month))
        run.echo(f"dispute: froze {', '.join(DEMO_MONTHS_IN_ORDER)} first (invoice-freeze)")
    with run.db.connect("app", autocommit=True) as conn:
        keys = demo_disputed_keys(conn, demo.site_id)
        public_key = conn.execute(
            "SELECT k.public_key FROM invoice_snapshot s JOIN signing_keys k USING (key_id)"
            " WHERE s.site_id = %s AND s.year_month = %s",
            (demo.site_id, DEMO_DISPUTE_MONTH),
        ).fetchone()
    out = DEMO_PACKET_DIR / f"dispute-{DEMO_DISPUTE_SITE}-{DEMO_DISPUTE_MONTH}.zip"
    result = build_packet(
        run.db,
        site_ref=DEMO_DISPUTE_SITE,
        year_month=DEMO_DISPUTE_MONTH,
        disputed_keys=keys,
        out=out,
        clock=clock,
        actor="demo",
    )
    trusted = [str(public_key[0])] if public_key is not None else []
    verification = verify_packet(out, trusted_keys=trusted)
    verification.raise_for_failure()
    counts = result.manifest["counts"]
    run.echo(
        f"dispute: {DEMO_DISPUTE_SITE} {DEMO_DISPUTE_MONTH}: {counts['rows']} rows, {counts['billable']} billable,"
        f" {len(keys)} disputed event(s); packet verified offline ({len(verification.checks)} checks pass)"
    )
    run.echo(f"  packet: {out}")
    pin = f" --trusted-key {trusted[0]}" if trusted else ""
    run.notes.append(f"check the dispute packet yourself: .venv/bin/revkernel dispute verify {out}{pin}")

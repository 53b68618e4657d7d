"""Demo step "crons": reconcile, freeze the closed demo months, relay, clean up, watch, and print
each site's snapshot (counts, Merkle root, snapshot hash, signing key id).

The crons run on a fixed demo instant one hour after the last demo month ends, so the snapshot
documents (and their hashes) are the same on every machine; only the signatures depend on the
machine's signing key. Their ``cron_runs`` records carry the real clock's times (they did run
now), so the watchtower and the scheduler of a `revkernel serve` started afterwards see a true
history. The demo runs them only on a database that holds nothing but demo tenants
(``kernel.demo.guard``, checked right before). Idempotent: a second run finds every month frozen.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from kernel.clock import ManualClock, SystemClock
from kernel.cron.jobs import run_named
from kernel.cron.runs import CronContext
from kernel.months import month_bounds

if TYPE_CHECKING:
    from kernel.demo import DemoRun

__all__ = ["run_cron_demo"]

DEMO_CRON_DELAY = timedelta(hours=1)  # after the end of the last demo month


def run_cron_demo(run: DemoRun) -> None:
    from kernel.demo.tenants import DEMO_SITES
    from kernel.demo.traffic import DEMO_MONTHS

    clock = ManualClock(month_bounds(DEMO_MONTHS[-1])[1] + DEMO_CRON_DELAY)
    ctx = CronContext(run.settings, clock, run.db, trigger="cli", history_clock=SystemClock())
    # Reconcile before freezing: reconcile only recounts unfrozen months, and the demo month's
    # drift report should show real reconcile runs.
    reconcile = run_named(ctx, "reconcile-usage")
    run.echo(
        f"reconcile-usage: enqueued {reconcile['enqueued']}, processed {reconcile['processed']}, "
        f"completed {reconcile['completed']}, failed {reconcile['failed']}"
    )
    for year_month in DEMO_MONTHS:  # in order: each snapshot chains to the month before
        frozen = run_named(ctx, "invoice-freeze", year_month=year_month)
        run.echo(
            f"invoice-freeze {year_month}: frozen {frozen['frozen']}, already frozen {frozen['already_frozen']}"
            + ("" if frozen["ok"] else f"  FAILED: {frozen.get('errors')}")
        )
    relay = run_named(ctx, "publish-outbox")
    run.echo(
        f"publish-outbox: sink {relay['sink']}, published {relay['published']}, pending {relay['pending']}"
        + ("" if relay["sink"] != "none" else " (no sink configured: the outbox table is the queue)")
    )
    cleanup = run_named(ctx, "idempotency-cleanup")
    run.echo(f"idempotency-cleanup: deleted {cleanup['deleted']} (nothing is 90 days old yet)")
    watch = run_named(ctx, "watchtower")
    not_ok = sorted(name for name, check in watch["checks"].items() if check["status"] != "ok")
    run.echo(f"watchtower: {watch['status']}" + (f" ({', '.join(not_ok)})" if not_ok else ""))

    names = {str(d.site_id): d.public_id for d in DEMO_SITES}
    with run.db.connect("app", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT site_id::text, year_month, billable_count, overage_count, rejected_count, non_billable_count,"
            " merkle_root, snapshot_hash, key_id FROM invoice_snapshot"
            " WHERE site_id = ANY(%s) AND year_month = ANY(%s) ORDER BY site_id, year_month",
            ([d.site_id for d in DEMO_SITES], list(DEMO_MONTHS)),
        ).fetchall()
    run.echo("invoice snapshots (Ed25519-signed, chained per site; public keys at GET /api/billing/public-keys):")
    for site_id, month, billable, overage, rejected, non_billable, root, digest, kid in sorted(
        rows, key=lambda r: (names.get(r[0], r[0]), r[1])
    ):
        run.echo(
            f"  {names.get(site_id, site_id):<14} {month}  billable {billable:>4}  overage {overage:>4}"
            f"  rejected {rejected:>4}  non-billable {non_billable:>4}  key {kid}"
        )
        run.echo(f"      merkle_root   {root}")
        run.echo(f"      snapshot_hash {digest}")

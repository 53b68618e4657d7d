"""Demo step "cases": a customer of ``demo-overage`` complains about three October events.

Support opens a case on ``demo-overage`` 2026-10 with the three keys of the dispute step (the
month's first accepted, first OVERAGE and first rejected event), investigates, and resolves it as
**partially upheld** with a credit of two: the accepted and the overage event are credited by a
signed correction; the rejected one was never billed, so there is nothing to credit. The case's
packet (with its rendered report) is written to ``reports/disputes/`` and verified offline, and
the net invoice is printed.

Repeatable and byte-deterministic: the case id is derived from the site and month, every move
runs on the demo's fixed clock (one day after the demo's crons), each move is taken only from the
state before it, and the packet is rebuilt only when the case or its corrections changed. A second
run changes nothing.
"""

from __future__ import annotations

import json
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from kernel.clock import ManualClock
from kernel.cron.demo import DEMO_CRON_DELAY
from kernel.cron.keystore import load_signing_key
from kernel.demo.tenants import DEMO_SITES
from kernel.disputes import Credit, service
from kernel.disputes.evidence import build_case_packet
from kernel.disputes.invoice import site_month_invoice
from kernel.disputes.queries import correction_chain
from kernel.export.demo import DEMO_DISPUTE_MONTH, DEMO_DISPUTE_SITE, DEMO_PACKET_DIR, demo_disputed_keys
from kernel.export.verify import MANIFEST_NAME, verify_packet
from kernel.months import month_bounds

if TYPE_CHECKING:
    from kernel.demo import DemoRun

__all__ = ["DEMO_CASE_ID", "demo_case_packet_path", "run_case_demo"]

DEMO_CASE_ID = uuid.uuid5(uuid.NAMESPACE_URL, f"revkernel-demo:dispute-case:{DEMO_DISPUTE_SITE}:{DEMO_DISPUTE_MONTH}")
DEMO_ACTOR = "demo:support"
# One day after the demo's crons froze the month.
DEMO_CASE_DELAY = DEMO_CRON_DELAY + timedelta(days=1)
CREDITED_STATES = ("ACCEPTED", "OVERAGE")


def demo_case_packet_path(directory: Path = DEMO_PACKET_DIR) -> Path:
    return directory / f"case-{DEMO_DISPUTE_SITE}-{DEMO_DISPUTE_MONTH}.zip"


def _packet_current(path: Path, state: str, chain: list[str], trusted: list[str]) -> bool:
    """True when the packet at ``path`` verifies and shows the case's state and corrections."""
    if not path.exists() or not verify_packet(path, trusted_keys=trusted).ok:
        return False
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read(MANIFEST_NAME))
    stated = [entry["correction_hash"] for entry in manifest.get("corrections", {}).get("chain", [])]
    return bool(manifest.get("case", {}).get("state") == state and stated == chain)


def run_case_demo(run: DemoRun, *, packet_dir: Path = DEMO_PACKET_DIR) -> None:
    """Open, investigate and resolve the demo case (each only once), then write its packet."""
    demo = next(d for d in DEMO_SITES if d.public_id == DEMO_DISPUTE_SITE)
    clock = ManualClock(month_bounds(DEMO_DISPUTE_MONTH)[1] + DEMO_CASE_DELAY)
    signer = load_signing_key(run.settings)
    with run.db.connect("app", autocommit=True) as conn:
        keys = demo_disputed_keys(conn, demo.site_id)
        states = dict(
            conn.execute(
                "SELECT idempotency_key, billing_state FROM ingest_idempotency WHERE site_id = %s AND year_month = %s"
                " AND idempotency_key = ANY(%s)",
                (demo.site_id, DEMO_DISPUTE_MONTH, keys),
            ).fetchall()
        )
        case = service.open_case(
            conn,
            site_id=demo.site_id,
            year_month=DEMO_DISPUTE_MONTH,
            disputed_keys=keys,
            whole_month=False,
            reason="the customer says these three October events were a misfiring tag",
            customer_reference="DEMO-TICKET-1",
            actor=DEMO_ACTOR,
            clock=clock,
            case_id=DEMO_CASE_ID,
        ).case
        if case.state == "open":
            case = service.investigate_case(
                conn, case.case_id, note="compared with the customer's tag logs", actor=DEMO_ACTOR, clock=clock
            ).case
        if case.state == "investigating":
            credited = tuple(k for k in keys if states.get(k) in CREDITED_STATES)
            case = service.resolve_case(
                conn,
                case.case_id,
                outcome="partially_upheld",
                note="two events were billed by the misfiring tag; the rejected one was never billed",
                credit=Credit("misfiring tag billed two events twice over", keys=credited),
                actor=DEMO_ACTOR,
                clock=clock,
                signer=signer,
            ).case
        chain = [c.correction_hash for c in correction_chain(conn, demo.site_id, DEMO_DISPUTE_MONTH)]
        invoice = site_month_invoice(conn, demo.site_id, DEMO_DISPUTE_MONTH)
    out = demo_case_packet_path(packet_dir)
    trusted = [signer.public_key.hex()]
    built = "up to date"
    if not _packet_current(out, case.state, chain, trusted):
        build_case_packet(run.db, case.case_id, out=out, clock=clock, actor="demo")
        verify_packet(out, trusted_keys=trusted).raise_for_failure()
        built = "written and verified offline"
    run.echo(
        f"cases: {DEMO_DISPUTE_SITE} {DEMO_DISPUTE_MONTH} case {case.case_id}: {case.state} ({case.outcome}),"
        f" {len(keys)} disputed key(s)"
    )
    run.echo(
        f"  net invoice: billed {invoice.billable}, credited {invoice.credited}, net {invoice.net_billable}"
        f" (overage {invoice.overage} - {invoice.credited_overage} = {invoice.net_overage})"
    )
    run.echo(f"  case packet ({built}): {out}")
    run.notes.append(f"the demo dispute case: .venv/bin/revkernel dispute show {case.case_id}")

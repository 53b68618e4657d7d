"""Corrections and cases inside an evidence packet: what the packet builder adds to a month.

``kernel.export.packet`` calls ``packet_corrections`` for every packet. A month with corrections
then carries, in ``manifest.json``:

- ``corrections.chain``: the site's signed corrections from its first one up to the last one of
  this month, each as ``{algorithm, correction_hash, document, key_id, public_key, signature}``
  (the snapshot's shape). Corrections of other months are there only so the chain can be walked
  from its start; their credits are checked against their own month's packet.
- ``corrections.invoice``: the invoice the customer pays: the snapshot's ``billable`` and
  ``overage`` counts, what the month's corrections credit (``credited``, of which
  ``credited_overage`` were OVERAGE rows), and ``net_billable`` / ``net_overage``.
- every key credited by this month's corrections among ``disputed``, with its RFC 6962 inclusion
  proof against the snapshot's root (the packet's ordinary proof of a disputed row).

A packet built for a case (``revkernel dispute packet --case ID``) also records ``case``: its id,
state, outcome, scope and disputed keys. ``kernel.disputes.verify`` checks all of it offline.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from kernel.clock import Clock, format_utc
from kernel.db.connect import Database
from kernel.disputes import queries
from kernel.disputes.document import CORRECTION_VERSION, CorrectionDocument
from kernel.disputes.queries import CaseRecord, CorrectionRecord
from kernel.ledger import SnapshotDocument

if TYPE_CHECKING:
    from kernel.export.packet import PacketResult

__all__ = [
    "PacketCorrections",
    "build_case_packet",
    "case_manifest",
    "invoice_figures",
    "packet_corrections",
]


def invoice_figures(billable: int, overage: int, credited: int, credited_overage: int) -> dict[str, int]:
    """Original, credited and net counts: the one formula of "snapshot minus corrections"."""
    return {
        "billable": billable,
        "overage": overage,
        "credited": credited,
        "credited_overage": credited_overage,
        "net_billable": billable - credited,
        "net_overage": overage - credited_overage,
    }


@dataclass(frozen=True)
class PacketCorrections:
    """A site-month's corrections as a packet carries them."""

    year_month: str
    chain: tuple[CorrectionRecord, ...]
    credited_overage: int

    @property
    def documents(self) -> list[CorrectionDocument]:
        return [CorrectionDocument.from_bytes(r.document) for r in self.chain if r.year_month == self.year_month]

    @property
    def credited_keys(self) -> list[str]:
        """The month's credited keys, in chain order: each gets an inclusion proof in the packet."""
        return [key for doc in self.documents for key in doc.credited_keys]

    def manifest_fields(self, snapshot: SnapshotDocument) -> dict[str, Any]:
        """``{"corrections": …}`` for a corrected month; nothing for a month without corrections."""
        if not self.chain:
            return {}
        credited = sum(doc.credited_count for doc in self.documents)
        figures = invoice_figures(snapshot.billable_count, snapshot.overage_count, credited, self.credited_overage)
        return {
            "corrections": {
                "chain": [record.to_json() for record in self.chain],
                "correction_version": CORRECTION_VERSION,
                "invoice": figures,
            }
        }

    def verify_section(self) -> str:
        """The ``VERIFY.md`` paragraph of a corrected month (empty without corrections)."""
        return _VERIFY_SECTION if self.chain else ""


def packet_corrections(conn: psycopg.Connection[Any], site_id: uuid.UUID, year_month: str) -> PacketCorrections:
    """The site's correction chain up to ``year_month``'s last correction, for the packet."""
    chain = tuple(queries.correction_chain(conn, site_id, year_month))
    overage = 0
    if chain:
        rows = queries.month_credit_figures(conn, year_month, site_id)
        overage = int(rows[0][7]) if rows else 0
    return PacketCorrections(year_month, chain, overage)


def case_manifest(case: CaseRecord) -> dict[str, Any]:
    """The ``case`` entry of a case's packet."""
    return {
        "case_id": str(case.case_id),
        "customer_reference": case.customer_reference,
        "disputed_keys": list(case.disputed_keys),
        "opened_at": format_utc(case.opened_at),
        "outcome": case.outcome,
        "state": case.state,
        "whole_month": case.whole_month,
        "year_month": case.year_month,
    }


def build_case_packet(
    db: Database,
    case_id: uuid.UUID,
    *,
    out: Path,
    clock: Clock,
    actor: str,
    render_report: bool = True,
) -> PacketResult:
    """The evidence packet of a case: its month, its disputed keys, its state and corrections.

    Raises:
        NotFound: unknown case. Everything ``build_packet`` raises (``month_not_frozen``, …).
    """
    from kernel.disputes.service import get_case
    from kernel.export.packet import build_packet

    with db.connect("app", autocommit=True) as conn:
        case = get_case(conn, case_id).case
    return build_packet(
        db,
        site_ref=str(case.site_id),
        year_month=case.year_month,
        disputed_keys=list(case.disputed_keys),
        out=out,
        clock=clock,
        actor=actor,
        render_report=render_report,
        manifest_extra={"case": case_manifest(case)},
    )


_VERIFY_SECTION = """
## 5. Corrections (credits) of this month
`manifest.json` → `corrections.chain` lists signed correction documents (canonical JSON like the
snapshot). A correction never changes the snapshot: the invoice you pay is the snapshot's
`billable_count` minus the `credited_count` of this month's corrections (`corrections.invoice`).
For each entry: `sha256sum` of `document` (saved byte for byte) equals `correction_hash`, the
Ed25519 `signature` verifies with `public_key` exactly as in step 2, `prev_correction_hash` is
the previous entry's `correction_hash` (null for the first), and for this month `snapshot_hash`
is the snapshot's hash. Every key in `credited_keys` is listed under `disputed` with status
`billable` and an inclusion proof (step 4): a credit is only given for an event you were billed.
"""

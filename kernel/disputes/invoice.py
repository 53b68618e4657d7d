"""The invoice a finance analyst reads: the frozen snapshot minus its signed corrections.

Two calls, one rule (``kernel.disputes.evidence.invoice_figures``) and one query:

- ``site_month_invoice(conn, site, year_month)``: one site-month, frozen or not;
- ``month_invoices(conn, year_month)``: every site frozen or disputed in the month, set-based
  (two queries whatever the number of sites), for the fleet index.

Each ``NetInvoice`` has the original counts of the snapshot (``None`` while the month is open),
what the month's corrections credit, the net counts, and the month's cases split into open
(open, investigating) and resolved (resolved, closed). ``invoice_frame`` turns a list into a
pandas DataFrame for the notebooks. Works as the read-only analyst role.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from kernel.clock import format_utc
from kernel.disputes import queries
from kernel.disputes.evidence import invoice_figures
from kernel.disputes.queries import CaseRecord
from kernel.errors import NotFound
from kernel.months import parse_year_month
from kernel.tenants import resolve_site

__all__ = [
    "INVOICE_COLUMNS",
    "CaseSummary",
    "NetInvoice",
    "invoice_frame",
    "month_invoices",
    "site_month_invoice",
]

# Before resolution a case is open; resolved and closed cases are resolved.
_UNRESOLVED = ("open", "investigating")


@dataclass(frozen=True)
class CaseSummary:
    case_id: str
    state: str
    outcome: str | None
    whole_month: bool
    disputed_keys: int
    customer_reference: str
    opened_at: str

    @property
    def resolved(self) -> bool:
        return self.state not in _UNRESOLVED

    @classmethod
    def of(cls, case: CaseRecord) -> CaseSummary:
        return cls(
            str(case.case_id),
            case.state,
            case.outcome,
            case.whole_month,
            len(case.disputed_keys),
            case.customer_reference,
            format_utc(case.opened_at),
        )


@dataclass(frozen=True)
class NetInvoice:
    """One site-month's invoice: original, credited and net counts, and its cases."""

    site_id: str
    public_id: str
    year_month: str
    snapshot_hash: str | None
    billable: int | None  # the snapshot's billable_count; None while the month is not frozen
    overage: int | None
    credited: int
    credited_overage: int
    corrections: int
    cases: tuple[CaseSummary, ...]

    @property
    def frozen(self) -> bool:
        return self.snapshot_hash is not None

    @property
    def net_billable(self) -> int | None:
        return None if self.billable is None else self.billable - self.credited

    @property
    def net_overage(self) -> int | None:
        return None if self.overage is None else self.overage - self.credited_overage

    @property
    def open_cases(self) -> tuple[CaseSummary, ...]:
        return tuple(c for c in self.cases if not c.resolved)

    @property
    def resolved_cases(self) -> tuple[CaseSummary, ...]:
        return tuple(c for c in self.cases if c.resolved)

    def to_json(self) -> dict[str, Any]:
        figures: dict[str, Any] = (
            invoice_figures(self.billable, self.overage or 0, self.credited, self.credited_overage)
            if self.billable is not None
            else {
                "billable": None,
                "overage": None,
                "credited": self.credited,
                "credited_overage": self.credited_overage,
                "net_billable": None,
                "net_overage": None,
            }
        )
        return {
            "site_id": self.site_id,
            "public_id": self.public_id,
            "year_month": self.year_month,
            "frozen": self.frozen,
            "snapshot_hash": self.snapshot_hash,
            **figures,
            "corrections": self.corrections,
            "open_cases": len(self.open_cases),
            "resolved_cases": len(self.resolved_cases),
            "cases": [c.__dict__ | {"resolved": c.resolved} for c in self.cases],
        }


INVOICE_COLUMNS = (
    "public_id",
    "year_month",
    "frozen",
    "billable",
    "credited",
    "net_billable",
    "overage",
    "credited_overage",
    "net_overage",
    "corrections",
    "open_cases",
    "resolved_cases",
)


def _invoices(conn: psycopg.Connection[Any], year_month: str, site_id: uuid.UUID | None) -> list[NetInvoice]:
    cases: dict[str, list[CaseSummary]] = {}
    for case in queries.month_cases(conn, year_month, site_id):
        cases.setdefault(str(case.site_id), []).append(CaseSummary.of(case))
    result = []
    for (
        sid,
        public_id,
        snapshot_hash,
        billable,
        overage,
        credited,
        corrections,
        credited_overage,
        _,
    ) in queries.month_credit_figures(conn, year_month, site_id):
        result.append(
            NetInvoice(
                site_id=str(sid),
                public_id=str(public_id),
                year_month=year_month,
                snapshot_hash=snapshot_hash,
                billable=None if billable is None else int(billable),
                overage=None if overage is None else int(overage),
                credited=int(credited),
                credited_overage=int(credited_overage),
                corrections=int(corrections),
                cases=tuple(cases.get(str(sid), ())),
            )
        )
    return result


def site_month_invoice(conn: psycopg.Connection[Any], site: str | uuid.UUID, year_month: str) -> NetInvoice:
    """The net invoice of one site-month (site as UUID or public id).

    Raises:
        NotFound: unknown site. InputError: bad ``year_month``.
    """
    month = parse_year_month(year_month)
    resolved = resolve_site(conn, str(site))
    found = _invoices(conn, month, resolved.id)
    if not found:  # pragma: no cover - the query returns the named site whatever its month holds
        raise NotFound(f"unknown site {site}", code="unknown_site")
    return found[0]


def month_invoices(conn: psycopg.Connection[Any], year_month: str) -> list[NetInvoice]:
    """The net invoice of every site frozen or disputed in ``year_month``, by public id."""
    return _invoices(conn, parse_year_month(year_month), None)


def invoice_frame(invoices: list[NetInvoice]) -> Any:
    """One row per site-month with ``INVOICE_COLUMNS`` (pandas)."""
    import pandas as pd

    rows = [{k: v for k, v in inv.to_json().items() if k in INVOICE_COLUMNS} for inv in invoices]
    return pd.DataFrame(rows, columns=list(INVOICE_COLUMNS))

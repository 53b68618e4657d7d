"""Dispute cases and corrections (issue 15): the support workflow from complaint to signed credit.

``service`` holds the rules (open, investigate, resolve with a signed correction, close), behind
both ``revkernel dispute …`` and ``/api/billing/disputes``; ``invoice`` gives finance the net
invoice (snapshot minus corrections); ``evidence`` and ``verify`` put corrections into evidence
packets and check them offline. Formats: ``document`` (the correction) and ``lifecycle`` (states).
"""

from __future__ import annotations

from kernel.disputes.document import CorrectionDocument
from kernel.disputes.invoice import NetInvoice, invoice_frame, month_invoices, site_month_invoice
from kernel.disputes.lifecycle import CASE_STATES, OUTCOMES, IllegalTransition
from kernel.disputes.service import (
    CaseDetail,
    CaseMove,
    Credit,
    CreditRefused,
    close_case,
    find_cases,
    get_case,
    investigate_case,
    open_case,
    resolve_case,
)

__all__ = [
    "CASE_STATES",
    "OUTCOMES",
    "CaseDetail",
    "CaseMove",
    "CorrectionDocument",
    "Credit",
    "CreditRefused",
    "IllegalTransition",
    "NetInvoice",
    "close_case",
    "find_cases",
    "get_case",
    "investigate_case",
    "invoice_frame",
    "month_invoices",
    "open_case",
    "resolve_case",
    "site_month_invoice",
]

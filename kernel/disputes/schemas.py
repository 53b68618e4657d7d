"""The wire format of ``/api/billing/disputes`` (and of ``revkernel dispute … --json``): msgspec Structs.

Requests refuse unknown fields (a typo in ``disputed_keys`` must not open a whole-month case);
every limit is the service's named constant, so the OpenAPI document states the same bounds
the service enforces. Responses are built from the service's records by the ``*_view`` functions,
which the CLI's ``--json`` prints too: one shape on both surfaces.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from kernel.clock import format_utc
from kernel.disputes.document import MAX_CREDITED_KEYS, MAX_REASON_CHARS, CorrectionDocument
from kernel.disputes.queries import CaseRecord, CorrectionRecord, HoldRecord
from kernel.disputes.service import MAX_CUSTOMER_REFERENCE_CHARS, MAX_NOTE_CHARS, CaseDetail, CaseMove, Credit
from kernel.export.packet import MAX_DISPUTED_KEYS, MAX_KEY_CHARS

__all__ = [
    "CaseAnswer",
    "CaseDetailAnswer",
    "CaseEvent",
    "CaseList",
    "CaseView",
    "CorrectionView",
    "CreditIn",
    "ErrorBody",
    "HoldView",
    "NoteIn",
    "OpenCaseIn",
    "ResolveCaseIn",
    "case_answer",
    "case_detail_answer",
    "case_list",
    "case_view",
    "to_json",
]

YearMonth = Annotated[str, Meta(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", examples=["2026-10"])]
IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=MAX_KEY_CHARS)]
Reason = Annotated[str, Meta(min_length=1, max_length=MAX_REASON_CHARS)]
Note = Annotated[str, Meta(max_length=MAX_NOTE_CHARS)]
CaseState = Literal["open", "investigating", "resolved", "closed"]
Outcome = Literal["upheld", "partially_upheld", "rejected"]


class OpenCaseIn(msgspec.Struct, forbid_unknown_fields=True):
    """Open a case: the disputed keys, or ``whole_month: true``; ``case_id`` makes retries safe."""

    site_id: uuid.UUID
    year_month: YearMonth
    reason: Reason
    customer_reference: Annotated[str, Meta(min_length=1, max_length=MAX_CUSTOMER_REFERENCE_CHARS)]
    disputed_keys: Annotated[list[IdempotencyKey], Meta(max_length=MAX_DISPUTED_KEYS)] = msgspec.field(
        default_factory=list
    )
    whole_month: bool = False
    case_id: uuid.UUID | None = None


class NoteIn(msgspec.Struct, forbid_unknown_fields=True):
    """A move's note (kept in ``audit_log``)."""

    note: Note = ""


class CreditIn(msgspec.Struct, forbid_unknown_fields=True):
    """Credited events by key (billable rows of the frozen month), or a number of events."""

    reason: Reason
    keys: Annotated[list[IdempotencyKey], Meta(max_length=MAX_CREDITED_KEYS)] = msgspec.field(default_factory=list)
    count: Annotated[int, Meta(ge=1)] | None = None

    def to_credit(self) -> Credit:
        return Credit(reason=self.reason, keys=tuple(self.keys), count=self.count)


class ResolveCaseIn(msgspec.Struct, forbid_unknown_fields=True):
    """Resolve: ``upheld``/``partially_upheld`` with a credit, ``rejected`` without one."""

    outcome: Outcome
    note: Note = ""
    credit: CreditIn | None = None


class HoldView(msgspec.Struct):
    active: bool
    held_since: str
    released_at: str | None


class CorrectionView(msgspec.Struct):
    """A correction as stored: the signed document, its hash and signature, and what it credits."""

    correction_hash: str
    snapshot_hash: str
    prev_correction_hash: str | None
    credited_count: int
    credited_keys: list[str]
    reason: str
    issued_at: str
    document: str
    signature: str
    key_id: str
    public_key: str | None


class CaseView(msgspec.Struct):
    case_id: str
    site_id: str
    public_id: str
    year_month: str
    whole_month: bool
    disputed_keys: list[str]
    reason: str
    customer_reference: str
    state: CaseState
    outcome: Outcome | None
    opened_by: str
    opened_at: str
    updated_at: str
    resolved_at: str | None
    closed_at: str | None
    hold: HoldView | None = None
    correction: CorrectionView | None = None


class CaseEvent(msgspec.Struct):
    """One ``audit_log`` row of the case: a move, a hold placed or released, a correction."""

    at: str
    actor: str
    action: str
    details: dict[str, Any]


class CaseAnswer(msgspec.Struct):
    """The answer to a move: ``changed`` is false when the move was already done (a safe retry)."""

    ok: bool
    changed: bool
    case: CaseView


class CaseDetailAnswer(msgspec.Struct):
    ok: bool
    case: CaseView
    history: list[CaseEvent]


class CaseList(msgspec.Struct):
    ok: bool
    cases: list[CaseView]


class ErrorBody(msgspec.Struct):
    """Every error: a stable ``error`` code and a readable ``message``."""

    ok: bool
    error: str
    message: str


def _at(value: Any) -> str | None:
    return format_utc(value) if value is not None else None


def _correction_view(record: CorrectionRecord) -> CorrectionView:
    document = CorrectionDocument.from_bytes(record.document)
    return CorrectionView(
        correction_hash=record.correction_hash,
        snapshot_hash=record.snapshot_hash,
        prev_correction_hash=document.prev_correction_hash,
        credited_count=record.credited_count,
        credited_keys=list(document.credited_keys),
        reason=document.reason,
        issued_at=document.issued_at,
        document=record.document.decode("utf-8"),
        signature=record.signature,
        key_id=record.key_id,
        public_key=record.public_key,
    )


def case_view(case: CaseRecord, hold: HoldRecord | None = None, correction: CorrectionRecord | None = None) -> CaseView:
    return CaseView(
        case_id=str(case.case_id),
        site_id=str(case.site_id),
        public_id=case.public_id,
        year_month=case.year_month,
        whole_month=case.whole_month,
        disputed_keys=list(case.disputed_keys),
        reason=case.reason,
        customer_reference=case.customer_reference,
        state=case.state,  # type: ignore[arg-type]  # the table's CHECK holds it to CaseState
        outcome=case.outcome,  # type: ignore[arg-type]
        opened_by=case.opened_by,
        opened_at=format_utc(case.opened_at),
        updated_at=format_utc(case.updated_at),
        resolved_at=_at(case.resolved_at),
        closed_at=_at(case.closed_at),
        hold=HoldView(hold.active, format_utc(hold.created_at), _at(hold.released_at)) if hold is not None else None,
        correction=_correction_view(correction) if correction is not None else None,
    )


def case_answer(move: CaseMove) -> CaseAnswer:
    return CaseAnswer(ok=True, changed=move.changed, case=case_view(move.case, move.hold, move.correction))


def case_detail_answer(detail: CaseDetail) -> CaseDetailAnswer:
    history = [
        CaseEvent(format_utc(at), str(actor), str(action), dict(details))
        for at, actor, action, details in detail.history
    ]
    return CaseDetailAnswer(ok=True, case=case_view(detail.case, detail.hold, detail.correction), history=history)


def case_list(cases: list[CaseRecord]) -> CaseList:
    return CaseList(ok=True, cases=[case_view(c) for c in cases])


def to_json(value: msgspec.Struct) -> Any:
    """The builtins form of an answer (what the CLI's ``--json`` prints)."""
    return msgspec.to_builtins(value)

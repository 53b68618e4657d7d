"""The rules of dispute cases and corrections: one function per move, behind the CLI and HTTP.

Every move runs in one transaction of the connection it is given and writes ``audit_log`` with
the actor and the note. See ``kernel.disputes.lifecycle`` for the states and when the hold on the
site-month is released, and ``kernel.disputes.document`` for the signed correction.

- ``open_case``: a case for a site-month (disputed keys, or the whole month), with the
  ``dispute_holds`` row in the same transaction. A caller-chosen ``case_id`` makes the open
  idempotent: the same request again answers the existing case, another request under that id
  is a 409 ``case_id_conflict``.
- ``investigate_case``, ``close_case``: the plain moves.
- ``resolve_case``: ``upheld`` / ``partially_upheld`` need a credit, ``rejected`` takes none. A
  credit names billable rows of the frozen month by key (a key case may credit only its disputed
  keys), or a number of events; it is written as a signed correction chained to the month's
  snapshot and to the site's previous correction. The case row is locked first, so of two
  concurrent resolves of one case exactly one writes; the other then sees a resolved case (same
  resolution: a no-op; another one: 409 ``case_already_resolved``).

Credits are refused, with nothing written, when a key is not a billable row of the month
(``credit_not_billable``: unknown, another site's, another month's, non-billable), not among the
case's disputed keys (``credit_not_disputed``), already credited (``already_credited``; the
``correction_credits`` primary key enforces it whatever this code checks), or when the month's
credits would exceed its billable count (``credit_exceeds_invoice``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from kernel.clock import Clock, format_utc
from kernel.cron.keystore import register_public_key
from kernel.disputes import queries
from kernel.disputes.document import CREDIT_OUTCOMES, MAX_CREDITED_KEYS, MAX_REASON_CHARS, CorrectionDocument
from kernel.disputes.lifecycle import CASE_STATES, OUTCOMES, IllegalTransition, require_transition
from kernel.disputes.queries import CaseRecord, CorrectionRecord, HoldRecord, LedgerState
from kernel.errors import Conflict, InputError, NotFound
from kernel.export.packet import parse_disputed_keys
from kernel.export.queries import load_snapshot, record_audit
from kernel.ledger import SigningKey
from kernel.months import parse_year_month, year_month_of
from kernel.tenants import get_site

__all__ = [
    "MAX_CUSTOMER_REFERENCE_CHARS",
    "MAX_LISTED_CASES",
    "MAX_NOTE_CHARS",
    "CaseDetail",
    "CaseMove",
    "Credit",
    "CreditRefused",
    "IllegalTransition",
    "close_case",
    "find_cases",
    "get_case",
    "investigate_case",
    "open_case",
    "parse_case_id",
    "parse_states",
    "resolve_case",
]

MAX_CUSTOMER_REFERENCE_CHARS = 200
MAX_NOTE_CHARS = 2000
MAX_LISTED_CASES = 500
# How many offending keys an error names word for word.
MAX_KEYS_IN_ERROR = 5


class CreditRefused(InputError):
    """A credit that cannot be given (the code says why); nothing was written."""

    code = "credit_refused"
    http_status = 422


@dataclass(frozen=True)
class Credit:
    """What a resolution credits: events by key, or a number of events; and why."""

    reason: str
    keys: tuple[str, ...] = ()
    count: int | None = None

    def validated(self) -> Credit:
        """The credit with its keys parsed, or ``InputError`` (400)."""
        reason = _text(self.reason, "credit reason", MAX_REASON_CHARS, code="invalid_credit")
        keys = tuple(_credit_keys(self.keys))
        if bool(keys) == (self.count is not None):
            raise InputError(
                "a credit names events by key or gives a count, exactly one of them", code="invalid_credit"
            )
        if self.count is not None and (isinstance(self.count, bool) or self.count <= 0):
            raise InputError("a credit count must be a positive number of events", code="invalid_credit")
        return Credit(reason=reason, keys=keys, count=self.count)

    @property
    def credited_count(self) -> int:
        return len(self.keys) if self.keys else int(self.count or 0)


@dataclass(frozen=True)
class CaseMove:
    """What a move did: the case afterwards, whether anything changed, what it wrote."""

    case: CaseRecord
    changed: bool
    correction: CorrectionRecord | None = None
    hold: HoldRecord | None = None


@dataclass(frozen=True)
class CaseDetail:
    case: CaseRecord
    correction: CorrectionRecord | None
    hold: HoldRecord | None
    history: list[tuple[Any, ...]] = field(default_factory=list)  # (at, actor, action, details)


def _text(value: str | None, what: str, limit: int, *, code: str, required: bool = True) -> str:
    text = (value or "").strip()
    if required and not text:
        raise InputError(f"{what} is required", code=code)
    if len(text) > limit or any(ord(ch) < 32 and ch not in "\n\t" for ch in text):
        raise InputError(f"{what} must be at most {limit} characters of text", code=code)
    return text


def _credit_keys(keys: Sequence[str]) -> list[str]:
    if len(keys) > MAX_CREDITED_KEYS:
        raise InputError(
            f"a correction credits at most {MAX_CREDITED_KEYS} keys (credit by count for more)", code="invalid_credit"
        )
    result: list[str] = []
    for key in keys:
        # The rule for what an idempotency key may look like is the packet's (one place).
        for parsed in parse_disputed_keys([key]):
            if parsed not in result:
                result.append(parsed)
    return result


def parse_case_id(text: str | uuid.UUID) -> uuid.UUID:
    """A case id (UUID), else ``InputError`` 400 ``invalid_case_id``."""
    if isinstance(text, uuid.UUID):
        return text
    try:
        return uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        raise InputError("case_id must be a UUID", code="invalid_case_id") from None


def _named(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_IN_ERROR])
    return shown + (f" (+{len(keys) - MAX_KEYS_IN_ERROR} more)" if len(keys) > MAX_KEYS_IN_ERROR else "")


def _audit(conn: psycopg.Connection[Any], case: CaseRecord, action: str, actor: str, at: Any, **details: Any) -> None:
    record_audit(
        conn,
        at=at,
        actor=actor,
        action=action,
        site_id=case.site_id,
        year_month=case.year_month,
        details={"case_id": str(case.case_id), **details},
    )


def _require_case(conn: psycopg.Connection[Any], case_id: uuid.UUID, *, for_update: bool = False) -> CaseRecord:
    case = queries.load_case(conn, case_id, for_update=for_update)
    if case is None:
        raise NotFound(f"unknown dispute case {case_id}", code="unknown_case")
    return case


def open_case(
    conn: psycopg.Connection[Any],
    *,
    site_id: uuid.UUID,
    year_month: str,
    disputed_keys: Sequence[str],
    whole_month: bool,
    reason: str,
    customer_reference: str,
    actor: str,
    clock: Clock,
    case_id: uuid.UUID | None = None,
) -> CaseMove:
    """Open a case and hold its site-month, in one transaction.

    Raises:
        InputError: bad month (``invalid_year_month``, ``month_in_future``), keys, reason or
            reference; neither or both of keys and ``whole_month`` (``invalid_dispute_scope``).
        NotFound: unknown site.
        Conflict: ``case_id_conflict``: that id names another case.
    """
    month = parse_year_month(year_month)
    now = clock.now()
    if month > year_month_of(now):
        raise InputError(f"{month} has not begun: a dispute is about a month that was billed", code="month_in_future")
    keys = parse_disputed_keys(disputed_keys)
    if bool(keys) == whole_month:
        raise InputError(
            "a case disputes some keys or the whole month, exactly one of them", code="invalid_dispute_scope"
        )
    reason = _text(reason, "reason", MAX_REASON_CHARS, code="invalid_reason")
    reference = _text(
        customer_reference, "customer reference", MAX_CUSTOMER_REFERENCE_CHARS, code="invalid_customer_reference"
    )
    new_id = case_id or uuid.uuid4()
    with conn.transaction():
        get_site(conn, site_id)
        created = queries.insert_case(
            conn,
            case_id=new_id,
            site_id=site_id,
            year_month=month,
            disputed_keys=keys,
            reason=reason,
            customer_reference=reference,
            opened_by=actor,
            at=now,
        )
        case = _require_case(conn, new_id)
        if not created:
            same = (
                case.site_id,
                case.year_month,
                case.disputed_keys,
                case.whole_month,
                case.reason,
                case.customer_reference,
            ) == (site_id, month, tuple(keys), not keys, reason, reference)
            if not same:
                raise Conflict(f"case {new_id} exists with other contents", code="case_id_conflict")
            return CaseMove(case, False, hold=queries.hold_of(conn, site_id, month))
        scope = "the whole month" if not keys else f"{len(keys)} key(s)"
        _audit(
            conn, case, "dispute_open", actor, now, to="open", scope=scope, customer_reference=reference, reason=reason
        )
        # Same transaction as the case: cleanup and archiving can never run between the two.
        if queries.place_hold(conn, site_id, month, f"dispute case {new_id}: {reason}"[:MAX_REASON_CHARS], now):
            _audit(conn, case, "dispute_hold_placed", actor, now)
        hold = queries.hold_of(conn, site_id, month)
    return CaseMove(case, True, hold=hold)


def _move(
    conn: psycopg.Connection[Any], case_id: uuid.UUID, action: str, *, note: str, actor: str, clock: Clock
) -> CaseMove:
    note = _text(note, "note", MAX_NOTE_CHARS, code="invalid_note", required=False)
    now = clock.now()
    with conn.transaction():
        case = _require_case(conn, case_id, for_update=True)
        if not require_transition(action, case.state):
            return CaseMove(case, False, hold=queries.hold_of(conn, case.site_id, case.year_month))
        target = "investigating" if action == "investigate" else "closed"
        queries.set_case_state(conn, case_id, state=target, outcome=None, at=now)
        _audit(conn, case, f"dispute_{action}", actor, now, note=note, to=target, **{"from": case.state})
        if action == "close" and queries.release_hold(conn, case.site_id, case.year_month, now):
            _audit(conn, case, "dispute_hold_released", actor, now)
        after = _require_case(conn, case_id)
        hold = queries.hold_of(conn, case.site_id, case.year_month)
    return CaseMove(after, True, hold=hold)


def investigate_case(
    conn: psycopg.Connection[Any], case_id: uuid.UUID, *, note: str, actor: str, clock: Clock
) -> CaseMove:
    """``open → investigating`` (a no-op when already investigating)."""
    return _move(conn, case_id, "investigate", note=note, actor=actor, clock=clock)


def close_case(conn: psycopg.Connection[Any], case_id: uuid.UUID, *, note: str, actor: str, clock: Clock) -> CaseMove:
    """``resolved → closed``; releases the month's hold when no other case of it is still open."""
    return _move(conn, case_id, "close", note=note, actor=actor, clock=clock)


def _same_resolution(case: CaseRecord, existing: CorrectionRecord | None, outcome: str, credit: Credit | None) -> bool:
    if case.outcome != outcome:
        return False
    if existing is None or credit is None:
        return existing is None and credit is None
    document = CorrectionDocument.from_bytes(existing.document)
    keys = tuple(sorted(credit.keys, key=lambda k: k.encode("utf-8")))
    return (document.credited_keys, document.credited_count, document.reason) == (
        keys,
        credit.credited_count,
        credit.reason,
    )


def resolve_case(
    conn: psycopg.Connection[Any],
    case_id: uuid.UUID,
    *,
    outcome: str,
    note: str,
    credit: Credit | None,
    actor: str,
    clock: Clock,
    signer: SigningKey,
) -> CaseMove:
    """``investigating → resolved`` with an outcome, writing the signed correction of a credit.

    Raises:
        InputError: unknown outcome, a credit missing for upheld/partially upheld or given for
            rejected (``credit_required`` / ``credit_not_allowed``), a malformed credit.
        CreditRefused: see the module docstring (422; nothing written).
        IllegalTransition: the case is open (investigate first) or closed.
        Conflict: ``case_already_resolved`` with another resolution; ``month_not_frozen``;
            ``already_credited``; ``month_cleaned_up``.
    """
    if outcome not in OUTCOMES:
        raise InputError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}", code="invalid_outcome")
    note = _text(note, "note", MAX_NOTE_CHARS, code="invalid_note", required=False)
    if outcome in CREDIT_OUTCOMES and credit is None:
        raise InputError(f"an {outcome} case credits the customer: give the credit", code="credit_required")
    if outcome not in CREDIT_OUTCOMES and credit is not None:
        raise InputError("a rejected case credits nothing", code="credit_not_allowed")
    credit = credit.validated() if credit is not None else None
    now = clock.now()
    with conn.transaction():
        # The row lock orders concurrent resolves of this case: exactly one gets past here first.
        case = _require_case(conn, case_id, for_update=True)
        if case.state == "resolved":
            existing = queries.correction_of_case(conn, case_id)
            if _same_resolution(case, existing, outcome, credit):
                return CaseMove(case, False, existing, queries.hold_of(conn, case.site_id, case.year_month))
            raise Conflict(f"case {case_id} is already resolved as {case.outcome}", code="case_already_resolved")
        require_transition("resolve", case.state)
        correction = _write_correction(conn, case, outcome, credit, actor, now, signer) if credit else None
        queries.set_case_state(conn, case_id, state="resolved", outcome=outcome, at=now)
        details: dict[str, Any] = {"from": case.state, "to": "resolved", "outcome": outcome, "note": note}
        if correction is not None:
            details.update(correction_hash=correction.correction_hash, credited_count=correction.credited_count)
        _audit(conn, case, "dispute_resolve", actor, now, **details)
        after = _require_case(conn, case_id)
        hold = queries.hold_of(conn, case.site_id, case.year_month)
    return CaseMove(after, True, correction, hold)


def _refuse_keys(conn: psycopg.Connection[Any], case: CaseRecord, credit: Credit, total_rows: int) -> list[LedgerState]:
    """The credited keys' ledger rows, or the reason they cannot be credited."""
    keys = list(credit.keys)
    if not case.whole_month:
        outside = [k for k in keys if k not in case.disputed_keys]
        if outside:
            raise CreditRefused(f"not disputed in this case: {_named(outside)}", code="credit_not_disputed")
    found = queries.ledger_states(conn, case.site_id, case.year_month, keys)
    refused = [k for k in keys if k not in found or not found[k].billable]
    if refused:
        if queries.month_ledger_rows(conn, case.site_id, case.year_month) < total_rows:
            raise Conflict(
                f"{case.year_month} was archived and cleaned up: its rows are in the ledger archive, credit by count",
                code="month_cleaned_up",
            )
        raise CreditRefused(
            f"not a billable row of {case.year_month} of site {case.public_id}: {_named(refused)}",
            code="credit_not_billable",
        )
    twice = queries.credited_already(conn, case.site_id, keys)
    if twice:
        raise Conflict(f"already credited: {_named(sorted(twice))}", code="already_credited")
    return [found[k] for k in keys]


def _write_correction(
    conn: psycopg.Connection[Any],
    case: CaseRecord,
    outcome: str,
    credit: Credit,
    actor: str,
    now: Any,
    signer: SigningKey,
) -> CorrectionRecord:
    snapshot = load_snapshot(conn, case.site_id, case.year_month)
    if snapshot is None:
        raise Conflict(
            f"{case.year_month} of site {case.public_id} is not frozen: a credit corrects a final invoice",
            code="month_not_frozen",
        )
    signed = snapshot.parsed
    # One writer of the site's chain at a time: the predecessor read below stays the head.
    queries.lock_site_corrections(conn, case.site_id)
    total_rows = signed.billable_count + signed.rejected_count + signed.non_billable_count
    credits = _refuse_keys(conn, case, credit, total_rows) if credit.keys else []
    credited = queries.month_credited_count(conn, case.site_id, case.year_month)
    if credited + credit.credited_count > signed.billable_count:
        raise CreditRefused(
            f"{case.year_month} billed {signed.billable_count} events and {credited} are credited already:"
            f" {credit.credited_count} more would exceed the invoice",
            code="credit_exceeds_invoice",
        )
    document = CorrectionDocument(
        case_id=str(case.case_id),
        site_id=str(case.site_id),
        year_month=case.year_month,
        snapshot_hash=snapshot.snapshot_hash,
        prev_correction_hash=queries.last_correction_hash(conn, case.site_id),
        outcome=outcome,
        credited_keys=tuple(sorted(credit.keys, key=lambda k: k.encode("utf-8"))),
        credited_count=credit.credited_count,
        reason=credit.reason,
        issued_at=format_utc(now),
    )
    document_bytes = document.to_bytes()
    register_public_key(conn, signer, now)
    try:
        with conn.transaction():  # a savepoint: a constraint refusal becomes a clear error
            queries.insert_correction(
                conn,
                correction_hash=document.correction_hash,
                case_id=case.case_id,
                site_id=case.site_id,
                year_month=case.year_month,
                snapshot_hash=snapshot.snapshot_hash,
                prev_correction_hash=document.prev_correction_hash,
                outcome=outcome,
                credited_count=credit.credited_count,
                document=document_bytes,
                signature=signer.sign(document_bytes),
                key_id=signer.key_id,
                issued_at=now,
                credits=credits,
            )
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict(
            f"the credit collides with an earlier correction: {exc.diag.constraint_name}", code="already_credited"
        ) from exc
    record_audit(
        conn,
        at=now,
        actor=actor,
        action="invoice_correction",
        site_id=case.site_id,
        year_month=case.year_month,
        details={
            "case_id": str(case.case_id),
            "correction_hash": document.correction_hash,
            "credited_count": credit.credited_count,
            "key_id": signer.key_id,
            "snapshot_hash": snapshot.snapshot_hash,
        },
    )
    record = queries.correction_of_case(conn, case.case_id)
    assert record is not None and record.correction_hash == document.correction_hash
    return record


def get_case(conn: psycopg.Connection[Any], case_id: uuid.UUID) -> CaseDetail:
    """A case with its correction, its month's hold and its history.

    Raises:
        NotFound: ``unknown_case``.
    """
    case = _require_case(conn, case_id)
    return CaseDetail(
        case,
        queries.correction_of_case(conn, case_id),
        queries.hold_of(conn, case.site_id, case.year_month),
        queries.case_history(conn, case.site_id, case_id),
    )


def parse_states(states: Sequence[str] | None) -> list[str] | None:
    """Case states to filter by (None: all), else ``InputError`` 400 ``invalid_state``."""
    for state in states or ():
        if state not in CASE_STATES:
            raise InputError(f"state must be one of {', '.join(CASE_STATES)}, got {state!r}", code="invalid_state")
    return list(states) if states else None


def find_cases(
    conn: psycopg.Connection[Any],
    *,
    site_id: uuid.UUID | None,
    year_month: str | None = None,
    states: Sequence[str] | None = None,
    limit: int = MAX_LISTED_CASES,
) -> list[CaseRecord]:
    """Cases newest first (at most ``MAX_LISTED_CASES``), by site (None: all), month and states."""
    month = parse_year_month(year_month) if year_month else None
    states = parse_states(states)
    return queries.list_cases(
        conn, site_id=site_id, year_month=month, states=states, limit=max(1, min(limit, MAX_LISTED_CASES))
    )

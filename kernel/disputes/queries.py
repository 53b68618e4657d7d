"""The SQL of the disputes context: the only place it lives.

Every function takes a psycopg connection and runs inside the caller's transaction, so the
service decides what commits together (a case and its hold; a correction, its credits and the
case's new state).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

__all__ = [
    "CORRECTION_LOCK_CLASS",
    "CaseRecord",
    "CorrectionRecord",
    "HoldRecord",
    "LedgerState",
    "case_history",
    "correction_chain",
    "correction_of_case",
    "credited_already",
    "hold_of",
    "insert_case",
    "insert_correction",
    "last_correction_hash",
    "ledger_states",
    "list_cases",
    "load_case",
    "lock_site_corrections",
    "month_cases",
    "month_credit_figures",
    "month_credited_count",
    "month_ledger_rows",
    "place_hold",
    "release_hold",
    "set_case_state",
    "site_exists",
    "stale_holds",
]

# pg_advisory_xact_lock(class, hashtext(site_id)): one writer of a site's correction chain at a time.
CORRECTION_LOCK_CLASS = 0x7263_6F72  # "rcor"

_CASE_COLUMNS = """
    c.case_id, c.site_id, s.public_id, c.year_month, c.whole_month, c.disputed_keys, c.reason,
    c.customer_reference, c.state, c.outcome, c.opened_by, c.opened_at, c.updated_at,
    c.resolved_at, c.closed_at
"""


@dataclass(frozen=True)
class CaseRecord:
    case_id: uuid.UUID
    site_id: uuid.UUID
    public_id: str
    year_month: str
    whole_month: bool
    disputed_keys: tuple[str, ...]
    reason: str
    customer_reference: str
    state: str
    outcome: str | None
    opened_by: str
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    closed_at: datetime | None


def _case(row: tuple[Any, ...]) -> CaseRecord:
    values = list(row)
    values[5] = tuple(values[5] or ())
    return CaseRecord(*values)


@dataclass(frozen=True)
class CorrectionRecord:
    """A stored correction: its document bytes and how they were signed."""

    id: int
    correction_hash: str
    case_id: uuid.UUID
    site_id: uuid.UUID
    year_month: str
    snapshot_hash: str
    credited_count: int
    document: bytes
    signature: str
    key_id: str
    public_key: str | None
    issued_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The packet's and the API's form, shaped like the snapshot's (``kernel.export``)."""
        return {
            "algorithm": "ed25519",
            "correction_hash": self.correction_hash,
            "document": self.document.decode("utf-8"),
            "key_id": self.key_id,
            "public_key": self.public_key,
            "signature": self.signature,
        }


_CORRECTION_COLUMNS = """
    r.id, r.correction_hash, r.case_id, r.site_id, r.year_month, r.snapshot_hash, r.credited_count,
    r.document, r.signature, r.key_id, k.public_key, r.issued_at
"""


def _correction(row: tuple[Any, ...]) -> CorrectionRecord:
    values = list(row)
    values[7] = str(values[7]).encode("utf-8")
    return CorrectionRecord(*values)


@dataclass(frozen=True)
class HoldRecord:
    site_id: uuid.UUID
    year_month: str
    reason: str
    created_at: datetime
    released_at: datetime | None

    @property
    def active(self) -> bool:
        return self.released_at is None


@dataclass(frozen=True)
class LedgerState:
    """What the ledger says of one key of a site-month."""

    idempotency_key: str
    billable: bool
    billing_state: str


# -- cases -------------------------------------------------------------------------------------


def insert_case(
    conn: psycopg.Connection[Any],
    *,
    case_id: uuid.UUID,
    site_id: uuid.UUID,
    year_month: str,
    disputed_keys: Sequence[str],
    reason: str,
    customer_reference: str,
    opened_by: str,
    at: datetime,
) -> bool:
    """Insert a new open case; False when ``case_id`` exists already (nothing written)."""
    cur = conn.execute(
        """
        INSERT INTO dispute_cases (case_id, site_id, year_month, whole_month, disputed_keys, reason,
            customer_reference, state, opened_by, opened_at, updated_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, 'open', %s, %s, %s)
        ON CONFLICT (case_id) DO NOTHING
        """,
        (
            case_id,
            site_id,
            year_month,
            not disputed_keys,
            list(disputed_keys),
            reason,
            customer_reference,
            opened_by,
            at,
            at,
        ),
    )
    return cur.rowcount == 1


def load_case(conn: psycopg.Connection[Any], case_id: uuid.UUID, *, for_update: bool = False) -> CaseRecord | None:
    """One case; with ``for_update`` its row stays locked until the transaction ends.

    The lock is what makes two concurrent moves of one case (two resolves) run one after the
    other: the second sees the first's committed state.
    """
    lock = " FOR UPDATE OF c" if for_update else ""
    row = conn.execute(
        f"SELECT {_CASE_COLUMNS} FROM dispute_cases c JOIN sites s ON s.id = c.site_id WHERE c.case_id = %s{lock}",
        (case_id,),
    ).fetchone()
    return _case(row) if row is not None else None


def list_cases(
    conn: psycopg.Connection[Any],
    *,
    site_id: uuid.UUID | None,
    year_month: str | None,
    states: Sequence[str] | None,
    limit: int,
) -> list[CaseRecord]:
    """Cases newest first, filtered by site (None: every site), month and states."""
    rows = conn.execute(
        f"""
        SELECT {_CASE_COLUMNS} FROM dispute_cases c JOIN sites s ON s.id = c.site_id
        WHERE (%(site)s::uuid IS NULL OR c.site_id = %(site)s)
          AND (%(month)s::text IS NULL OR c.year_month = %(month)s)
          AND (%(states)s::text[] IS NULL OR c.state = ANY(%(states)s))
        ORDER BY c.opened_at DESC, c.case_id
        LIMIT %(limit)s
        """,
        {"site": site_id, "month": year_month, "states": list(states) if states else None, "limit": limit},
    ).fetchall()
    return [_case(r) for r in rows]


def month_cases(conn: psycopg.Connection[Any], year_month: str, site_id: uuid.UUID | None) -> list[CaseRecord]:
    """Every case of a month (one site, or all with None), in opening order."""
    rows = conn.execute(
        f"""
        SELECT {_CASE_COLUMNS} FROM dispute_cases c JOIN sites s ON s.id = c.site_id
        WHERE c.year_month = %(month)s AND (%(site)s::uuid IS NULL OR c.site_id = %(site)s)
        ORDER BY c.site_id, c.opened_at, c.case_id
        """,
        {"month": year_month, "site": site_id},
    ).fetchall()
    return [_case(r) for r in rows]


def set_case_state(
    conn: psycopg.Connection[Any], case_id: uuid.UUID, *, state: str, outcome: str | None, at: datetime
) -> None:
    conn.execute(
        """
        UPDATE dispute_cases SET state = %(state)s, outcome = coalesce(%(outcome)s, outcome), updated_at = %(at)s,
            resolved_at = CASE WHEN %(state)s = 'resolved' THEN %(at)s ELSE resolved_at END,
            closed_at = CASE WHEN %(state)s = 'closed' THEN %(at)s ELSE closed_at END
        WHERE case_id = %(case)s
        """,
        {"state": state, "outcome": outcome, "at": at, "case": case_id},
    )


def case_history(conn: psycopg.Connection[Any], site_id: uuid.UUID, case_id: uuid.UUID) -> list[tuple[Any, ...]]:
    """The case's ``audit_log`` rows, oldest first: (at, actor, action, details)."""
    return conn.execute(
        """
        SELECT at, actor, action, details FROM audit_log
        WHERE site_id = %s AND (action LIKE 'dispute_%%' OR action = 'invoice_correction')
          AND details->>'case_id' = %s
        ORDER BY at, id
        """,
        (site_id, str(case_id)),
    ).fetchall()


# -- holds -------------------------------------------------------------------------------------


def place_hold(conn: psycopg.Connection[Any], site_id: uuid.UUID, year_month: str, reason: str, at: datetime) -> bool:
    """Hold the site-month (a new hold, or a released one held again); False if already held.

    The upsert locks the hold row, so a concurrent close of another case of the month (which
    locks it too before deciding to release) is ordered with this open.
    """
    cur = conn.execute(
        """
        INSERT INTO dispute_holds (site_id, year_month, reason, created_at) VALUES (%s, %s, %s, %s)
        ON CONFLICT (site_id, year_month) DO UPDATE
            SET reason = EXCLUDED.reason, created_at = EXCLUDED.created_at, released_at = NULL
            WHERE dispute_holds.released_at IS NOT NULL
        """,
        (site_id, year_month, reason, at),
    )
    return cur.rowcount == 1


def release_hold(conn: psycopg.Connection[Any], site_id: uuid.UUID, year_month: str, at: datetime) -> bool:
    """Release the hold unless a case of the site-month is still not closed; True if released now."""
    held = conn.execute(
        "SELECT 1 FROM dispute_holds WHERE site_id = %s AND year_month = %s AND released_at IS NULL FOR UPDATE",
        (site_id, year_month),
    ).fetchone()
    if held is None:
        return False
    # A new statement after the lock: it sees every case committed before we got the row.
    still_open = conn.execute(
        "SELECT 1 FROM dispute_cases WHERE site_id = %s AND year_month = %s AND state <> 'closed' LIMIT 1",
        (site_id, year_month),
    ).fetchone()
    if still_open is not None:
        return False
    conn.execute(
        "UPDATE dispute_holds SET released_at = %s WHERE site_id = %s AND year_month = %s",
        (at, site_id, year_month),
    )
    return True


def hold_of(conn: psycopg.Connection[Any], site_id: uuid.UUID, year_month: str) -> HoldRecord | None:
    row = conn.execute(
        "SELECT site_id, year_month, reason, created_at, released_at FROM dispute_holds"
        " WHERE site_id = %s AND year_month = %s",
        (site_id, year_month),
    ).fetchone()
    return HoldRecord(*row) if row is not None else None


def stale_holds(conn: psycopg.Connection[Any], before: datetime, limit: int) -> list[tuple[str, str, str, datetime]]:
    """Active holds placed before ``before``: (site_id, public_id, year_month, created_at), oldest first."""
    rows = conn.execute(
        """
        SELECT h.site_id::text, s.public_id, h.year_month, h.created_at
        FROM dispute_holds h JOIN sites s ON s.id = h.site_id
        WHERE h.released_at IS NULL AND h.created_at < %s
        ORDER BY h.created_at, h.site_id LIMIT %s
        """,
        (before, limit),
    ).fetchall()
    return [(str(a), str(b), str(c), d) for a, b, c, d in rows]


# -- ledger and credits ------------------------------------------------------------------------


def ledger_states(
    conn: psycopg.Connection[Any], site_id: uuid.UUID, year_month: str, keys: Sequence[str]
) -> dict[str, LedgerState]:
    """The ledger rows of ``keys`` in the site-month (absent keys are absent from the answer)."""
    rows = conn.execute(
        "SELECT idempotency_key, billable, billing_state FROM ingest_idempotency"
        " WHERE site_id = %s AND year_month = %s AND idempotency_key = ANY(%s)",
        (site_id, year_month, list(keys)),
    ).fetchall()
    return {str(k): LedgerState(str(k), bool(b), str(s)) for k, b, s in rows}


def month_ledger_rows(conn: psycopg.Connection[Any], site_id: uuid.UUID, year_month: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM ingest_idempotency WHERE site_id = %s AND year_month = %s", (site_id, year_month)
    ).fetchone()
    return int(row[0]) if row is not None else 0


def lock_site_corrections(conn: psycopg.Connection[Any], site_id: uuid.UUID) -> None:
    """Serialise writers of a site's correction chain until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (CORRECTION_LOCK_CLASS, str(site_id)))


def credited_already(conn: psycopg.Connection[Any], site_id: uuid.UUID, keys: Sequence[str]) -> dict[str, str]:
    """Which of ``keys`` a correction of the site already credits: key → its correction_hash."""
    rows = conn.execute(
        "SELECT idempotency_key, correction_hash FROM correction_credits"
        " WHERE site_id = %s AND idempotency_key = ANY(%s)",
        (site_id, list(keys)),
    ).fetchall()
    return {str(k): str(h) for k, h in rows}


def month_credited_count(conn: psycopg.Connection[Any], site_id: uuid.UUID, year_month: str) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(credited_count), 0) FROM invoice_corrections WHERE site_id = %s AND year_month = %s",
        (site_id, year_month),
    ).fetchone()
    return int(row[0]) if row is not None else 0


def last_correction_hash(conn: psycopg.Connection[Any], site_id: uuid.UUID) -> str | None:
    """The head of the site's correction chain (call under ``lock_site_corrections``)."""
    row = conn.execute(
        "SELECT correction_hash FROM invoice_corrections WHERE site_id = %s ORDER BY id DESC LIMIT 1", (site_id,)
    ).fetchone()
    return str(row[0]) if row is not None else None


def insert_correction(
    conn: psycopg.Connection[Any],
    *,
    correction_hash: str,
    case_id: uuid.UUID,
    site_id: uuid.UUID,
    year_month: str,
    snapshot_hash: str,
    prev_correction_hash: str | None,
    outcome: str,
    credited_count: int,
    document: bytes,
    signature: str,
    key_id: str,
    issued_at: datetime,
    credits: Sequence[LedgerState],
) -> None:
    """Store a correction and its credited keys (the credits' primary key refuses a second credit)."""
    conn.execute(
        """
        INSERT INTO invoice_corrections (correction_hash, case_id, site_id, year_month, snapshot_hash,
            prev_correction_hash, outcome, credited_count, document, signature, key_id, issued_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (
            correction_hash,
            case_id,
            site_id,
            year_month,
            snapshot_hash,
            prev_correction_hash,
            outcome,
            credited_count,
            document.decode("utf-8"),
            signature,
            key_id,
            issued_at,
        ),
    )
    if credits:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO correction_credits (site_id, idempotency_key, year_month, billing_state, correction_hash)"
                " VALUES (%s, %s, %s, %s, %s)",
                [(site_id, c.idempotency_key, year_month, c.billing_state, correction_hash) for c in credits],
            )


def correction_of_case(conn: psycopg.Connection[Any], case_id: uuid.UUID) -> CorrectionRecord | None:
    row = conn.execute(
        f"SELECT {_CORRECTION_COLUMNS} FROM invoice_corrections r LEFT JOIN signing_keys k ON k.key_id = r.key_id"
        " WHERE r.case_id = %s",
        (case_id,),
    ).fetchone()
    return _correction(row) if row is not None else None


def correction_chain(conn: psycopg.Connection[Any], site_id: uuid.UUID, year_month: str) -> list[CorrectionRecord]:
    """The site's corrections from the first up to the last one of ``year_month`` (empty if none)."""
    rows = conn.execute(
        f"""
        SELECT {_CORRECTION_COLUMNS} FROM invoice_corrections r LEFT JOIN signing_keys k ON k.key_id = r.key_id
        WHERE r.site_id = %(site)s
          AND r.id <= (SELECT max(id) FROM invoice_corrections WHERE site_id = %(site)s AND year_month = %(month)s)
        ORDER BY r.id
        """,
        {"site": site_id, "month": year_month},
    ).fetchall()
    return [_correction(r) for r in rows]


# -- invoice figures ---------------------------------------------------------------------------

_MONTH_FIGURES_SQL = """
SELECT st.id, st.public_id, snap.snapshot_hash, snap.billable_count, snap.overage_count,
       coalesce(r.credited, 0), coalesce(r.corrections, 0), coalesce(k.credited_overage, 0),
       coalesce(k.credited_by_key, 0)
FROM sites st
LEFT JOIN invoice_snapshot snap ON snap.site_id = st.id AND snap.year_month = %(month)s
LEFT JOIN (
    SELECT site_id, sum(credited_count) AS credited, count(*) AS corrections
    FROM invoice_corrections WHERE year_month = %(month)s GROUP BY site_id
) r ON r.site_id = st.id
LEFT JOIN (
    SELECT site_id, count(*) FILTER (WHERE billing_state = 'OVERAGE') AS credited_overage,
           count(*) AS credited_by_key
    FROM correction_credits WHERE year_month = %(month)s GROUP BY site_id
) k ON k.site_id = st.id
WHERE (%(site)s::uuid IS NULL OR st.id = %(site)s)
  AND (%(site)s::uuid IS NOT NULL OR snap.site_id IS NOT NULL
       OR EXISTS (SELECT 1 FROM dispute_cases c WHERE c.site_id = st.id AND c.year_month = %(month)s))
ORDER BY st.public_id
"""


def month_credit_figures(
    conn: psycopg.Connection[Any], year_month: str, site_id: uuid.UUID | None
) -> list[tuple[Any, ...]]:
    """Per site: (site_id, public_id, snapshot_hash, billable, overage, credited, corrections,
    credited_overage, credited_by_key). With no ``site_id``: every site frozen or disputed that month."""
    return conn.execute(_MONTH_FIGURES_SQL, {"month": year_month, "site": site_id}).fetchall()


def site_exists(conn: psycopg.Connection[Any], site_id: uuid.UUID) -> bool:
    return conn.execute("SELECT 1 FROM sites WHERE id = %s", (site_id,)).fetchone() is not None

"""Invoice freeze (SPEC §4.2, §5): a signed, chained Merkle snapshot of a closed month.

Each site-month is read straight from the ledger in one REPEATABLE READ transaction, so the counts
and the Merkle root describe the same set of rows. Leaves stream through a server-side cursor
into ``RootBuilder`` (O(log n) memory), never the whole month in RAM.

Why an event can never land in a frozen month, whatever a host clock says (issue 11 §3): the
database enforces it. Before its REPEATABLE READ transaction, ``freeze_site_month`` closes the
site-month (``close_site_month``, migration 0010): it takes the same ``site_usage_monthly`` row
lock that every ledger transaction of that site-month takes (creating the row if the month had
no events) and sets ``closed_at``, and commits. Every ledger transaction that got the lock before
has committed, so the snapshot sees it; every later one sees ``closed_at`` and writes its events
to the first open month by the *database's* clock instead (``ingest_write``). The close is its
own short transaction, not the first statement of the snapshot's: a REPEATABLE READ transaction
that waits for a row lock fails with a serialization error when the holder commits, and holding
the lock through a million-row read would stall every late request of that site-month.
``close_month`` also closes the month for site-month rows that do not exist yet.

Which clock says the month is over: both. The host clock (``ctx.clock``) must be
``FREEZE_GRACE`` past the month's end (a slow host refuses, 409 ``month_open``, and the schedule
retries), *and* so must the database's clock, checked by the database itself in the closing
functions: a host whose clock runs ahead can never close a month early. The grace keeps hosts
whose clocks lag a little from having their last events of the month redirected. Client time
(``ts``) never decides.

Snapshots of a site form a chain by month: ``prev_snapshot_hash`` is the hash of the site's
snapshot of the latest earlier month. Freezing a month older than one already frozen would fork
the chain, so it is refused for that site (reported as a failure, never silently).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from kernel.clock import format_utc
from kernel.cron.keystore import load_signing_key, register_public_key
from kernel.cron.runs import CronContext, CronResult
from kernel.errors import Conflict
from kernel.ledger import RootBuilder, SigningKey, SnapshotDocument, leaf_bytes
from kernel.months import month_bounds, parse_year_month, previous_year_month, year_month_of

__all__ = [
    "FREEZE_GRACE",
    "LEAVES_SQL",
    "MONTH_ROWS_SQL",
    "FrozenSite",
    "MonthOpen",
    "close_site_month",
    "freeze_month",
    "freeze_site_month",
    "month_counts",
]

_log = logging.getLogger("kernel.cron.freeze")

# A month can be frozen this long after it ended: longer than any ingest transaction may run
# (its statement timeout), so no row stamped inside the month can still be committing.
FREEZE_GRACE = timedelta(minutes=5)
FREEZE_FETCH_ROWS = 20_000  # leaves per round trip of the server-side cursor
FREEZE_STATEMENT_TIMEOUT_MS = 30 * 60 * 1000
SQLSTATE_MONTH_OPEN = "RK003"  # require_month_ended, migration 0010

# Leaf order of SPEC §5: created_at, then idempotency_key bytewise. created_at is formatted by
# the server exactly as kernel.clock.format_utc would (tests check the two agree), which keeps a
# million-row month from paying a Python datetime round trip per row.
LEAVES_SQL = """
SELECT idempotency_key,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
       billing_state
FROM ingest_idempotency
WHERE site_id = %s AND year_month = %s AND billable
ORDER BY created_at, idempotency_key COLLATE "C"
"""

# Freeze reads every row of the site-month once, in leaf order: billable rows become leaves,
# all rows are tallied, so counts and root come from one scan of one snapshot.
MONTH_ROWS_SQL = """
SELECT idempotency_key,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
       billing_state,
       billable
FROM ingest_idempotency
WHERE site_id = %s AND year_month = %s
ORDER BY created_at, idempotency_key COLLATE "C"
"""

COUNTS_SQL = """
SELECT count(*) FILTER (WHERE billable),
       count(*) FILTER (WHERE billable AND billing_state = 'OVERAGE'),
       count(*) FILTER (WHERE billing_state = 'REJECTED_QUOTA'),
       count(*) FILTER (WHERE NOT billable AND billing_state <> 'REJECTED_QUOTA')
FROM ingest_idempotency
WHERE site_id = %s AND year_month = %s
"""


class MonthOpen(Conflict):
    """The month has not ended (plus grace): its invoice cannot be final yet."""

    code = "month_open"


@dataclass(frozen=True)
class FrozenSite:
    """One site-month's snapshot, new or found already frozen."""

    site_id: str
    year_month: str
    created: bool
    snapshot_hash: str
    merkle_root: str
    key_id: str
    billable_count: int
    overage_count: int
    rejected_count: int
    non_billable_count: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def require_closed(year_month: str, now: datetime, whose: str = "server") -> None:
    """Raise ``MonthOpen`` unless ``year_month`` ended at least ``FREEZE_GRACE`` before ``now``."""
    _, end = month_bounds(year_month)
    if now < end + FREEZE_GRACE:
        current = year_month_of(now)
        raise MonthOpen(
            f"month {year_month} is not closed ({whose} month {current}; a month can be frozen "
            f"{int(FREEZE_GRACE.total_seconds())} s after it ends)"
        )


def close_site_month(conn: psycopg.Connection[Any], site_id: str, year_month: str) -> datetime:
    """Close one site-month under the ingest row lock and commit (module docstring).

    Raises:
        MonthOpen: the database's clock says the month is not over (plus grace).
    """
    try:
        row = conn.execute("SELECT close_site_month(%s, %s, %s)", (site_id, year_month, FREEZE_GRACE)).fetchone()
        conn.commit()
    except psycopg.Error as exc:
        conn.rollback()
        if exc.sqlstate == SQLSTATE_MONTH_OPEN:
            detail = exc.diag.message_primary
            raise MonthOpen(f"month {year_month} is not closed by the database clock: {detail}") from exc
        raise
    assert row is not None and row[0] is not None
    closed_at: datetime = row[0]
    return closed_at


def month_counts(conn: psycopg.Connection[Any], site_id: str, year_month: str) -> tuple[int, int, int, int]:
    """(billable, overage, rejected, non-billable) of a site-month, counted from the ledger."""
    row = conn.execute(COUNTS_SQL, (site_id, year_month)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def _leaves_counting(rows: Iterable[tuple[str, str, str, bool]], tally: list[int]) -> Iterator[bytes]:
    """Leaf bytes of the billable rows, in order, tallying every row's class on the way (SPEC §5)."""
    for idempotency_key, created_at, billing_state, billable in rows:
        if billable:
            tally[0] += 1
            if billing_state == "OVERAGE":
                tally[1] += 1
            yield leaf_bytes(idempotency_key, created_at, billing_state)
        elif billing_state == "REJECTED_QUOTA":
            tally[2] += 1
        else:
            tally[3] += 1


def freeze_month(
    ctx: CronContext, year_month: str | None = None, *, site_ids: Sequence[str] | None = None
) -> CronResult:
    """Freeze every site (or only ``site_ids``) with activity in a closed month (default: the previous one).

    Returns the SPEC §4.2 body ``{"ok", "year_month", "frozen", "already_frozen"}``, plus
    ``failed`` and ``errors`` when a site could not be frozen (then ``ok`` is false).

    Raises:
        InputError: ``year_month`` is not ``YYYY-MM``.
        MonthOpen: the month is current, in the future, or within the grace period.
    """
    now = ctx.clock.now()
    month = parse_year_month(year_month) if year_month else previous_year_month(now)
    require_closed(month, now)
    only = None if site_ids is None else [uuid.UUID(str(s)) for s in site_ids]
    key = load_signing_key(ctx.settings)
    with ctx.db.connect("app", autocommit=True) as conn:
        db_now = conn.execute("SELECT clock_timestamp()").fetchone()
        assert db_now is not None
        require_closed(month, db_now[0], whose="database")
        conn.execute("SELECT close_month(%s, %s)", (month, FREEZE_GRACE))
        register_public_key(conn, key, now)
        site_ids = [
            str(row[0])
            for row in conn.execute(
                """
                SELECT s.id FROM sites s
                WHERE (EXISTS (SELECT 1 FROM ingest_idempotency i WHERE i.site_id = s.id AND i.year_month = %s)
                   OR EXISTS (SELECT 1 FROM site_usage_monthly u WHERE u.site_id = s.id AND u.year_month = %s))
                  AND (%s::uuid[] IS NULL OR s.id = ANY(%s::uuid[]))
                ORDER BY s.id
                """,
                (month, month, only, only),
            ).fetchall()
        ]
    frozen = already = 0
    errors: dict[str, str] = {}
    for site_id in site_ids:
        try:
            result = freeze_site_month(ctx, key, site_id, month, now)
        except (psycopg.Error, Conflict) as exc:
            _log.error("freeze of site %s month %s failed: %s", site_id, month, exc)
            errors[site_id] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            continue
        if result.created:
            frozen += 1
        else:
            already += 1
    body: CronResult = {"ok": not errors, "year_month": month, "frozen": frozen, "already_frozen": already}
    if errors:
        body.update(failed=len(errors), error="some site-months could not be frozen", errors=errors)
    return body


def freeze_site_month(ctx: CronContext, key: SigningKey, site_id: str, year_month: str, now: datetime) -> FrozenSite:
    """Snapshot one site-month in one REPEATABLE READ transaction; idempotent.

    Raises:
        Conflict: a later month of this site is already frozen (the chain would fork).
    """
    with ctx.db.connect("app") as conn:
        # Issue 11 §3: closed (and committed) before the snapshot below is taken.
        close_site_month(conn, site_id, year_month)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = {FREEZE_STATEMENT_TIMEOUT_MS}")
            existing = conn.execute(
                "SELECT snapshot_hash, merkle_root, key_id, billable_count, overage_count, rejected_count,"
                " non_billable_count FROM invoice_snapshot WHERE site_id = %s AND year_month = %s",
                (site_id, year_month),
            ).fetchone()
            if existing is not None:
                return FrozenSite(site_id, year_month, False, *existing)
            later = conn.execute(
                "SELECT min(year_month) FROM invoice_snapshot WHERE site_id = %s AND year_month > %s",
                (site_id, year_month),
            ).fetchone()
            if later is not None and later[0] is not None:
                raise Conflict(
                    f"site {site_id}: {later[0]} is already frozen; freezing the earlier {year_month} "
                    "would fork the snapshot chain",
                    code="snapshot_chain_ahead",
                )
            prev = conn.execute(
                "SELECT snapshot_hash FROM invoice_snapshot WHERE site_id = %s AND year_month < %s"
                " ORDER BY year_month DESC LIMIT 1",
                (site_id, year_month),
            ).fetchone()
            builder = RootBuilder()
            tally = [0, 0, 0, 0]  # billable, overage, rejected, non-billable
            with conn.cursor(name="freeze_rows") as cur:
                cur.itersize = FREEZE_FETCH_ROWS
                cur.execute(MONTH_ROWS_SQL, (site_id, year_month))
                builder.add_leaves(_leaves_counting(cur, tally))
            billable, overage, rejected, non_billable = tally
            # The same invariant on two paths: the tally and the tree saw the same billable rows.
            assert builder.size == billable, (builder.size, billable)
            document = SnapshotDocument(
                site_id=str(uuid.UUID(site_id)),
                year_month=year_month,
                billable_count=billable,
                overage_count=overage,
                rejected_count=rejected,
                non_billable_count=non_billable,
                merkle_root=builder.root().hex(),
                prev_snapshot_hash=prev[0] if prev is not None else None,
                frozen_at=format_utc(now),
            )
            document_bytes = document.to_bytes()
            snapshot_hash = document.snapshot_hash
            conn.execute(
                """
                INSERT INTO invoice_snapshot (site_id, year_month, hash_version, billable_count, overage_count,
                    rejected_count, non_billable_count, merkle_root, prev_snapshot_hash, snapshot_hash,
                    document, signature, key_id, frozen_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                """,
                (
                    site_id,
                    year_month,
                    document.hash_version,
                    billable,
                    overage,
                    rejected,
                    non_billable,
                    document.merkle_root,
                    document.prev_snapshot_hash,
                    snapshot_hash,
                    document_bytes.decode("utf-8"),
                    key.sign(document_bytes),
                    key.key_id,
                    now,
                ),
            )
            conn.execute(
                "INSERT INTO audit_log (at, actor, action, site_id, year_month, details)"
                " VALUES (%s, %s, 'invoice_freeze', %s, %s, %s)",
                (
                    now,
                    ctx.actor,
                    site_id,
                    year_month,
                    json.dumps(
                        {
                            "snapshot_hash": snapshot_hash,
                            "merkle_root": document.merkle_root,
                            "key_id": key.key_id,
                            "billable_count": billable,
                        }
                    ),
                ),
            )
    return FrozenSite(
        site_id,
        year_month,
        True,
        snapshot_hash,
        document.merkle_root,
        key.key_id,
        billable,
        overage,
        rejected,
        non_billable,
    )

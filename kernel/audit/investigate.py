"""The interactive investigation notebook's actions: each widget calls one of these functions."""

from __future__ import annotations

from typing import Any

import pandas as pd
import psycopg

from kernel.audit import queries
from kernel.clock import format_utc
from kernel.errors import InputError, NotFound
from kernel.ledger import inclusion_proof, leaf_bytes, leaf_hash, verify_inclusion
from kernel.ledger.rows import BILLING_STATES
from kernel.months import parse_year_month
from kernel.tenants import Site, list_sites, resolve_site

__all__ = ["MAX_LEDGER_ROWS", "key_detail", "ledger_rows", "reason_choices", "site_choices", "site_of"]

# Rows the ledger browser shows at most per filter.
MAX_LEDGER_ROWS = 200


def site_of(conn: psycopg.Connection[Any], ref: str) -> Site:
    """The site a person picked or typed: public id or UUID (``NotFound`` otherwise)."""
    return resolve_site(conn, ref.strip())


def site_choices(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(label, public id) of every site, for the site picker."""
    return [(f"{s.public_id} — {s.name} ({s.billing_mode})", s.public_id) for s in list_sites(conn)]


def reason_choices(conn: psycopg.Connection[Any], site: Site, year_month: str) -> list[str]:
    """The billing reasons present in the site-month, for the reason filter."""
    rows = conn.execute(
        "SELECT DISTINCT billing_reason FROM ingest_idempotency WHERE site_id = %s AND year_month = %s "
        "ORDER BY billing_reason",
        (site.id, parse_year_month(year_month)),
    ).fetchall()
    return [str(r[0]) for r in rows]


def ledger_rows(
    conn: psycopg.Connection[Any],
    site: Site,
    year_month: str,
    *,
    billing_state: str = "",
    billing_reason: str = "",
    limit: int = MAX_LEDGER_ROWS,
) -> pd.DataFrame:
    """Ledger rows of the site-month in leaf order, filtered by state and/or reason ('' = any)."""
    if billing_state and billing_state not in BILLING_STATES:
        raise InputError(f"billing_state must be one of {', '.join(BILLING_STATES)}", code="invalid_billing_state")
    if not 1 <= limit <= MAX_LEDGER_ROWS:
        raise InputError(f"limit must be 1..{MAX_LEDGER_ROWS}", code="invalid_limit")
    params = {
        "site_id": site.id,
        "year_month": parse_year_month(year_month),
        "billing_state": billing_state or None,
        "billing_reason": billing_reason or None,
        "limit": limit,
    }
    cur = conn.execute(queries.LEDGER_ROWS, params)
    return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description or ()])


def key_detail(conn: psycopg.Connection[Any], site: Site, idempotency_key: str) -> dict[str, Any]:
    """One ledger row with its outbox state and, when its month is frozen, its inclusion proof.

    The proof is recomputed from the ledger and checked against the snapshot's stored root, so
    the answer says whether this disputed row is provably part of the invoice.
    """
    row = conn.execute(queries.LEDGER_ROW, {"site_id": site.id, "idempotency_key": idempotency_key}).fetchone()
    if row is None:
        raise NotFound(f"no ledger row {idempotency_key!r} for site {site.public_id}", code="unknown_idempotency_key")
    (key, version, created_at, year_month, billable, state, reason, ec, ea, el, payload_hash, occurred_at) = row[:12]
    outbox_id, published_at, attempts = row[12:]
    detail: dict[str, Any] = {
        "idempotency_key": key,
        "idempotency_version": int(version),
        "created_at": format_utc(created_at),
        "year_month": year_month,
        "billable": bool(billable),
        "billing_state": state,
        "billing_reason": reason,
        "event": {"category": ec, "action": ea, "label": el},
        "payload_hash": payload_hash,
        "occurred_at": None if occurred_at is None else format_utc(occurred_at),
        "outbox": "missing"
        if outbox_id is None
        else ("published" if published_at is not None else f"pending ({attempts} attempts)"),
        "inclusion": "not billable: not a leaf" if not billable else "month not frozen",
    }
    snap = conn.execute(
        "SELECT merkle_root FROM invoice_snapshot WHERE site_id = %s AND year_month = %s", (site.id, year_month)
    ).fetchone()
    if billable and snap is not None:
        leaves = conn.execute(
            "SELECT idempotency_key, created_at, billing_state FROM ingest_idempotency "
            "WHERE site_id = %s AND year_month = %s AND billable "
            'ORDER BY created_at, idempotency_key COLLATE "C"',
            (site.id, year_month),
        ).fetchall()
        hashes = [leaf_hash(leaf_bytes(k, format_utc(c), s)) for k, c, s in leaves]
        index = next(i for i, (k, _, _) in enumerate(leaves) if k == key)
        proof = inclusion_proof(hashes, index)
        ok = verify_inclusion(leaf_bytes(key, format_utc(created_at), state), proof, bytes.fromhex(str(snap[0])))
        detail["inclusion"] = "proved against the snapshot root" if ok else "NOT in the snapshot's Merkle tree"
        detail["proof"] = proof.to_json()
    return detail

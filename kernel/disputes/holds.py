"""The watchtower's view of dispute holds: a hold left in place too long needs a human.

A hold keeps a site-month out of archiving and cleanup for as long as a case of it is not closed
(``kernel.disputes.lifecycle``). A case forgotten in ``resolved`` would keep its month forever,
so the watchtower reports every active hold older than ``Settings.dispute_hold_max_age_days``
(``REVKERNEL_DISPUTE_HOLD_MAX_AGE_DAYS``) as ``degraded``: nothing is wrong with billing, but
someone should close the case.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg

from kernel.clock import format_utc
from kernel.disputes import queries

__all__ = ["MAX_REPORTED_HOLDS", "stale_holds_check"]

MAX_REPORTED_HOLDS = 20  # holds listed word for word; the count covers all of them


def stale_holds_check(conn: psycopg.Connection[Any], now: datetime, max_age_days: int) -> dict[str, Any]:
    """The ``dispute_holds`` check: ``degraded`` when an active hold is older than ``max_age_days``."""
    cutoff = now - timedelta(days=max_age_days)
    row = conn.execute(
        "SELECT count(*) FROM dispute_holds WHERE released_at IS NULL AND created_at < %s", (cutoff,)
    ).fetchone()
    stale = int(row[0]) if row is not None else 0
    listed = queries.stale_holds(conn, cutoff, MAX_REPORTED_HOLDS)
    return {
        "status": "degraded" if stale else "ok",
        "max_age_days": max_age_days,
        "stale_holds": stale,
        "oldest": [
            {
                "site_id": site_id,
                "public_id": public_id,
                "year_month": year_month,
                "held_since": format_utc(created_at),
                "age_days": (now - created_at).days,
            }
            for site_id, public_id, year_month, created_at in listed
        ],
    }

"""The report runner's own SQL (read-only, bound parameters)."""

from __future__ import annotations

__all__ = ["BILLABLE_BY_SITE"]

# Billable events of each site in a month: the signed snapshot's count when the month is frozen
# (the invoice of record, still there after cleanup), else the ledger's.
BILLABLE_BY_SITE = """
SELECT s.id AS site_id,
       coalesce(snap.billable_count, l.billable_count) AS billable_count
FROM sites s
LEFT JOIN invoice_snapshot snap ON snap.site_id = s.id AND snap.year_month = %(year_month)s
LEFT JOIN (
    SELECT site_id, count(*) FILTER (WHERE billable) AS billable_count
    FROM ingest_idempotency WHERE year_month = %(year_month)s GROUP BY site_id
) l ON l.site_id = s.id
WHERE (%(site_ids)s::uuid[] IS NULL OR s.id = ANY(%(site_ids)s::uuid[]))
  AND (snap.id IS NOT NULL OR l.site_id IS NOT NULL)
"""

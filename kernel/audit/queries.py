"""The audit's SQL: read-only, bound parameters only, every query set-based over sites.

Each fleet query takes ``%(year_month)s`` and ``%(site_ids)s`` (a ``uuid[]``, or NULL for every
site), so the per-site notebook and the fleet report run the very same statements: a site-month
audit is the fleet audit restricted to one site.
"""

from __future__ import annotations

__all__ = [
    "DAILY_VOLUME",
    "DRIFT_HISTORY",
    "FLEET_METRICS",
    "LEDGER_ROW",
    "LEDGER_ROWS",
    "MONTH_LEAVES",
    "OUTBOX_PROBLEMS",
    "SITES",
    "SNAPSHOT_CHAIN",
    "USAGE_BY_REASON",
]

_SITE_FILTER = "(%(site_ids)s::uuid[] IS NULL OR s.id = ANY(%(site_ids)s::uuid[]))"

SITES = f"""
SELECT s.id, s.public_id, s.name, s.billing_mode, p.monthly_limit, p.soft_limit_enabled,
       p.hard_cap_multiplier, p.rate_limit_per_minute
FROM sites s JOIN site_plans p ON p.site_id = s.id
WHERE {_SITE_FILTER}
ORDER BY s.public_id
"""

# One row per site: ledger counts, counters, snapshot, drift, outbox and anomaly figures.
FLEET_METRICS = f"""
WITH scope AS (
    SELECT s.id AS site_id FROM sites s WHERE {_SITE_FILTER}
), ledger AS (
    SELECT l.site_id,
           count(*) AS total_count,
           count(*) FILTER (WHERE l.billable) AS billable_count,
           count(*) FILTER (WHERE l.billable AND l.billing_state = 'ACCEPTED') AS accepted_count,
           count(*) FILTER (WHERE l.billing_state = 'OVERAGE') AS overage_count,
           count(*) FILTER (WHERE l.billing_state = 'REJECTED_QUOTA') AS rejected_count,
           count(*) FILTER (WHERE NOT l.billable AND l.billing_state <> 'REJECTED_QUOTA') AS non_billable_count,
           count(*) FILTER (WHERE NOT l.billable AND l.billing_state <> 'REJECTED_QUOTA'
                            AND l.billing_reason <> 'billing_disabled') AS flood_candidate_count
    FROM ingest_idempotency l JOIN scope USING (site_id)
    WHERE l.year_month = %(year_month)s
    GROUP BY l.site_id
), storm AS (
    SELECT site_id, max(n) AS max_rejected_per_hour
    FROM (
        SELECT l.site_id, date_trunc('hour', l.created_at) AS hour, count(*) AS n
        FROM ingest_idempotency l JOIN scope USING (site_id)
        WHERE l.year_month = %(year_month)s AND l.billing_state = 'REJECTED_QUOTA'
        GROUP BY 1, 2
    ) per_hour
    GROUP BY site_id
), daily AS (
    SELECT site_id, max(n) AS max_daily_events,
           percentile_disc(0.5) WITHIN GROUP (ORDER BY n) AS median_daily_events,
           count(*) AS active_days
    FROM (
        SELECT l.site_id, date_trunc('day', l.created_at AT TIME ZONE 'UTC') AS day, count(*) AS n
        FROM ingest_idempotency l JOIN scope USING (site_id)
        WHERE l.year_month = %(year_month)s
        GROUP BY 1, 2
    ) per_day
    GROUP BY site_id
), outbox AS (
    SELECT l.site_id,
           count(*) FILTER (WHERE o.id IS NULL) AS accepted_without_outbox,
           count(*) FILTER (WHERE o.id IS NOT NULL AND o.published_at IS NULL
                            AND o.created_at < %(stale_before)s) AS unpublished_outbox
    FROM ingest_idempotency l JOIN scope USING (site_id)
    LEFT JOIN ingest_outbox o ON o.site_id = l.site_id AND o.idempotency_key = l.idempotency_key
    -- Ingest writes an outbox row for every row it did not reject (golden rule 2).
    WHERE l.year_month = %(year_month)s AND l.billing_state <> 'REJECTED_QUOTA'
    GROUP BY l.site_id
), orphans AS (
    SELECT o.site_id, count(*) AS outbox_without_ledger
    FROM ingest_outbox o JOIN scope USING (site_id)
    WHERE o.created_at >= %(month_start)s AND o.created_at < %(month_end)s
      AND NOT EXISTS (
          SELECT 1 FROM ingest_idempotency l
          WHERE l.site_id = o.site_id AND l.idempotency_key = o.idempotency_key
      )
    GROUP BY o.site_id
), drift AS (
    SELECT d.site_id,
           count(*) AS drift_checks,
           count(*) FILTER (WHERE d.counter_drift <> 0) AS counter_drift_checks,
           coalesce(max(abs(d.counter_drift)), 0) AS max_abs_counter_drift,
           count(*) FILTER (WHERE coalesce(d.redis_drift, 0) <> 0) AS redis_drift_checks,
           coalesce(max(abs(d.redis_drift)), 0) AS max_abs_redis_drift
    FROM reconciliation_drift_log d JOIN scope USING (site_id)
    WHERE d.year_month = %(year_month)s
    GROUP BY d.site_id
), clients AS (
    -- Rows by salted client-address hash (issue 12 §3): how many came from the busiest few.
    SELECT site_id, sum(n) AS hashed_count, count(*) AS client_count,
           sum(n) FILTER (WHERE rank <= %(top_clients)s) AS top_clients_count
    FROM (
        SELECT l.site_id, count(*) AS n,
               row_number() OVER (PARTITION BY l.site_id ORDER BY count(*) DESC, l.client_hash) AS rank
        FROM ingest_idempotency l JOIN scope USING (site_id)
        WHERE l.year_month = %(year_month)s AND l.client_hash IS NOT NULL
        GROUP BY l.site_id, l.client_hash
    ) per_client
    GROUP BY site_id
)
SELECT s.id AS site_id, s.public_id, s.name, s.billing_mode, s.ingest_auth,
       coalesce(cl.hashed_count, 0) AS hashed_count,
       coalesce(cl.client_count, 0) AS client_count,
       coalesce(cl.top_clients_count, 0) AS top_clients_count,
       p.monthly_limit, p.soft_limit_enabled, p.hard_cap_multiplier,
       coalesce(l.total_count, 0) AS total_count,
       coalesce(l.billable_count, 0) AS billable_count,
       coalesce(l.accepted_count, 0) AS accepted_count,
       coalesce(l.overage_count, 0) AS overage_count,
       coalesce(l.rejected_count, 0) AS rejected_count,
       coalesce(l.non_billable_count, 0) AS non_billable_count,
       coalesce(l.flood_candidate_count, 0) AS flood_candidate_count,
       u.site_id IS NOT NULL AS has_counter,
       coalesce(u.event_count, 0) AS counter_billable,
       coalesce(u.overage_count, 0) AS counter_overage,
       coalesce(u.rejected_count, 0) AS counter_rejected,
       coalesce(u.non_billable_count, 0) AS counter_non_billable,
       coalesce(u.dedup_count, 0) AS dedup_count,
       coalesce(st.max_rejected_per_hour, 0) AS max_rejected_per_hour,
       coalesce(dl.max_daily_events, 0) AS max_daily_events,
       coalesce(dl.median_daily_events, 0) AS median_daily_events,
       coalesce(dl.active_days, 0) AS active_days,
       coalesce(ob.accepted_without_outbox, 0) AS accepted_without_outbox,
       coalesce(ob.unpublished_outbox, 0) AS unpublished_outbox,
       coalesce(orph.outbox_without_ledger, 0) AS outbox_without_ledger,
       coalesce(dr.drift_checks, 0) AS drift_checks,
       coalesce(dr.counter_drift_checks, 0) AS counter_drift_checks,
       coalesce(dr.max_abs_counter_drift, 0) AS max_abs_counter_drift,
       coalesce(dr.redis_drift_checks, 0) AS redis_drift_checks,
       coalesce(dr.max_abs_redis_drift, 0) AS max_abs_redis_drift,
       snap.id IS NOT NULL AS has_snapshot,
       snap.billable_count AS snap_billable_count,
       snap.overage_count AS snap_overage_count,
       snap.rejected_count AS snap_rejected_count,
       snap.non_billable_count AS snap_non_billable_count,
       snap.merkle_root AS snap_merkle_root,
       snap.prev_snapshot_hash AS snap_prev_snapshot_hash,
       snap.snapshot_hash AS snap_snapshot_hash,
       snap.document AS snap_document,
       snap.signature AS snap_signature,
       snap.key_id AS snap_key_id,
       snap.frozen_at AS snap_frozen_at,
       k.public_key AS snap_public_key,
       prev.snapshot_hash AS expected_prev_snapshot_hash,
       prev.year_month AS prev_year_month,
       arc.merkle_root AS archive_merkle_root,
       arc.row_count AS archive_row_count,
       -- Has any outbox row ever been published? If not, no sink is configured: the table is the queue.
       (SELECT EXISTS (SELECT 1 FROM ingest_outbox WHERE published_at IS NOT NULL)) AS relay_active
FROM sites s
JOIN site_plans p ON p.site_id = s.id
LEFT JOIN ledger l ON l.site_id = s.id
LEFT JOIN storm st ON st.site_id = s.id
LEFT JOIN clients cl ON cl.site_id = s.id
LEFT JOIN daily dl ON dl.site_id = s.id
LEFT JOIN outbox ob ON ob.site_id = s.id
LEFT JOIN orphans orph ON orph.site_id = s.id
LEFT JOIN drift dr ON dr.site_id = s.id
LEFT JOIN site_usage_monthly u ON u.site_id = s.id AND u.year_month = %(year_month)s
LEFT JOIN invoice_snapshot snap ON snap.site_id = s.id AND snap.year_month = %(year_month)s
LEFT JOIN signing_keys k ON k.key_id = snap.key_id
LEFT JOIN LATERAL (
    SELECT i.snapshot_hash, i.year_month FROM invoice_snapshot i
    WHERE i.site_id = s.id AND i.year_month < %(year_month)s
    ORDER BY i.year_month DESC LIMIT 1
) prev ON true
LEFT JOIN ledger_archive arc ON arc.site_id = s.id AND arc.year_month = %(year_month)s
WHERE {_SITE_FILTER}
  -- A site created after the month, with nothing recorded in it, did not exist in that month.
  AND (s.created_at < %(month_end)s OR l.site_id IS NOT NULL OR u.site_id IS NOT NULL OR snap.id IS NOT NULL)
ORDER BY s.public_id
"""

# The leaves of every frozen site-month in scope, in leaf order (SPEC §5), streamed once.
MONTH_LEAVES = f"""
SELECT l.site_id, l.idempotency_key, l.created_at, l.billing_state
FROM ingest_idempotency l
JOIN sites s ON s.id = l.site_id
WHERE l.year_month = %(year_month)s AND l.billable AND {_SITE_FILTER}
  AND EXISTS (SELECT 1 FROM invoice_snapshot i WHERE i.site_id = l.site_id AND i.year_month = %(year_month)s)
ORDER BY l.site_id, l.created_at, l.idempotency_key COLLATE "C"
"""

USAGE_BY_REASON = """
SELECT billing_state, billable, billing_reason, count(*) AS events
FROM ingest_idempotency
WHERE site_id = %(site_id)s AND year_month = %(year_month)s
GROUP BY billing_state, billable, billing_reason
ORDER BY billable DESC, billing_state, billing_reason
"""

DAILY_VOLUME = """
WITH days AS (
    SELECT generate_series(%(month_start)s::timestamptz, %(month_end)s::timestamptz - interval '1 day',
                           interval '1 day') AS day
), counts AS (
    SELECT date_trunc('day', created_at, 'UTC') AS day,
           count(*) FILTER (WHERE billable AND billing_state = 'ACCEPTED') AS accepted,
           count(*) FILTER (WHERE billing_state = 'OVERAGE') AS overage,
           count(*) FILTER (WHERE billing_state = 'REJECTED_QUOTA') AS rejected,
           count(*) FILTER (WHERE NOT billable AND billing_state <> 'REJECTED_QUOTA') AS non_billable
    FROM ingest_idempotency
    WHERE site_id = %(site_id)s AND year_month = %(year_month)s
    GROUP BY 1
)
SELECT to_char(d.day AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day,
       coalesce(c.accepted, 0) AS accepted, coalesce(c.overage, 0) AS overage,
       coalesce(c.rejected, 0) AS rejected, coalesce(c.non_billable, 0) AS non_billable
FROM days d LEFT JOIN counts c ON c.day = d.day
ORDER BY d.day
"""

DRIFT_HISTORY = """
SELECT to_char(checked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS checked_at,
       ledger_billable, counter_billable, redis_billable, counter_drift, redis_drift, corrected,
       count(*) OVER () AS total_rows
FROM reconciliation_drift_log
WHERE site_id = %(site_id)s AND year_month = %(year_month)s
ORDER BY checked_at, id
LIMIT %(limit)s
"""

OUTBOX_PROBLEMS = """
SELECT problem, idempotency_key, created_at, count(*) OVER () AS total_rows FROM (
SELECT 'accepted_without_outbox' AS problem, l.idempotency_key,
       to_char(l.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at
FROM ingest_idempotency l
LEFT JOIN ingest_outbox o ON o.site_id = l.site_id AND o.idempotency_key = l.idempotency_key
WHERE l.site_id = %(site_id)s AND l.year_month = %(year_month)s AND l.billing_state <> 'REJECTED_QUOTA'
  AND o.id IS NULL
UNION ALL
SELECT 'unpublished_outbox', o.idempotency_key,
       to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
FROM ingest_outbox o
JOIN ingest_idempotency l ON l.site_id = o.site_id AND l.idempotency_key = o.idempotency_key
WHERE o.site_id = %(site_id)s AND l.year_month = %(year_month)s AND o.published_at IS NULL
UNION ALL
SELECT 'outbox_without_ledger', o.idempotency_key,
       to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
FROM ingest_outbox o
WHERE o.site_id = %(site_id)s AND o.created_at >= %(month_start)s AND o.created_at < %(month_end)s
  AND NOT EXISTS (
      SELECT 1 FROM ingest_idempotency l WHERE l.site_id = o.site_id AND l.idempotency_key = o.idempotency_key
  )
) problems
ORDER BY 1, 3, 2
LIMIT %(limit)s
"""

SNAPSHOT_CHAIN = """
SELECT i.year_month, i.billable_count, i.merkle_root, i.snapshot_hash, i.prev_snapshot_hash, i.key_id,
       i.prev_snapshot_hash IS NOT DISTINCT FROM lag(i.snapshot_hash) OVER (ORDER BY i.year_month) AS links
FROM invoice_snapshot i
WHERE i.site_id = %(site_id)s
ORDER BY i.year_month
"""

LEDGER_ROWS = """
SELECT idempotency_key,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
       billable, billing_state, billing_reason, event_category, event_action, event_label,
       count(*) OVER () AS total_rows
FROM ingest_idempotency
WHERE site_id = %(site_id)s AND year_month = %(year_month)s
  AND (%(billing_state)s::text IS NULL OR billing_state = %(billing_state)s::text)
  AND (%(billing_reason)s::text IS NULL OR billing_reason = %(billing_reason)s::text)
ORDER BY created_at, idempotency_key COLLATE "C"
LIMIT %(limit)s
"""

LEDGER_ROW = """
SELECT l.idempotency_key, l.idempotency_version, l.created_at, l.year_month, l.billable, l.billing_state,
       l.billing_reason, l.event_category, l.event_action, l.event_label, l.payload_hash, l.occurred_at,
       o.id AS outbox_id, o.published_at, o.attempts AS outbox_attempts
FROM ingest_idempotency l
LEFT JOIN ingest_outbox o ON o.site_id = l.site_id AND o.idempotency_key = l.idempotency_key
WHERE l.site_id = %(site_id)s AND l.idempotency_key = %(idempotency_key)s
"""

"""The outbox relay (SPEC §4.1 "Publish", §4.2 ``publish-outbox``).

Delivers unpublished ``ingest_outbox`` rows to the configured sink, at least once, in order per
site: a site's rows go out in ``id`` order, in batches, and the first failure stops that site
until its backoff expires (a later row never overtakes an earlier one). Every failed attempt
writes one ``ingest_publish_failures`` row, which drives ``ingestPublishFailuresLast15m``, and
increments ``billing_publish_failures_total``.

Per-site order is ``id`` order, and ``id`` order is commit order within a site-month because the
ingest transaction takes the site-month counter row's lock before it writes its outbox row.

No lock is held while a sink is called: the rows are read, delivered, then marked in separate
autocommit statements. A row delivered after its month was cleaned up (it was still undelivered
at cleanup, issue 11 §2) is removed once delivered instead of marked, so the outbox stays bounded.

Sinks (settings, environment):

- ``REVKERNEL_OUTBOX_SINK``: ``none`` (the outbox table is the queue), ``redis`` or ``webhook``;
  default ``webhook`` when a webhook URL is set, else ``none``.
- ``REVKERNEL_OUTBOX_STREAM``: Redis stream name (default ``revkernel:outbox``) on ``REDIS_URL``.
- ``REVKERNEL_WEBHOOK_URL``: HTTP(S) endpoint receiving one ``POST`` per batch of one site:
  ``{"site_id": …, "events": [{"outbox_id", "idempotency_key", "created_at", "payload"}, …]}``.
- ``REVKERNEL_WEBHOOK_SECRET``: HMAC-SHA256 key. Headers: ``x-revkernel-timestamp`` (unix s) and
  ``x-revkernel-signature: sha256=<hex HMAC(secret, "<timestamp>." + body)>``;
  ``x-revkernel-delivery`` names the batch. Receivers dedupe on ``idempotency_key`` (at least once).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
import psycopg
import redis

from kernel.clock import format_utc
from kernel.cron.runs import CronContext, CronResult
from kernel.errors import ConfigError
from kernel.metrics import PUBLISH_FAILURES
from kernel.settings import Settings

__all__ = [
    "RELAY_BATCH_ROWS",
    "RELAY_MAX_ROWS_PER_RUN",
    "OutboxRow",
    "backoff",
    "publish_outbox",
    "sign_webhook",
    "sink_from_settings",
]

_log = logging.getLogger("kernel.cron.relay")

RELAY_BATCH_ROWS = 100
RELAY_MAX_ROWS_PER_RUN = 10_000
RELAY_HTTP_TIMEOUT_S = 5.0
RELAY_REDIS_TIMEOUT_S = 2.0
BACKOFF_BASE = timedelta(seconds=5)
BACKOFF_MAX = timedelta(minutes=10)
FAILURE_TEXT_MAX_CHARS = 1000
DEFAULT_STREAM = "revkernel:outbox"
# Only rows this old can belong to a cleaned month (cleanup's retention is 90 days).
CLEANED_ROW_AGE = timedelta(days=89)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    site_id: str
    idempotency_key: str
    payload: Any
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "outbox_id": self.id,
            "site_id": self.site_id,
            "idempotency_key": self.idempotency_key,
            "created_at": format_utc(self.created_at),
            "payload": self.payload,
        }


class Sink(Protocol):
    name: str

    def deliver(self, site_id: str, rows: Sequence[OutboxRow], now: datetime) -> None:
        """Deliver ``rows`` (one site, in order) or raise."""
        ...

    def close(self) -> None: ...


class RedisStreamSink:
    """XADD each row to one stream; a stream keeps insertion order, so per-site order holds."""

    name = "redis"

    def __init__(self, url: str, stream: str) -> None:
        self.stream = stream
        self.client = redis.Redis.from_url(
            url, socket_timeout=RELAY_REDIS_TIMEOUT_S, socket_connect_timeout=RELAY_REDIS_TIMEOUT_S
        )

    def deliver(self, site_id: str, rows: Sequence[OutboxRow], now: datetime) -> None:
        pipe = self.client.pipeline(transaction=False)
        for row in rows:
            body = row.to_json()
            pipe.xadd(
                self.stream,
                {
                    "site_id": row.site_id,
                    "outbox_id": str(row.id),
                    "idempotency_key": row.idempotency_key,
                    "created_at": body["created_at"],
                    "payload": json.dumps(row.payload, sort_keys=True, separators=(",", ":")),
                },
            )
        pipe.execute()

    def close(self) -> None:
        self.client.close()


def sign_webhook(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, ``"<timestamp>." + body``)."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookSink:
    """POST one JSON batch per site; only a 2xx answer counts as delivered."""

    name = "webhook"

    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        self.secret = secret
        self.client = httpx.Client(timeout=RELAY_HTTP_TIMEOUT_S)

    def deliver(self, site_id: str, rows: Sequence[OutboxRow], now: datetime) -> None:
        body = json.dumps(
            {"site_id": site_id, "events": [r.to_json() for r in rows]}, sort_keys=True, separators=(",", ":")
        ).encode("utf-8")
        timestamp = str(int(now.timestamp()))
        response = self.client.post(
            self.url,
            content=body,
            headers={
                "content-type": "application/json",
                "x-revkernel-timestamp": timestamp,
                "x-revkernel-signature": sign_webhook(self.secret, timestamp, body),
                "x-revkernel-delivery": f"{site_id}:{rows[0].id}-{rows[-1].id}",
            },
        )
        if not 200 <= response.status_code < 300:
            raise httpx.HTTPStatusError(
                f"webhook answered {response.status_code}", request=response.request, response=response
            )

    def close(self) -> None:
        self.client.close()


def sink_from_settings(settings: Settings) -> Sink | None:
    """The configured sink, or None when the outbox table itself is the queue.

    Raises:
        ConfigError: the sink is named but its URL or secret is missing.
    """
    extra = settings.extra
    webhook_url = extra.get("REVKERNEL_WEBHOOK_URL", "").strip()
    kind = extra.get("REVKERNEL_OUTBOX_SINK", "").strip().lower() or ("webhook" if webhook_url else "none")
    if kind == "none":
        return None
    if kind == "redis":
        if not settings.redis_url:
            raise ConfigError("REVKERNEL_OUTBOX_SINK=redis needs REDIS_URL")
        return RedisStreamSink(settings.redis_url, extra.get("REVKERNEL_OUTBOX_STREAM") or DEFAULT_STREAM)
    if kind == "webhook":
        secret = extra.get("REVKERNEL_WEBHOOK_SECRET", "")
        if not webhook_url or not secret:
            raise ConfigError("the webhook sink needs REVKERNEL_WEBHOOK_URL and REVKERNEL_WEBHOOK_SECRET")
        return WebhookSink(webhook_url, secret)
    raise ConfigError(f"REVKERNEL_OUTBOX_SINK must be none, redis or webhook, not {kind!r}")


def backoff(attempts: int) -> timedelta:
    """Delay before the next attempt after ``attempts`` failures: 5 s doubling, capped at 10 min."""
    exponent = min(max(attempts - 1, 0), 20)
    delay: timedelta = min(BACKOFF_MAX, BACKOFF_BASE * (2**exponent))
    return delay


def _pending_sites(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT site_id::text FROM ingest_outbox WHERE published_at IS NULL GROUP BY site_id ORDER BY min(id)"
    ).fetchall()
    return [str(r[0]) for r in rows]


def _head(conn: psycopg.Connection[Any], site_id: str, limit: int) -> tuple[datetime | None, list[OutboxRow]]:
    rows = conn.execute(
        "SELECT id, site_id::text, idempotency_key, payload, created_at, next_attempt_at FROM ingest_outbox"
        " WHERE site_id = %s AND published_at IS NULL ORDER BY id LIMIT %s",
        (site_id, limit),
    ).fetchall()
    if not rows:
        return None, []
    return rows[0][5], [OutboxRow(int(r[0]), str(r[1]), str(r[2]), r[3], r[4]) for r in rows]


def _record_failure(conn: psycopg.Connection[Any], sink: Sink, head: OutboxRow, error: str, now: datetime) -> None:
    error = error[:FAILURE_TEXT_MAX_CHARS]
    PUBLISH_FAILURES.inc()
    with conn.transaction():
        row = conn.execute(
            "UPDATE ingest_outbox SET attempts = attempts + 1, last_error = %s WHERE id = %s RETURNING attempts",
            (error, head.id),
        ).fetchone()
        attempts = int(row[0]) if row else 1
        conn.execute("UPDATE ingest_outbox SET next_attempt_at = %s WHERE id = %s", (now + backoff(attempts), head.id))
        conn.execute(
            "INSERT INTO ingest_publish_failures (outbox_id, site_id, sink, error, failed_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (head.id, head.site_id, sink.name, error, now),
        )


def _drop_cleaned(conn: psycopg.Connection[Any], old_rows: list[OutboxRow]) -> None:
    """Remove delivered rows whose ledger row is gone (their month was cleaned up meanwhile)."""
    if not old_rows:
        return
    conn.execute(
        "DELETE FROM ingest_outbox o WHERE o.id = ANY(%s) AND o.published_at IS NOT NULL AND NOT EXISTS"
        " (SELECT 1 FROM ingest_idempotency i WHERE i.site_id = o.site_id AND i.idempotency_key = o.idempotency_key)",
        ([r.id for r in old_rows],),
    )


def publish_outbox(ctx: CronContext, max_rows: int = RELAY_MAX_ROWS_PER_RUN) -> CronResult:
    """Deliver up to ``max_rows`` pending outbox rows; returns the counts of this run.

    Body: ``{"ok", "sink", "published", "failed", "deferred", "pending"}``; ``ok`` is false when
    any delivery attempt failed (each one is in ``ingest_publish_failures``).
    """
    sink = sink_from_settings(ctx.settings)
    published = failed = deferred = 0
    with ctx.db.connect("app", autocommit=True) as conn:
        try:
            if sink is not None:
                for site_id in _pending_sites(conn):
                    while published < max_rows:
                        now = ctx.clock.now()
                        retry_at, rows = _head(conn, site_id, min(RELAY_BATCH_ROWS, max_rows - published))
                        if not rows:
                            break
                        if retry_at is not None and retry_at > now:
                            deferred += 1  # in backoff: later rows of this site wait behind it
                            break
                        try:
                            sink.deliver(site_id, rows, now)
                        except (redis.RedisError, httpx.HTTPError, OSError) as exc:
                            failed += 1
                            text = f"{type(exc).__name__}: {exc}"
                            _log.error(
                                "publish to %s failed for site %s outbox %s: %s", sink.name, site_id, rows[0].id, text
                            )
                            _record_failure(conn, sink, rows[0], text, now)
                            break
                        conn.execute(
                            "UPDATE ingest_outbox SET published_at = %s, next_attempt_at = NULL WHERE id = ANY(%s)",
                            (now, [r.id for r in rows]),
                        )
                        _drop_cleaned(conn, [r for r in rows if r.created_at < now - CLEANED_ROW_AGE])
                        published += len(rows)
        finally:
            if sink is not None:
                sink.close()
        pending_row = conn.execute("SELECT count(*) FROM ingest_outbox WHERE published_at IS NULL").fetchone()
    body: CronResult = {
        "ok": failed == 0,
        "sink": sink.name if sink is not None else "none",
        "published": published,
        "failed": failed,
        "deferred": deferred,
        "pending": int(pending_row[0]) if pending_row else 0,
    }
    if failed:
        body["error"] = f"{failed} delivery attempt(s) failed; see ingest_publish_failures"
    return body

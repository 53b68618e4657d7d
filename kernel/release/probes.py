"""The runbook's behavioural probes (§3 invariants, §5 smoke), shared by the gate and the smoke.

Every probe speaks real HTTP through an ``httpx.Client`` (a live instance for the smoke, the
in-process Litestar ``TestClient`` for the gate) and reads the store of record through a real
PostgreSQL connection, so a probe passes only when a user would see the documented behaviour:
status, headers, and the ledger rows behind them.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import psycopg

from kernel.release.checks import CheckFailed, expect
from kernel.tenants import create_site, issue_key

__all__ = [
    "CRON_FORBIDDEN_CODE",
    "DISPUTE_EXPORT_PATH",
    "PROBE_QUOTA_LIMIT",
    "SYNC_PATH",
    "ProbeTenants",
    "create_probe_tenants",
    "cron_get",
    "cron_post",
    "ledger_row",
    "outbox_count",
    "post_event",
    "probe_commit_header",
    "probe_cron_auth",
    "probe_dispute_export",
    "probe_duplicate",
    "probe_invoice_freeze",
    "probe_overage",
    "probe_quota_reject",
    "probe_rate_limit",
    "probe_reconciliation",
    "probe_watchtower",
]

SYNC_PATH = "/api/sync"
DISPUTE_EXPORT_PATH = "/api/billing/dispute-export"
WATCHTOWER_PATH = "/api/cron/watchtower"
RECONCILE_ENQUEUE_PATH = "/api/cron/reconcile-usage/enqueue"
RECONCILE_RUN_PATH = "/api/cron/reconcile-usage/run"
FREEZE_PATH = "/api/cron/invoice-freeze"
CRON_FORBIDDEN_CODE = "CRON_FORBIDDEN"

# The quota site's plan: L = 2 with a soft limit and H = floor(2 * 1.5) = 3, so four events walk
# through ACCEPTED, ACCEPTED, OVERAGE, REJECTED_QUOTA.
PROBE_QUOTA_LIMIT = 2
PROBE_HARD_CAP_MULTIPLIER = Decimal("1.5")
PROBE_QUOTA_RATE_PER_MINUTE = 1000
# The rate-limit site admits one request per minute: the second one within a minute is limited.
PROBE_RATE_PER_MINUTE = 1
PROBE_RATE_ATTEMPTS = 5
RECONCILE_MAX_RUNS = 5
# A failed check's detail is one line of a terminal table, never a raw dump.
BRIEF_MAX_CHARS = 200
EXPORT_COLUMNS = (
    "idempotency_key,created_at,year_month,billable,billing_state,billing_reason,"
    "event_category,event_action,event_label,payload_hash,idempotency_version"
)


@dataclass
class ProbeTenants:
    """The dedicated smoke sites and their credentials; the keys the probes sent so far."""

    tag: str
    quota_site_id: uuid.UUID
    quota_public_id: str
    quota_key: str
    rate_site_id: uuid.UUID
    rate_key: str
    billing_token: str
    sent: dict[str, str] = field(default_factory=dict)  # role of the event -> event_id

    def event_id(self, role: str) -> str:
        return self.sent.setdefault(role, f"smoke-{self.tag}-{role}")


def create_probe_tenants(conn: psycopg.Connection[Any], now: datetime) -> ProbeTenants:
    """Create the two dedicated smoke sites (quota and rate limit) and a billing token."""
    tag = f"{now.strftime('%Y%m%dt%H%M%S')}-{secrets.token_hex(3)}"
    quota = create_site(
        conn,
        name=f"smoke quota {tag}",
        public_id=f"smoke-{tag}-q",
        monthly_limit=PROBE_QUOTA_LIMIT,
        soft_limit_enabled=True,
        hard_cap_multiplier=PROBE_HARD_CAP_MULTIPLIER,
        rate_limit_per_minute=PROBE_QUOTA_RATE_PER_MINUTE,
        billing_mode="enforce",
    )
    rate = create_site(
        conn,
        name=f"smoke rate {tag}",
        public_id=f"smoke-{tag}-r",
        monthly_limit=1000,
        rate_limit_per_minute=PROBE_RATE_PER_MINUTE,
        billing_mode="enforce",
    )
    _, token = issue_key(conn, site_id=quota.site.id, role="billing", label=f"smoke {tag}")
    return ProbeTenants(
        tag=tag,
        quota_site_id=quota.site.id,
        quota_public_id=quota.site.public_id,
        quota_key=quota.ingest_key,
        rate_site_id=rate.site.id,
        rate_key=rate.ingest_key,
        billing_token=token,
    )


def post_event(client: httpx.Client, key: str, event_id: str, **fields: Any) -> httpx.Response:
    """POST one billable event with a client ``event_id`` (idempotency key version 2)."""
    body: dict[str, Any] = {
        "event_id": event_id,
        "ec": "smoke",
        "ea": "probe",
        "el": event_id,
        "url": "https://smoke.invalid/release",
        **fields,
    }
    return client.post(SYNC_PATH, json=body, headers={"Authorization": f"Bearer {key}"})


def cron_get(client: httpx.Client, path: str, secret: str | None) -> httpx.Response:
    """GET a cron endpoint with ``secret`` as the bearer (None: no Authorization header)."""
    return client.get(path, headers=_cron_headers(secret))


def cron_post(client: httpx.Client, path: str, secret: str | None, **params: str) -> httpx.Response:
    """POST a cron endpoint with ``secret`` as the bearer and ``params`` as the query."""
    return client.post(path, headers=_cron_headers(secret), params=params)


def _cron_headers(secret: str | None) -> dict[str, str]:
    if secret is None:
        return {}
    # An empty secret goes out as a bare "Bearer": HTTP clients strip the trailing space of
    # "Bearer " (the runbook's PowerShell case), which arrives as exactly this.
    return {"Authorization": f"Bearer {secret}" if secret else "Bearer"}


def ledger_row(conn: psycopg.Connection[Any], site_id: uuid.UUID, key: str) -> dict[str, Any] | None:
    """The billing columns of one ledger row, or None when the event is not in the ledger."""
    row = conn.execute(
        """
        SELECT billable, billing_state, billing_reason, year_month
        FROM ingest_idempotency WHERE site_id = %s AND idempotency_key = %s
        """,
        (site_id, key),
    ).fetchone()
    if row is None:
        return None
    return {"billable": row[0], "billing_state": row[1], "billing_reason": row[2], "year_month": row[3]}


def outbox_count(conn: psycopg.Connection[Any], site_id: uuid.UUID, key: str | None = None) -> int:
    """Outbox rows of a site (of one key when given): the events that were published."""
    if key is None:
        row = conn.execute("SELECT count(*) FROM ingest_outbox WHERE site_id = %s", (site_id,)).fetchone()
    else:
        row = conn.execute(
            "SELECT count(*) FROM ingest_outbox WHERE site_id = %s AND idempotency_key = %s", (site_id, key)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise CheckFailed(f"{response.request.url.path}: body is not JSON: {response.text[:120]!r}") from exc
    expect(isinstance(body, dict), f"{response.request.url.path}: body is not a JSON object")
    return dict(body)


def _status(response: httpx.Response, expected: int) -> None:
    expect(
        response.status_code == expected,
        f"{response.request.method} {response.request.url.path}: expected {expected}, "
        f"got {response.status_code} {_answer_words(response)}",
    )


def _answer_words(response: httpx.Response) -> str:
    """What an answer says, in a few words: its error code(s), else the start of its text."""
    try:
        body = response.json()
    except ValueError:
        return repr(response.text[:80])
    if isinstance(body, dict):
        words = [str(body[k]) for k in ("status", "error", "code") if isinstance(body.get(k), str)]
        if words:
            return "(" + "/".join(dict.fromkeys(words)) + ")"
    return "(a JSON body without an error code)"


def _retry_after_s(response: httpx.Response) -> int:
    value = response.headers.get("retry-after", "")
    expect(value.isdigit() and int(value) >= 1, f"Retry-After must be whole seconds >= 1, got {value!r}")
    return int(value)


def probe_commit_header(client: httpx.Client, expected_commit: str | None) -> str:
    """Runbook §4.1 B.1: the deployed commit is on every response."""
    response = client.get("/healthz")
    _status(response, 200)
    commit = response.headers.get("x-opsmantik-commit")
    expect(commit is not None, "x-opsmantik-commit header is missing")
    assert commit is not None
    expect(commit != "unknown", "x-opsmantik-commit is 'unknown': the deploy does not know its commit")
    if expected_commit:
        expect(commit.startswith(expected_commit), f"deployed commit {commit} is not {expected_commit}")
    expect(bool(response.headers.get("x-request-id")), "x-request-id header is missing")
    return f"commit {commit}"


def probe_cron_auth(client: httpx.Client, secret: str) -> str:
    """Runbook §4.5: 403 CRON_FORBIDDEN without, with an empty and with a wrong secret; 200 with it."""
    wrong = f"wrong-{secrets.token_hex(8)}"
    for path, send in ((WATCHTOWER_PATH, cron_get), (RECONCILE_RUN_PATH, cron_post)):
        for label, attempt in (("no header", None), ("empty bearer", ""), ("wrong secret", wrong)):
            response = send(client, path, attempt)
            expect(response.status_code == 403, f"{path} with {label}: expected 403, got {response.status_code}")
            body = _json(response)
            expect(
                body.get("error") == "forbidden" and body.get("code") == CRON_FORBIDDEN_CODE,
                f"{path} with {label}: body must be forbidden/{CRON_FORBIDDEN_CODE}, got {_brief(body)}",
            )
    response = cron_post(client, RECONCILE_RUN_PATH, secret)
    _status(response, 200)
    body = _json(response)
    expect(body.get("ok") is True and "processed" in body, f"reconcile run body lacks ok/processed: {_brief(body)}")
    return f"403 x6 without the secret; reconcile run 200 processed={body['processed']}"


def probe_duplicate(client: httpx.Client, conn: psycopg.Connection[Any], t: ProbeTenants) -> str:
    """Runbook §5.1: the same event twice: 200 + x-opsmantik-dedup: 1, one ledger row, no second publish."""
    event_id = t.event_id("first")
    first = post_event(client, t.quota_key, event_id)
    _status(first, 200)
    expect(_json(first).get("status") == "accepted", f"first event not accepted: {first.text[:160]}")
    expect(first.headers.get("x-opsmantik-dedup") is None, "a first delivery must not carry x-opsmantik-dedup")
    second = post_event(client, t.quota_key, event_id)
    _status(second, 200)
    expect(second.headers.get("x-opsmantik-dedup") == "1", "duplicate lacks x-opsmantik-dedup: 1")
    expect(_json(second).get("status") == "duplicate", f"duplicate body status: {second.text[:160]}")
    expect(ledger_row(conn, t.quota_site_id, event_id) is not None, f"no ledger row for key {event_id}")
    published = outbox_count(conn, t.quota_site_id, event_id)
    expect(published == 1, f"expected exactly one outbox row for the duplicated event, found {published}")
    return "second request 200 + dedup, 1 ledger row, 1 outbox row"


def probe_overage(client: httpx.Client, conn: psycopg.Connection[Any], t: ProbeTenants) -> str:
    """Runbook §5.4: past the soft limit: 200 + x-opsmantik-overage: true, row billing_state=OVERAGE."""
    t.event_id("first")  # the duplicate probe sent event 1 of the plan's L = 2
    second = post_event(client, t.quota_key, t.event_id("second"))
    _status(second, 200)
    expect(second.headers.get("x-opsmantik-quota-remaining") == "0", "event L should leave quota-remaining 0")
    over_id = t.event_id("overage")
    over = post_event(client, t.quota_key, over_id)
    _status(over, 200)
    expect(over.headers.get("x-opsmantik-overage") == "true", "overage response lacks x-opsmantik-overage: true")
    expect(over.headers.get("x-opsmantik-quota-exceeded") is None, "an overage is not a quota rejection")
    row = ledger_row(conn, t.quota_site_id, over_id)
    expect(row is not None, f"no ledger row for overage key {over_id}")
    assert row is not None
    expect(
        row["billing_state"] == "OVERAGE" and row["billable"] is True,
        f"overage row must be billable OVERAGE, is {row}",
    )
    return "200 + x-opsmantik-overage: true; billing_state=OVERAGE, billable=true"


def probe_quota_reject(client: httpx.Client, conn: psycopg.Connection[Any], t: ProbeTenants) -> str:
    """Runbook §5.3: past the hard cap: 429 + quota header + Retry-After; the row kept billable=false."""
    for role in ("first", "second", "overage"):
        t.event_id(role)
    reject_id = t.event_id("rejected")
    response = post_event(client, t.quota_key, reject_id)
    _status(response, 429)
    expect(response.headers.get("x-opsmantik-quota-exceeded") == "1", "quota 429 lacks x-opsmantik-quota-exceeded: 1")
    expect(response.headers.get("x-opsmantik-ratelimit") is None, "quota 429 must not carry x-opsmantik-ratelimit")
    retry_after_s = _retry_after_s(response)
    expect(_json(response).get("status") == "rejected_quota", f"quota 429 body status: {response.text[:160]}")
    # The runbook's own query: the newest rows of the site, the rejected one billable=false.
    newest = conn.execute(
        "SELECT idempotency_key, billable FROM ingest_idempotency WHERE site_id = %s ORDER BY created_at DESC LIMIT 5",
        (t.quota_site_id,),
    ).fetchall()
    billable_of = dict(newest)
    expect(reject_id in billable_of, f"rejected event {reject_id} is not among the site's newest ledger rows")
    expect(billable_of[reject_id] is False, "the rejected row must be billable=false")
    row = ledger_row(conn, t.quota_site_id, reject_id)
    assert row is not None
    expect(
        row["billing_state"] == "REJECTED_QUOTA" and row["billing_reason"] == "rejected_quota",
        f"rejected row state/reason: {row}",
    )
    expect(outbox_count(conn, t.quota_site_id, reject_id) == 0, "a rejected event was published")
    return f"429 + quota header, Retry-After {retry_after_s}s, row billable=false, not published"


def probe_rate_limit(client: httpx.Client, conn: psycopg.Connection[Any], t: ProbeTenants) -> str:
    """Runbook §5.2: over the rate: 429 + x-opsmantik-ratelimit: 1 and never the quota header."""
    for attempt in range(PROBE_RATE_ATTEMPTS):
        event_id = t.event_id(f"rate{attempt}")
        response = post_event(client, t.rate_key, event_id)
        if response.status_code == 429:
            break
        _status(response, 200)
    else:
        raise CheckFailed(f"no 429 after {PROBE_RATE_ATTEMPTS} requests at {PROBE_RATE_PER_MINUTE}/min")
    expect(response.headers.get("x-opsmantik-ratelimit") == "1", "rate-limit 429 lacks x-opsmantik-ratelimit: 1")
    expect(
        response.headers.get("x-opsmantik-quota-exceeded") is None,
        "rate-limit 429 carries x-opsmantik-quota-exceeded: quota and rate limit are indistinguishable",
    )
    retry_after_s = _retry_after_s(response)
    expect(_json(response).get("status") == "rate_limited", f"rate-limit body status: {response.text[:160]}")
    expect(ledger_row(conn, t.rate_site_id, event_id) is None, "a rate-limited request wrote a ledger row")
    return f"429 after {attempt} accepted; x-opsmantik-ratelimit: 1, no quota header, Retry-After {retry_after_s}s"


RUNBOOK_RECONCILIATION_SQL = """
SELECT
  j.site_id, j.year_month, j.updated_at AS job_time,
  (SELECT COUNT(*) FROM ingest_idempotency i
   WHERE i.site_id = j.site_id AND i.year_month = j.year_month AND i.billable = true) AS billable_total_now,
  (SELECT event_count FROM site_usage_monthly u
   WHERE u.site_id = j.site_id AND u.year_month = j.year_month) AS monthly_event_count
FROM billing_reconciliation_jobs j
WHERE j.status = 'COMPLETED' AND j.site_id = %s
ORDER BY j.updated_at DESC
LIMIT 5
"""


def probe_reconciliation(client: httpx.Client, conn: psycopg.Connection[Any], t: ProbeTenants, secret: str) -> str:
    """Runbook §5 reconciliation proof: a COMPLETED job with billable_total_now = monthly_event_count."""
    first = ledger_row(conn, t.quota_site_id, t.event_id("first"))
    expect(first is not None, "the smoke site has no ledger rows to reconcile (duplicate probe failed?)")
    assert first is not None
    year_month = str(first["year_month"])
    enqueue = cron_get(client, RECONCILE_ENQUEUE_PATH, secret)
    _status(enqueue, 200)
    rows: list[tuple[Any, ...]] = []
    for _ in range(RECONCILE_MAX_RUNS):
        run = cron_post(client, RECONCILE_RUN_PATH, secret)
        _status(run, 200)
        body = _json(run)
        expect(body.get("ok") is True, f"reconcile run reported failure: {_brief(body)}")
        rows = [
            r for r in conn.execute(RUNBOOK_RECONCILIATION_SQL, (t.quota_site_id,)).fetchall() if r[1] == year_month
        ]
        if rows:
            break
    expect(
        bool(rows), f"no COMPLETED reconciliation job for the smoke site's {year_month} after {RECONCILE_MAX_RUNS} runs"
    )
    _, _, _, billable_total_now, monthly_event_count = rows[0]
    expect(
        billable_total_now == monthly_event_count,
        f"billable_total_now {billable_total_now} != monthly_event_count {monthly_event_count}",
    )
    expect(
        billable_total_now == PROBE_QUOTA_LIMIT + 1,
        f"expected 3 billable smoke events, ledger has {billable_total_now}",
    )
    return f"{year_month}: billable_total_now = monthly_event_count = {billable_total_now}"


def probe_dispute_export(client: httpx.Client, conn: psycopg.Connection[Any], t: ProbeTenants, token: str) -> str:
    """Runbook §5.5: the dispute CSV downloads and has the idempotency_key column and every row."""
    first = ledger_row(conn, t.quota_site_id, t.event_id("first"))
    expect(first is not None, "the smoke site has no ledger rows to export")
    assert first is not None
    response = client.get(
        DISPUTE_EXPORT_PATH,
        params={"site_id": str(t.quota_site_id), "year_month": str(first["year_month"])},
        headers={"Authorization": f"Bearer {token}"},
    )
    _status(response, 200)
    expect(response.headers.get("content-type", "").startswith("text/csv"), "dispute export is not text/csv")
    lines = response.text.splitlines()
    expect(bool(lines) and lines[0] == EXPORT_COLUMNS, f"CSV header is {lines[:1]!r}")
    keys = {line.split(",", 1)[0] for line in lines[1:]}
    expected = {t.event_id(role) for role in ("first", "second", "overage", "rejected")}
    expect(expected <= keys, f"export misses keys {sorted(expected - keys)}")
    expect(len(lines) - 1 == len(expected), f"export has {len(lines) - 1} rows, the site-month has {len(expected)}")
    return f"text/csv with idempotency_key; {len(lines) - 1} rows incl. billable=false"


def probe_invoice_freeze(client: httpx.Client, conn: psycopg.Connection[Any], t: ProbeTenants, secret: str) -> str:
    """Runbook §5.5 on the smoke sites only: freeze answers ok, re-running changes nothing, an open
    month is refused, and no other tenant's month is frozen by the smoke (``?site_id=``)."""
    # Freezes done over HTTP (the smoke's own trigger) of any other site; a scheduler running in
    # the instance freezes as ``cron:scheduler`` and is not the smoke's doing.
    others_sql = (
        "SELECT count(*) FROM audit_log WHERE action = 'invoice_freeze' AND actor = 'cron:http' AND site_id <> ALL(%s)"
    )
    mine = [t.quota_site_id, t.rate_site_id]
    before = conn.execute(others_sql, (mine,)).fetchone()
    first = cron_post(client, FREEZE_PATH, secret, site_id=str(t.quota_site_id))
    _status(first, 200)
    body = _json(first)
    expect(body.get("ok") is True and isinstance(body.get("frozen"), int), f"freeze body: {_brief(body)}")
    again = cron_post(client, FREEZE_PATH, secret, site_id=str(t.quota_site_id))
    _status(again, 200)
    body_again = _json(again)
    expect(body_again.get("frozen") == 0, f"re-running the freeze froze again: {_brief(body_again)}")
    row = ledger_row(conn, t.quota_site_id, t.event_id("first"))
    if row is not None:
        open_month = cron_post(
            client, FREEZE_PATH, secret, site_id=str(t.quota_site_id), year_month=str(row["year_month"])
        )
        _status(open_month, 409)
    after = conn.execute(others_sql, (mine,)).fetchone()
    expect(
        before == after,
        f"the smoke froze other tenants' months: {before[0] if before else 0} → {after[0] if after else 0}",
    )
    return f"{body['year_month']} (smoke site only): frozen {body['frozen']}, re-run frozen 0; open month 409"


def _check_line(name: str, check: dict[str, Any]) -> str:
    """``crons alarm (overdue: idempotency-cleanup)``: a watchtower check and what it names."""
    named = [f"{k}: {', '.join(map(str, v))}" for k, v in sorted(check.items()) if isinstance(v, list) and v]
    return f"{name} {check.get('status')}" + (f" ({'; '.join(named)})" if named else "")


def _brief(body: dict[str, Any]) -> str:
    """One line of a cron answer: its scalar fields, never a nested dump."""
    parts = [f"{k}={v}" for k, v in sorted(body.items()) if isinstance(v, str | int | float | bool) or v is None]
    return ", ".join(parts)[:BRIEF_MAX_CHARS]


def probe_watchtower(client: httpx.Client, secret: str) -> str:
    """Runbook §4.1 B.2: the watchtower answers 200 ok with its checks."""
    response = cron_get(client, WATCHTOWER_PATH, secret)
    body = _json(response)
    found = body.get("checks")
    checks: dict[str, Any] = found if isinstance(found, dict) else {}
    red = sorted(
        _check_line(name, check)
        for name, check in checks.items()
        if isinstance(check, dict) and check.get("status") not in ("ok", "degraded")
    )
    expect(
        response.status_code == 200,
        f"watchtower {response.status_code} "
        + (str(body["status"]) if isinstance(body.get("status"), str) else _answer_words(response))
        + (f": {', '.join(red)}" if red else ""),
    )
    expect(body.get("ok") is True and body.get("status") in ("ok", "degraded"), f"watchtower body: {_brief(body)}")
    expect(bool(checks), "watchtower body lacks its checks")
    return f"status {body['status']}, {len(body['checks'])} checks"

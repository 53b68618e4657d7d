"""POST /api/sync in process (Litestar TestClient, real PostgreSQL): every row of the SPEC §4.1 table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from kernel.tenants import revoke_key
from tests.ingest.support import Harness, auth, counters, ledger, make_site, outbox_keys

YM = "2026-03"
EXPOSED = "access-control-expose-headers"


def post(h: Harness, body: Any, headers: dict[str, str], **kwargs: Any) -> Any:
    return h.client.post("/api/sync", json=body, headers=headers, **kwargs)


def test_accepted_then_quota_rejected_with_retry_after_to_next_month(harness: Harness) -> None:
    site = make_site(harness.conn, monthly_limit=2)
    first = post(harness, {"event_id": "e1", "ec": "shop", "ea": "buy"}, auth(site))
    assert first.status_code == 200
    assert first.json()["status"] == "accepted" and first.json()["billing_state"] == "ACCEPTED"
    assert first.headers["x-opsmantik-quota-remaining"] == "1"
    assert first.headers["x-opsmantik-commit"] == "testcommit" and first.headers["x-request-id"]
    assert "x-opsmantik-quota-remaining" in first.headers[EXPOSED] and "retry-after" in first.headers[EXPOSED]
    assert post(harness, {"event_id": "e2", "ec": "shop"}, auth(site)).headers["x-opsmantik-quota-remaining"] == "0"

    rejected = post(harness, {"event_id": "e3", "ec": "shop"}, auth(site))
    assert rejected.status_code == 429
    assert rejected.json()["status"] == "rejected_quota" and rejected.json()["error"] == "quota_exceeded"
    assert rejected.headers["x-opsmantik-quota-exceeded"] == "1"
    assert rejected.headers["x-opsmantik-quota-remaining"] == "0"
    # 2026-03-10T12:00 → 2026-04-01T00:00 is 21.5 days.
    assert rejected.headers["retry-after"] == str(int(21.5 * 86400))
    assert "x-opsmantik-ratelimit" not in rejected.headers
    assert ledger(harness.conn, site)[-1][1:4] == (False, "REJECTED_QUOTA", "rejected_quota")
    assert outbox_keys(harness.conn, site) == ["e1", "e2"]  # never published when rejected
    assert counters(harness.conn, site, YM) == {
        "event_count": 2,
        "overage_count": 0,
        "rejected_count": 1,
        "non_billable_count": 0,
        "dedup_count": 0,
    }


def test_overage_with_soft_limit_then_rejected_past_hard_cap(harness: Harness) -> None:
    site = make_site(harness.conn, monthly_limit=2, soft_limit_enabled=True, hard_cap_multiplier=Decimal("1.5"))
    statuses = [post(harness, {"event_id": f"e{i}", "ec": "x"}, auth(site)) for i in range(5)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
    overage = statuses[2]
    assert overage.json()["billing_state"] == "OVERAGE" and overage.json()["status"] == "accepted"
    assert overage.headers["x-opsmantik-overage"] == "true"
    assert overage.headers["x-opsmantik-quota-remaining"] == "0"
    assert [r[2] for r in ledger(harness.conn, site)] == [
        "ACCEPTED",
        "ACCEPTED",
        "OVERAGE",
        "REJECTED_QUOTA",
        "REJECTED_QUOTA",
    ]
    c = counters(harness.conn, site, YM)
    assert (c["event_count"], c["overage_count"], c["rejected_count"]) == (3, 1, 2)


def test_duplicate_replays_original_status_and_quota_headers(harness: Harness) -> None:
    site = make_site(harness.conn, monthly_limit=1)
    original = post(harness, {"event_id": "a", "ec": "x"}, auth(site))
    again = post(harness, {"event_id": "a", "ec": "x"}, auth(site))
    assert again.status_code == 200
    assert again.headers["x-opsmantik-dedup"] == "1"
    assert again.headers["x-opsmantik-quota-remaining"] == original.headers["x-opsmantik-quota-remaining"] == "0"
    assert again.json()["status"] == "duplicate" and again.json()["original"]["status"] == "accepted"

    post(harness, {"event_id": "b", "ec": "x"}, auth(site))  # rejected
    replay = post(harness, {"event_id": "b", "ec": "x"}, auth(site))
    assert replay.status_code == 429 and replay.headers["x-opsmantik-dedup"] == "1"
    assert replay.headers["x-opsmantik-quota-exceeded"] == "1" and replay.json()["status"] == "duplicate"
    assert len(ledger(harness.conn, site)) == 2
    assert outbox_keys(harness.conn, site) == ["a"]
    assert counters(harness.conn, site, YM)["dedup_count"] == 2
    assert counters(harness.conn, site, YM)["event_count"] == 1


def test_idempotency_key_header_and_conflicting_payload(harness: Harness) -> None:
    site = make_site(harness.conn)
    headers = {**auth(site), "Idempotency-Key": "order-42"}
    assert post(harness, {"ec": "shop", "ea": "buy"}, headers).status_code == 200
    conflict = post(harness, {"ec": "shop", "ea": "refund"}, headers)
    assert conflict.status_code == 409
    assert conflict.json()["error"] == "idempotency_conflict" and conflict.json()["status"] == "idempotency_conflict"
    assert conflict.headers["x-opsmantik-dedup"] == "1"
    assert [r[0] for r in ledger(harness.conn, site)] == ["order-42"]
    bad = post(harness, {"ec": "shop"}, {**auth(site), "Idempotency-Key": "-bad key"})
    assert bad.status_code == 422 and bad.json()["field"] == "Idempotency-Key"


def test_v1_key_dedups_within_five_seconds_of_server_time(harness: Harness) -> None:
    site = make_site(harness.conn)
    event = {"ec": "click", "ea": "cta", "url": "https://a.example/", "fp": "f1", "ts": 1773144000000}
    assert post(harness, event, auth(site)).json()["status"] == "accepted"
    harness.clock.advance(timedelta(seconds=4))
    dup = post(harness, {**event, "ts": 1773144000001}, auth(site))  # ts is not part of the v1 key
    assert dup.json()["status"] == "duplicate" and dup.headers["x-opsmantik-dedup"] == "1"
    harness.clock.advance(timedelta(seconds=1))
    assert post(harness, event, auth(site)).json()["status"] == "accepted"
    rows = harness.conn.execute(
        "SELECT idempotency_version, length(idempotency_key) FROM ingest_idempotency WHERE site_id = %s",
        (site.site.id,),
    ).fetchall()
    assert rows == [(1, 64), (1, 64)]


def test_rate_limit_is_distinguishable_from_quota_and_writes_nothing(harness: Harness) -> None:
    site = make_site(harness.conn, rate_limit_per_minute=2)
    assert post(harness, {"event_id": "1"}, auth(site)).status_code == 200
    assert post(harness, {"event_id": "2"}, auth(site)).status_code == 200
    limited = post(harness, {"event_id": "3"}, auth(site))
    assert limited.status_code == 429 and limited.json()["status"] == "rate_limited"
    assert limited.headers["x-opsmantik-ratelimit"] == "1"
    assert int(limited.headers["retry-after"]) == 60  # the clock sits at hh:mm:00
    assert "x-opsmantik-quota-exceeded" not in limited.headers
    assert "x-opsmantik-quota-remaining" not in limited.headers
    assert len(ledger(harness.conn, site)) == 2
    harness.clock.advance(timedelta(seconds=60))
    assert post(harness, {"event_id": "3"}, auth(site)).status_code == 200


def test_auth_errors(harness: Harness) -> None:
    site = make_site(harness.conn)
    other = make_site(harness.conn, public_id="other-site")
    missing = post(harness, {"ec": "x"}, {})
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    assert post(harness, {"ec": "x"}, {"Authorization": "Bearer rk_ingest_nope"}).status_code == 401
    mismatch = post(harness, {"ec": "x", "s": "other-site"}, auth(site))
    assert mismatch.status_code == 403 and mismatch.json()["error"] == "site_mismatch"
    batch_mismatch = post(harness, {"events": [{"ec": "x"}, {"ec": "y", "s": "other-site"}]}, auth(site))
    assert batch_mismatch.status_code == 403
    assert post(harness, {"ec": "x", "s": site.site.public_id}, auth(site)).status_code == 200
    revoke_key(harness.conn, other.ingest_key, now=datetime.now(UTC))
    assert post(harness, {"ec": "x"}, auth(other)).status_code == 401
    assert len(ledger(harness.conn, site)) == 1 and ledger(harness.conn, other) == []


def test_size_json_and_schema_errors_write_nothing(harness: Harness) -> None:
    site = make_site(harness.conn)
    big = harness.client.post("/api/sync", content=b'{"ec": "' + b"x" * 300_000 + b'"}', headers=auth(site))
    assert big.status_code == 413 and big.json()["error"] == "payload_too_large"
    bad = harness.client.post("/api/sync", content=b'{"ec": ', headers=auth(site))
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_json"
    too_long = post(harness, {"ec": "x" * 201}, auth(site))
    assert too_long.status_code == 422 and too_long.json()["field"] == "ec"
    bad_id = post(harness, {"events": [{"event_id": "ok-1"}, {"event_id": "-no"}]}, auth(site))
    assert bad_id.status_code == 422 and bad_id.json()["field"] == "events[1].event_id"
    wrong_type = post(harness, {"meta": [1, 2]}, auth(site))
    assert wrong_type.status_code == 422 and wrong_type.json()["field"] == "meta"
    bad_ts = post(harness, {"ts": "2026-03-01T00:00:00"}, auth(site))  # naive time
    assert bad_ts.status_code == 422 and bad_ts.json()["field"] == "ts"
    too_many = post(harness, {"events": [{"event_id": f"e{i}"} for i in range(101)]}, auth(site))
    assert too_many.status_code == 422 and too_many.json()["field"] == "events"
    not_object = post(harness, [1], auth(site))
    assert not_object.status_code == 422 and not_object.json()["field"] == "body"
    for response in (big, bad, too_long, bad_id, too_many):
        assert EXPOSED in response.headers and response.headers["x-opsmantik-commit"] == "testcommit"
    assert ledger(harness.conn, site) == []
    assert counters(harness.conn, site, YM)["dedup_count"] == 0


def test_non_billable_classes_are_recorded_published_and_never_counted_against_quota(harness: Harness) -> None:
    site = make_site(harness.conn, monthly_limit=1)
    scroll = post(harness, {"event_id": "s", "ec": "interaction", "ea": "scroll_depth", "el": "50"}, auth(site))
    system = post(harness, {"event_id": "y", "ec": "system", "ea": "heartbeat"}, auth(site))
    billable = post(harness, {"event_id": "b", "ec": "interaction", "ea": "click"}, auth(site))
    assert [r.status_code for r in (scroll, system, billable)] == [200, 200, 200]
    assert scroll.json()["billable"] is False and scroll.json()["billing_reason"] == "scroll_depth"
    assert {r[0]: r[1:4] for r in ledger(harness.conn, site)} == {
        "s": (False, "ACCEPTED", "scroll_depth"),
        "y": (False, "ACCEPTED", "system"),
        "b": (True, "ACCEPTED", "within_quota"),
    }
    assert sorted(outbox_keys(harness.conn, site)) == ["b", "s", "y"]
    c = counters(harness.conn, site, YM)
    assert (c["event_count"], c["non_billable_count"]) == (1, 2)


def test_shadow_never_rejects_and_records_the_decision(harness: Harness) -> None:
    site = make_site(
        harness.conn, monthly_limit=1, soft_limit_enabled=True, hard_cap_multiplier=Decimal(2), billing_mode="shadow"
    )
    responses = [post(harness, {"event_id": f"e{i}"}, auth(site)) for i in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert [r[1:4] for r in ledger(harness.conn, site)] == [
        (True, "ACCEPTED", "shadow_within_quota"),
        (True, "ACCEPTED", "shadow_overage"),
        (True, "ACCEPTED", "shadow_rejected_quota"),
    ]
    assert len(outbox_keys(harness.conn, site)) == 3


def test_billing_off_per_site(harness: Harness) -> None:
    site = make_site(harness.conn, monthly_limit=0, billing_mode="off")
    response = post(harness, {"event_id": "e", "ec": "interaction", "ea": "scroll_depth"}, auth(site))
    assert response.status_code == 200 and "x-opsmantik-quota-remaining" not in response.headers
    assert [r[1:4] for r in ledger(harness.conn, site)] == [(False, "ACCEPTED", "billing_disabled")]
    assert counters(harness.conn, site, YM)["non_billable_count"] == 1


def test_global_kill_switch_records_everything_non_billable(settings: Any, app_conn: Any, clock: Any) -> None:
    from litestar.testing import TestClient

    from kernel.app import create_app

    site = make_site(app_conn, monthly_limit=0)
    with TestClient(create_app(settings.with_overrides(billing_enabled=False), clock=clock)) as client:
        response = client.post("/api/sync", json={"event_id": "e"}, headers=auth(site))
    assert response.status_code == 200
    assert [r[1:4] for r in ledger(app_conn, site)] == [(False, "ACCEPTED", "billing_disabled")]


def test_batch_results_per_event_with_duplicates_inside_and_against_ledger(harness: Harness) -> None:
    site = make_site(harness.conn, monthly_limit=3, rate_limit_per_minute=9)
    assert post(harness, {"event_id": "old", "ec": "x"}, auth(site)).status_code == 200
    body = {
        "events": [
            {"event_id": "n1", "ec": "x"},
            {"event_id": "n1", "ec": "x"},  # duplicate inside the batch
            {"event_id": "old", "ec": "x"},  # duplicate of the ledger
            {"event_id": "old", "ec": "changed"},  # same key, other payload
            {"event_id": "n2", "ec": "interaction", "ea": "scroll_depth"},
            {"event_id": "n3", "ec": "x"},
            {"event_id": "n4", "ec": "x"},  # past the limit of 3
        ]
    }
    response = post(harness, body, auth(site))
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [
        "accepted",
        "duplicate",
        "duplicate",
        "idempotency_conflict",
        "accepted",
        "accepted",
        "rejected_quota",
    ]
    assert results[1]["original"]["billing_state"] == "ACCEPTED"
    assert response.json()["counts"] == {"accepted": 3, "rejected_quota": 1, "duplicate": 2, "idempotency_conflict": 1}
    assert response.headers["x-opsmantik-dedup"] == "1"
    assert response.headers["x-opsmantik-quota-exceeded"] == "1"
    assert response.headers["x-opsmantik-quota-remaining"] == "0"
    assert sorted(r[0] for r in ledger(harness.conn, site)) == ["n1", "n2", "n3", "n4", "old"]
    c = counters(harness.conn, site, YM)
    assert (c["event_count"], c["rejected_count"], c["non_billable_count"], c["dedup_count"]) == (3, 1, 1, 3)
    # The rate limit counts events: 1 + 7 of 9 are used, a batch of 2 is refused whole, 1 fits.
    refused = post(harness, {"events": [{"event_id": "z1"}, {"event_id": "z2"}]}, auth(site))
    assert refused.status_code == 429 and refused.headers["x-opsmantik-ratelimit"] == "1"
    assert post(harness, {"events": [{"event_id": "z"}]}, auth(site)).status_code == 200
    assert post(harness, {"events": [{"event_id": "z3"}]}, auth(site)).status_code == 429
    keyed = post(harness, {"events": [{"event_id": "k"}]}, {**auth(site), "Idempotency-Key": "k"})
    assert keyed.status_code in (422, 429)


def test_batch_with_idempotency_key_header_is_refused(harness: Harness) -> None:
    site = make_site(harness.conn)
    response = post(harness, {"events": [{"event_id": "k"}]}, {**auth(site), "Idempotency-Key": "k"})
    assert response.status_code == 422 and response.json()["field"] == "Idempotency-Key"


def test_month_is_server_receive_time_at_the_last_millisecond(harness: Harness) -> None:
    site = make_site(harness.conn, monthly_limit=1)
    harness.clock.set(datetime(2026, 3, 31, 23, 59, 59, 999000, tzinfo=UTC))
    last = post(harness, {"event_id": "late", "ts": "2026-04-01T08:00:00Z"}, auth(site))
    assert last.status_code == 200
    assert int(last.headers["x-opsmantik-quota-remaining"]) == 0
    rejected = post(harness, {"event_id": "late-2"}, auth(site))
    assert rejected.headers["retry-after"] == "1"  # 1 ms to the next month, rounded up to whole seconds
    harness.clock.set(datetime(2026, 4, 1, 0, 0, 0, tzinfo=UTC))
    assert post(harness, {"event_id": "april", "ts": 1740000000000}, auth(site)).status_code == 200
    rows = harness.conn.execute(
        "SELECT idempotency_key, year_month, occurred_at FROM ingest_idempotency WHERE site_id = %s ORDER BY 1",
        (site.site.id,),
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [("april", "2026-04"), ("late", "2026-03"), ("late-2", "2026-03")]
    assert rows[1][2] == datetime(2026, 4, 1, 8, tzinfo=UTC)  # client time kept, informational only
    assert counters(harness.conn, site, "2026-03")["event_count"] == 1
    assert counters(harness.conn, site, "2026-04")["event_count"] == 1


def test_public_tracker_text_plain_with_u_alias_and_origin_allowlist(harness: Harness) -> None:
    site = make_site(
        harness.conn, public_id="tracker-site", ingest_auth="public", allowed_origins=("https://shop.example",)
    )
    body = json.dumps({"s": "tracker-site", "ec": "page", "ea": "view", "u": "https://shop.example/a"}).encode()
    ok = harness.client.post(
        "/api/sync?_ts=1712345",
        content=body,
        headers={"Content-Type": "text/plain", "Origin": "https://shop.example"},
    )
    assert ok.status_code == 200, ok.text
    assert ok.headers["access-control-allow-origin"] == "https://shop.example"
    assert "x-opsmantik-quota-exceeded" in ok.headers[EXPOSED]
    assert "access-control-allow-credentials" not in ok.headers
    row = harness.conn.execute(
        "SELECT event_url FROM ingest_idempotency WHERE site_id = %s", (site.site.id,)
    ).fetchone()
    assert row == ("https://shop.example/a",)
    evil = harness.client.post("/api/sync", content=body, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403 and evil.json()["error"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in evil.headers
    no_origin = harness.client.post("/api/sync", content=body)
    assert no_origin.status_code == 401
    preflight = harness.client.options("/api/sync?s=tracker-site", headers={"Origin": "https://shop.example"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
    evil_preflight = harness.client.options("/api/sync?s=tracker-site", headers={"Origin": "https://evil.example"})
    assert evil_preflight.status_code == 403


def test_keyed_site_with_allowlist_refuses_other_browser_origins(harness: Harness) -> None:
    site = make_site(harness.conn, allowed_origins=("https://app.example",))
    refused = post(harness, {"ec": "x"}, {**auth(site), "Origin": "https://evil.example"})
    assert refused.status_code == 403 and refused.json()["error"] == "origin_not_allowed"
    allowed = post(harness, {"ec": "x"}, {**auth(site), "Origin": "https://app.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    server = post(harness, {"ec": "y"}, auth(site))  # no Origin: server-to-server
    assert server.status_code == 200 and "access-control-allow-origin" not in server.headers


def test_ledger_failure_closes_the_gate_and_counts_nothing(harness: Harness, owner_conn: Any) -> None:
    site = make_site(harness.conn)
    assert post(harness, {"event_id": "before"}, auth(site)).status_code == 200
    before_metrics = _metric(harness, "billing_gate_closed_total")
    # A real failure inside the ledger transaction: the outbox insert is refused by PostgreSQL.
    owner_conn.execute("REVOKE INSERT ON ingest_outbox FROM revkernel_app")
    failed = post(harness, {"event_id": "during"}, auth(site))
    assert failed.status_code == 500
    assert failed.json() == {"ok": False, "status": "billing_gate_closed", "error": "billing_gate_closed"}
    assert _metric(harness, "billing_gate_closed_total") == before_metrics + 1
    assert [r[0] for r in ledger(harness.conn, site)] == ["before"]
    assert counters(harness.conn, site, YM)["event_count"] == 1
    owner_conn.execute("GRANT INSERT ON ingest_outbox TO revkernel_app")
    retried = post(harness, {"event_id": "during"}, auth(site))
    assert retried.status_code == 200 and retried.json()["status"] == "accepted"
    assert counters(harness.conn, site, YM)["event_count"] == 2


def test_metrics_count_outcomes(harness: Harness) -> None:
    site = make_site(harness.conn, monthly_limit=1)
    names = [
        "billing_ingest_allowed_total",
        "billing_ingest_duplicate_total",
        "billing_ingest_rejected_quota_total",
        "billing_ingest_rate_limited_total",
    ]
    before = {n: _metric(harness, n) for n in names}
    post(harness, {"event_id": "a"}, auth(site))
    post(harness, {"event_id": "a"}, auth(site))
    post(harness, {"event_id": "b"}, auth(site))
    after = {n: _metric(harness, n) for n in names}
    assert {n: after[n] - before[n] for n in names} == {
        "billing_ingest_allowed_total": 1,
        "billing_ingest_duplicate_total": 1,
        "billing_ingest_rejected_quota_total": 1,
        "billing_ingest_rate_limited_total": 0,
    }
    text = harness.client.get("/metrics").text
    for name in ("billing_ingest_overage_total", "billing_publish_failures_total", "billing_reconciliation_drift"):
        assert f"# TYPE {name.removesuffix('_total')}" in text
    assert "billing_ingest_request_duration_seconds_bucket" in text


def test_openapi_documents_the_ingest_route(harness: Harness) -> None:
    schema = harness.client.get("/schema/openapi.json").json()
    assert "post" in schema["paths"]["/api/sync"]


def _metric(h: Harness, name: str) -> float:
    for line in h.client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    pytest.fail(f"metric {name} not exported")


def test_hostile_bodies_are_4xx_and_write_nothing(harness: Harness) -> None:
    site = make_site(harness.conn)
    cases: list[tuple[bytes, int, str | None]] = [
        (b'{"ec": "caf\xe9"}', 400, None),
        (b'{"meta": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"}", 400, None),
        (b'{"meta": ' + b'{"a": ' * 9 + b"1" + b"}" * 9 + b"}", 422, "meta"),
        (b'{"ec": "a\\u0000b"}', 422, "ec"),
        (b'{"events": [{"ec": "a"}, {"u": "https://x/\\u0000"}]}', 422, "events[1].u"),
        (b'{"meta": {"k\\u0000": 1}}', 422, "meta"),
    ]
    for body, status, field in cases:
        response = harness.client.post("/api/sync", content=body, headers=auth(site))
        assert response.status_code == status, (body[:40], response.text)
        if field is not None:
            assert response.json()["field"] == field
    keyless = harness.client.post("/api/sync", content=b'{"s": "x\\u0000y"}', headers={"Origin": "https://a.example"})
    assert keyless.status_code == 401
    assert ledger(harness.conn, site) == []

"""``GET /metrics`` as Prometheus sees it: exact Content-Type, promtool-valid, no tenant ids.

Every test drives the real app (Litestar TestClient) on a real PostgreSQL, with events written
through ``POST /api/sync`` and crons run through the cron registry on a manual clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, CONTENT_TYPE_PLAIN_1_0_0
from prometheus_client.parser import text_string_to_metric_families

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.cron.jobs import run_named
from kernel.cron.runs import CronContext
from kernel.db.connect import Database
from kernel.settings import Settings
from tests.ingest.support import auth, make_site
from tests.ops.mime import MediaTypeError, parse_media_type
from tests.ops.promtool import promtool

NOW = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)
YM = "2026-03"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def client(settings: Settings, clock: ManualClock) -> Any:
    with TestClient(create_app(settings, clock=clock)) as c:
        yield c


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_strict_parser_refuses_what_prometheus_3_refuses() -> None:
    # The header /metrics sent before this fix: the parser must catch it, or the next test proves nothing.
    with pytest.raises(MediaTypeError, match="duplicate"):
        parse_media_type("text/plain; version=1.0.0; charset=utf-8; charset=utf-8")
    assert parse_media_type('text/plain; Charset="utf-8"') == ("text/plain", {"charset": "utf-8"})


# What Prometheus 3 sends (scrape_protocols default), and what a plain curl sends.
PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", CONTENT_TYPE_PLAIN_0_0_4),
        ("*/*", CONTENT_TYPE_PLAIN_0_0_4),
        ("text/plain;version=1.0.0", CONTENT_TYPE_PLAIN_1_0_0 + "; escaping=underscores"),
        (PROMETHEUS_3_ACCEPT, "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=allow-utf-8"),
    ],
)
def test_content_type_is_exactly_the_exposition_format(client: Any, accept: str, expected: str) -> None:
    reply = client.get("/metrics", headers={"accept": accept} if accept else {})
    assert reply.status_code == 200
    assert reply.headers.get_list("content-type") == [expected]
    media, params = parse_media_type(reply.headers["content-type"])
    assert media in ("text/plain", "application/openmetrics-text")
    assert params["charset"] == "utf-8" and "version" in params
    if media == "application/openmetrics-text":
        assert reply.text.rstrip().endswith("# EOF")
    else:
        assert "# TYPE billing_gate_closed_total counter" in reply.text


def test_promtool_accepts_the_exposition(client: Any, app_conn: psycopg.Connection[Any]) -> None:
    site = make_site(app_conn)
    client.post("/api/sync", json={"event_id": "e1", "ec": "a"}, headers=auth(site))
    body = client.get("/metrics").content
    checked = promtool("check", "metrics", stdin=body)
    # promtool exits 0 when the text parses; lint findings (none expected) would print and exit 1.
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_an_outsider_cannot_enumerate_sites_from_metrics(
    client: Any, settings: Settings, clock: ManualClock, app_conn: psycopg.Connection[Any]
) -> None:
    sites = [make_site(app_conn, name=f"Customer {i}") for i in range(3)]
    for i, site in enumerate(sites):
        reply = client.post("/api/sync", json={"event_id": f"e{i}", "ec": "a"}, headers=auth(site))
        assert reply.status_code == 200
    # Drift on one site: its counter says 5, the ledger 1; reconcile logs and corrects it.
    app_conn.execute(
        "UPDATE site_usage_monthly SET event_count = 5 WHERE site_id = %s AND year_month = %s", (sites[0].site.id, YM)
    )
    run_named(CronContext(settings, clock, Database(settings), trigger="cli"), "reconcile-usage")
    clock.advance(timedelta(seconds=30))
    text = client.get("/metrics").text  # no Authorization header: anyone on the network
    for site in sites:
        assert str(site.site.id) not in text
        assert site.site.public_id not in text
        assert site.site.id.hex not in text
    labels = {name for family in text_string_to_metric_families(text) for s in family.samples for name in s.labels}
    assert not labels & {"site_id", "public_id", "site"}, labels
    samples = _samples(text)
    # The drift is still visible to the SRE, fleet-wide: the largest drift of the last hour.
    assert samples[("billing_reconciliation_drift", ())] == 4
    assert samples[("billing_reconciliation_drift_checks_1h", (("kind", "counter"),))] == 1
    assert samples[("billing_watchtower_check_status", (("check", "drift"),))] == 2  # alarm


def test_operations_figures_follow_the_database(
    client: Any, settings: Settings, clock: ManualClock, app_conn: psycopg.Connection[Any]
) -> None:
    site = make_site(app_conn)
    for i in range(3):
        client.post("/api/sync", json={"event_id": f"o{i}", "ec": "a"}, headers=auth(site))
    ctx = CronContext(settings, clock, Database(settings), trigger="cli")
    started = clock.now()
    run_named(ctx, "reconcile-usage")
    clock.advance(timedelta(minutes=20))
    samples = _samples(client.get("/metrics").text)
    assert samples[("billing_ops_metrics_up", ())] == 1
    assert samples[("billing_cron_last_success_timestamp_seconds", (("cron", "reconcile-usage"),))] == (
        started.timestamp()
    )
    assert samples[("billing_cron_last_success_duration_seconds", (("cron", "reconcile-usage"),))] >= 0
    assert samples[("billing_cron_last_success_timestamp_seconds", (("cron", "watchtower"),))] == 0  # never ran
    assert samples[("billing_cron_last_run_failed", (("cron", "reconcile-usage"),))] == 0
    assert samples[("billing_cron_overdue_after_seconds", (("cron", "reconcile-usage"),))] == 45 * 60
    assert samples[("billing_outbox_backlog", ())] == 3  # no sink: the table is the queue
    assert samples[("billing_outbox_oldest_age_seconds", ())] == pytest.approx(20 * 60, abs=1)
    assert samples[("billing_publish_failures_last_15m", ())] == 0
    assert samples[("billing_dispute_exports_total", (("kind", "csv"),))] == 0
    assert samples[("billing_evidence_packets_total", ())] == 0


def test_figures_are_cached_so_a_scrape_flood_costs_one_query(
    client: Any, clock: ManualClock, app_conn: psycopg.Connection[Any]
) -> None:
    site = make_site(app_conn)
    client.post("/api/sync", json={"event_id": "c1", "ec": "a"}, headers=auth(site))
    first = _samples(client.get("/metrics").text)[("billing_outbox_backlog", ())]
    client.post("/api/sync", json={"event_id": "c2", "ec": "a"}, headers=auth(site))
    for _ in range(20):
        assert _samples(client.get("/metrics").text)[("billing_outbox_backlog", ())] == first
    assert first == 1


def test_database_down_is_a_metric_not_a_failed_scrape(settings: Settings, clock: ManualClock) -> None:
    broken = settings.with_overrides(app_database_url="postgresql://nobody@127.0.0.1:1/none")
    app = create_app(broken, clock=clock)
    app.on_startup.clear()  # no pool either: only the scrape is under test
    with TestClient(app) as c:
        reply = c.get("/metrics")
    assert reply.status_code == 200
    samples = _samples(reply.text)
    assert samples[("billing_ops_metrics_up", ())] == 0
    assert ("billing_outbox_backlog", ()) not in samples

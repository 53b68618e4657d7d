"""The audit's findings on the sample data and on hand-made bad cases (real PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from kernel.audit import Severity, audit_fleet, audit_site_month
from kernel.audit.sample import (
    SAMPLE_SIGNING_KEY,
    MonthPlan,
    freeze_site_month,
    seed_site_month,
)
from kernel.clock import ManualClock
from kernel.ledger import SigningKey
from kernel.tenants import create_site

AFTER_OCTOBER = ManualClock(datetime(2026, 11, 15, tzinfo=UTC))


def codes(findings: list[Any], severity: Severity | None = None) -> set[str]:
    return {f.code for f in findings if severity is None or f.severity is severity}


def new_site(conn: psycopg.Connection[Any], public_id: str, **plan: Any) -> uuid.UUID:
    created = create_site(conn, name=public_id, public_id=public_id, **{"monthly_limit": 100, **plan})
    return created.site.id


def test_sample_month_verdicts(sample_ids: dict[str, uuid.UUID], analyst: psycopg.Connection[Any]) -> None:
    fleet = audit_fleet(analyst, "2026-10", clock=AFTER_OCTOBER)
    verdicts = dict(zip(fleet.verdicts()["public_id"], fleet.verdicts()["verdict"], strict=True))
    assert verdicts == {"demo-hardcap": "warn", "demo-off": "pass", "demo-overage": "fail", "demo-shadow": "pass"}
    hardcap = fleet.findings_of(str(sample_ids["demo-hardcap"]))
    assert "retry_storm" in codes(hardcap, Severity.WARN)
    assert "duplicates_blocked" in codes(hardcap, Severity.INFO)
    overage = fleet.findings_of(str(sample_ids["demo-overage"]))
    assert "counter_mismatch" in codes(overage, Severity.FAIL)
    assert "counter_drift_logged" in codes(overage, Severity.WARN)
    # Every snapshot of the sample re-verifies: counts, root, chain, signature.
    assert all(check.verified for check in fleet.snapshots.values())
    assert all(fleet.snapshots[r["site_id"]].leaves == r["billable_count"] for r in fleet.records)


def test_site_audit_is_the_fleet_audit_of_one_site(
    sample_ids: dict[str, uuid.UUID], analyst: psycopg.Connection[Any]
) -> None:
    fleet = audit_fleet(analyst, "2026-10", clock=AFTER_OCTOBER)
    for public_id, site_id in sample_ids.items():
        one = audit_site_month(analyst, public_id, "2026-10", clock=AFTER_OCTOBER)
        assert one.findings == fleet.findings_of(str(site_id))
        assert one.snapshot == fleet.snapshots[str(site_id)]


def test_snapshot_whose_root_no_longer_matches(
    owner_conn: psycopg.Connection[Any], analyst: psycopg.Connection[Any]
) -> None:
    site = new_site(owner_conn, "wrong-root")
    seed_site_month(owner_conn, site, "2026-10", MonthPlan(accepted=30))
    freeze_site_month(owner_conn, site, "2026-10", merkle_root="ab" * 32)
    audit = audit_site_month(analyst, "wrong-root", "2026-10", clock=AFTER_OCTOBER)
    assert "merkle_root_mismatch" in codes(audit.findings, Severity.FAIL)
    assert audit.verdict == "fail"
    assert audit.snapshot.recomputed_root != audit.snapshot.stored_root


def test_ledger_row_added_after_freeze_breaks_counts_and_root(
    owner_conn: psycopg.Connection[Any], analyst: psycopg.Connection[Any]
) -> None:
    site = new_site(owner_conn, "late-row")
    seed_site_month(owner_conn, site, "2026-10", MonthPlan(accepted=12))
    freeze_site_month(owner_conn, site, "2026-10")
    owner_conn.execute(
        "INSERT INTO ingest_idempotency (site_id, idempotency_key, idempotency_version, created_at, billable, "
        "billing_state, billing_reason, payload_hash) VALUES (%s, 'smuggled', 2, '2026-10-20T10:00:00Z', true, "
        "'ACCEPTED', 'within_quota', 'x')",
        (site,),
    )
    audit = audit_site_month(analyst, "late-row", "2026-10", clock=AFTER_OCTOBER)
    assert {"merkle_root_mismatch", "snapshot_counts_mismatch", "accepted_without_outbox"} <= codes(
        audit.findings, Severity.FAIL
    )


def test_signature_chain_and_key_are_checked(
    owner_conn: psycopg.Connection[Any], analyst: psycopg.Connection[Any]
) -> None:
    site = new_site(owner_conn, "bad-signer")
    seed_site_month(owner_conn, site, "2026-09", MonthPlan(accepted=5))
    seed_site_month(owner_conn, site, "2026-10", MonthPlan(accepted=5))
    freeze_site_month(owner_conn, site, "2026-09")
    rogue = SigningKey.from_seed(b"\x07" * 32)
    freeze_site_month(owner_conn, site, "2026-10", key=rogue)
    # The rogue key is now in signing_keys; a snapshot signed by an unlisted key is the other case.
    audit = audit_site_month(analyst, "bad-signer", "2026-10", clock=AFTER_OCTOBER)
    assert audit.snapshot.verified  # signed by a listed key, chained to September
    owner_conn.execute("DELETE FROM signing_keys WHERE key_id = %s", (rogue.key_id,))
    audit = audit_site_month(analyst, "bad-signer", "2026-10", clock=AFTER_OCTOBER)
    assert "signing_key_unknown" in codes(audit.findings, Severity.FAIL)

    other = new_site(owner_conn, "broken-chain")
    seed_site_month(owner_conn, other, "2026-10", MonthPlan(accepted=3))
    freeze_site_month(owner_conn, other, "2026-10")
    # A September snapshot inserted after October's: October no longer links to its predecessor.
    seed_site_month(owner_conn, other, "2026-09", MonthPlan(accepted=3))
    freeze_site_month(owner_conn, other, "2026-09")
    audit = audit_site_month(analyst, "broken-chain", "2026-10", clock=AFTER_OCTOBER)
    assert "snapshot_chain_broken" in codes(audit.findings, Severity.FAIL)
    assert SAMPLE_SIGNING_KEY.key_id == audit.snapshot.key_id


def test_forged_signature_fails(owner_conn: psycopg.Connection[Any], analyst: psycopg.Connection[Any]) -> None:
    site = new_site(owner_conn, "forged")
    seed_site_month(owner_conn, site, "2026-10", MonthPlan(accepted=4))
    forger = SigningKey.from_seed(b"\x09" * 32)
    freeze_site_month(owner_conn, site, "2026-10", key=forger)
    # Claim the sample key's id for the forger's signature: the listed public key rejects it.
    owner_conn.execute("DELETE FROM signing_keys WHERE key_id = %s", (forger.key_id,))
    owner_conn.execute(
        "INSERT INTO signing_keys (key_id, public_key) VALUES (%s, %s)",
        (forger.key_id, SAMPLE_SIGNING_KEY.public_key.hex()),
    )
    audit = audit_site_month(analyst, "forged", "2026-10", clock=AFTER_OCTOBER)
    assert "signature_invalid" in codes(audit.findings, Severity.FAIL)


def test_outbox_integrity(owner_conn: psycopg.Connection[Any], analyst: psycopg.Connection[Any]) -> None:
    site = new_site(owner_conn, "outbox-gaps")
    seed_site_month(owner_conn, site, "2026-10", MonthPlan(accepted=20))
    freeze_site_month(owner_conn, site, "2026-10")
    owner_conn.execute(
        "UPDATE ingest_outbox SET published_at = NULL "
        "WHERE id = (SELECT min(id) FROM ingest_outbox WHERE site_id = %s)",
        (site,),
    )
    owner_conn.execute(
        "INSERT INTO ingest_outbox (site_id, idempotency_key, payload, created_at) "
        "VALUES (%s, 'ghost', '{}', '2026-10-05T00:00:00Z')",
        (site,),
    )
    audit = audit_site_month(analyst, "outbox-gaps", "2026-10", clock=AFTER_OCTOBER)
    assert "unpublished_outbox" in codes(audit.findings, Severity.WARN)
    # A row written minutes ago is not "never published" yet.
    just_now = audit_site_month(
        analyst, "outbox-gaps", "2026-10", clock=ManualClock(datetime(2026, 10, 1, 1, 40, tzinfo=UTC))
    )
    assert "unpublished_outbox" not in codes(just_now.findings)
    assert "outbox_without_ledger" in codes(audit.findings, Severity.FAIL)
    from kernel.audit import outbox_problems

    problems = outbox_problems(analyst, audit.site, "2026-10")
    assert sorted(problems["problem"]) == ["outbox_without_ledger", "unpublished_outbox"]


def test_outbox_without_a_sink_is_the_queue(
    owner_conn: psycopg.Connection[Any], analyst: psycopg.Connection[Any]
) -> None:
    site = new_site(owner_conn, "no-sink")
    seed_site_month(owner_conn, site, "2026-10", MonthPlan(accepted=5, non_billable=5))
    owner_conn.execute("UPDATE ingest_outbox SET published_at = NULL")
    owner_conn.execute(
        "DELETE FROM ingest_outbox WHERE idempotency_key = (SELECT min(idempotency_key) "
        "FROM ingest_idempotency WHERE NOT billable)"
    )
    audit = audit_site_month(analyst, "no-sink", "2026-10", clock=AFTER_OCTOBER)
    assert "outbox_not_relayed" in codes(audit.findings, Severity.INFO)
    assert "unpublished_outbox" not in codes(audit.findings)
    # A non-billable accepted row is published too (only quota rejections are not).
    assert "accepted_without_outbox" in codes(audit.findings, Severity.FAIL)


def test_quota_breach_flood_spike_and_missing_snapshot(
    owner_conn: psycopg.Connection[Any], analyst: psycopg.Connection[Any]
) -> None:
    site = new_site(owner_conn, "over-quota", monthly_limit=10)
    seed_site_month(owner_conn, site, "2026-10", MonthPlan(accepted=15, non_billable=400))
    # A spike: 300 events on one day.
    owner_conn.execute(
        "INSERT INTO ingest_idempotency (site_id, idempotency_key, idempotency_version, created_at, billable, "
        "billing_state, billing_reason, payload_hash) "
        "SELECT %s, 'spike-' || g, 2, timestamptz '2026-10-25T08:00:00Z' + g * interval '1 second', false, "
        "'ACCEPTED', 'system', 'x' FROM generate_series(1, 300) g",
        (site,),
    )
    audit = audit_site_month(analyst, "over-quota", "2026-10", clock=AFTER_OCTOBER)
    found = codes(audit.findings)
    assert {"quota_limit_exceeded", "hard_cap_exceeded"} <= codes(audit.findings, Severity.FAIL)
    assert {"non_billable_flood", "volume_spike", "snapshot_missing", "counter_breakdown_mismatch"} <= found
    during = audit_site_month(analyst, "over-quota", "2026-10", clock=ManualClock(datetime(2026, 10, 30, tzinfo=UTC)))
    assert "month_open" in codes(during.findings) and "snapshot_missing" not in codes(during.findings)


def test_retry_storm_needs_a_burst(owner_conn: psycopg.Connection[Any], analyst: psycopg.Connection[Any]) -> None:
    calm = new_site(owner_conn, "calm-rejects", monthly_limit=10)
    seed_site_month(owner_conn, calm, "2026-10", MonthPlan(accepted=10, rejected=80))
    stormy = new_site(owner_conn, "stormy", monthly_limit=10)
    seed_site_month(owner_conn, stormy, "2026-10", MonthPlan(accepted=10, rejected=80, rejected_in_one_hour=True))
    resends = new_site(owner_conn, "resends", monthly_limit=10)
    seed_site_month(owner_conn, resends, "2026-10", MonthPlan(accepted=10, rejected=3, dedup=150))
    fleet = audit_fleet(analyst, "2026-10", clock=AFTER_OCTOBER)
    assert "retry_storm" not in codes(fleet.findings_of(str(calm)))
    assert "retry_storm" in codes(fleet.findings_of(str(stormy)), Severity.WARN)
    storm = [f for f in fleet.findings_of(str(resends)) if f.code == "retry_storm"]
    assert storm and storm[0].value == {"dedup_count": 150}


def test_counter_tampered_and_missing(owner_conn: psycopg.Connection[Any], analyst: psycopg.Connection[Any]) -> None:
    site = new_site(owner_conn, "tampered")
    seed_site_month(owner_conn, site, "2026-10", MonthPlan(accepted=40))
    owner_conn.execute("UPDATE site_usage_monthly SET event_count = 35 WHERE site_id = %s", (site,))
    gone = new_site(owner_conn, "no-counter")
    seed_site_month(owner_conn, gone, "2026-10", MonthPlan(accepted=5))
    owner_conn.execute("DELETE FROM site_usage_monthly WHERE site_id = %s", (gone,))
    fleet = audit_fleet(analyst, "2026-10", clock=AFTER_OCTOBER)
    tampered = [f for f in fleet.findings_of(str(site)) if f.code == "counter_mismatch"]
    assert tampered and tampered[0].value == {"counter": 35, "ledger": 40}
    assert "counter_missing" in codes(fleet.findings_of(str(gone)), Severity.FAIL)


def test_site_filter_and_unknown_month(sample_ids: dict[str, uuid.UUID], analyst: psycopg.Connection[Any]) -> None:
    only = audit_fleet(analyst, "2026-10", site_ids=[sample_ids["demo-off"]], clock=AFTER_OCTOBER)
    assert [r["public_id"] for r in only.records] == ["demo-off"]
    # The sample's sites were created after 2025-01 and recorded nothing in it: not in its report.
    empty = audit_fleet(analyst, "2025-01", clock=AFTER_OCTOBER)
    assert empty.records == [] and empty.findings == []
    from kernel.errors import InputError

    with pytest.raises(InputError):
        audit_fleet(analyst, "2026-13")


def test_analyst_connection_is_read_only(sample_ids: dict[str, uuid.UUID], analyst: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        analyst.execute("UPDATE site_usage_monthly SET event_count = 0")


def test_an_empty_month_is_no_activity_never_pass(
    sample_ids: dict[str, uuid.UUID], owner_conn: psycopg.Connection[Any], analyst: psycopg.Connection[Any]
) -> None:
    # The sample's sites existed in 2026-11 (created before it ended) but recorded nothing in it.
    owner_conn.execute("UPDATE sites SET created_at = '2026-08-01T00:00:00Z'")
    fleet = audit_fleet(analyst, "2026-11", clock=ManualClock(datetime(2026, 12, 2, tzinfo=UTC)))
    assert sorted(r["public_id"] for r in fleet.records) == sorted(sample_ids)
    assert set(fleet.verdicts()["verdict"]) == {"no_activity"}
    one = audit_site_month(analyst, "demo-off", "2026-11", clock=ManualClock(datetime(2026, 12, 2, tzinfo=UTC)))
    assert one.verdict.value == "no_activity" and one.verdict_in("drift").value == "no_activity"
    assert "NO ACTIVITY" in one.banner("Monthly audit").html and "PASS" not in one.banner("Monthly audit").html
    # A site created after a month, with nothing in it, is not in that month at all.
    late = new_site(owner_conn, "born-late")
    owner_conn.execute("UPDATE sites SET created_at = '2026-12-01T12:00:00Z' WHERE id = %s", (late,))
    assert "born-late" not in [r["public_id"] for r in audit_fleet(analyst, "2026-11").records]
    from kernel.errors import NotFound

    with pytest.raises(NotFound, match="did not exist in 2026-11"):
        audit_site_month(analyst, "born-late", "2026-11")

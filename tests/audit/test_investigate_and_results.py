"""The interactive notebook's widget actions and the results sidecar, on real PostgreSQL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kernel.audit import (
    audit_site_month,
    daily_volume,
    key_detail,
    ledger_rows,
    plan_and_mode,
    quota_timeline,
    read_results,
    reason_choices,
    site_choices,
    site_of,
    snapshot_chain,
    usage_by_reason,
)
from kernel.errors import InputError, NotFound


def test_site_and_reason_pickers(sample_ids: dict[str, uuid.UUID], analyst: psycopg.Connection[Any]) -> None:
    choices = site_choices(analyst)
    assert [value for _, value in choices] == sorted(sample_ids)
    site = site_of(analyst, str(sample_ids["demo-hardcap"]))
    assert site.public_id == "demo-hardcap"
    assert reason_choices(analyst, site, "2026-10") == ["rejected_quota", "scroll_depth", "within_quota"]
    with pytest.raises(NotFound):
        site_of(analyst, "no-such-site")


def test_ledger_filter_and_key_drill_down(sample_ids: dict[str, uuid.UUID], analyst: psycopg.Connection[Any]) -> None:
    site = site_of(analyst, "demo-hardcap")
    rejected = ledger_rows(analyst, site, "2026-10", billing_state="REJECTED_QUOTA", limit=200)
    assert len(rejected) == 140 and set(rejected["billing_state"]) == {"REJECTED_QUOTA"}
    scroll = ledger_rows(analyst, site, "2026-10", billing_reason="scroll_depth", limit=5)
    assert len(scroll) == 5 and not scroll["billable"].any()
    assert list(scroll["created_at"]) == sorted(scroll["created_at"])

    accepted = ledger_rows(analyst, site, "2026-10", billing_state="ACCEPTED", limit=3)
    detail = key_detail(analyst, site, accepted["idempotency_key"].iloc[1])
    assert detail["outbox"] == "published"
    assert detail["inclusion"] == "proved against the snapshot root"
    assert detail["proof"]["tree_size"] == 400
    not_leaf = key_detail(analyst, site, rejected["idempotency_key"].iloc[0])
    assert not_leaf["inclusion"] == "not billable: not a leaf" and "proof" not in not_leaf

    with pytest.raises(InputError):
        ledger_rows(analyst, site, "2026-10", billing_state="PAID")
    with pytest.raises(NotFound):
        key_detail(analyst, site, "missing-key")


def test_tables_for_the_monthly_notebook(sample_ids: dict[str, uuid.UUID], analyst: psycopg.Connection[Any]) -> None:
    site = site_of(analyst, "demo-overage")
    plan = plan_and_mode(site)
    assert plan.loc["hard_cap", "value"] == "450"
    usage = usage_by_reason(analyst, site, "2026-10")
    assert int(usage.loc[usage["billing_state"] == "OVERAGE", "events"].sum()) == 150
    daily = daily_volume(analyst, site, "2026-10")
    assert len(daily) == 31 and daily.iloc[0]["day"] == "2026-10-01"
    timeline = quota_timeline(daily, site)
    assert int(timeline["cumulative_billable"].iloc[-1]) == 450
    chain = snapshot_chain(analyst, site)
    assert list(chain["year_month"]) == ["2026-09", "2026-10"] and chain["links"].all()


def test_results_sidecar(sample_ids: dict[str, uuid.UUID], analyst: psycopg.Connection[Any], tmp_path: Path) -> None:
    audit = audit_site_month(analyst, "demo-overage", "2026-10")
    path = tmp_path / "out" / "r.json"
    written = audit.write_results(str(path), notebook="reconciliation_drift", area="drift")
    on_disk = read_results(path)
    assert on_disk == json.loads(json.dumps(written))
    assert on_disk["verdict"] == "fail" and on_disk["red_flags"] == ["counter_drift_logged", "counter_mismatch"]
    assert on_disk["metrics"]["snapshot"]["status"] == "verified"
    # An empty path (a notebook opened by hand) writes nothing but still returns the document.
    assert audit.write_results("", notebook="monthly_audit")["verdict"] == "fail"
    path.write_text("{}")
    with pytest.raises(InputError):
        read_results(path)
    with pytest.raises(InputError):
        read_results(tmp_path / "absent.json")

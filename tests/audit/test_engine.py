"""The notebooks' SQLAlchemy engine: the analyst role, read-only, and what pandas expects of it."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pandas as pd
import psycopg
import pytest
from sqlalchemy.engine import Engine

from kernel.audit import (
    Explorer,
    ReadOnlyQuery,
    analyst_engine,
    audit_site_month,
    drift_history,
    ledger_rows,
    outbox_problems,
    query,
    site_of,
    usage_by_reason,
)
from kernel.db.connect import Database


@pytest.fixture
def engine(database: Database) -> Iterator[Engine]:
    made = analyst_engine(database.uri("analyst"))
    yield made
    made.dispose()


def test_engine_is_the_analyst_role_on_psycopg_3(sample_ids: dict[str, uuid.UUID], engine: Engine) -> None:
    assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pandas warns for any connection that is not SQLAlchemy
        who = pd.read_sql("SELECT current_user AS role, current_setting('transaction_read_only') AS ro", engine)
    assert who.to_dict("records") == [{"role": "revkernel_analyst", "ro": "on"}]


def test_audit_frames_through_the_engine_equal_the_cursor_path(
    sample_ids: dict[str, uuid.UUID], engine: Engine, analyst: psycopg.Connection[Any]
) -> None:
    site = site_of(engine, "demo-hardcap")
    for read in (
        lambda db: usage_by_reason(db, site, "2026-10"),
        lambda db: ledger_rows(db, site, "2026-10", billing_state="REJECTED_QUOTA", limit=50),
        lambda db: drift_history(db, site, "2026-10"),
        lambda db: outbox_problems(db, site, "2026-10", limit=20),
    ):
        via_engine, via_cursor = read(engine), read(analyst)
        pd.testing.assert_frame_equal(via_engine, via_cursor)
        assert via_engine.attrs == via_cursor.attrs
    assert audit_site_month(engine, site, "2026-10").findings == audit_site_month(analyst, site, "2026-10").findings


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO sites (public_id, name) VALUES ('intruder', 'x')",
        "UPDATE ingest_idempotency SET billable = false",
        "DELETE FROM invoice_snapshot",
        "CREATE TABLE scratch (a int)",
    ],
)
def test_any_write_fails_with_one_line(sample_ids: dict[str, uuid.UUID], engine: Engine, statement: str) -> None:
    with pytest.raises(ReadOnlyQuery) as caught:
        query(engine, statement)
    assert caught.value.code == "read_only"
    assert "\n" not in caught.value.message and caught.value.message.startswith("the analyst connection is read-only")
    assert query(engine, "SELECT count(*) AS n FROM sites WHERE public_id = 'intruder'")["n"].iloc[0] == 0


def test_ad_hoc_query_binds_parameters(sample_ids: dict[str, uuid.UUID], engine: Engine) -> None:
    rows = query(
        engine,
        "SELECT billing_state, count(*) AS events FROM ingest_idempotency i JOIN sites s ON s.id = i.site_id"
        " WHERE s.public_id = %(site)s AND i.year_month = %(month)s GROUP BY 1 ORDER BY 1",
        {"site": "demo-overage", "month": "2026-10"},
    )
    assert dict(zip(rows["billing_state"], rows["events"], strict=True))["OVERAGE"] == 150


def test_explorer_keeps_working_after_the_engine_is_disposed(sample_ids: dict[str, uuid.UUID], engine: Engine) -> None:
    explorer = Explorer(engine)
    assert "rejected_quota" in explorer.reasons("demo-hardcap", "2026-10")
    engine.dispose()  # what the notebook's last cell does after Run All
    shown = explorer.run(explorer.rows, "demo-hardcap", "2026-10", "REJECTED_QUOTA", "")
    assert "<table" in shown.html and "REJECTED_QUOTA" in shown.html
    # The reason list follows the chosen site: demo-off only has billing_disabled.
    assert explorer.reasons("demo-off", "2026-10") == ["", "billing_disabled"]
    assert explorer.run(explorer.reasons, "demo-hardcap", "2026-13") == (
        "error: year_month must be YYYY-MM, got '2026-13' [invalid_year_month]"
    )
    assert explorer.run(explorer.key, "demo-hardcap", "no-such-key") == (
        "error: no ledger row 'no-such-key' for site demo-hardcap [unknown_idempotency_key]"
    )
    assert explorer.run(explorer.rows, "nobody", "2026-10").startswith("error: unknown site 'nobody'")


def test_key_drill_down_is_a_table_with_its_proof(sample_ids: dict[str, uuid.UUID], engine: Engine) -> None:
    explorer = Explorer(engine)
    site = site_of(engine, "demo-overage")
    key = ledger_rows(engine, site, "2026-10", billing_state="OVERAGE", limit=1)["idempotency_key"].iloc[0]
    shown = explorer.run(explorer.key, "demo-overage", key)
    assert shown.html.count("<table") == 2  # the row, then the proof's path
    assert "proved against the snapshot root" in shown.html and "sibling hash" in shown.html
    assert "Inclusion proof: leaf" in shown.html

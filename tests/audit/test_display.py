"""What a finance analyst reads: banner, figures, findings with guidance, cut tables, whole-number ticks."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pandas as pd
import psycopg

from kernel.audit import audit_site_month, daily_volume_chart, drift_chart, outbox_block, table
from kernel.audit.display import FINDING_GUIDE, PALETTE, findings_block
from kernel.audit.findings import Finding, Severity
from kernel.audit.site_month import AREA_CODES
from kernel.demo import closing_notes
from kernel.settings import Settings


def _ticks(svg: str) -> list[str]:
    return re.findall(r'<text x="50" y="[\d.]+" text-anchor="end" fill="#1d3557">([^<]+)</text>', svg)


def test_axis_ticks_are_whole_numbers() -> None:
    small = pd.DataFrame({"day": ["2026-10-01", "2026-10-02"], "accepted": [1, 3], "overage": [0, 0],
                          "rejected": [0, 1], "non_billable": [0, 0]})  # fmt: skip
    for chart in (
        daily_volume_chart(small),
        drift_chart(pd.DataFrame({"counter_drift": [-3, 0, 2], "redis_drift": [None, None, None]})),
    ):
        ticks = _ticks(chart.svg)
        assert len(ticks) >= 2 and all(re.fullmatch(r"-?[\d,]+", t) for t in ticks), ticks
    assert "<img" in daily_volume_chart(small).html()  # shown as an image in JupyterLab and the reports


def test_a_cut_table_says_how_many_rows_it_hid_and_has_no_index() -> None:
    frame = pd.DataFrame({"key": ["a", "b"], "n": [1, 2]})
    cut = table(frame, total_rows=502)
    assert "Showing the first 2 of 502 rows: 500 more not shown." in cut.html
    assert "<th></th>" not in cut.html and "<tbody>\n    <tr>\n      <th>" not in cut.html
    assert table(frame.iloc[:0], total_rows=0, empty="No rows here.").html.endswith("No rows here.</p>")


def test_every_finding_has_guidance_and_its_severity_colour() -> None:
    codes = set(FINDING_GUIDE) | set().union(*AREA_CODES.values())
    findings = [Finding("s", "p", "2026-10", code, Severity.WARN, "message") for code in sorted(codes)]
    block = findings_block(findings).html
    for code in codes:
        assert f"<b>{code}</b>" in block
    assert block.count(PALETTE["warn"][0]) == len(codes) + len(codes)  # row background and its pill
    fail = findings_block([Finding("s", "p", "2026-10", "counter_mismatch", Severity.FAIL, "m")]).html
    assert PALETTE["fail"][0] in fail and FINDING_GUIDE["counter_mismatch"][1] in fail


def test_outbox_section_counts_and_never_says_empty_when_rows_wait(
    sample_ids: dict[str, uuid.UUID], analyst: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any]
) -> None:
    owner_conn.execute("UPDATE ingest_outbox SET published_at = NULL")  # no sink: every row waits
    waiting = owner_conn.execute(
        "SELECT count(*) FROM ingest_outbox o JOIN ingest_idempotency l USING (site_id, idempotency_key)"
        " WHERE o.site_id = %s AND l.year_month = '2026-10'",
        (sample_ids["demo-overage"],),
    ).fetchone()
    assert waiting is not None and waiting[0] > 20
    audit = audit_site_month(analyst, "demo-overage", "2026-10")
    shown = outbox_block(analyst, audit)
    assert f"{waiting[0]:,} outbox row(s) not published yet" in shown.html
    assert f"Showing the first 20 of {waiting[0]:,} rows" in shown.html
    assert "Every accepted row has its outbox row" not in shown.html


def test_figures_block_names_the_month_and_banner_comes_first(
    sample_ids: dict[str, uuid.UUID], analyst: psycopg.Connection[Any]
) -> None:
    audit = audit_site_month(analyst, "demo-hardcap", "2026-10")
    figures = audit.figures()
    assert list(figures)[:4] == ["billable (invoiced)", "of which overage", "rejected (never billed)", "non-billable"]
    assert figures["snapshot"] == "verified"
    banner = audit.banner("Monthly audit").html
    assert banner.index("WARN") < banner.index("retry_storm")


def test_demo_ends_by_saying_the_embedded_server_keeps_running(tmp_path: Any) -> None:
    notes = closing_notes(Settings(data_dir=tmp_path))
    assert "embedded PostgreSQL keeps running" in notes[0] and "make db-stop" in notes[0]
    assert not any("keeps running" in n for n in closing_notes(Settings(database_url="postgresql://h/db")))

"""Spreadsheet formula neutralisation (OWASP "CSV injection") and its reversal, on every path.

The rule lives once in ``kernel.export.csv`` (``neutralise_cell`` / ``restore_cell`` in Python,
``neutralised_sql`` in the COPY statement). These tests hold it to hand-written vectors, check the
SQL twin against the Python rule, and follow hostile cells through the export, the archive, the
packet builder and the verifiers, which must restore every cell before hashing.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import subprocess
import sys
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kernel.clock import ManualClock
from kernel.cron.cleanup import _write_archive, archive_root
from kernel.db.connect import Database
from kernel.export import EXPORT_COLUMNS, export_chunks, neutralise_cell, restore_cell
from kernel.export.csv import FORMULA_BLANKS, neutralised_sql
from kernel.export.packet import build_packet
from kernel.export.verify import verify_packet
from kernel.ledger import SigningKey
from kernel.settings import Settings
from tests.export.conftest import FROZEN_AT, MONTH, MONTH_START, freeze, insert_rows, ledger_row, make_tenant

VECTORS = json.loads(Path(__file__).with_name("neutralisation_vectors.json").read_text(encoding="utf-8"))["vectors"]
TRIGGER_LOOKALIKES = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")
TEXT_COLUMNS = ("billing_reason", "event_category", "event_action", "event_label", "payload_hash")

# Keys as a forger or an old client could have stored them (ingest refuses them today, but the
# ledger and every verifier must still round-trip them): each would be a formula unprotected.
HOSTILE_KEYS = (" =key-space", "\u00a0+key-nbsp", "\uff1dkey-fullwidth", "\n@key-lf", "'-key-apostrophe", "\ufeff-bom")
# Disputed keys as a customer types them (leading blanks would be trimmed from the list).
DISPUTED = ["\uff1dkey-fullwidth", "'-key-apostrophe", "\ufeff-bom", "label-04", "not-billable"]
HOSTILE_LABELS = (
    ' =HYPERLINK("http://x")',
    "\t=1",
    "\r\n+1",
    "\u00a0\u00a0@SUM(A1)",
    "\u3000\uff1d1+1",
    "\uff0bcmd",
    "\u2003-2",
    "' =already",
    "plain",
)


def _spreadsheet_sees_a_formula(cell: str) -> bool:
    """What the advisories describe: after the blanks a spreadsheet skips, a trigger character."""
    return (
        cell.lstrip(" \t\r\n\x0b\x0c\u00a0\u2000\u2001\u2002\u2003\u2009\u200b\u3000\ufeff")[:1] in TRIGGER_LOOKALIKES
    )


@pytest.mark.parametrize("vector", VECTORS, ids=[repr(v["value"]) for v in VECTORS])
def test_the_hand_written_vectors(vector: dict[str, str]) -> None:
    assert neutralise_cell(vector["value"]) == vector["cell"]
    assert restore_cell(vector["cell"]) == vector["value"]
    assert not _spreadsheet_sees_a_formula(vector["cell"]), "an exported cell still reads as a formula"


def _combinations() -> list[str]:
    prefixes = ["", " ", "  ", "\t", "\n", "\r", "\r\n", "'", "''", "\u00a0", " \u00a0\t", *FORMULA_BLANKS]
    bodies = ["=1", "+", "-x", "@a", *TRIGGER_LOOKALIKES, "x", "", "'", "1", "\u00e9", " "]
    return sorted({p + b for p in prefixes for b in bodies})


def test_every_combination_of_blanks_and_triggers_round_trips() -> None:
    for value in _combinations():
        cell = neutralise_cell(value)
        assert cell is not None and restore_cell(cell) == value, repr(value)
        assert not _spreadsheet_sees_a_formula(cell), repr(value)
        assert neutralise_cell(None) is None


def test_the_sql_rule_is_the_python_rule(app_conn: psycopg.Connection[Any]) -> None:
    values = _combinations() + [v["value"] for v in VECTORS]
    query = psycopg.sql.SQL("SELECT v, {rule} FROM unnest(%s::text[]) WITH ORDINALITY AS t(v, n) ORDER BY n").format(
        rule=neutralised_sql("v")
    )
    rows = app_conn.execute(query, (values,)).fetchall()
    assert len(rows) == len(values)
    mismatched = [(v, sql_cell, neutralise_cell(v)) for v, sql_cell in rows if sql_cell != neutralise_cell(v)]
    assert mismatched == []
    assert app_conn.execute(psycopg.sql.SQL("SELECT {rule} FROM (SELECT NULL::text AS v) t").format(
        rule=neutralised_sql("v")
    )).fetchone() == (None,)  # fmt: skip


def _hostile_rows() -> list[dict[str, Any]]:
    t = MONTH_START + timedelta(days=4)
    rows = [ledger_row(key, t + timedelta(seconds=i), label=f"label of {i}") for i, key in enumerate(HOSTILE_KEYS)]
    rows += [
        ledger_row(f"label-{i:02d}", t + timedelta(minutes=1, seconds=i), label=label, category=label, action=label)
        for i, label in enumerate(HOSTILE_LABELS)
    ]
    rows.append(ledger_row("not-billable", t + timedelta(minutes=2), billable=False, label=" -x", reason=" @r"))
    return rows


def _csv_rows(data: bytes) -> list[dict[str, str]]:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    return [dict(zip(EXPORT_COLUMNS, r, strict=True)) for r in rows[1:]]


def test_the_export_neutralises_the_bypasses_and_restores_to_the_stored_values(
    app_conn: psycopg.Connection[Any], database: Database
) -> None:
    tenant = make_tenant(app_conn, "bypass-shop")
    stored = _hostile_rows()
    insert_rows(app_conn, tenant.site_id, stored)
    with database.connect("app", autocommit=True) as conn:
        data = b"".join(export_chunks(conn, tenant.site_id, MONTH))
        again = b"".join(export_chunks(conn, tenant.site_id, MONTH, chunk_bytes=7))
    assert data == again  # byte-for-byte deterministic, whatever the chunking
    exported = {restore_cell(r["idempotency_key"]): r for r in _csv_rows(data)}
    assert set(exported) == {r["idempotency_key"] for r in stored}
    for row in stored:
        cells = exported[row["idempotency_key"]]
        for column in ("idempotency_key", *TEXT_COLUMNS):
            value = row[column]
            assert cells[column] == (neutralise_cell(value) or ""), (column, value)
            if value is not None:
                assert restore_cell(cells[column]) == value
            assert not _spreadsheet_sees_a_formula(cells[column]), (column, cells[column])
    # The bypasses of the advisories, seen from the spreadsheet's side.
    assert exported[" =key-space"]["idempotency_key"] == "' =key-space"
    assert exported["\uff1dkey-fullwidth"]["idempotency_key"] == "'\uff1dkey-fullwidth"
    assert exported["label-04"]["event_label"] == "'\u3000\uff1d1+1"
    assert exported["label-08"]["event_label"] == "plain"


def test_the_archive_is_the_neutralised_export_and_reads_back_the_signed_root(
    settings: Settings, app_conn: psycopg.Connection[Any], database: Database, signing_key: SigningKey
) -> None:
    tenant = make_tenant(app_conn, "bypass-archive")
    insert_rows(app_conn, tenant.site_id, _hostile_rows())
    frozen = freeze(settings, tenant.site_id, MONTH, signing_key)
    path = settings.data_dir / "archive-test" / f"{MONTH}.csv.gz"
    with database.connect("app", autocommit=True) as conn:
        export = b"".join(export_chunks(conn, tenant.site_id, MONTH))
        with conn.transaction():
            _write_archive(conn, path, str(tenant.site_id), MONTH)
    assert gzip.decompress(path.read_bytes()) == export  # no cell of the archive reads as a formula
    assert archive_root(path) == (frozen.merkle_root, len(_hostile_rows()))


@pytest.fixture
def hostile_packet(settings: Settings, app_conn: psycopg.Connection[Any], signing_key: SigningKey) -> Path:
    tenant = make_tenant(app_conn, "bypass-packet")
    insert_rows(app_conn, tenant.site_id, _hostile_rows())
    freeze(settings, tenant.site_id, MONTH, signing_key)
    out = settings.data_dir / "packet.zip"
    build_packet(
        Database(settings),
        site_ref="bypass-packet",
        year_month=MONTH,
        disputed_keys=DISPUTED,
        out=out,
        clock=ManualClock(FROZEN_AT + timedelta(days=1)),
        render_report=False,
    )
    return out


def test_packet_builder_and_verifier_restore_hostile_keys_before_hashing(
    hostile_packet: Path, signing_key: SigningKey
) -> None:
    result = verify_packet(hostile_packet, trusted_keys=[signing_key.public_key.hex()])
    assert result.ok, result.to_json()
    proofs = {c.name: c.ok for c in result.checks if c.name.startswith("inclusion:")}
    assert proofs == {f"inclusion:{k}": True for k in DISPUTED}
    with zipfile.ZipFile(hostile_packet) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        data = archive.read(manifest["csv"]["name"])
    statuses = {d["idempotency_key"]: d["status"] for d in manifest["disputed"]}
    assert statuses == {k: "not_billable" if k == "not-billable" else "billable" for k in DISPUTED}
    for row in _csv_rows(data):
        assert not any(_spreadsheet_sees_a_formula(cell) for cell in row.values()), row


def test_the_by_hand_script_of_verify_md_restores_like_the_kernel(hostile_packet: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(hostile_packet) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(files["manifest.json"])
    script = re.search(r"```python\n(.*?)```", files["VERIFY.md"].decode(), re.S)
    assert script is not None
    (tmp_path / "root.py").write_text(script.group(1) + "\nfor c in sys.argv[2:]: print(repr(restore(c)))\n")
    (tmp_path / "month.csv").write_bytes(files[manifest["csv"]["name"]])
    cells = [v["cell"] for v in VECTORS]
    out = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "root.py"), str(tmp_path / "month.csv"), *cells],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.splitlines()
    document = json.loads(manifest["snapshot"]["document"])
    assert lines[0].split() == [str(document["billable_count"]), document["merkle_root"]]
    assert lines[1:] == [repr(v["value"]) for v in VECTORS]

"""`revkernel verify`: passes on a sound store, and names the reason for each kind of tampering.

The store (``tests.backup.support``) has a month verified from its archive alone, one from its
archive with part of the rows left, and one from the ledger. Each tampering is done the way an
operator with the owner role (or a superuser) could do it, then `revkernel verify` must exit 1 and
name the check, the code, the site and the month, in its output and in its evidence file.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kernel.db.connect import Database
from kernel.ledger import SigningKey
from tests.backup.support import SmallStore, cli_env, revkernel


def _owner(store: SmallStore, statement: str, params: Any = ()) -> None:
    with Database(store.settings).connect("owner", autocommit=True) as conn:
        conn.execute(statement, params)


def _archive(store: SmallStore, year_month: str) -> Path:
    with Database(store.settings).connect("owner", autocommit=True) as conn:
        row = conn.execute("SELECT file_path FROM ledger_archive WHERE year_month = %s", (year_month,)).fetchone()
    assert row is not None
    return Path(row[0])


def _verify(store: SmallStore, tmp_path: Path) -> tuple[int, str, dict[str, Any]]:
    result = revkernel(["verify", "--reports-dir", str(tmp_path / "reports")], cli_env(store.settings))
    evidence = sorted((tmp_path / "reports" / "verify").glob("*.json"))
    assert len(evidence) == 1 and evidence[0].with_suffix(".md").exists()
    return result.exit_code, result.output, json.loads(evidence[0].read_text())


def test_a_sound_store_passes_every_check(store: SmallStore, tmp_path: Path) -> None:
    left = Database(store.settings).connect("owner", autocommit=True)
    with left:
        remaining = left.execute("SELECT year_month, count(*) FROM ingest_idempotency GROUP BY 1 ORDER BY 1").fetchall()
    # The store is what the checks need: January cleaned up, February in part, March whole.
    assert [m for m, _ in remaining] == ["2026-02", "2026-03", "2026-04"]
    code, output, evidence = _verify(store, tmp_path)
    assert code == 0, output
    assert "7 passed, 0 failed" in output
    assert evidence["passed"] is True and evidence["failures"] == []
    figures = evidence["figures"]
    assert figures["snapshots"] == 3 and figures["snapshots_from_archives"] == 2
    assert figures["chain_links"] == 2 and figures["archives"] == 2 and figures["published_keys"] == 1
    assert [c["verdict"] for c in evidence["checks"]] == ["PASS"] * 7
    # April is over (system clock) and has no snapshot: worth a note, not a failure.
    assert any("2026-04" in note for note in evidence["notes"])


def _edit_ledger_row(store: SmallStore) -> None:
    _owner(
        store,
        "UPDATE ingest_idempotency SET billing_state = 'OVERAGE'"
        " WHERE idempotency_key = '2026-03-000' AND site_id = %s",
        (store.site_id,),
    )


def _delete_ledger_row(store: SmallStore) -> None:
    _owner(
        store, "DELETE FROM ingest_idempotency WHERE idempotency_key = '2026-03-001' AND site_id = %s", (store.site_id,)
    )


def _edit_row_left_in_archived_month(store: SmallStore) -> None:
    # February was cleaned up in part; a row cleanup left is edited after it was archived.
    _owner(
        store,
        "UPDATE ingest_idempotency SET event_label = 'edited' WHERE idempotency_key = '2026-02-012' AND site_id = %s",
        (store.site_id,),
    )


def _flip_archive_byte(store: SmallStore) -> None:
    path = _archive(store, "2026-01")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite_archive(store: SmallStore) -> None:
    # A consistent forgery of the file: valid gzip, one row's state changed (root no longer matches).
    path = _archive(store, "2026-01")
    text = gzip.decompress(path.read_bytes()).decode()
    path.write_bytes(gzip.compress(text.replace(",ACCEPTED,", ",OVERAGE,", 1).encode(), mtime=0))


def _remove_archive(store: SmallStore) -> None:
    _archive(store, "2026-02").unlink()


def _bump_counter(store: SmallStore) -> None:
    _owner(store, "UPDATE site_usage_monthly SET event_count = event_count + 1 WHERE year_month = '2026-03'")


def _bump_archived_counter(store: SmallStore) -> None:
    _owner(store, "UPDATE site_usage_monthly SET event_count = event_count - 1 WHERE year_month = '2026-01'")


def _swap_published_key(store: SmallStore) -> None:
    other = SigningKey.generate()
    _owner(store, "UPDATE signing_keys SET public_key = %s", (other.public_key.hex(),))


def _relink_snapshot(store: SmallStore) -> None:
    # A superuser who switches the append-only trigger off and re-points the chain.
    _owner(store, "ALTER TABLE invoice_snapshot DISABLE TRIGGER invoice_snapshot_no_update_delete")
    _owner(store, "UPDATE invoice_snapshot SET prev_snapshot_hash = repeat('0', 64) WHERE year_month = '2026-03'")
    _owner(store, "ALTER TABLE invoice_snapshot ENABLE TRIGGER invoice_snapshot_no_update_delete")


def _edit_migration(store: SmallStore) -> None:
    _owner(store, "UPDATE schema_migrations SET sha256 = repeat('a', 64) WHERE name = '0001_ledger'")


TAMPERING: list[tuple[str, Callable[[SmallStore], None], str, str, str | None]] = [
    ("ledger row edited as owner", _edit_ledger_row, "snapshots", "merkle_root_mismatch", "2026-03"),
    ("ledger row deleted as owner", _delete_ledger_row, "snapshots", "snapshot_counts_mismatch", "2026-03"),
    (
        "row left in an archived month edited",
        _edit_row_left_in_archived_month,
        "snapshots",
        "ledger_not_in_archive",
        "2026-02",
    ),
    ("archive byte changed", _flip_archive_byte, "archives", "archive_sha256_mismatch", "2026-01"),
    ("archive rewritten", _rewrite_archive, "archives", "archive_root_mismatch", "2026-01"),
    ("archive removed", _remove_archive, "archives", "archive_missing", "2026-02"),
    ("counter raised", _bump_counter, "counters", "counter_mismatch", "2026-03"),
    ("archived month's counter lowered", _bump_archived_counter, "counters", "counter_mismatch", "2026-01"),
    ("published key swapped", _swap_published_key, "signatures", "signature_invalid", "2026-01"),
    ("snapshot re-linked by a superuser", _relink_snapshot, "snapshot chains", "snapshot_chain_broken", "2026-03"),
    ("migration checksum edited", _edit_migration, "schema", "migration_checksum_mismatch", None),
]


@pytest.mark.parametrize(
    ("tamper", "check", "code", "year_month"),
    [t[1:] for t in TAMPERING],
    ids=[t[0] for t in TAMPERING],
)
def test_a_tampered_store_fails_with_a_named_reason(
    store: SmallStore,
    tmp_path: Path,
    tamper: Callable[[SmallStore], None],
    check: str,
    code: str,
    year_month: str | None,
) -> None:
    tamper(store)
    exit_code, output, evidence = _verify(store, tmp_path)
    assert exit_code == 1, output
    assert evidence["passed"] is False
    named = [f for f in evidence["failures"] if f["check"] == check and f["code"] == code]
    assert named, evidence["failures"]
    if year_month is not None:
        assert {(f["public_id"], f["year_month"]) for f in named} >= {("backup-test", year_month)}
    failed_rows = {c["name"] for c in evidence["checks"] if c["verdict"] == "FAIL"}
    assert check in failed_rows
    table_row = next(line for line in output.splitlines() if line.startswith(f"{check} "))
    assert "FAIL" in table_row and code in table_row
    assert any(line.startswith(f"FAIL {check}: {code}") for line in output.splitlines())

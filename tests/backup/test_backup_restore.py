"""`revkernel db backup` and `db restore`: a checked round trip, refused targets, refused backups."""

from __future__ import annotations

import hashlib
import json
import stat
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from kernel.cron.keystore import load_signing_key
from kernel.db import embedded, migrations
from kernel.db.connect import Database
from kernel.db.urls import role_conninfo
from kernel.settings import Settings
from tests.backup.support import SmallStore, cli_env, error_line, owner_rows, revkernel, tree

LEDGER = "SELECT * FROM ingest_idempotency ORDER BY site_id, idempotency_key"
SNAPSHOTS = "SELECT site_id, year_month, snapshot_hash, document, signature, key_id FROM invoice_snapshot ORDER BY 1, 2"


def _empty_database(pg_server: str) -> str:
    name = f"restore_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(role_conninfo(pg_server, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return role_conninfo(pg_server, dbname=name)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _counts(settings: Settings) -> dict[str, int]:
    from kernel.backup.queries import table_counts

    with Database(settings).connect("owner", autocommit=True) as conn:
        return table_counts(conn)


def test_backup_restore_into_an_empty_database_reproduces_the_store(
    store: SmallStore, pg_server: str, tmp_path: Path
) -> None:
    out = tmp_path / "backup"
    result = revkernel(["db", "backup", "--out", str(out), "--progress"], cli_env(store.settings))
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    source_counts = _counts(store.settings)
    assert manifest["tables"] == source_counts
    total = sum(source_counts.values())
    assert f"{total}/{total}" in result.stderr  # the progress bar reached every row
    # Every file the manifest lists is there with its hash; private to its owner.
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for entry in manifest["files"]:
        assert _sha256(out / entry["path"]) == entry["sha256"]
        assert (out / entry["path"]).stat().st_size == entry["size"]
        assert stat.S_IMODE((out / entry["path"]).stat().st_mode) == 0o600
    assert sorted(f["kind"] for f in manifest["files"]) == ["archive", "archive", "database"]
    assert manifest["signing_key"] == {"included": False, "key_id": None}
    assert not (out / "signing").exists()
    assert manifest["sites"] == [
        {
            "site_id": store.site_id,
            "public_id": "backup-test",
            "year_month": "2026-03",
            "snapshot_hash": owner_rows(
                store.settings, "SELECT snapshot_hash FROM invoice_snapshot WHERE year_month = '2026-03'"
            )[0][0],
        }
    ]
    assert [(a["year_month"], a["path"] is not None) for a in manifest["archives"]] == [
        ("2026-01", True),
        ("2026-02", True),
    ]

    target = Settings(database_url=_empty_database(pg_server), data_dir=tmp_path / "restored-data")
    restored = revkernel(["db", "restore", str(out)], cli_env(target))
    assert restored.exit_code == 0, restored.output
    assert "row counts, snapshot hashes and migration checksums match the manifest" in restored.output
    assert "the backup has no signing key" in restored.output

    # The restored ledger and evidence are the source's, row for row.
    assert owner_rows(target, LEDGER) == owner_rows(store.settings, LEDGER)
    assert owner_rows(target, SNAPSHOTS) == owner_rows(store.settings, SNAPSHOTS)
    restored_counts = _counts(target)
    assert restored_counts == {**source_counts, "audit_log": source_counts["audit_log"] + 1}
    assert owner_rows(target, "SELECT actor FROM audit_log WHERE action = 'db_restore'") == [("revkernel db restore",)]
    # The archives moved with the database, and ledger_archive points at their new place.
    for year_month, path in owner_rows(target, "SELECT year_month, file_path FROM ledger_archive ORDER BY 1"):
        assert Path(path) == tmp_path / "restored-data" / "archive" / store.site_id / f"{year_month}.csv.gz"
        original = owner_rows(
            store.settings, "SELECT file_path FROM ledger_archive WHERE year_month = %s", (year_month,)
        )[0][0]
        assert Path(path).read_bytes() == Path(original).read_bytes()
    # Migration checksums match the code; the roles and grants were applied to the copy.
    with Database(target).connect("owner") as conn:
        assert {s.state for s in migrations.status(conn)} == {"applied"}
    with Database(target).connect("app", autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE invoice_snapshot SET signature = signature")
        assert conn.execute("SELECT count(*) FROM ingest_idempotency").fetchone() is not None
    with (
        Database(target).connect("analyst", autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT * FROM api_keys")

    verified = revkernel(["verify", "--reports-dir", str(tmp_path / "reports")], cli_env(target))
    assert verified.exit_code == 0, verified.output
    assert "7 passed, 0 failed" in verified.output


def test_restore_into_a_fresh_embedded_data_directory(pristine_backup: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    env = cli_env(Settings(data_dir=data_dir), DATABASE_URL=None)
    try:
        restored = revkernel(["db", "restore", str(pristine_backup)], env)
        assert restored.exit_code == 0, restored.output
        assert f"embedded server in {data_dir / 'pg'}" in restored.output
        verified = revkernel(["verify", "--reports-dir", str(tmp_path / "reports"), "--json"], env)
        assert verified.exit_code == 0, verified.output
        body = json.loads(verified.stdout)
        assert body["passed"] is True
        assert body["figures"]["snapshots"] == 3 and body["figures"]["snapshots_from_archives"] == 2
        assert body["figures"]["archives"] == 2
        evidence = json.loads(Path(body["evidence"]).read_text())
        assert evidence["kind"] == "verify" and evidence["passed"] is True
    finally:
        embedded.stop(data_dir / "pg", mode="immediate")


def test_restore_refuses_a_database_that_is_not_empty(
    module_store: SmallStore, pristine_backup: Path, tmp_path: Path
) -> None:
    before = _counts(module_store.settings)
    # An empty data directory, so that the database is what refuses.
    target = Settings(database_url=module_store.settings.database_url, data_dir=tmp_path / "empty")
    result = revkernel(["db", "restore", str(pristine_backup)], cli_env(target))
    assert result.exit_code == 1
    assert error_line(result) == (
        "error: the target database is not empty: restore only into an empty database [restore_target_not_empty]"
    )
    assert _counts(module_store.settings) == before
    assert not (tmp_path / "empty").exists()


def test_restore_refuses_a_data_directory_that_already_holds_archives(
    module_store: SmallStore, pristine_backup: Path, pg_server: str
) -> None:
    # An empty database, but the store's own data directory: its archives would be overwritten.
    target = Settings(database_url=_empty_database(pg_server), data_dir=module_store.settings.data_dir)
    before = tree(module_store.settings.data_dir)
    result = revkernel(["db", "restore", str(pristine_backup)], cli_env(target))
    assert result.exit_code == 1
    assert error_line(result).endswith(
        "already holds archives: restore only into an empty data directory [restore_target_not_empty]"
    )
    assert tree(module_store.settings.data_dir) == before
    assert owner_rows(target, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == [(0,)]


def test_restore_refuses_a_data_directory_that_is_not_empty(pristine_backup: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "used"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("someone's files\n")
    result = revkernel(["db", "restore", str(pristine_backup)], cli_env(Settings(data_dir=data_dir), DATABASE_URL=None))
    assert result.exit_code == 1
    assert error_line(result).endswith("[restore_target_not_empty]")
    assert str(data_dir) in error_line(result)
    assert tree(data_dir) == {"notes.txt"}  # no server initialised, nothing written


def test_backup_refuses_a_directory_that_is_not_empty(module_store: SmallStore, tmp_path: Path) -> None:
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "old.txt").write_text("x")
    result = revkernel(["db", "backup", "--out", str(out)], cli_env(module_store.settings))
    assert result.exit_code == 1
    assert error_line(result).endswith("[backup_target_not_empty]")
    assert tree(out) == {"old.txt"}


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _archive_file(backup: Path) -> Path:
    return sorted((backup / "archive").rglob("*.csv.gz"))[0]


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        (lambda b: _flip_byte(b / "database.dump"), "file_hash_mismatch"),
        (lambda b: _flip_byte(_archive_file(b)), "file_hash_mismatch"),
        (lambda b: (b / "database.dump").unlink(), "file_missing"),
        (lambda b: _archive_file(b).unlink(), "file_missing"),
        (lambda b: (b / "manifest.json").unlink(), "manifest_missing"),
    ],
    ids=["dump byte changed", "archive byte changed", "dump missing", "archive missing", "manifest missing"],
)
def test_a_tampered_backup_is_refused_before_anything_is_written(
    backup_copy: Path, tmp_path: Path, damage: Any, code: str
) -> None:
    damage(backup_copy)
    data_dir = tmp_path / "target"
    before = tree(tmp_path)
    result = revkernel(["db", "restore", str(backup_copy)], cli_env(Settings(data_dir=data_dir), DATABASE_URL=None))
    assert result.exit_code == 1
    assert error_line(result).endswith(f"[{code}]")
    assert tree(tmp_path) == before
    assert not data_dir.exists()


def test_signing_key_only_when_asked_with_a_warning_and_0600(
    module_store: SmallStore, pg_server: str, tmp_path: Path
) -> None:
    out = tmp_path / "with-key"
    result = revkernel(["db", "backup", "--out", str(out), "--include-signing-key"], cli_env(module_store.settings))
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "signing key" in result.stderr
    key_file = out / "signing" / "ed25519.seed"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    manifest = json.loads((out / "manifest.json").read_text())
    source_key = load_signing_key(module_store.settings)
    assert manifest["signing_key"] == {"included": True, "key_id": source_key.key_id}
    # The key id is one of the published keys every snapshot was signed with.
    assert owner_rows(module_store.settings, "SELECT DISTINCT key_id FROM invoice_snapshot") == [(source_key.key_id,)]

    target = Settings(database_url=_empty_database(pg_server), data_dir=tmp_path / "restored")
    restored = revkernel(["db", "restore", str(out)], cli_env(target))
    assert restored.exit_code == 0, restored.output
    placed = tmp_path / "restored" / "signing" / "ed25519.seed"
    assert stat.S_IMODE(placed.stat().st_mode) == 0o600
    assert load_signing_key(target).key_id == source_key.key_id


def test_include_signing_key_without_a_key_is_a_clear_error(module_store: SmallStore, tmp_path: Path) -> None:
    keyless = Settings(database_url=module_store.settings.database_url, data_dir=tmp_path / "no-key-here")
    out = tmp_path / "bk"
    result = revkernel(["db", "backup", "--out", str(out), "--include-signing-key"], cli_env(keyless))
    assert result.exit_code == 1
    assert error_line(result).endswith("[signing_key_not_found]")
    assert tree(out) == set()  # no manifest, no half backup


def test_the_chaos_drill_step_passes_on_a_sound_store_and_fails_on_a_tampered_one(
    store: SmallStore, tmp_path: Path
) -> None:
    from kernel.backup.drill import DrillFailed, recovery_drill

    assert store.settings.database_url is not None
    detail = recovery_drill(store.settings.database_url, store.settings.data_dir, tmp_path / "sound")
    assert "restored into a fresh data directory; verify 7/7 passed" in detail
    assert not embedded.is_running(tmp_path / "sound" / "restored" / "pg")  # the drill stops its server

    with Database(store.settings).connect("owner", autocommit=True) as conn:
        conn.execute("UPDATE ingest_idempotency SET billing_state = 'OVERAGE' WHERE idempotency_key = '2026-03-000'")
    with pytest.raises(DrillFailed) as failed:
        recovery_drill(store.settings.database_url, store.settings.data_dir, tmp_path / "tampered")
    assert "merkle_root_mismatch" in failed.value.message

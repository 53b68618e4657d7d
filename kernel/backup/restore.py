"""``revkernel db restore DIR``: a checked backup into an empty data directory or an empty database.

Order, so that a refused restore writes nothing anywhere:

1. ``check_backup``: the manifest and every file (paths, links, sizes, SHA-256; see
   ``kernel.backup.manifest``).
2. The target is empty: with the embedded server, the data directory has no entries at all; with
   ``DATABASE_URL``, the database has no relations or functions outside the system schemas and
   the data directory holds no archive or signing key the backup would overwrite.
3. ``pg_restore --no-owner --no-privileges -f - | psql --single-transaction -v ON_ERROR_STOP=1``,
   the script made portable on the way (``PortableScript``): all of the dump or nothing.
   Objects belong to the restoring owner; the roles and grants are then re-applied from
   ``sql/roles.sql`` (roles are cluster-wide, a dump of one database has none).
4. The restored database is compared with the manifest: every migration applied with the code's
   checksum, every table's row count, every site's latest snapshot hash and every
   ``ledger_archive`` row. Any difference is an error (``restore_mismatch``).
5. The archives are copied into ``<data dir>/archive/`` (hashed again while copied) and
   ``ledger_archive.file_path`` is pointed at them; the signing key, when the backup has one, goes
   to ``<data dir>/signing/ed25519.seed`` (0600). One ``audit_log`` row records the restore.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel.backup import queries
from kernel.backup.manifest import SIGNING_KEY_FILE, CheckedBackup, check_backup
from kernel.backup.pgtools import PortableScript, libpq_invocation, run_with_progress, tool
from kernel.clock import SystemClock
from kernel.cron.cleanup import archive_path
from kernel.cron.keystore import SIGNING_KEY_ENV, signing_key_path
from kernel.db import migrations
from kernel.db.connect import Database, connect_url
from kernel.errors import Conflict, InputError, MigrationChecksumMismatch, MigrationError
from kernel.ledger import SigningKey
from kernel.settings import Settings

__all__ = ["RESTORE_APPLICATION_NAME", "RestoreResult", "restore_backup"]

RESTORE_APPLICATION_NAME = "revkernel-restore"
COPY_CHUNK_BYTES = 1024 * 1024
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


@dataclass
class RestoreResult:
    target: str
    backup: CheckedBackup
    tables: dict[str, int]
    archives_restored: int = 0
    signing_key_restored: bool = False
    pending_migrations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _refuse_target(message: str) -> Conflict:
    return Conflict(message, code="restore_target_not_empty")


def _check_target(settings: Settings, backup: CheckedBackup) -> None:
    """Refuse a target that is not empty before anything is started or written."""
    data_dir = settings.data_dir
    if settings.embedded:
        if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
            entries = ", ".join(sorted(p.name for p in data_dir.iterdir())[:5]) if data_dir.is_dir() else "a file"
            raise _refuse_target(f"data directory {data_dir} is not empty ({entries}): restore only into an empty one")
        return
    archive_dir = data_dir / "archive"
    if archive_dir.exists() and any(archive_dir.iterdir()):
        raise _refuse_target(f"{archive_dir} already holds archives: restore only into an empty data directory")
    if SIGNING_KEY_FILE in backup.files and signing_key_path(settings).exists():
        raise _refuse_target(f"{signing_key_path(settings)} already exists: the backup's key would replace it")


def _copy_checked(source: Path, target: Path, sha256: str) -> None:
    """Copy a backup file to its place, re-hashing it; never overwrite, never follow a link."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    digest = hashlib.sha256()
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise InputError(f"{source} is not a regular file", code="not_a_regular_file")
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), PRIVATE_FILE)
        with os.fdopen(out, "wb") as dst:
            while chunk := src.read(COPY_CHUNK_BYTES):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    if digest.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        raise InputError(f"{source} changed after it was checked", code="file_hash_mismatch")


def _compare(restored: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Differences between the restored database and what the manifest says was dumped."""
    differ: list[str] = []
    tables = {k: int(v) for k, v in manifest["tables"].items()}
    for name in sorted(set(tables) | set(restored["tables"])):
        want, got = tables.get(name), restored["tables"].get(name)
        if want != got:
            differ.append(f"table {name}: manifest {want} rows, restored {got}")
    want_sites = {str(s.get("site_id")): s.get("snapshot_hash") for s in manifest["sites"] if isinstance(s, dict)}
    got_sites = {str(s["site_id"]): s["snapshot_hash"] for s in restored["sites"]}
    if want_sites != got_sites:
        bad = sorted(k for k in set(want_sites) | set(got_sites) if want_sites.get(k) != got_sites.get(k))
        differ.append(f"latest snapshot hash differs for {len(bad)} site(s), e.g. {bad[0]}")
    keys = ("site_id", "year_month", "sha256", "row_count", "merkle_root")
    want_archives = sorted(tuple(a.get(k) for k in keys) for a in manifest["archives"])
    got_archives = sorted(tuple(a[k] for k in keys) for a in restored["archives"])
    if want_archives != got_archives:
        differ.append("ledger_archive rows differ from the manifest's archives")
    want_migrations = [(m.get("name"), m.get("sha256")) for m in manifest["migrations"] if isinstance(m, dict)]
    got_migrations = [(m["name"], m["sha256"]) for m in restored["migrations"]]
    if want_migrations != got_migrations:
        differ.append("schema_migrations differs from the manifest's migrations")
    return differ


def _restore_commands(pg_restore: Path, conninfo: str, dump: Path) -> tuple[list[str], list[str]]:
    """(pg_restore writing the script, psql running it in one transaction) for ``dump``.

    The script goes through ``PortableScript`` on its way (tool/server version differences), so
    the restore is ``pg_restore -f - | psql --single-transaction -v ON_ERROR_STOP=1``: all of it
    or nothing, on PostgreSQL 15 to 18 alike.
    """
    script = [str(pg_restore), "--no-owner", "--no-privileges", "--verbose", "--file=-", str(dump)]
    psql = [
        str(tool("psql")),
        "--no-psqlrc",
        "--quiet",
        "--single-transaction",
        "--set=ON_ERROR_STOP=1",
        f"--dbname={conninfo}",
    ]
    return script, psql


def restore_backup(
    settings: Settings,
    db: Database,
    backup_dir: Path,
    *,
    progress: Callable[[int, str, str], Any] | None = None,
) -> RestoreResult:
    """Check ``backup_dir`` and restore it into the (empty) configured store.

    Args:
        settings: The target: embedded data directory, or ``DATABASE_URL`` + data directory.
        db: The target database (the embedded server is initialised and started when needed).
        backup_dir: A directory written by ``backup_database``.
        progress: ``progress(total, unit, description)`` returns a tqdm-like bar, or None.

    Raises:
        InputError: the backup is refused (code of ``kernel.backup.manifest``).
        Conflict: the target is not empty (``restore_target_not_empty``).
        ToolFailed: pg_restore failed (the database is left as it was: one transaction).
        InputError: ``restore_mismatch``, the restored database is not what the manifest says.
    """
    pg_restore = tool("pg_restore")
    backup = check_backup(
        backup_dir, (lambda total: progress(total, "B", "checking backup")) if progress is not None else None
    )
    _check_target(settings, backup)
    owner = db.owner_conninfo()
    target = "DATABASE_URL" if not settings.embedded else f"embedded server in {settings.pg_data_dir}"
    with connect_url(owner, autocommit=True) as conn:
        if queries.user_objects(conn):
            raise _refuse_target("the target database is not empty: restore only into an empty database")
        version_row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    server_version_num = int(version_row[0]) if version_row else 0
    conninfo, env = libpq_invocation(owner, application_name=RESTORE_APPLICATION_NAME)
    tables = {k: int(v) for k, v in backup.manifest["tables"].items()}
    bar = progress(sum(tables.values()), "row", "pg_restore") if progress is not None else None
    command, piped = _restore_commands(pg_restore, conninfo, backup.database)
    try:
        run_with_progress(
            command,
            env,
            monitor_conninfo=owner,
            application_name=RESTORE_APPLICATION_NAME,
            table_rows=tables,
            bar=bar,
            pipe_to=piped,
            rewrite=PortableScript(target_server_version_num=server_version_num),
        )
    finally:
        if bar is not None:
            bar.close()

    result = RestoreResult(target=target, backup=backup, tables={})
    for problem in backup.manifest.get("damaged", []):
        result.notes.append(f"the backup recorded damage in its source store: {problem}")
    with connect_url(owner) as conn:
        migrations.apply_roles(conn)
        states = migrations.status(conn)
        modified = [s.name for s in states if s.state == "modified"]
        unknown = [s.name for s in states if s.state == "unknown"]
        if modified:
            raise MigrationChecksumMismatch(
                f"restored migration {modified[0]} has another checksum than this code's file", code="restore_mismatch"
            )
        if unknown:
            raise MigrationError(
                f"the backup has migrations this code does not know ({unknown[0]}…): restore with newer code",
                code="restore_mismatch",
            )
        result.pending_migrations = [s.name for s in states if s.state == "pending"]
        restored: dict[str, Any] = {
            "tables": queries.table_counts(conn),
            "sites": queries.latest_snapshots(conn),
            "archives": queries.archives(conn),
            "migrations": queries.migrations_applied(conn),
        }
        differ = _compare(restored, backup.manifest)
        if differ:
            raise InputError(f"restored database differs from the manifest: {differ[0]}", code="restore_mismatch")
        result.tables = restored["tables"]

        # The archives move with the database: same layout under the new data directory.
        for archive in backup.archives():
            if archive.get("path") is None:
                result.notes.append(
                    f"archive of site {archive['site_id']} {archive['year_month']} was missing from the backup"
                )
                continue
            place = archive_path(settings.data_dir, archive["site_id"], archive["year_month"])
            _copy_checked(backup.root / archive["path"], place, backup.files[archive["path"]].sha256)
            with conn.transaction():
                conn.execute(
                    "UPDATE ledger_archive SET file_path = %s WHERE site_id = %s AND year_month = %s",
                    (str(place), archive["site_id"], archive["year_month"]),
                )
            result.archives_restored += 1

        key_entry = backup.files.get(SIGNING_KEY_FILE)
        if key_entry is not None:
            _restore_signing_key(settings, backup, key_entry.sha256)
            result.signing_key_restored = True
            if settings.extra.get(SIGNING_KEY_ENV, "").strip():
                result.notes.append(f"{SIGNING_KEY_ENV} is set: it wins over the restored key file")
        else:
            result.notes.append(
                f"the backup has no signing key: put it at {signing_key_path(settings)} (mode 0600) or set "
                f"{SIGNING_KEY_ENV} before the next freeze; old snapshots verify with the published keys either way"
            )
        with conn.transaction():
            conn.execute(
                "INSERT INTO audit_log (at, actor, action, details)"
                " VALUES (%s, 'revkernel db restore', 'db_restore', %s)",
                (
                    SystemClock().now(),
                    json.dumps(
                        {
                            "backup_created_at": backup.manifest.get("created_at"),
                            "source": backup.manifest.get("source"),
                            "files": len(backup.files),
                            "archives": result.archives_restored,
                        },
                        sort_keys=True,
                        default=str,
                    ),
                ),
            )
    return result


def _restore_signing_key(settings: Settings, backup: CheckedBackup, sha256: str) -> None:
    text = (backup.root / SIGNING_KEY_FILE).read_text(encoding="ascii").strip()
    try:
        key = SigningKey.from_seed(bytes.fromhex(text))
    except ValueError as exc:
        raise InputError(
            "the backup's signing key is not a 64-hex-character Ed25519 seed", code="signing_key_invalid"
        ) from exc
    declared = backup.manifest.get("signing_key", {}).get("key_id")
    if declared != key.key_id:
        raise InputError(
            f"the backup's signing key has key id {key.key_id}, its manifest says {declared}",
            code="signing_key_invalid",
        )
    place = signing_key_path(settings)
    place.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    _copy_checked(backup.root / SIGNING_KEY_FILE, place, sha256)

"""``revkernel db backup``: one consistent backup of the store of record, safe while the service runs.

How (and why a logical dump, not a base backup): one owner connection opens a REPEATABLE READ,
read-only transaction and exports its snapshot (``pg_export_snapshot``). ``pg_dump
--format=custom --snapshot=…`` dumps exactly that snapshot, and the manifest's row counts,
migrations, latest snapshot hashes and archive list are read in the same transaction, so they
describe the dump's contents to the row, however much the service ingests meanwhile. A base
backup (``pg_basebackup``) copies the whole cluster at the binary level: it needs a replication
connection, can only be restored into the same PostgreSQL major version, and brings every other
database of the cluster along; the custom format dumps one database, restores into PostgreSQL 15
or newer (embedded or ``DATABASE_URL``), is compressed, and ``pg_restore`` can list and check it.
Point-in-time recovery is a server feature and is documented for ``DATABASE_URL`` deployments
(README, "Backup, restore and verify").

Then the ledger archives listed in ``ledger_archive`` (as seen by that snapshot) are copied and
hashed; one that is missing or does not match its recorded SHA-256 is copied as it is and named
in the manifest's ``damaged`` list, and the command fails loudly: a backup reproduces the store,
damage included, and ``revkernel verify`` names it. The signing key stays out unless asked for.
The manifest is written last (see ``kernel.backup.manifest``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from kernel.backup import queries
from kernel.backup.manifest import (
    DATABASE_FILE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    SIGNING_KEY_FILE,
    BackupFile,
    archive_member,
    file_sha256,
)
from kernel.backup.pgtools import libpq_invocation, run_with_progress, tool, tool_version
from kernel.clock import SystemClock, format_utc
from kernel.cron.keystore import SIGNING_KEY_ENV, load_signing_key, signing_key_path
from kernel.db.connect import Database, connect_url
from kernel.errors import Conflict, InputError
from kernel.ledger import SigningKey
from kernel.settings import Settings

__all__ = ["BACKUP_APPLICATION_NAME", "BackupResult", "backup_database"]

BACKUP_APPLICATION_NAME = "revkernel-backup"
COPY_CHUNK_BYTES = 1024 * 1024
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


@dataclass
class BackupResult:
    """What a backup wrote: its directory, the manifest, and what it found damaged."""

    out_dir: Path
    manifest: dict[str, Any]
    damaged: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(int(n) for n in self.manifest["tables"].values())

    @property
    def total_bytes(self) -> int:
        return sum(int(f["size"]) for f in self.manifest["files"])


def _prepare_out(out_dir: Path) -> Path:
    out_dir = out_dir.expanduser().absolute()
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir() or out_dir.is_symlink():
            raise InputError(f"{out_dir} exists and is not a directory", code="backup_target_invalid")
        if any(out_dir.iterdir()):
            raise Conflict(
                f"{out_dir} is not empty: back up into a new or empty directory", code="backup_target_not_empty"
            )
    out_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    # A backup holds the whole ledger and the hashed credentials: private to its owner.
    os.chmod(out_dir, PRIVATE_DIR)
    return out_dir


def _copy_hashing(source: Path, target: Path) -> tuple[str, int]:
    """Copy a file and return (SHA-256, size) of the bytes actually written."""
    import hashlib

    target.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    digest = hashlib.sha256()
    size = 0
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise OSError(f"{source} is not a regular file")
        out_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        with os.fdopen(out_fd, "wb") as dst:
            while chunk := src.read(COPY_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    return digest.hexdigest(), size


def _copy_archives(
    rows: list[dict[str, Any]], out_dir: Path, damaged: list[str]
) -> tuple[list[dict[str, Any]], list[BackupFile]]:
    entries: list[dict[str, Any]] = []
    files: list[BackupFile] = []
    for row in rows:
        member = archive_member(row["site_id"], row["year_month"])
        label = f"archive of site {row['site_id']} {row['year_month']}"
        entry = {k: row[k] for k in ("site_id", "year_month", "sha256", "row_count", "merkle_root")}
        try:
            digest, size = _copy_hashing(Path(row["file_path"]), out_dir / member)
        except FileNotFoundError:
            damaged.append(f"archive_missing: {label} is not at {row['file_path']}")
            entries.append({**entry, "path": None})
            continue
        except OSError as exc:
            damaged.append(f"archive_unreadable: {label}: {exc}")
            entries.append({**entry, "path": None})
            continue
        if digest != row["sha256"]:
            damaged.append(
                f"archive_sha256_mismatch: {label} ({row['file_path']}) does not match ledger_archive.sha256"
            )
        entries.append({**entry, "path": member})
        files.append(BackupFile(member, "archive", size, digest))
    return entries, files


def _signing_key(settings: Settings) -> SigningKey:
    """The deployment's signing key, for --include-signing-key; never creates one."""
    env_key = settings.extra.get(SIGNING_KEY_ENV, "").strip()
    if not env_key and not signing_key_path(settings).exists():
        raise InputError(
            f"no signing key to include: {SIGNING_KEY_ENV} is unset and {signing_key_path(settings)} does not exist",
            code="signing_key_not_found",
        )
    return load_signing_key(settings)  # validates the seed; it exists, so nothing is created


def _write_signing_key(key: SigningKey, out_dir: Path) -> BackupFile:
    target = out_dir / SIGNING_KEY_FILE
    target.parent.mkdir(mode=PRIVATE_DIR, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key.seed.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    digest, size = file_sha256(target)
    return BackupFile(SIGNING_KEY_FILE, "signing_key", size, digest)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_database(
    settings: Settings,
    db: Database,
    out_dir: Path,
    *,
    include_signing_key: bool = False,
    progress: Callable[[int, str, str], Any] | None = None,
) -> BackupResult:
    """Write one consistent backup of the kernel's database, archives and manifest to ``out_dir``.

    Args:
        settings: Where the store is (embedded data directory or ``DATABASE_URL``).
        db: The resolved database (the embedded server is started if needed).
        out_dir: A new or empty directory.
        include_signing_key: Also copy the snapshot signing key (mode 0600).
        progress: ``progress(total, unit, description)`` returns a tqdm-like bar, or None.

    Raises:
        Conflict: ``out_dir`` is not empty.
        ToolFailed: pg_dump failed.
    """
    pg_dump = tool("pg_dump")
    dump_version = tool_version("pg_dump")
    key = _signing_key(settings) if include_signing_key else None  # refused before any work
    owner = db.owner_conninfo()
    out_dir = _prepare_out(out_dir)
    damaged: list[str] = []
    files: list[BackupFile] = []
    app_name = f"{BACKUP_APPLICATION_NAME}-{secrets.token_hex(4)}"
    try:
        with connect_url(owner, application_name=BACKUP_APPLICATION_NAME) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                row = conn.execute(
                    "SELECT pg_export_snapshot(), now(), pg_current_snapshot()::text,"
                    " current_setting('server_version'), current_database()"
                ).fetchone()
                assert row is not None
                snapshot_id, taken_at, txid_snapshot, server_version, database = row
                tables = queries.table_counts(conn)
                sites = queries.latest_snapshots(conn)
                archive_rows = queries.archives(conn)
                applied = queries.migrations_applied(conn)
                conninfo, env = libpq_invocation(owner, application_name=app_name)
                dump_path = out_dir / DATABASE_FILE
                args = [
                    str(pg_dump),
                    "--format=custom",
                    f"--snapshot={snapshot_id}",
                    f"--file={dump_path}",
                    "--verbose",
                    f"--dbname={conninfo}",
                ]
                bar = progress(sum(tables.values()), "row", "pg_dump") if progress is not None else None
                try:
                    run_with_progress(
                        args, env, monitor_conninfo=owner, application_name=app_name, table_rows=tables, bar=bar
                    )
                finally:
                    if bar is not None:
                        bar.close()
                # The exported snapshot stays valid until this transaction ends: pg_dump has it now.
            os.chmod(dump_path, PRIVATE_FILE)
            digest, size = file_sha256(dump_path)
            files.append(BackupFile(DATABASE_FILE, "database", size, digest))
            archives, archive_files = _copy_archives(archive_rows, out_dir, damaged)
            files.extend(archive_files)
            if key is not None:
                files.append(_write_signing_key(key, out_dir))
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": format_utc(taken_at),
            "finished_at": format_utc(SystemClock().now()),
            "method": "pg_dump --format=custom",
            "source": {
                "mode": "embedded" if settings.embedded else "database_url",
                "database": database,
                "server_version": server_version,
                "pg_dump_version": dump_version,
                "snapshot": txid_snapshot,
            },
            "migrations": applied,
            "tables": tables,
            "sites": sites,
            "archives": archives,
            "signing_key": {"included": key is not None, "key_id": key.key_id if key is not None else None},
            "damaged": damaged,
            "files": [f.to_json() for f in files],
        }
        tmp = out_dir / f".{MANIFEST_FILE}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out_dir / MANIFEST_FILE)
        _fsync_dir(out_dir)
    except BaseException:
        # No manifest, no backup: never leave a half-written directory that looks like one.
        for child in out_dir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        raise
    return BackupResult(out_dir, manifest, damaged)

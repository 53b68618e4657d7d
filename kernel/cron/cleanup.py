"""Idempotency cleanup (SPEC §4.2): delete old ledger rows only when the invoice is safe elsewhere.

A row may go only when all of these hold:

1. it is older than ``RETENTION`` (90 days, by server ``created_at``);
2. its site-month is frozen (``invoice_snapshot``) and not under an active ``dispute_holds`` row;
3. the site-month was archived first: every row of it written to
   ``<data_dir>/archive/<site_id>/<year_month>.csv.gz`` (the dispute CSV columns, leaf order),
   the file's SHA-256 recorded in ``ledger_archive``, and the Merkle root recomputed *from the
   file* equal to the snapshot's. Before each deletion the file is re-hashed and compared again.

At most ``CLEANUP_MAX_ROWS_PER_RUN`` rows go per run (a big backlog takes several runs).
``dry_run`` writes and deletes nothing and lists what would go (its ``cron_runs`` row is the only
trace); every archive and every deletion writes ``audit_log``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from kernel.cron.runs import CronContext, CronResult
from kernel.export.csv import EXPORT_COLUMNS, EXPORT_HEADER, ExportTally, export_copy_statement

__all__ = [
    "ARCHIVE_COLUMNS",
    "CLEANUP_MAX_ROWS_PER_RUN",
    "RETENTION",
    "archive_path",
    "archive_root",
    "cleanup",
]

_log = logging.getLogger("kernel.cron.cleanup")

RETENTION = timedelta(days=90)
CLEANUP_MAX_ROWS_PER_RUN = 10_000
# The archive is the dispute CSV, gzipped: one statement writes both (formula neutralisation
# included) and one reader (``ExportTally``, which restores the cells) checks both.
ARCHIVE_COLUMNS = EXPORT_COLUMNS
ARCHIVE_READ_CHUNK_BYTES = 1024 * 1024


@dataclass
class MonthPlan:
    site_id: str
    year_month: str
    merkle_root: str
    expired_rows: int
    archived: bool

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def archive_path(data_dir: Path, site_id: str, year_month: str) -> Path:
    return data_dir / "archive" / site_id / f"{year_month}.csv.gz"


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def archive_root(path: Path) -> tuple[str, int]:
    """(Merkle root hex, row count) recomputed from an archive file's billable rows, streamed."""
    tally = ExportTally()
    with gzip.open(path, "rb") as handle:
        while chunk := handle.read(ARCHIVE_READ_CHUNK_BYTES):
            tally.feed(chunk)
    digest = tally.close()
    if not digest.header_ok or digest.format_problem_count or digest.limit_problem:
        problem = digest.limit_problem or (digest.format_problems or ("unexpected columns",))[0]
        raise ValueError(f"archive {path} is not a dispute CSV: {problem}")
    return digest.merkle_root, digest.row_count


def _write_archive(conn: psycopg.Connection[Any], path: Path, site_id: str, year_month: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # mtime=0 and no file name in the header: the same rows always give the same bytes.
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(EXPORT_HEADER)
        with conn.cursor().copy(export_copy_statement(), (site_id, year_month)) as copy:
            for chunk in copy:
                gz.write(bytes(chunk))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _ensure_archive(ctx: CronContext, conn: psycopg.Connection[Any], plan: MonthPlan) -> str:
    """Archive the site-month if needed and prove the archive; returns its path.

    Raises:
        ValueError: the archive is missing, altered, or does not reproduce the snapshot's root.
    """
    row = conn.execute(
        "SELECT file_path, sha256, merkle_root FROM ledger_archive WHERE site_id = %s AND year_month = %s",
        (plan.site_id, plan.year_month),
    ).fetchone()
    if row is None:
        path = archive_path(ctx.settings.data_dir, plan.site_id, plan.year_month)
        # One COPY statement is one snapshot; rows only ever leave a frozen month through this cron,
        # which holds its lock, so the file and the later deletions see the same rows.
        with conn.transaction():
            _write_archive(conn, path, plan.site_id, plan.year_month)
        root, count = archive_root(path)
        if root != plan.merkle_root:
            path.unlink(missing_ok=True)
            raise ValueError(
                f"archive of site {plan.site_id} {plan.year_month} gives root {root}, snapshot says {plan.merkle_root}"
            )
        digest = _file_sha256(path)
        now = ctx.clock.now()
        with conn.transaction():
            conn.execute(
                "INSERT INTO ledger_archive (site_id, year_month, file_path, sha256, row_count, merkle_root,"
                " archived_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (plan.site_id, plan.year_month, str(path), digest, count, root, now),
            )
            conn.execute(
                "INSERT INTO audit_log (at, actor, action, site_id, year_month, details)"
                " VALUES (%s, %s, 'ledger_archive', %s, %s, %s)",
                (
                    now,
                    ctx.actor,
                    plan.site_id,
                    plan.year_month,
                    json.dumps({"file": str(path), "sha256": digest, "rows": count, "merkle_root": root}),
                ),
            )
        return str(path)
    path_text, digest, root = row
    path = Path(path_text)
    if not path.exists():
        raise ValueError(f"archive file {path} of site {plan.site_id} {plan.year_month} is missing")
    if _file_sha256(path) != digest:
        raise ValueError(f"archive file {path} does not match its recorded sha256")
    if root != plan.merkle_root or archive_root(path)[0] != plan.merkle_root:
        raise ValueError(f"archive file {path} does not reproduce the snapshot's Merkle root")
    return str(path)


def _plans(conn: psycopg.Connection[Any], cutoff: Any, now_month: str) -> list[MonthPlan]:
    rows = conn.execute(
        """
        SELECT s.site_id::text, s.year_month, s.merkle_root,
               (SELECT count(*) FROM ingest_idempotency i
                WHERE i.site_id = s.site_id AND i.year_month = s.year_month AND i.created_at < %(cutoff)s),
               EXISTS (SELECT 1 FROM ledger_archive a WHERE a.site_id = s.site_id AND a.year_month = s.year_month)
        FROM invoice_snapshot s
        WHERE s.year_month < %(now_month)s
          AND NOT EXISTS (SELECT 1 FROM dispute_holds h
                          WHERE h.site_id = s.site_id AND h.year_month = s.year_month AND h.released_at IS NULL)
        ORDER BY s.year_month, s.site_id
        """,
        {"cutoff": cutoff, "now_month": now_month},
    ).fetchall()
    return [MonthPlan(str(r[0]), str(r[1]), str(r[2]), int(r[3]), bool(r[4])) for r in rows if int(r[3]) > 0]


def cleanup(ctx: CronContext, dry_run: bool = False, max_rows: int = CLEANUP_MAX_ROWS_PER_RUN) -> CronResult:
    """Delete up to ``max_rows`` expired ledger rows of archived, frozen, unheld months.

    Body: ``{"ok", "dry_run", "deleted", "would_delete", "archived", "months": [...]}``; ``ok`` is
    false when a month could not be archived or proven (its rows stay).
    """
    now = ctx.clock.now()
    cutoff = now - RETENTION
    deleted = archived = 0
    would_delete = 0
    months: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    with ctx.db.connect("app", autocommit=True) as conn:
        for plan in _plans(conn, cutoff, now.strftime("%Y-%m")):
            budget = max_rows - (would_delete if dry_run else deleted)
            if budget <= 0:
                break
            take = min(budget, plan.expired_rows)
            entry = {**plan.to_json(), "rows": take}
            if dry_run:
                would_delete += take
                months.append(entry)
                continue
            try:
                was_archived = plan.archived
                entry["archive"] = _ensure_archive(ctx, conn, plan)
                archived += 0 if was_archived else 1
            except (ValueError, OSError, psycopg.Error) as exc:
                label = f"{plan.site_id}/{plan.year_month}"
                errors[label] = str(exc)
                _log.error("cleanup skipped %s: %s", label, exc)
                continue
            with conn.transaction():
                cur = conn.execute(
                    """
                    DELETE FROM ingest_idempotency
                    WHERE (site_id, idempotency_key) IN (
                        SELECT site_id, idempotency_key FROM ingest_idempotency
                        WHERE site_id = %s AND year_month = %s AND created_at < %s
                        ORDER BY created_at, idempotency_key COLLATE "C"
                        LIMIT %s)
                    """,
                    (plan.site_id, plan.year_month, cutoff, take),
                )
                entry["rows"] = cur.rowcount
                deleted += cur.rowcount
                conn.execute(
                    "INSERT INTO audit_log (at, actor, action, site_id, year_month, details)"
                    " VALUES (%s, %s, 'idempotency_cleanup', %s, %s, %s)",
                    (
                        now,
                        ctx.actor,
                        plan.site_id,
                        plan.year_month,
                        json.dumps(
                            {"deleted": cur.rowcount, "cutoff": cutoff.isoformat(), "archive": entry["archive"]}
                        ),
                    ),
                )
            months.append(entry)
    body: CronResult = {
        "ok": not errors,
        "dry_run": dry_run,
        "deleted": deleted,
        "would_delete": would_delete if dry_run else deleted,
        "archived": archived,
        "cutoff": cutoff.isoformat(),
        "months": months,
    }
    if errors:
        body.update(error="some months could not be archived or proven; their rows stay", errors=errors)
    return body

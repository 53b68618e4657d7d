"""The recovery drill in one call: back up a live store, restore it into a fresh embedded data
directory, and verify the copy (``make chaos`` runs it on the store it has just shaken)."""

from __future__ import annotations

from pathlib import Path

from kernel.audit.connect import connect_analyst
from kernel.audit.store import verify_store
from kernel.backup.backup import backup_database
from kernel.backup.restore import restore_backup
from kernel.clock import SystemClock
from kernel.db import embedded
from kernel.db.connect import Database
from kernel.errors import KernelError
from kernel.settings import Settings

__all__ = ["DrillFailed", "recovery_drill"]

QUOTED_FAILURES = 3


class DrillFailed(KernelError):
    """The restored copy did not verify, or is not what was backed up."""

    code = "recovery_drill_failed"


def recovery_drill(owner_conninfo: str, source_data_dir: Path, work_dir: Path) -> str:
    """Back up ``owner_conninfo`` (its archives under ``source_data_dir``) into ``work_dir``,
    restore into a fresh embedded server there, run ``verify_store`` on the copy; stop that server.

    Returns:
        One line of figures for a pass/fail table.

    Raises:
        DrillFailed: the copy does not verify; any error of backup or restore as raised.
    """
    source = Settings(database_url=owner_conninfo, data_dir=source_data_dir)
    backup = backup_database(source, Database(source), work_dir / "backup")
    target = Settings(data_dir=work_dir / "restored")
    try:
        restored = restore_backup(target, Database(target), backup.out_dir)
        with connect_analyst(settings=target) as conn:
            report = verify_store(conn, clock=SystemClock())
    finally:
        embedded.stop(target.pg_data_dir, mode="immediate")
    if not report.passed:
        quoted = "; ".join(f.line() for f in report.failures[:QUOTED_FAILURES])
        raise DrillFailed(f"the restored copy fails verify: {quoted}")
    ledger = restored.tables.get("ingest_idempotency", 0)
    return (
        f"backup of {backup.total_rows} rows ({ledger} ledger rows, {len(backup.manifest['files'])} files) "
        f"restored into a fresh data directory; verify {len(report.results)}/{len(report.results)} passed"
    )

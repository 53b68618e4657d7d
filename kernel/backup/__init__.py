"""Backup and restore of the store of record: the database, the ledger archives, a manifest.

``backup_database`` writes one consistent, checkable backup while the service runs;
``check_backup`` refuses a damaged or hostile backup directory before anything is written;
``restore_backup`` puts a checked backup into an empty data directory or an empty database.
The whole-store check that follows a restore is ``kernel.audit.store.verify_store``.
"""

from __future__ import annotations

from kernel.backup.backup import BACKUP_APPLICATION_NAME, BackupResult, backup_database
from kernel.backup.manifest import CheckedBackup, check_backup
from kernel.backup.restore import RestoreResult, restore_backup

__all__ = [
    "BACKUP_APPLICATION_NAME",
    "BackupResult",
    "CheckedBackup",
    "RestoreResult",
    "backup_database",
    "check_backup",
    "restore_backup",
]

"""Fixtures for backup, restore and verify: a small store, and one backup of it per module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kernel.settings import Settings
from tests.backup.support import SmallStore, build_store, cli_env, revkernel
from tests.conftest import TEST_CRON_SECRET, clone_database


@pytest.fixture
def store(settings: Settings) -> SmallStore:
    """A fresh small store (see ``tests.backup.support``) for a test that changes it."""
    return build_store(settings)


@pytest.fixture(scope="module")
def module_store(pg_server: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> SmallStore:
    """One small store shared by the tests of a module that only read it."""
    data_dir = tmp_path_factory.mktemp("store") / "data"
    settings = Settings(
        database_url=clone_database(pg_server, template_db),
        data_dir=data_dir,
        cron_secret=TEST_CRON_SECRET,
        commit="testcommit",
    )
    return build_store(settings)


@pytest.fixture(scope="module")
def pristine_backup(module_store: SmallStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backup of ``module_store`` written by `revkernel db backup` (never modify it: copy it)."""
    out = tmp_path_factory.mktemp("backups") / "pristine"
    result = revkernel(["db", "backup", "--out", str(out)], cli_env(module_store.settings))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def backup_copy(pristine_backup: Path, tmp_path: Path) -> Path:
    """A private copy of the module's backup, for a test to damage."""
    copy = tmp_path / "backup"
    shutil.copytree(pristine_backup, copy, symlinks=True)
    return copy

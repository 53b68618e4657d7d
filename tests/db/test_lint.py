"""The migration lint rejects destructive migrations and passes the project's own."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kernel.cli import main
from kernel.db import migrations
from kernel.db.lint import lint_files, project_rules


def test_project_migrations_pass_the_lint() -> None:
    assert lint_files([m.path for m in migrations.discover()]) == []


@pytest.mark.parametrize(
    ("statement", "rule"),
    [
        ("ALTER TABLE sites DROP COLUMN name;", "no-drop"),
        ("DROP TABLE audit_log;", "no-drop"),
        ("TRUNCATE ingest_idempotency;", "no-truncate"),
        ("ALTER TABLE sites ALTER COLUMN name TYPE varchar(20);", "no-type-rewrite"),
        ("ALTER TYPE billing_state RENAME VALUE 'OVERAGE' TO 'OVER';", "no-enum-value-removal"),
        ("ALTER TABLE sites ADD COLUMN region text NOT NULL;", "no-required-column"),
        ("ALTER TABLE sites ALTER COLUMN name SET NOT NULL;", "no-set-not-null"),
        ("ALTER TABLE sites RENAME COLUMN name TO title;", "no-rename"),
    ],
)
def test_destructive_migration_is_rejected(tmp_path: Path, statement: str, rule: str) -> None:
    path = tmp_path / "0099_bad.sql"
    path.write_text(f"-- a change someone tried\n{statement}\n")
    assert rule in {p.rule for p in project_rules(path)}
    problems = lint_files([path])
    assert any(p.rule == rule for p in problems)
    result = CliRunner().invoke(main, ["db", "lint", str(path)])
    assert result.exit_code == 1 and "migration lint problem" in result.stderr


def test_additive_migration_passes(tmp_path: Path) -> None:
    path = tmp_path / "0099_good.sql"
    path.write_text(
        "SET lock_timeout = '5s';\nSET statement_timeout = '1min';\n"
        "ALTER TABLE sites ADD COLUMN region text NOT NULL DEFAULT 'eu';\n"
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL);\n"
        "ALTER TABLE notes ADD COLUMN author text NOT NULL;\n"
    )
    assert project_rules(path) == []

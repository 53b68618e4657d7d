"""`DATABASE_URL` on an older server: the embedded PostgreSQL 18 tools against a PostgreSQL 15.

The test starts a PostgreSQL of its own from the machine's older server binaries
(``/usr/lib/postgresql/<15|16>/bin``) on a free port of 127.0.0.1, never the machine's 5432, and
stops it afterwards. pg_dump 18 dumps it; the restore goes back into it (pg_restore 18's
``transaction_timeout`` preamble must not break it) and into the embedded 18.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from kernel.backup.pgtools import ToolFailed, run_with_progress, tool
from kernel.db import embedded, migrations
from kernel.settings import Settings
from tests.backup.support import build_store, cli_env, revkernel
from tests.conftest import free_port

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 60


def _older_server_bin() -> Path | None:
    for major in ("15", "16"):
        candidate = Path(f"/usr/lib/postgresql/{major}/bin")
        if (candidate / "postgres").is_file() and (candidate / "initdb").is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def old_server() -> Iterator[str]:
    """Owner conninfo (database ``postgres``) of a private PostgreSQL 15/16 on a free port."""
    bin_dir = _older_server_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL 15/16 server binaries in /usr/lib/postgresql (apt-get install postgresql-15)")
    # Not under pytest's 0700 temp tree: the server's own user must reach its directory.
    root = Path(tempfile.mkdtemp(prefix="revkernel-pg-old-"))
    data, port = root / "data", free_port()
    user = None
    if os.geteuid() == 0:  # initdb refuses root: run the server as the Debian package's user
        user = "postgres"
        pwd.getpwnam(user)
        shutil.chown(root, user)

    def run(*args: str) -> None:
        subprocess.run(list(args), check=True, capture_output=True, timeout=START_TIMEOUT_S, user=user)

    run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _database(server: str) -> str:
    name = f"v_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{server.rsplit('dbname=', 1)[0]}dbname={name}"


def test_backup_of_an_older_server_restores_into_it_and_into_the_embedded_one(old_server: str, tmp_path: Path) -> None:
    with psycopg.connect(old_server) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
    assert version is not None and int(version[0]) < 170000
    source = Settings(database_url=_database(old_server), data_dir=tmp_path / "src-data", cron_secret="x" * 24)
    with psycopg.connect(source.database_url or "") as conn:
        migrations.migrate(conn)
    build_store(source)
    out = tmp_path / "backup"
    made = revkernel(["db", "backup", "--out", str(out)], cli_env(source))
    assert made.exit_code == 0, made.output

    same = Settings(database_url=_database(old_server), data_dir=tmp_path / "same-data")
    restored = revkernel(["db", "restore", str(out)], cli_env(same))
    assert restored.exit_code == 0, restored.output
    verified = revkernel(["verify", "--reports-dir", str(tmp_path / "reports")], cli_env(same))
    assert verified.exit_code == 0, verified.output

    fresh = tmp_path / "embedded-data"
    try:
        into_18 = revkernel(["db", "restore", str(out)], cli_env(Settings(data_dir=fresh), DATABASE_URL=None))
        assert into_18.exit_code == 0, into_18.output
        verified = revkernel(
            ["verify", "--reports-dir", str(tmp_path / "reports")], cli_env(Settings(data_dir=fresh), DATABASE_URL=None)
        )
        assert verified.exit_code == 0, verified.output
    finally:
        embedded.stop(fresh / "pg", mode="immediate")


def test_a_script_cut_short_is_rolled_back_not_committed(old_server: str) -> None:
    # The psql path commits at the end of its input: a source that dies half-way must not commit.
    target = _database(old_server)
    half_script = [
        "sh",
        "-c",
        "echo 'CREATE TABLE half_restored (x int);'; echo 'INSERT INTO half_restored VALUES (1);'; exit 3",
    ]
    psql = [
        str(tool("psql")),
        "--no-psqlrc",
        "--quiet",
        "--single-transaction",
        "--set=ON_ERROR_STOP=1",
        f"--dbname={target}",
    ]
    with pytest.raises(ToolFailed, match="exit 3"):
        run_with_progress(
            half_script,
            dict(os.environ),
            monitor_conninfo=target,
            application_name="t",
            table_rows={},
            bar=None,
            pipe_to=psql,
        )
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT to_regclass('public.half_restored')").fetchone() == (None,)

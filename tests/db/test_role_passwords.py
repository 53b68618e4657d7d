"""Role passwords (issue 12 §2): a role URL derived from DATABASE_URL never forces an empty password.

A PostgreSQL of the test's own requires a password (scram-sha-256) from the app role, as a
production server would. The derived app-role URL carries no password at all, so libpq finds the
role's own (here ``PGPASSWORD``; ``~/.pgpass`` works the same way); ``APP_DATABASE_URL`` carries
it explicitly; with neither the connection fails with one readable line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from kernel.db import embedded, migrations
from kernel.db.connect import Database
from kernel.db.urls import as_uri, role_conninfo
from kernel.errors import DatabaseUnavailable
from kernel.settings import Settings

PASSWORD = "app-s3cret-'quoted'"


@pytest.fixture(scope="module")
def password_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Owner conninfo of a private server that makes revkernel_app authenticate with a password."""
    data_dir = tmp_path_factory.mktemp("pwpg") / "pg"
    server = embedded.start(data_dir)
    try:
        owner = role_conninfo(server, dbname="postgres")
        with psycopg.connect(owner, autocommit=True) as conn:
            migrations.migrate(conn)
            conn.execute(f"ALTER ROLE revkernel_app PASSWORD '{PASSWORD.replace(chr(39), chr(39) * 2)}'")
            hba = Path(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
            hba.write_text("local all revkernel_app scram-sha-256\n" + hba.read_text())
            conn.execute("SELECT pg_reload_conf()")
        yield owner
    finally:
        embedded.stop(data_dir, mode="immediate")


def test_derived_role_url_drops_the_owners_password() -> None:
    derived = conninfo_to_dict(role_conninfo("host=db user=owner password=ownerpw dbname=rk", user="revkernel_app"))
    assert derived["user"] == "revkernel_app" and "password" not in derived


def test_app_role_password_from_the_environment(
    password_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(Settings(database_url=password_server, data_dir=tmp_path))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    with pytest.raises(DatabaseUnavailable, match="password"):
        db.connect("app").close()
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    with db.connect("app") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("revkernel_app",)


def test_app_role_password_from_app_database_url(
    password_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    params = conninfo_to_dict(password_server)
    app_url = as_uri(role_conninfo(password_server, user="revkernel_app")).replace(
        "revkernel_app@", f"revkernel_app:{quote(PASSWORD, safe='')}@"
    )
    settings = Settings.from_env({"DATABASE_URL": password_server, "APP_DATABASE_URL": app_url})
    with Database(settings).connect("app") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("revkernel_app",)
    assert params.get("password", "") == ""  # the owner's own URL is untouched

"""Connection strings: the owner (migrations), the app role and the read-only analyst role."""

from __future__ import annotations

from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kernel.settings import Settings

__all__ = ["as_uri", "role_conninfo"]


def role_conninfo(owner_conninfo: str, *, user: str | None = None, dbname: str | None = None) -> str:
    """The owner's connection string with another user and/or database (same host, port).

    For another user the owner's password is dropped, never replaced by an empty one: libpq then
    finds the role's own password where it looks for one (``PGPASSWORD``, ``~/.pgpass``,
    ``PGPASSFILE``), or the server authenticates the role another way (the embedded server trusts
    its Unix socket). In production give each role its own URL instead: ``APP_DATABASE_URL``,
    ``ANALYST_DATABASE_URL`` (README "Database roles and passwords").
    """
    params = conninfo_to_dict(owner_conninfo)
    if user is not None:
        params["user"] = user
        params.pop("password", None)  # the owner's password is not the role's
    if dbname is not None:
        params["dbname"] = dbname
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def as_uri(conninfo: str) -> str:
    """A ``postgresql://`` URI for psql, notebooks and SQLAlchemy users."""
    params = conninfo_to_dict(conninfo)
    user = quote(str(params.pop("user", "") or ""), safe="")
    password = quote(str(params.pop("password", "") or ""), safe="")
    host = str(params.pop("host", "") or "")
    port = str(params.pop("port", "") or "")
    dbname = quote(str(params.pop("dbname", "") or ""), safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    query: list[str] = []
    if host.startswith("/"):
        query.append(f"host={quote(host, safe='/')}")
        netloc = auth
        if port:
            query.append(f"port={port}")
    else:
        netloc = f"{auth}{host}{':' + port if port else ''}"
    for key, value in sorted(params.items()):
        query.append(f"{key}={quote(str(value), safe='')}")
    suffix = "?" + "&".join(query) if query else ""
    return f"postgresql://{netloc}/{dbname}{suffix}"


def explicit_role_url(settings: Settings, role: str) -> str | None:
    if role == settings.app_role:
        return settings.app_database_url
    if role == settings.analyst_role:
        return settings.analyst_database_url
    return None

"""Connection strings: the owner (migrations), the app role and the read-only analyst role."""

from __future__ import annotations

from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kernel.settings import Settings

__all__ = ["as_uri", "role_conninfo"]


def role_conninfo(owner_conninfo: str, *, user: str | None = None, dbname: str | None = None) -> str:
    """The owner's connection string with another user and/or database (same host, port)."""
    changes: dict[str, str] = {}
    if user is not None:
        changes["user"] = user
        # The owner's password is not the role's; roles use trust/peer auth or their own URL.
        changes["password"] = ""
    if dbname is not None:
        changes["dbname"] = dbname
    info = make_conninfo(owner_conninfo, **changes)
    return info


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

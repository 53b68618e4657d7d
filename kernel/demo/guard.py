"""The demo never becomes a back door (issue 12 §1): it loads only into a database of its own.

``revkernel demo`` refuses, with one line and before changing anything (not even migrating), a
database that holds a tenant the demo did not create: a site that is not one of ``DEMO_SITES``,
or a platform token that is not the demo's. With ``DATABASE_URL`` (a server of the user's, not
the embedded one) it also needs ``--force``, and ``--force`` never overrides the first rule: it
is accepted only on a database that is empty (or holds the demo's own tenants from an earlier
run). The check runs again right before the demo's crons, which run on a simulated clock and
would otherwise freeze, reconcile or clean up whatever site is there.
"""

from __future__ import annotations

from typing import Any

import psycopg

from kernel.demo.tenants import DEMO_LABELS, DEMO_SITES
from kernel.errors import KernelError

__all__ = ["DemoRefused", "check_demo_target", "foreign_tenants"]

SHOWN_TENANTS = 3


class DemoRefused(KernelError):
    """The demo's target database is not the demo's own."""

    code = "demo_refused"


def foreign_tenants(conn: psycopg.Connection[Any]) -> list[str]:
    """What the database holds that the demo did not create (empty for a new or demo-only database)."""
    row = conn.execute("SELECT to_regclass('public.sites') IS NOT NULL, to_regclass('public.api_keys') IS NOT NULL")
    exists = row.fetchone()
    if exists is None or not exists[0]:
        return []
    found = [
        f"site {public_id}"
        for (public_id,) in conn.execute(
            "SELECT public_id FROM sites WHERE id <> ALL(%s) ORDER BY public_id", ([d.site_id for d in DEMO_SITES],)
        ).fetchall()
    ]
    if exists[1]:
        tokens = conn.execute(
            "SELECT count(*) FROM api_keys WHERE site_id IS NULL AND (label IS NULL OR label <> ALL(%s))",
            (list(DEMO_LABELS),),
        ).fetchone()
        if tokens is not None and tokens[0]:
            found.append(f"{tokens[0]} platform token(s)")
    return found


def check_demo_target(conn: psycopg.Connection[Any], *, embedded: bool, force: bool) -> None:
    """Refuse a database that is not the demo's own (module docstring); ``conn`` is the owner's.

    Raises:
        DemoRefused: with the one line to print.
    """
    foreign = foreign_tenants(conn)
    if foreign:
        shown = ", ".join(foreign[:SHOWN_TENANTS]) + (
            f" and {len(foreign) - SHOWN_TENANTS} more" if len(foreign) > SHOWN_TENANTS else ""
        )
        raise DemoRefused(
            f"this database holds tenants the demo did not create ({shown}); the demo loads only into a"
            " database of its own (use a fresh REVKERNEL_DATA_DIR or an empty DATABASE_URL)"
        )
    if not embedded and not force:
        raise DemoRefused(
            "DATABASE_URL points at a server of yours: the demo loads there only with --force, and only"
            " into an empty database"
        )

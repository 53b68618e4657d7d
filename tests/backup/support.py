"""A small store with every kind of month, written through the product's own code paths.

Events go through ``POST /api/sync`` of the in-process app on a manual clock; months are frozen
by ``freeze_month`` and archived and cleaned up by the cleanup cron, so the store holds:

- 2026-01: frozen, archived, every ledger row cleaned up (verify must use the archive);
- 2026-02: frozen, archived, part of its rows cleaned up;
- 2026-03: frozen, every row still in the ledger (chained to February);
- 2026-04: a month with traffic and no snapshot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.cli import main
from kernel.clock import ManualClock
from kernel.cron.jobs import run_named
from kernel.cron.runs import CronContext
from kernel.db.connect import Database
from kernel.settings import Settings
from kernel.tenants import create_site

MONTH_STARTS = {
    "2026-01": datetime(2026, 1, 3, tzinfo=UTC),
    "2026-02": datetime(2026, 2, 3, tzinfo=UTC),
    "2026-03": datetime(2026, 3, 3, tzinfo=UTC),
    "2026-04": datetime(2026, 4, 3, tzinfo=UTC),
}
FROZEN = ("2026-01", "2026-02", "2026-03")
# 90 days before this, 2026-02-10: January goes entirely, February in part.
CLEANUP_AT = datetime(2026, 5, 11, tzinfo=UTC)
EVENTS_PER_MONTH = 12  # limit 6, soft limit, cap x1.5: 6 ACCEPTED, 3 OVERAGE, 3 REJECTED_QUOTA


@dataclass(frozen=True)
class SmallStore:
    settings: Settings
    site_id: str
    public_id: str
    ingest_key: str


def build_store(settings: Settings) -> SmallStore:
    """Fill the (fresh, migrated) database of ``settings`` with the months of the module docstring."""
    db = Database(settings)
    with db.transaction("app") as conn:
        new = create_site(
            conn,
            name="Backup test",
            public_id="backup-test",
            monthly_limit=6,
            soft_limit_enabled=True,
            hard_cap_multiplier=Decimal("1.5"),
            rate_limit_per_minute=1_000_000,
        )
    clock = ManualClock(MONTH_STARTS["2026-01"])
    headers = {"Authorization": f"Bearer {new.ingest_key}"}
    with TestClient(create_app(settings, clock=clock)) as client:
        for year_month, start in MONTH_STARTS.items():
            clock.set(start)
            for i in range(EVENTS_PER_MONTH + 2):
                scroll = i >= EVENTS_PER_MONTH  # two non-billable rows a month
                event = {
                    "event_id": f"{year_month}-{i:03d}",
                    "ec": "interaction" if scroll else "page",
                    "ea": "scroll_depth" if scroll else "view",
                    "el": f"label {i}",
                    "url": "https://shop.example/",
                }
                response = client.post("/api/sync", json=event, headers=headers)
                assert response.status_code in (200, 429), response.text
                clock.advance(timedelta(days=1, minutes=7))
    for year_month in FROZEN:
        end = MONTH_STARTS[year_month].replace(day=1) + timedelta(days=32)
        clock.set(end.replace(day=1, hour=1))
        ctx = CronContext(settings, clock, db, trigger="cli")
        frozen = run_named(ctx, "invoice-freeze", year_month=year_month)
        assert frozen["ok"] and frozen["frozen"] == 1, frozen
    clock.set(CLEANUP_AT)
    cleaned = run_named(CronContext(settings, clock, db, trigger="cli"), "idempotency-cleanup")
    assert cleaned["ok"] and cleaned["archived"] == 2 and cleaned["deleted"] > EVENTS_PER_MONTH, cleaned
    return SmallStore(settings, str(new.site.id), new.site.public_id, new.ingest_key)


def cli_env(settings: Settings, **extra: str | None) -> dict[str, str | None]:
    """The environment a `revkernel` process of this store gets (nothing inherited that matters)."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith(("REVKERNEL_", "DATABASE_URL"))}
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "REVKERNEL_DATA_DIR": str(settings.data_dir),
            "REVKERNEL_COMMIT": "testcommit",
        }
    )
    env.update(extra)
    return env


def revkernel(args: list[str], env: dict[str, str | None]) -> Result:
    """Run one `revkernel` command in process, as a user would type it."""
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def error_line(result: Result) -> str:
    """The one `error: … [code]` line a refused command prints."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output + result.stderr
    return lines[0]


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (files and directories), relative."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")} if root.exists() else set()


def owner_rows(settings: Settings, query: str, params: Any = ()) -> list[tuple[Any, ...]]:
    with Database(settings).connect("owner", autocommit=True) as conn:
        return conn.execute(query, params).fetchall()

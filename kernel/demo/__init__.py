"""`revkernel demo` / `make demo`: the whole product on deterministic demo data.

The demo is a pipeline of steps, each a function of the ``DemoRun``; every step is safe to run
again (a second `make demo` changes nothing that the first one made).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kernel.db import migrations
from kernel.db.connect import Database
from kernel.demo.guard import check_demo_target
from kernel.demo.tenants import CREDENTIALS_FILE, DEMO_SITES, DemoTenants, credential_name, ensure_demo_tenants
from kernel.settings import Settings

__all__ = ["DEMO_SITES", "DemoRun", "closing_notes", "demo_steps", "run_demo"]

Echo = Callable[[str], None]


@dataclass
class DemoRun:
    settings: Settings
    db: Database
    echo: Echo
    notes: list[str] = field(default_factory=list)
    force: bool = False  # --force: allow a DATABASE_URL target (still only an empty one)
    tenants: DemoTenants | None = None

    @property
    def credentials_path(self) -> Path:
        return self.settings.data_dir / CREDENTIALS_FILE

    def ingest_key(self, public_id: str) -> str:
        """The demo site's ingest key (from the tenants step, else from the credentials file)."""
        if self.tenants is not None:
            return self.tenants.ingest_key(public_id)
        from kernel.demo.tenants import read_credentials

        return read_credentials(self.credentials_path)[credential_name("ingest", public_id)]

    def check_target(self) -> None:
        """Refuse a database that is not the demo's own (``kernel.demo.guard``)."""
        with self.db.connect("owner", autocommit=True) as conn:
            check_demo_target(conn, embedded=self.settings.embedded, force=self.force)


def _step_database(run: DemoRun) -> None:
    run.check_target()  # before anything changes, migrations included
    with run.db.connect("owner") as conn:
        applied = migrations.migrate(conn)
    where = "embedded PostgreSQL" if run.settings.embedded else "DATABASE_URL"
    run.echo(f"database: {where} ready, {len(applied)} migration(s) applied now")


def _step_tenants(run: DemoRun) -> None:
    with run.db.transaction("app") as conn:
        run.tenants = tenants = ensure_demo_tenants(conn, run.credentials_path)
    run.echo("demo sites:")
    for demo, new in tenants.sites:
        state = "created" if new else "exists "
        run.echo(f"  {state} {demo.public_id:<14} {demo.site_id}  {demo.story}")
    if tenants.issued:
        # Printed once, when issued: random secrets, never derived from public names.
        run.echo(f"demo credentials issued now (random; also in {run.credentials_path}, mode 0600):")
        for name in tenants.issued:
            run.echo(f"  {name}={tenants.credentials[name]}")
    if tenants.revoked:
        run.echo(f"  revoked {tenants.revoked} demo credential(s) no longer in the credentials file")
    run.notes.append(f"demo credentials: {run.credentials_path} (load them: set -a; . {run.credentials_path}; set +a)")


def _step_traffic(run: DemoRun) -> None:
    from kernel.demo.traffic import run_traffic

    run_traffic(run)


def _step_crons(run: DemoRun) -> None:
    from kernel.cron.demo import run_cron_demo

    # Again right before the crons: they run on a simulated clock and act on every site there.
    run.check_target()
    run_cron_demo(run)


def _step_dispute(run: DemoRun) -> None:
    from kernel.export.demo import run_dispute_demo

    run_dispute_demo(run)


def _step_cases(run: DemoRun) -> None:
    from kernel.demo.disputes import run_case_demo

    run_case_demo(run)


def _step_reports(run: DemoRun) -> None:
    # Last: renders the demo month after traffic, crons and freeze have run.
    from kernel.reporting.demo import render_demo_reports

    render_demo_reports(run)


def demo_steps() -> list[tuple[str, Callable[[DemoRun], None]]]:
    """The demo pipeline in order; later capabilities append their steps here."""
    return [
        ("database", _step_database),
        ("tenants", _step_tenants),
        ("traffic", _step_traffic),
        ("crons", _step_crons),
        ("cases", _step_cases),
        ("dispute", _step_dispute),
        ("reports", _step_reports),
    ]


def run_demo(settings: Settings, echo: Echo, *, force: bool = False) -> DemoRun:
    run = DemoRun(settings=settings, db=Database(settings), echo=echo, force=force)
    for _, step in demo_steps():
        step(run)
    echo("")
    for note in run.notes:
        echo(note)
    echo(f"connect with psql: psql '{run.db.uri('owner')}'")
    for line in closing_notes(settings):
        echo(line)
    return run


def closing_notes(settings: Settings) -> list[str]:
    """The demo's last lines: what keeps running and how to stop it, what to do next."""
    notes = []
    if settings.embedded:
        notes.append(
            f"the embedded PostgreSQL keeps running (data in {settings.pg_data_dir}); "
            "stop it with `make db-stop` (= `.venv/bin/revkernel db stop`)"
        )
    notes.append("next: `make test` runs the suite; `.venv/bin/revkernel --help` lists every command")
    return notes

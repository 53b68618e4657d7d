"""The cron registry: one name → one function, shared by HTTP, the CLI and the scheduler."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from kernel.cron.cleanup import cleanup
from kernel.cron.freeze import freeze_month
from kernel.cron.reconcile import reconcile_cycle
from kernel.cron.relay import publish_outbox
from kernel.cron.runs import CRON_NAMES, CronContext, CronResult, run_cron
from kernel.cron.watchtower import watchtower
from kernel.errors import InputError
from kernel.months import parse_year_month

__all__ = ["cron_body", "run_named"]


def cron_body(
    name: str, *, year_month: str | None = None, dry_run: bool = False, site_ids: Sequence[str] | None = None
) -> Callable[[CronContext], CronResult]:
    """The function behind cron ``name`` with its options bound.

    Raises:
        InputError: ``name`` is not a cron.
    """
    if name == "watchtower":
        return watchtower
    if name == "reconcile-usage":
        return reconcile_cycle
    if name == "invoice-freeze":
        return lambda ctx: freeze_month(ctx, year_month, site_ids=site_ids)
    if name == "idempotency-cleanup":
        return lambda ctx: cleanup(ctx, dry_run=dry_run)
    if name == "publish-outbox":
        return publish_outbox
    raise InputError(f"unknown cron {name!r}; one of: {', '.join(CRON_NAMES)}", code="unknown_cron")


def run_named(
    ctx: CronContext,
    name: str,
    *,
    year_month: str | None = None,
    dry_run: bool = False,
    site_ids: Sequence[str] | None = None,
) -> CronResult:
    """Run cron ``name`` under its lock, recorded in ``cron_runs``.

    ``site_ids`` restricts invoice-freeze to those sites (the post-deploy smoke freezes only its own).
    Malformed options are refused before the run starts, so they are not recorded as failed runs.
    """
    if year_month is not None:
        parse_year_month(year_month)
    if site_ids is not None:
        if name != "invoice-freeze":
            raise InputError(f"a site filter applies to invoice-freeze only, not {name}", code="option_unsupported")
        for site_id in site_ids:
            try:
                uuid.UUID(str(site_id))
            except ValueError as exc:
                raise InputError(f"site_id must be a UUID, not {site_id!r}", code="invalid_site_id") from exc
    return run_cron(ctx, name, cron_body(name, year_month=year_month, dry_run=dry_run, site_ids=site_ids))

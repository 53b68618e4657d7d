"""Billing crons (SPEC §4.2): reconcile, invoice freeze, cleanup, outbox relay, watchtower, scheduler.

Every cron is a plain function of a ``CronContext`` (settings, clock, database, trigger); HTTP
(``kernel.cron.routes``), the CLI (``revkernel cron run``) and the scheduler all call it through
``run_named``, which takes the cron's lock (its ``cron_locks`` row) and records the run in ``cron_runs``.
"""

from __future__ import annotations

from kernel.cron.auth import CRON_FORBIDDEN_BODY, cron_authorized, usable_cron_secret
from kernel.cron.cleanup import cleanup
from kernel.cron.freeze import MonthOpen, freeze_month
from kernel.cron.jobs import cron_body, run_named
from kernel.cron.reconcile import reconcile_cycle, run_jobs, usage_mirror_key
from kernel.cron.relay import publish_outbox
from kernel.cron.runs import CRON_NAMES, CronContext, CronResult, CronRunning, run_cron
from kernel.cron.watchtower import watchtower

__all__ = [
    "CRON_FORBIDDEN_BODY",
    "CRON_NAMES",
    "CronContext",
    "CronResult",
    "CronRunning",
    "MonthOpen",
    "cleanup",
    "cron_authorized",
    "cron_body",
    "freeze_month",
    "publish_outbox",
    "reconcile_cycle",
    "run_cron",
    "run_jobs",
    "run_named",
    "usable_cron_secret",
    "usage_mirror_key",
    "watchtower",
]

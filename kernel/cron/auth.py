"""Cron authentication: ``Authorization: Bearer <CRON_SECRET>``, compared in constant time.

An empty, missing or placeholder secret (runbook §4.5) closes every cron: a deploy that forgot to
set ``CRON_SECRET`` must not leave the billing jobs open to anyone who guesses ``changeme``.
"""

from __future__ import annotations

import hmac
import re

__all__ = ["CRON_FORBIDDEN_BODY", "PLACEHOLDER_SECRETS", "cron_authorized", "usable_cron_secret"]

CRON_FORBIDDEN_BODY = {"error": "forbidden", "code": "CRON_FORBIDDEN"}

# Values seen in templates and tutorials; compared case-insensitively after stripping.
PLACEHOLDER_SECRETS = frozenset(
    {
        "changeme",
        "change-me",
        "change_me",
        "default",
        "placeholder",
        "secret",
        "cron_secret",
        "cron-secret",
        "password",
        "example",
        "test",
        "xxx",
        "todo",
        "none",
        "null",
        "undefined",
    }
)
# Template shapes: "<your secret>", "${CRON_SECRET}", "your-secret-here", "replace-me…".
_PLACEHOLDER_SHAPE = re.compile(r"^(<.*>|\$\{.*\}|your[-_ ].*|.*[-_ ]here|replace[-_ ]?me.*|x+)$", re.IGNORECASE)


def usable_cron_secret(secret: str | None) -> bool:
    """True when ``secret`` may guard the crons: set, and not a known placeholder."""
    if secret is None:
        return False
    value = secret.strip()
    if not value:
        return False
    return not (value.lower() in PLACEHOLDER_SECRETS or _PLACEHOLDER_SHAPE.match(value))


def cron_authorized(configured: str | None, presented: str | None) -> bool:
    """True when ``presented`` equals a usable ``configured`` secret (constant-time compare)."""
    if not usable_cron_secret(configured) or presented is None:
        return False
    assert configured is not None
    return hmac.compare_digest(configured.strip().encode("utf-8"), presented.strip().encode("utf-8"))

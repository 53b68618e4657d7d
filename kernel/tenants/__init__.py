"""Tenants: sites, plans, ingest keys and user tokens."""

from __future__ import annotations

from kernel.tenants.keys import (
    KEY_ROLES,
    USER_ROLES,
    ApiKey,
    authenticate,
    hash_secret,
    issue_key,
    revoke_key,
)
from kernel.tenants.sites import (
    BILLING_MODES,
    NewSite,
    Site,
    create_site,
    get_site,
    list_sites,
    parse_multiplier,
    resolve_site,
)

__all__ = [
    "BILLING_MODES",
    "KEY_ROLES",
    "USER_ROLES",
    "ApiKey",
    "NewSite",
    "Site",
    "authenticate",
    "create_site",
    "get_site",
    "hash_secret",
    "issue_key",
    "list_sites",
    "parse_multiplier",
    "resolve_site",
    "revoke_key",
]

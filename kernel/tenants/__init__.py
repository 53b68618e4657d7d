"""Tenants: sites, plans, ingest keys and user tokens."""

from __future__ import annotations

from kernel.tenants.keys import (
    KEY_ROLES,
    USER_ROLES,
    ApiKey,
    KeyRecord,
    authenticate,
    authenticate_async,
    find_key,
    hash_secret,
    issue_key,
    list_keys,
    revoke_key,
    rotate_key,
)
from kernel.tenants.sites import (
    BILLING_MODES,
    INGEST_AUTHS,
    NewSite,
    Site,
    SiteChange,
    create_site,
    get_site,
    list_sites,
    parse_multiplier,
    parse_origin,
    resolve_site,
    update_site,
)

__all__ = [
    "BILLING_MODES",
    "INGEST_AUTHS",
    "KEY_ROLES",
    "USER_ROLES",
    "ApiKey",
    "KeyRecord",
    "NewSite",
    "Site",
    "SiteChange",
    "authenticate",
    "authenticate_async",
    "create_site",
    "find_key",
    "get_site",
    "hash_secret",
    "issue_key",
    "list_keys",
    "list_sites",
    "parse_multiplier",
    "parse_origin",
    "resolve_site",
    "revoke_key",
    "rotate_key",
    "update_site",
]

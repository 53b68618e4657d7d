"""Who may pull a site-month's dispute evidence (SPEC §4.3), and parsing of the request.

Order: credentials (401) → parameters (400) → authorisation (403). A site-scoped token that is not
``billing``/``admin`` on the requested site gets the same 403 whether the site is its own, another
tenant's or does not exist, so the answer never tells a caller which site ids exist. A platform
admin may export any site; for a site that does not exist it gets a 404 (it can list every site
anyway, so nothing leaks).
"""

from __future__ import annotations

import re
import uuid

from kernel.errors import AuthError, Forbidden, InputError, NotFound
from kernel.months import parse_year_month
from kernel.tenants import ApiKey

__all__ = [
    "EXPORT_ROLES",
    "actor_of",
    "authorize_export",
    "parse_export_params",
    "parse_site_id",
    "require_key",
]

EXPORT_ROLES = ("billing", "admin")
_SITE_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DENIED = "a billing or admin token of this site (or a platform admin token) is required"


def parse_site_id(text: str | None) -> uuid.UUID:
    """A site id in the hyphenated UUID form, else ``InputError`` (400)."""
    if text is None or not _SITE_ID.match(text):
        raise InputError("site_id must be a UUID like 3f2c…-…", code="invalid_site_id")
    return uuid.UUID(text)


def parse_export_params(site_id: str | None, year_month: str | None) -> tuple[uuid.UUID, str]:
    """Both query parameters, validated (400 ``invalid_site_id`` / ``invalid_year_month``)."""
    site = parse_site_id(site_id)
    if year_month is None:
        raise InputError("year_month is required (YYYY-MM)", code="invalid_year_month")
    return site, parse_year_month(year_month)


def require_key(key: ApiKey | None) -> ApiKey:
    """401 for a missing, unknown or revoked token."""
    if key is None:
        raise AuthError("a valid user token is required: Authorization: Bearer <token>")
    return key


def authorize_export(key: ApiKey, site_id: uuid.UUID, *, site_exists: bool) -> None:
    """Allow ``billing``/``admin`` on the site, or a platform admin; else the one 403."""
    if key.is_platform and key.role == "admin":
        if not site_exists:
            raise NotFound(f"unknown site {site_id}", code="unknown_site")
        return
    if key.site_id == site_id and key.role in EXPORT_ROLES and site_exists:
        return
    raise Forbidden(_DENIED, code="billing_view_required")


def actor_of(key: ApiKey) -> str:
    """How the audit log names a caller: role, scope and the key's recognisable prefix."""
    scope = "platform" if key.is_platform else f"site:{key.site_id}"
    return f"{key.role}@{scope}:{key.key_prefix}"

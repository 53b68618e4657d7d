"""Who may see and change dispute cases: the export's rules (``kernel.export.access``) plus viewers.

- Change (open, investigate, resolve, close): ``billing`` or ``admin`` of the case's site, or a
  platform admin: exactly ``authorize_export``.
- Read (list, show): the same, plus a ``viewer`` of the site.
- No existence leak: a site-scoped token gets the one 403 ``billing_view_required`` for another
  tenant's site, a site that does not exist, another tenant's case and a case that does not
  exist. A platform admin (who can list everything anyway) gets 404 ``unknown_site`` /
  ``unknown_case`` instead.
"""

from __future__ import annotations

import uuid

from kernel.disputes.queries import CaseRecord
from kernel.errors import Forbidden, NotFound
from kernel.export.access import EXPORT_ROLES, authorize_export
from kernel.tenants import ApiKey

__all__ = ["READ_ROLES", "authorize_case", "authorize_site", "is_platform_admin"]

READ_ROLES = ("viewer", *EXPORT_ROLES)
_READ_DENIED = "a token of this site (viewer, billing or admin) or a platform admin token is required"
# Stands for "no such site": a site-scoped token is told exactly what it is told for another site.
_NOWHERE = uuid.UUID(int=0)


def is_platform_admin(key: ApiKey) -> bool:
    return key.is_platform and key.role == "admin"


def authorize_site(key: ApiKey, site_id: uuid.UUID, *, site_exists: bool, write: bool) -> None:
    """Allow the key on the site for reading or for changing its cases; else the one 403."""
    if write:
        authorize_export(key, site_id, site_exists=site_exists)
        return
    if is_platform_admin(key):
        if not site_exists:
            raise NotFound(f"unknown site {site_id}", code="unknown_site")
        return
    if key.site_id == site_id and key.role in READ_ROLES and site_exists:
        return
    raise Forbidden(_READ_DENIED, code="billing_view_required")


def authorize_case(key: ApiKey, case: CaseRecord | None, *, write: bool) -> CaseRecord:
    """The case if the key may read (or change) it; an unknown case answers as another site's."""
    if case is None:
        if is_platform_admin(key):
            raise NotFound("unknown dispute case", code="unknown_case")
        authorize_site(key, _NOWHERE, site_exists=False, write=write)
        raise AssertionError("a site-scoped key is never allowed on a site that does not exist")
    authorize_site(key, case.site_id, site_exists=True, write=write)
    return case

"""Who may export (SPEC §4.3): every role x own / other / unknown site, no token, revoked token."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.settings import Settings
from tests.export.conftest import MONTH, make_tenant, platform_tokens

ROUTES = ("/api/billing/dispute-export", "/api/billing/dispute-manifest")


def _get(client: TestClient[Any], route: str, token: str | None, site_id: str, month: str = MONTH) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.get(route, params={"site_id": site_id, "year_month": month}, headers=headers)


def test_rbac_matrix(settings: Settings, app_conn: psycopg.Connection[Any]) -> None:
    own = make_tenant(app_conn, "own-site")
    other = make_tenant(app_conn, "other-site")
    platform = platform_tokens(app_conn)
    targets = {"own": str(own.site_id), "other": str(other.site_id), "unknown": str(uuid.uuid4())}
    callers: dict[str, str | None] = {
        "no token": None,
        "garbage token": "rk_user_not-a-real-token",
        "revoked billing": own.tokens["revoked"],
        "site ingest": own.tokens["ingest"],
        "site viewer": own.tokens["viewer"],
        "site billing": own.tokens["billing"],
        "site admin": own.tokens["admin"],
        "platform viewer": platform["viewer"],
        "platform billing": platform["billing"],
        "platform admin": platform["admin"],
    }
    allowed = {("site billing", "own"), ("site admin", "own"), ("platform admin", "own"), ("platform admin", "other")}
    denied_bodies = set()
    with TestClient(create_app(settings)) as client:
        for route in ROUTES:
            for caller, token in callers.items():
                for target, site_id in targets.items():
                    response = _get(client, route, token, site_id)
                    where = f"{route} {caller} → {target}"
                    if caller in ("no token", "garbage token", "revoked billing"):
                        assert response.status_code == 401, where
                        assert response.json()["error"] == "unauthorized", where
                    elif (caller, target) in allowed:
                        assert response.status_code == 200, where
                    elif caller == "platform admin":
                        assert (response.status_code, response.json()["error"]) == (404, "unknown_site"), where
                    else:
                        assert response.status_code == 403, where
                        body = response.json()
                        assert body["error"] == "billing_view_required", where
                        denied_bodies.add((body["error"], body["message"]))
    # Viewer, another site and an unknown site: one and the same answer (no existence leak).
    assert len(denied_bodies) == 1


def test_malformed_parameters_are_400_after_authentication(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    tenant = make_tenant(app_conn, "param-site")
    token = tenant.tokens["billing"]
    with TestClient(create_app(settings)) as client:
        for route in ROUTES:
            bad_site = _get(client, route, token, "not-a-uuid")
            assert (bad_site.status_code, bad_site.json()["error"]) == (400, "invalid_site_id")
            for month in ("2026-13", "2026-1", "26-10", "2026-10-01", ""):
                bad_month = _get(client, route, token, str(tenant.site_id), month)
                assert (bad_month.status_code, bad_month.json()["error"]) == (400, "invalid_year_month"), month
            missing = client.get(route, headers={"Authorization": f"Bearer {token}"})
            assert (missing.status_code, missing.json()["error"]) == (400, "invalid_site_id")
            # Credentials are checked first: a malformed request without a token is still a 401.
            assert _get(client, route, None, "not-a-uuid").status_code == 401

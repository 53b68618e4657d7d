"""Tenant isolation matrix over every route of the OpenAPI document.

Credentials: ingest keys, viewer/billing/admin tokens of site A used against site B, a platform
admin, revoked keys, garbage. Each route class has its rule (SPEC §4): ingest keys only ingest
their own site (401 missing/unknown/revoked, 403 another site); crons take only the cron secret
(403 CRON_FORBIDDEN for every tenant credential); site-scoped billing routes take billing/admin of
that site or a platform admin (401 / 403 ``billing_view_required``), and answer another tenant's
site exactly as they answer a site that does not exist. No denied request writes anything.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from hardening_support import Tenants, bearer, make_tenants, table_state
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.settings import Settings

INGEST_PATH = "/api/sync"
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics"}
OPERATION_METHODS = ("get", "post", "put", "patch", "delete")


def _operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    ops = []
    for path, item in sorted(openapi["paths"].items()):
        for method, op in sorted(item.items()):
            if method in OPERATION_METHODS:
                ops.append((method.upper(), path, op))
    return ops


def _params(op: dict[str, Any]) -> set[str]:
    return {p["name"] for p in op.get("parameters", []) if p.get("in") == "query"}


def classify(method: str, path: str, op: dict[str, Any]) -> str:
    """The route's auth class; a route that fits none fails the test until the matrix covers it."""
    if path == INGEST_PATH:
        return "ingest"
    if path.startswith("/api/cron/"):
        return "cron"
    if path.startswith("/api/billing/disputes"):
        return "dispute"  # viewers may read: the full matrix is tests/disputes/test_routes.py
    if "site_id" in _params(op) and path.startswith("/api/billing/"):
        return "site"
    if path in PUBLIC_PATHS or (method == "GET" and not path.startswith("/api/cron/") and "site_id" not in _params(op)):
        return "public"
    return "unclassified"


def _code(response: Any) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("code") or body.get("error") if isinstance(body, dict) else None


@pytest.fixture
def world(settings: Settings, owner_conn: psycopg.Connection[Any]) -> tuple[TestClient[Any], Tenants, dict[str, Any]]:
    tenants = make_tenants(owner_conn)
    with TestClient(create_app(settings)) as client:
        openapi = client.get("/schema/openapi.json").json()
        yield client, tenants, openapi


def test_every_route_is_in_the_matrix(world: tuple[TestClient[Any], Tenants, dict[str, Any]]) -> None:
    _, _, openapi = world
    ops = _operations(openapi)
    unclassified = [f"{m} {p}" for m, p, op in ops if classify(m, p, op) == "unclassified"]
    assert not unclassified, f"routes without an isolation rule: {unclassified}"
    classes = {classify(m, p, op) for m, p, op in ops}
    assert {"ingest", "cron", "site"} <= classes, f"the API lacks a route class: {sorted(classes)}"


def test_denied_requests_are_denied_without_leaks_and_write_nothing(
    world: tuple[TestClient[Any], Tenants, dict[str, Any]], owner_conn: psycopg.Connection[Any]
) -> None:
    client, t, openapi = world
    a, b = t.a, t.b
    before = table_state(owner_conn)
    month = "2026-01"
    unknown_site = str(uuid.uuid4())
    garbage = "rk_user_not-a-real-token-0123456789abcdef"
    tenant_credentials = {
        "ingest A": a.ingest_key,
        "viewer A": a.viewer,
        "billing A": a.billing,
        "admin A": a.admin,
        "platform admin": t.platform_admin,
    }
    failures: list[str] = []

    def check(label: str, response: Any, statuses: tuple[int, ...], code: str | None = None) -> None:
        if response.status_code not in statuses or (code is not None and _code(response) != code):
            failures.append(f"{label}: {response.status_code} {response.text[:120]}")

    for method, path, op in _operations(openapi):
        kind = classify(method, path, op)
        if kind == "ingest":
            event = {"event_id": "iso-1", "ec": "cta", "ea": "click"}
            check("ingest without key", client.post(path, json=event), (401,))
            check("ingest garbage key", client.post(path, json=event, headers=bearer(garbage)), (401,))
            check("ingest revoked key", client.post(path, json=event, headers=bearer(a.revoked_ingest)), (401,))
            to_b = client.post(path, json={**event, "s": b.public_id}, headers=bearer(a.ingest_key))
            to_nowhere = client.post(path, json={**event, "s": "iso-nowhere"}, headers=bearer(a.ingest_key))
            check("ingest key A with s=B", to_b, (403,))
            check("ingest key A with s=unknown", to_nowhere, (403,))
            if (_code(to_b), to_b.status_code) != (_code(to_nowhere), to_nowhere.status_code):
                failures.append(
                    f"ingest: site B and an unknown site answer differently: {to_b.text} / {to_nowhere.text}"
                )
            for label in ("viewer A", "billing A", "admin A", "platform admin"):
                token = tenant_credentials[label]
                check(f"ingest with {label} token", client.post(path, json=event, headers=bearer(token)), (401, 403))
        elif kind == "cron":
            for label, token in tenant_credentials.items():
                response = client.request(method, path, headers=bearer(token))
                check(f"{method} {path} with {label}", response, (403,), "CRON_FORBIDDEN")
        elif kind == "site":

            def call(token: str | None, site: str, path: str = path, method: str = method) -> Any:
                headers = bearer(token) if token is not None else {}
                return client.request(method, path, params={"site_id": site, "year_month": month}, headers=headers)

            check(f"{path} without token", call(None, str(a.site_id)), (401,))
            check(f"{path} garbage token", call(garbage, str(a.site_id)), (401,))
            check(f"{path} revoked billing A", call(a.revoked_billing, str(a.site_id)), (401,))
            check(f"{path} revoked platform admin", call(t.revoked_platform_admin, str(a.site_id)), (401,))
            check(f"{path} viewer A on A", call(a.viewer, str(a.site_id)), (403,), "billing_view_required")
            check(f"{path} ingest key A on A", call(a.ingest_key, str(a.site_id)), (401, 403))
            for label in ("viewer A", "billing A", "admin A"):
                token = tenant_credentials[label]
                on_b = call(token, str(b.site_id))
                on_unknown = call(token, unknown_site)
                check(f"{path} {label} on B", on_b, (403,), "billing_view_required")
                check(f"{path} {label} on an unknown site", on_unknown, (403,), "billing_view_required")
                if on_b.json().get("message") != on_unknown.json().get("message"):
                    failures.append(f"{path} {label}: B and an unknown site are told apart")
            check(f"{path} billing B on A", call(b.billing, str(a.site_id)), (403,), "billing_view_required")
        elif kind == "dispute":
            target = path.replace("{case_id}", str(uuid.uuid4()))
            open_body = {"site_id": str(b.site_id), "year_month": month, "reason": "r", "customer_reference": "c"}
            bodies = {"disputes": {**open_body, "whole_month": True}, "resolve": {"outcome": "rejected"}}
            body = bodies.get(path.rsplit("/", 1)[-1], {"note": "n"}) if method == "POST" else None

            def dispute(token: str | None, target: str = target, method: str = method, body: Any = body) -> Any:
                headers = bearer(token) if token is not None else {}
                params = {"site_id": str(b.site_id)} if method == "GET" else None
                return client.request(method, target, params=params, json=body, headers=headers)

            for label, token in (("no token", None), ("garbage", garbage), ("revoked billing A", a.revoked_billing)):
                check(f"{method} {path} {label}", dispute(token), (401,))
            for label in ("viewer A", "billing A", "admin A"):
                check(
                    f"{method} {path} {label} on B", dispute(tenant_credentials[label]), (403,), "billing_view_required"
                )
        elif kind == "public":
            check(f"{method} {path} without credentials", client.request(method, path), (200,))

    assert not failures, "\n".join(failures)
    assert table_state(owner_conn) == before, "a denied request wrote to the database"


def test_allowed_requests_reach_their_own_site_only(
    world: tuple[TestClient[Any], Tenants, dict[str, Any]], owner_conn: psycopg.Connection[Any]
) -> None:
    client, t, openapi = world
    a, b = t.a, t.b
    ok = client.post(
        INGEST_PATH,
        json={"event_id": "iso-own", "ec": "cta", "ea": "click", "s": a.public_id},
        headers=bearer(a.ingest_key),
    )
    assert ok.status_code == 200, ok.text
    rows = owner_conn.execute("SELECT site_id FROM ingest_idempotency WHERE idempotency_key = 'iso-own'").fetchall()
    assert rows == [(a.site_id,)]
    month = owner_conn.execute(
        "SELECT year_month FROM ingest_idempotency WHERE idempotency_key = 'iso-own'"
    ).fetchone()[0]
    site_ops = [(m, p) for m, p, op in _operations(openapi) if classify(m, p, op) == "site"]
    assert site_ops
    for method, path in site_ops:
        for token, site in (
            (a.billing, a.site_id),
            (a.admin, a.site_id),
            (t.platform_admin, a.site_id),
            (t.platform_admin, b.site_id),
            (b.billing, b.site_id),
        ):
            response = client.request(
                method, path, params={"site_id": str(site), "year_month": month}, headers=bearer(token)
            )
            assert response.status_code == 200, f"{path} for {site}: {response.status_code} {response.text[:200]}"
            if path == "/api/billing/dispute-export":
                assert ("iso-own" in response.text) == (site == a.site_id), "an export crossed sites"

"""The OpenAPI document tells an integrator everything the wire does: every answer of /api/sync is
checked against its documented schema and headers, on the real app and a real PostgreSQL."""

from __future__ import annotations

from typing import Any

import jsonschema
import psycopg
import pytest
from litestar.testing import TestClient
from referencing import Registry, Resource

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.openapi import BATCH_EXAMPLE, SINGLE_EXAMPLE
from kernel.settings import Settings
from tests.ingest.support import START, auth, make_site

CRON = {"Authorization": "Bearer test-cron-secret-0123456789"}
_BILLING_HEADERS = ("x-opsmantik-", "retry-after")


@pytest.fixture
def client(settings: Settings) -> Any:
    with TestClient(create_app(settings, clock=ManualClock(START))) as c:
        yield c


@pytest.fixture
def document(client: Any) -> dict[str, Any]:
    return dict(client.get("/schema/openapi.json").json())


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    resource = Resource.from_contents({**document, "$schema": "https://json-schema.org/draft/2020-12/schema"})
    registry = Registry().with_resource("urn:openapi", resource)
    return jsonschema.Draft202012Validator(_rebase(schema), registry=registry)


def _rebase(schema: Any) -> Any:
    """Point the document's local refs (#/components/...) at the registered document."""
    if isinstance(schema, dict):
        return {k: ("urn:openapi" + v if k == "$ref" and v.startswith("#/") else _rebase(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rebase(v) for v in schema]
    return schema


def _check(document: dict[str, Any], reply: Any, status: int) -> None:
    """The reply's status is documented, its body matches that status's schema, its headers are documented."""
    assert reply.status_code == status, reply.text
    documented = document["paths"]["/api/sync"]["post"]["responses"][str(status)]
    schema = documented["content"]["application/json"]["schema"]
    _validator(document, schema).validate(reply.json())
    named = {h.lower() for h in documented.get("headers", {})}
    sent = {h.lower() for h in reply.headers if h.lower().startswith(_BILLING_HEADERS)}
    assert sent <= named, f"{status}: undocumented headers {sent - named}"


def test_request_bodies_single_and_batch_are_documented_with_the_readme_examples(
    client: Any, document: dict[str, Any], app_conn: psycopg.Connection[Any]
) -> None:
    body = document["paths"]["/api/sync"]["post"]["requestBody"]
    for media in ("application/json", "text/plain"):
        content = body["content"][media]
        validator = _validator(document, content["schema"])
        assert set(content["examples"]) == {"single", "batch"}
        for example in content["examples"].values():
            validator.validate(example["value"])
    # The schema is not a rubber stamp: a batch past the limit and a bad event_id are refused by it.
    validator = _validator(document, body["content"]["application/json"]["schema"])
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"events": [{"ec": "a"}] * 101})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"event_id": "-bad id", "ec": "a"})
    # The README's examples are accepted by the real endpoint.
    site = make_site(app_conn, public_id="shop-eu")
    _check(document, client.post("/api/sync", json=SINGLE_EXAMPLE, headers=auth(site)), 200)
    _check(document, client.post("/api/sync", json=BATCH_EXAMPLE, headers=auth(site)), 200)


def test_every_answer_of_sync_matches_its_documented_schema_and_headers(
    client: Any, document: dict[str, Any], app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any]
) -> None:
    site = make_site(app_conn, monthly_limit=1, rate_limit_per_minute=1000)
    other = make_site(app_conn)
    key = auth(site)
    _check(document, client.post("/api/sync", json={"event_id": "a", "ec": "x"}, headers=key), 200)
    _check(document, client.post("/api/sync", json={"event_id": "a", "ec": "x"}, headers=key), 200)  # duplicate
    _check(document, client.post("/api/sync", json={"events": [{"event_id": "a", "ec": "x"}]}, headers=key), 200)
    _check(document, client.post("/api/sync", json={"event_id": "a", "ec": "changed"}, headers=key), 409)
    _check(document, client.post("/api/sync", json={"event_id": "b", "ec": "x"}, headers=key), 429)  # quota
    _check(document, client.post("/api/sync", content=b"{not json", headers=key), 400)
    _check(document, client.post("/api/sync", json={"ec": "x"}), 401)
    _check(document, client.post("/api/sync", json={"ec": "x", "s": other.site.public_id}, headers=key), 403)
    _check(document, client.post("/api/sync", json={"ec": 5}, headers=key), 422)
    _check(document, client.post("/api/sync", content=b"x" * (300 * 1024), headers=key), 413)
    limited = make_site(app_conn, rate_limit_per_minute=1)
    client.post("/api/sync", json={"event_id": "r1", "ec": "x"}, headers=auth(limited))
    _check(document, client.post("/api/sync", json={"event_id": "r2", "ec": "x"}, headers=auth(limited)), 429)
    owner_conn.execute("REVOKE INSERT ON ingest_outbox FROM revkernel_app")
    try:
        _check(document, client.post("/api/sync", json={"event_id": "g", "ec": "x"}, headers=auth(other)), 500)
    finally:
        owner_conn.execute("GRANT INSERT ON ingest_outbox TO revkernel_app")


def test_security_schemes_are_declared_and_attached(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert {name: s["scheme"] for name, s in schemes.items()} == {
        "ingestKey": "bearer",
        "userToken": "bearer",
        "cronSecret": "bearer",
    }
    paths = document["paths"]
    assert paths["/api/sync"]["post"]["security"] == [{"ingestKey": []}, {}]
    assert paths["/api/billing/dispute-export"]["get"]["security"] == [{"userToken": []}]
    for path, item in paths.items():
        if path.startswith("/api/cron/"):
            for operation in item.values():
                assert operation["security"] == [{"cronSecret": []}], path
                assert "403" in operation["responses"], path


def test_cron_gets_answer_200_in_the_document_as_on_the_wire(client: Any, document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        if path.startswith("/api/cron/") and "get" in item:
            assert "200" in item["get"]["responses"] and "201" not in item["get"]["responses"], path
            assert client.get(path, headers=CRON).status_code == 200, path
        for method, operation in item.items():
            if path.startswith("/api/cron/") and method == "post":
                assert "201" not in operation["responses"], path

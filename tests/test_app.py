from __future__ import annotations

from litestar.testing import TestClient

from kernel.app import create_app
from kernel.settings import Settings


def test_every_response_has_commit_and_request_id_and_errors_have_codes(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        ok = client.get("/healthz")
        assert ok.status_code == 200
        assert ok.headers["x-opsmantik-commit"] == "testcommit"
        assert len(ok.headers["x-request-id"]) >= 8
        ready = client.get("/readyz", headers={"x-request-id": "caller-id-123"})
        assert ready.status_code == 200 and ready.headers["x-request-id"] == "caller-id-123"
        missing = client.get("/no/such/route")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        assert missing.headers["x-opsmantik-commit"] == "testcommit"
        assert client.get("/schema/openapi.json").json()["info"]["title"] == "Revenue kernel"

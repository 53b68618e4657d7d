"""``/api/billing/disputes`` over real HTTP (the Litestar app): every RBAC cell, no existence leak,
the whole workflow, stable error codes, and the OpenAPI document."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.disputes import service
from kernel.settings import Settings
from tests.disputes.conftest import REJECTED, World, bearer, counts
from tests.export.conftest import MONTH

BASE = "/api/billing/disputes"


@pytest.fixture
def client(settings: Settings, world: World) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(settings, clock=world.clock)) as test_client:
        yield test_client


def _case(conn: psycopg.Connection[Any], world: World, site: uuid.UUID, keys: tuple[str, ...] = ("evt-0001",)) -> str:
    move = service.open_case(
        conn,
        site_id=site,
        year_month=MONTH,
        disputed_keys=list(keys),
        whole_month=False,
        reason="bots",
        customer_reference="T-1",
        actor="setup",
        clock=world.clock,
    )
    return str(move.case.case_id)


def _callers(world: World) -> dict[str, str | None]:
    own, other, platform = world.own.tokens, world.other.tokens, world.platform
    return {
        "no token": None,
        "garbage": "rk_user_not-a-real-token-0123456789",
        "revoked billing": own["revoked"],
        "ingest key": own["ingest"],
        "viewer": own["viewer"],
        "billing": own["billing"],
        "admin": own["admin"],
        "other viewer": other["viewer"],
        "other billing": other["billing"],
        "other admin": other["admin"],
        "platform viewer": platform["viewer"],
        "platform billing": platform["billing"],
        "platform admin": platform["admin"],
    }


def _role(caller: str) -> str:
    """The role a caller's token has on its home site(s)."""
    return caller.removeprefix("other ")


def _home(caller: str) -> set[str]:
    """The targets a caller's token belongs to."""
    if caller == "platform admin":
        return {"own", "other"}
    return {"other"} if caller.startswith("other ") else {"own"}


UNAUTHENTICATED = {"no token", "garbage", "revoked billing"}
READERS = {"viewer", "billing", "admin", "platform admin"}
WRITERS = {"billing", "admin", "platform admin"}


def test_rbac_matrix_every_caller_every_target(
    client: TestClient[Any], world: World, app_conn: psycopg.Connection[Any]
) -> None:
    own_case = _case(app_conn, world, world.own.site_id)
    other_case = _case(app_conn, world, world.other.site_id, ("other-1",))
    targets = {"own": own_case, "other": other_case, "unknown": str(uuid.uuid4())}
    denied: dict[str, set[tuple[str, str]]] = {"read": set(), "write": set(), "close": set(), "resolve": set()}
    failures: list[str] = []
    for caller, token in _callers(world).items():
        for target, case_id in targets.items():
            refused_credit = {"outcome": "upheld", "credit": {"reason": "x", "keys": [REJECTED]}}
            for kind, response in (
                ("read", client.get(f"{BASE}/{case_id}", headers=bearer(token))),
                ("write", client.post(f"{BASE}/{case_id}/investigate", json={"note": caller}, headers=bearer(token))),
                # Allowed callers get past authorisation to the state rules: 409 / 422, nothing written.
                ("close", client.post(f"{BASE}/{case_id}/close", json={"note": caller}, headers=bearer(token))),
                ("resolve", client.post(f"{BASE}/{case_id}/resolve", json=refused_credit, headers=bearer(token))),
            ):
                where = f"{kind} {caller} → {target}: {response.status_code} {response.text[:160]}"
                body = response.json()
                allowed = READERS if kind == "read" else WRITERS
                if caller in UNAUTHENTICATED:
                    ok = (response.status_code, body["error"]) == (401, "unauthorized")
                elif _role(caller) in allowed and target in _home(caller) and kind in ("close", "resolve"):
                    ok = response.status_code in (409, 422) and body["error"] != "billing_view_required"
                elif _role(caller) in allowed and target in _home(caller):
                    ok = response.status_code == 200 and body["case"]["case_id"] == case_id
                elif caller == "platform admin" and target == "unknown":
                    ok = (response.status_code, body["error"]) == (404, "unknown_case")
                else:
                    ok = (response.status_code, body.get("error")) == (403, "billing_view_required")
                    denied[kind].add((body.get("error"), body.get("message")))
                if not ok:
                    failures.append(where)
    assert not failures, "\n".join(failures)
    # A viewer, another tenant's case and a case that does not exist: one and the same answer.
    assert all(len(bodies) == 1 for bodies in denied.values()), denied
    assert app_conn.execute("SELECT count(*) FROM invoice_corrections").fetchone() == (0,)


def test_open_rbac_and_no_existence_leak(
    client: TestClient[Any], world: World, app_conn: psycopg.Connection[Any]
) -> None:
    sites = {"own": str(world.own.site_id), "other": str(world.other.site_id), "unknown": str(uuid.uuid4())}
    denied: set[tuple[str, str]] = set()
    failures: list[str] = []
    for caller, token in _callers(world).items():
        for target, site_id in sites.items():
            before = counts(app_conn)
            body = {
                "site_id": site_id,
                "year_month": MONTH,
                "reason": "bots",
                "customer_reference": f"{caller}/{target}",
                "disputed_keys": [REJECTED],
            }
            response = client.post(BASE, json=body, headers=bearer(token))
            answer = response.json()
            where = f"open {caller} → {target}: {response.status_code} {response.text[:160]}"
            if caller in UNAUTHENTICATED:
                ok = response.status_code == 401
            elif _role(caller) in WRITERS and target in _home(caller):
                ok = response.status_code == 201 and answer["changed"] and answer["case"]["state"] == "open"
                ok = ok and answer["case"]["hold"]["active"] and answer["case"]["site_id"] == site_id
            elif caller == "platform admin" and target == "unknown":
                ok = (response.status_code, answer["error"]) == (404, "unknown_site")
            else:
                ok = response.status_code == 403 and answer["error"] == "billing_view_required"
                denied.add((answer["error"], answer["message"]))
            if response.status_code != 201 and counts(app_conn) != before:
                failures.append(f"{where}: a refused open wrote to the database")
            if not ok:
                failures.append(where)
    assert not failures, "\n".join(failures)
    assert len(denied) == 1, denied


def test_list_rbac(client: TestClient[Any], world: World, app_conn: psycopg.Connection[Any]) -> None:
    cases = {"own": _case(app_conn, world, world.own.site_id), "other": _case(app_conn, world, world.other.site_id)}
    sites = {"own": str(world.own.site_id), "other": str(world.other.site_id)}
    for caller, token in _callers(world).items():
        answers = {t: client.get(BASE, params={"site_id": site}, headers=bearer(token)) for t, site in sites.items()}
        nowhere = client.get(BASE, params={"site_id": str(uuid.uuid4())}, headers=bearer(token))
        bare = client.get(BASE, headers=bearer(token))
        if caller in UNAUTHENTICATED:
            assert {a.status_code for a in (*answers.values(), nowhere, bare)} == {401}, caller
        elif caller == "platform admin":
            for target, answer in answers.items():
                assert [c["case_id"] for c in answer.json()["cases"]] == [cases[target]]
            assert (nowhere.status_code, nowhere.json()["error"]) == (404, "unknown_site")
            assert sorted(c["case_id"] for c in bare.json()["cases"]) == sorted(cases.values())
        elif _role(caller) in READERS:
            (home,) = _home(caller)
            (away,) = set(sites) - {home}
            assert [c["case_id"] for c in answers[home].json()["cases"]] == [cases[home]], caller
            # Without site_id a site token lists its own site.
            assert [c["case_id"] for c in bare.json()["cases"]] == [cases[home]], caller
            assert answers[away].status_code == nowhere.status_code == 403, caller
            assert answers[away].json() == nowhere.json(), caller
        else:
            statuses = {a.status_code for a in (*answers.values(), nowhere, bare)}
            assert statuses == {403}, caller
            assert answers["own"].json() == answers["other"].json() == nowhere.json(), caller


def test_the_workflow_from_complaint_to_signed_credit(client: TestClient[Any], world: World) -> None:
    token = bearer(world.own.tokens["billing"])
    case_id = str(uuid.uuid4())
    opened = client.post(
        BASE,
        json={
            "site_id": str(world.own.site_id),
            "year_month": MONTH,
            "reason": "three events were bots",
            "customer_reference": "ZD-1234",
            "disputed_keys": ["evt-0001", "evt-0008", REJECTED],
            "case_id": case_id,
        },
        headers=token,
    )
    assert opened.status_code == 201, opened.text
    assert opened.json()["case"]["case_id"] == case_id and opened.json()["case"]["opened_by"].startswith(
        "billing@site:"
    )
    replay = client.post(
        BASE,
        json={
            "site_id": str(world.own.site_id),
            "year_month": MONTH,
            "reason": "three events were bots",
            "customer_reference": "ZD-1234",
            "disputed_keys": ["evt-0001", "evt-0008", REJECTED],
            "case_id": case_id,
        },
        headers=token,
    )
    assert replay.status_code == 200 and replay.json()["changed"] is False
    early = client.post(f"{BASE}/{case_id}/resolve", json={"outcome": "rejected"}, headers=token)
    assert (early.status_code, early.json()["error"]) == (409, "illegal_transition")
    assert client.post(f"{BASE}/{case_id}/investigate", json={"note": "pulling logs"}, headers=token).status_code == 200
    refused = client.post(
        f"{BASE}/{case_id}/resolve",
        json={"outcome": "partially_upheld", "credit": {"reason": "bots", "keys": ["evt-0001", REJECTED]}},
        headers=token,
    )
    assert (refused.status_code, refused.json()["error"]) == (422, "credit_not_billable"), refused.text
    resolved = client.post(
        f"{BASE}/{case_id}/resolve",
        json={
            "outcome": "partially_upheld",
            "note": "two were bots",
            "credit": {"reason": "bot traffic from one address", "keys": ["evt-0001", "evt-0008"]},
        },
        headers=token,
    )
    assert resolved.status_code == 200, resolved.text
    correction = resolved.json()["case"]["correction"]
    assert correction["credited_keys"] == ["evt-0001", "evt-0008"] and correction["credited_count"] == 2
    assert correction["key_id"] == world.key.key_id
    shown = client.get(f"{BASE}/{case_id}", headers=bearer(world.own.tokens["viewer"])).json()
    assert shown["case"]["state"] == "resolved" and shown["case"]["hold"]["active"] is True
    assert [e["action"] for e in shown["history"]] == [
        "dispute_open",
        "dispute_hold_placed",
        "dispute_investigate",
        "invoice_correction",
        "dispute_resolve",
    ]
    closed = client.post(f"{BASE}/{case_id}/close", headers=token)  # no body: the note is optional
    assert closed.status_code == 200 and closed.json()["case"]["hold"]["active"] is False
    again = client.post(f"{BASE}/{case_id}/close", json={"note": "retry"}, headers=token)
    assert again.status_code == 200 and again.json()["changed"] is False


def test_bad_input_is_400_with_a_stable_code_and_credentials_come_first(
    client: TestClient[Any], world: World, app_conn: psycopg.Connection[Any]
) -> None:
    token = bearer(world.own.tokens["billing"])
    good = {
        "site_id": str(world.own.site_id),
        "year_month": MONTH,
        "reason": "r",
        "customer_reference": "c",
        "whole_month": True,
    }
    before = counts(app_conn)
    for body in (
        {**good, "year_month": "2026-13"},
        {**good, "disputed_key": ["typo"]},  # unknown field: never a silent whole-month case
        {**good, "site_id": "not-a-uuid"},
        {**good, "reason": ""},
        {key: value for key, value in good.items() if key != "customer_reference"},
    ):
        response = client.post(BASE, json=body, headers=token)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_request"), (body, response.text)
        assert client.post(BASE, json=body).status_code == 401
    scope = client.post(BASE, json={**good, "whole_month": False}, headers=token)
    assert (scope.status_code, scope.json()["error"]) == (400, "invalid_dispute_scope")
    future = client.post(BASE, json={**good, "year_month": "2027-01"}, headers=token)
    assert (future.status_code, future.json()["error"]) == (400, "month_in_future")
    bad_id = client.get(f"{BASE}/not-a-uuid", headers=token)
    assert (bad_id.status_code, bad_id.json()["error"]) == (400, "invalid_case_id")
    assert client.get(f"{BASE}/not-a-uuid").status_code == 401
    bad_list = client.get(BASE, params={"year_month": "10-2026"}, headers=token)
    assert (bad_list.status_code, bad_list.json()["error"]) == (400, "invalid_year_month")
    bad_state = client.get(BASE, params={"state": "open,lost"}, headers=bearer(world.other.tokens["viewer"]))
    assert (bad_state.status_code, bad_state.json()["error"]) == (400, "invalid_state")
    case_id = _case(app_conn, world, world.own.site_id)
    before = counts(app_conn)
    outcome = client.post(f"{BASE}/{case_id}/resolve", json={"outcome": "maybe"}, headers=token)
    assert (outcome.status_code, outcome.json()["error"]) == (400, "invalid_request")
    assert counts(app_conn) == before


def test_a_leaked_ingest_key_or_viewer_token_changes_nothing(
    client: TestClient[Any], world: World, app_conn: psycopg.Connection[Any]
) -> None:
    case_id = _case(app_conn, world, world.own.site_id)
    service.investigate_case(app_conn, uuid.UUID(case_id), note="", actor="setup", clock=world.clock)
    before = counts(app_conn)
    for token in (world.own.tokens["ingest"], world.own.tokens["viewer"], world.other.tokens["admin"]):
        for path, body in (
            (f"{BASE}/{case_id}/resolve", {"outcome": "upheld", "credit": {"reason": "x", "keys": ["evt-0001"]}}),
            (f"{BASE}/{case_id}/close", {"note": "x"}),
            (
                BASE,
                {
                    "site_id": str(world.own.site_id),
                    "year_month": MONTH,
                    "reason": "x",
                    "customer_reference": "x",
                    "whole_month": True,
                },
            ),
        ):
            response = client.post(path, json=body, headers=bearer(token))
            assert response.status_code == 403, (path, response.text)
    assert counts(app_conn) == before


def test_every_dispute_operation_is_in_the_openapi_document_with_schemas(client: TestClient[Any]) -> None:
    openapi = client.get("/schema/openapi.json").json()
    paths = openapi["paths"]
    expected = {
        (BASE, "post"): "OpenCaseIn",
        (BASE, "get"): None,
        (f"{BASE}/{{case_id}}", "get"): None,
        (f"{BASE}/{{case_id}}/investigate", "post"): "NoteIn",
        (f"{BASE}/{{case_id}}/resolve", "post"): "ResolveCaseIn",
        (f"{BASE}/{{case_id}}/close", "post"): "NoteIn",
    }
    schemas = openapi["components"]["schemas"]
    for (path, method), request in expected.items():
        operation = paths[path][method]
        text = str(operation)
        if request is not None:
            assert request in str(operation["requestBody"]), (path, method)
        assert any(name in text for name in ("CaseAnswer", "CaseList", "CaseDetailAnswer")), (path, method)
        assert "ErrorBody" in str(operation["responses"].get("403")), (path, method)
    for name in ("OpenCaseIn", "ResolveCaseIn", "CreditIn", "CaseView", "CorrectionView", "ErrorBody"):
        assert any(key.endswith(name) for key in schemas), name

"""Property-based fuzzing of the whole HTTP API from its OpenAPI document (schemathesis).

Every operation of ``/schema/openapi.json`` gets positive (schema-valid) and negative
(schema-violating) cases, each sent with one of several credentials (none, the site's ingest key,
its billing token, a platform admin, the cron secret) through the in-process app. Properties:

- no 5xx, except the documented ones: 500 ``billing_gate_closed`` and the watchtower's 503 alarm;
- a rejected request (4xx) writes nothing, except what the contract says it writes (a quota
  rejection keeps its ``billable=false`` row; a duplicate counts a dedup hit; a cron run that
  fails is recorded in ``cron_runs``).

``make test`` runs a few examples per operation (``FUZZ_MAX_EXAMPLES``, default 8, derandomized);
``make fuzz`` runs many more with fresh randomness.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import schemathesis
from hardening_support import bearer, table_state
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.ingest.schemas import BatchIn, EventIn
from kernel.settings import Settings
from kernel.tenants import create_site, issue_key

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "8"))
REPORT_DIR = os.environ.get("FUZZ_REPORT_DIR")  # `make fuzz` writes its figures there
DERANDOMIZE = os.environ.get("FUZZ_RANDOM", "") == ""
BASE_URL = "http://testserver.local"
SYNC = "/api/sync"


def with_ingest_body(openapi: dict[str, Any]) -> dict[str, Any]:
    """The document, with the ingest wire schema (SPEC §4.1) when the route does not declare one.

    ``POST /api/sync`` reads its raw body (the size limit must hold before parsing), so the
    framework cannot infer a body schema; the fuzzer gets it from the wire Structs themselves.
    """
    operation = openapi.get("paths", {}).get(SYNC, {}).get("post")
    if operation is None or "requestBody" in operation:
        return openapi
    _, components = msgspec.json.schema_components([EventIn, BatchIn], ref_template="#/components/schemas/{name}")
    openapi.setdefault("components", {}).setdefault("schemas", {}).update(components)
    operation["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [{"$ref": "#/components/schemas/EventIn"}, {"$ref": "#/components/schemas/BatchIn"}]
                }
            }
        },
    }
    return openapi


def _documented_5xx(method: str, path: str, response: Any) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    if response.status_code == 500 and body.get("status") == "billing_gate_closed":
        return True
    return response.status_code == 503 and path == "/api/cron/watchtower" and body.get("ok") is False


def _allowed_writes(path: str, response: Any, credential: str) -> set[str]:
    """Tables a rejected request may legitimately change (see the module docstring)."""
    allowed: set[str] = set()
    if response.headers.get("x-opsmantik-quota-exceeded") == "1":
        allowed |= {"ingest_idempotency", "counters"}
    if response.headers.get("x-opsmantik-dedup") == "1":
        allowed |= {"counters"}
    if path.startswith("/api/cron/") and credential == "cron secret":
        allowed |= {"cron_runs", "audit_log"}
    return allowed


def _write_figures(target: Path, exercised: dict[str, int], statuses: dict[int, int], failures: list[str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    figures = {
        "finished_at": datetime.now(UTC).isoformat(),
        "max_examples_per_operation_and_mode": MAX_EXAMPLES,
        "requests": sum(exercised.values()),
        "operations": dict(sorted(exercised.items())),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "failures": sorted(set(failures)),
    }
    name = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ".json"
    (target / name).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


def test_fuzz_every_operation_of_the_openapi_document(settings: Settings, owner_conn: psycopg.Connection[Any]) -> None:
    site = create_site(owner_conn, name="fuzz", public_id="fuzz", monthly_limit=10**9, rate_limit_per_minute=10**6)
    _, billing = issue_key(owner_conn, site_id=site.site.id, role="billing")
    _, platform = issue_key(owner_conn, site_id=None, role="admin")
    credentials = {
        "none": None,
        "ingest key": site.ingest_key,
        "billing token": billing,
        "platform admin": platform,
        "cron secret": settings.cron_secret,
    }
    failures: list[str] = []
    exercised: dict[str, int] = {}
    statuses: dict[int, int] = {}
    with TestClient(create_app(settings), base_url=BASE_URL) as client:
        document = with_ingest_body(client.get("/schema/openapi.json").json())
        schema = schemathesis.openapi.from_dict(document)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert operations, "the OpenAPI document lists no operation"
        for operation in operations:
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                strategy = operation.as_strategy(generation_mode=mode)

                @given(
                    case=strategy,
                    credential=st.sampled_from(sorted(credentials)),
                    tag=st.just((mode.value, operation.label)),
                )
                @hypothesis_settings(
                    max_examples=MAX_EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=DERANDOMIZE,
                    suppress_health_check=list(HealthCheck),
                )
                def exercise(case: Any, credential: str, tag: tuple[str, str]) -> None:
                    mode_name, operation_label = tag
                    kwargs = case.as_transport_kwargs(base_url=BASE_URL)
                    headers = {k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "authorization"}
                    token = credentials[credential]
                    if token is not None:
                        headers.update(bearer(token))
                    body: dict[str, Any] = {}
                    if "json" in kwargs:
                        document = kwargs["json"]
                        # A random site reference stops at the 403; about half the time name the key's
                        # own site, so generated events reach validation and the ledger.
                        own_site = credential == "ingest key" and isinstance(document, dict)
                        if own_site and "s" in document and len(str(document["s"])) % 2 == 0:
                            document = {**document, "s": site.site.public_id}
                        body["content"] = msgspec.json.encode(document)
                        headers.setdefault("Content-Type", "application/json")
                    elif kwargs.get("data") is not None:
                        data = kwargs["data"]
                        body["content"] = data.encode("utf-8") if isinstance(data, str) else data
                    before = table_state(owner_conn)
                    response = client.request(
                        case.method, case.formatted_path, params=kwargs.get("params"), headers=headers, **body
                    )
                    label = f"{case.method} {case.formatted_path} [{mode_name}, {credential}]"
                    exercised[operation_label] = exercised.get(operation_label, 0) + 1
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.status_code >= 500 and not _documented_5xx(case.method, case.path, response):
                        failures.append(f"{label}: {response.status_code} {response.text[:200]}")
                    if 400 <= response.status_code < 500:
                        after = table_state(owner_conn)
                        allowed = _allowed_writes(case.path, response, credential)
                        changed = sorted(k for k in after if after[k] != before[k] and k not in allowed)
                        if changed:
                            failures.append(f"{label}: rejected with {response.status_code} but wrote {changed}")

                try:
                    exercise()
                except Unsatisfiable:
                    # An operation with nothing to violate (no parameters, no body) has no negative cases.
                    if mode is not schemathesis.GenerationMode.NEGATIVE:
                        raise
    if REPORT_DIR:
        _write_figures(Path(REPORT_DIR), exercised, statuses, failures)
    assert not failures, "\n".join(sorted(set(failures))[:40])
    assert len(exercised) == len(operations), (
        f"operations never exercised: {set(o.label for o in operations) - set(exercised)}"
    )

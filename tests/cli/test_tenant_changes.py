"""Tenant changes support needs (issue 15): site show/update, key create/list/rotate, token list/revoke.

Every change goes through the SECURITY DEFINER functions of migration 0020, is audit-logged with
its values before and after, and takes effect for real clients: the tests send real HTTP through
the app and read the real ledger.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.cli import main
from kernel.clock import ManualClock
from kernel.settings import Settings
from kernel.tenants.directory import FOUND_TTL_S


def run_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    assert settings.database_url is not None
    env = {"DATABASE_URL": settings.database_url, "REVKERNEL_DATA_DIR": str(settings.data_dir)}
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def cli_json(settings: Settings, *args: str) -> Any:
    code, out, err = run_cli(settings, *args, "--json")
    assert code == 0, err or out
    return json.loads(out)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def client(settings: Settings, clock: ManualClock) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(settings, clock=clock)) as test_client:
        yield test_client


def _site(settings: Settings, public_id: str, *extra: str) -> dict[str, Any]:
    made: dict[str, Any] = cli_json(
        settings, "site", "create", "--name", public_id, "--public-id", public_id, "--monthly-limit", "2", *extra
    )
    return made


def _send(client: TestClient[Any], key: str, event_id: str) -> Any:
    return client.post("/api/sync", json={"event_id": event_id, "ec": "c"}, headers={"Authorization": f"Bearer {key}"})


def _audit(owner_conn: psycopg.Connection[Any], action: str) -> list[tuple[Any, ...]]:
    return owner_conn.execute(
        "SELECT actor, site_id::text, details FROM audit_log WHERE action = %s ORDER BY id", (action,)
    ).fetchall()


def test_site_show_and_update_record_before_and_after(settings: Settings, owner_conn: psycopg.Connection[Any]) -> None:
    made = _site(settings, "shop-a")
    change = cli_json(
        settings,
        "site",
        "update",
        "shop-a",
        "--monthly-limit",
        "500",
        "--soft-limit",
        "--hard-cap-multiplier",
        "1.5",
        "--rate-limit-per-minute",
        "900",
        "--billing-mode",
        "shadow",
        "--ingest-auth",
        "public",
        "--add-origin",
        "https://shop-a.example",
    )
    assert change["before"] == {
        "monthly_limit": 2,
        "soft_limit_enabled": False,
        "hard_cap_multiplier": 1.0,
        "rate_limit_per_minute": 2000,
        "billing_mode": "enforce",
        "ingest_auth": "key",
        "allowed_origins": [],
    }
    assert change["after"]["monthly_limit"] == 500 and change["after"]["billing_mode"] == "shadow"
    assert change["after"]["allowed_origins"] == ["https://shop-a.example"]
    shown = cli_json(settings, "site", "show", made["site_id"])
    assert (shown["monthly_limit"], shown["hard_cap"], shown["billing_mode"]) == (500, 750, "shadow")
    assert shown["live_ingest_keys"] == 1
    ((actor, site_id, details),) = _audit(owner_conn, "site_updated")
    assert actor.startswith("cli:") and site_id == made["site_id"]
    assert details == {"before": change["before"], "after": change["after"]}
    # The same values again: nothing changes and nothing more is logged.
    code, out, _ = run_cli(settings, "site", "update", "shop-a", "--monthly-limit", "500")
    assert code == 0 and "nothing changed" in out
    assert len(_audit(owner_conn, "site_updated")) == 1


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--add-origin", "https://shop.example/path"], "invalid_origin"),
        (["--add-origin", "javascript:alert(1)"], "invalid_origin"),
        (["--ingest-auth", "public"], "invalid_ingest_auth"),  # keyless with no allowed origin
        (["--hard-cap-multiplier", "0.5"], "invalid_hard_cap_multiplier"),
        (["--hard-cap-multiplier", "NaN"], "invalid_hard_cap_multiplier"),
        ([], "invalid_change"),
    ],
)
def test_bad_update_is_one_line_and_changes_nothing(
    settings: Settings, owner_conn: psycopg.Connection[Any], args: list[str], code: str
) -> None:
    _site(settings, "shop-b")
    before = cli_json(settings, "site", "show", "shop-b")
    exit_code, _, err = run_cli(settings, "site", "update", "shop-b", *args)
    assert exit_code == 1 and err.count("\n") == 1 and err.startswith("error: ") and f"[{code}]" in err
    assert cli_json(settings, "site", "show", "shop-b") == before
    assert _audit(owner_conn, "site_updated") == []


def test_raised_limit_admits_at_once_and_redecides_nothing(
    settings: Settings, client: TestClient[Any], app_conn: psycopg.Connection[Any]
) -> None:
    key = _site(settings, "shop-c")["ingest_key"]
    assert [_send(client, key, f"e{i}").status_code for i in range(3)] == [200, 200, 429]
    # Raised mid-month: read inside the ledger transaction, so the very next event sees it,
    # although every process caches the site for two seconds.
    assert run_cli(settings, "site", "update", "shop-c", "--monthly-limit", "4")[0] == 0
    assert _send(client, key, "e3").status_code == 200
    retried = _send(client, key, "e2")  # the event rejected before the change
    assert retried.status_code == 429 and retried.json()["status"] == "duplicate"
    states = app_conn.execute(
        "SELECT idempotency_key, billing_state FROM ingest_idempotency ORDER BY idempotency_key"
    ).fetchall()
    assert states == [("e0", "ACCEPTED"), ("e1", "ACCEPTED"), ("e2", "REJECTED_QUOTA"), ("e3", "ACCEPTED")]
    # Lowered below what was used: the accepted rows stay accepted, new events are rejected.
    assert run_cli(settings, "site", "update", "shop-c", "--monthly-limit", "1")[0] == 0
    assert _send(client, key, "e4").status_code == 429
    assert app_conn.execute("SELECT count(*) FROM ingest_idempotency WHERE billable").fetchone() == (3,)
    # Billing mode off at once as well.
    assert run_cli(settings, "site", "update", "shop-c", "--billing-mode", "off")[0] == 0
    assert _send(client, key, "e5").json()["billing_reason"] == "billing_disabled"


def test_key_rotation_overlap_then_only_the_new_key(
    settings: Settings, client: TestClient[Any], clock: ManualClock, owner_conn: psycopg.Connection[Any]
) -> None:
    made = _site(settings, "shop-d", "--monthly-limit", "100")
    old = made["ingest_key"]
    assert _send(client, old, "before").status_code == 200
    listed = cli_json(settings, "key", "list", "--site", "shop-d")
    assert [k["state"] for k in listed] == ["live"] and old.startswith(listed[0]["key_prefix"])
    rotated = cli_json(settings, "key", "rotate", listed[0]["key_prefix"] + "…", "--overlap", "1h")
    new = rotated["ingest_key"]
    assert new != old and rotated["old_key_id"] == listed[0]["key_id"]
    # Inside the overlap window both keys work.
    assert _send(client, old, "overlap-old").status_code == 200
    assert _send(client, new, "overlap-new").status_code == 200
    states = {k["key_id"]: k["state"] for k in cli_json(settings, "key", "list", "--site", "shop-d")}
    assert states == {rotated["old_key_id"]: "expiring", rotated["key_id"]: "live"}
    # Past it, only the new one: at once for a process that reads the key now, and within the
    # cache time (FOUND_TTL_S of wall time) for one that cached it before the rotation.
    clock.advance(timedelta(hours=1, minutes=5))  # past the CLI's (real) rotation instant + 1 h
    with TestClient(create_app(settings, clock=clock)) as fresh:
        assert _send(fresh, old, "after-old").status_code == 401
        assert _send(fresh, new, "after-new").status_code == 200
    deadline = time.monotonic() + 5 * FOUND_TTL_S
    while _send(client, old, "after-old").status_code != 401:
        assert time.monotonic() < deadline, "the rotated-out key still works past the cache time"
        time.sleep(0.1)
    ((_, _, details),) = _audit(owner_conn, "key_expiry_set")
    assert details["before"]["expires_at"] is None and details["after"]["expires_at"] is not None
    assert details["reason"] == f"rotated: replaced by {rotated['key_id']}"
    # A key being rotated out is not rotated twice.
    code, _, err = run_cli(settings, "key", "rotate", rotated["old_key_id"])
    assert code == 1 and "[key_not_live]" in err


def test_token_revoke_accepts_what_token_list_prints(settings: Settings, client: TestClient[Any]) -> None:
    made = _site(settings, "shop-e")
    token = cli_json(settings, "token", "create", "--site", "shop-e", "--role", "billing")
    params = {"site_id": made["site_id"], "year_month": "2026-01"}
    headers = {"Authorization": f"Bearer {token['token']}"}
    assert client.get("/api/billing/dispute-export", params=params, headers=headers).status_code == 200
    code, out, _ = run_cli(settings, "token", "list", "--site", "shop-e")
    assert code == 0
    printed = out.split()[0]
    assert printed.endswith("…") and token["token"].startswith(printed.removesuffix("…"))
    code, out, _ = run_cli(settings, "token", "revoke", printed)
    assert code == 0 and token["key_id"] in out
    # An ingest key is not a user token: token revoke does not touch it.
    code, _, err = run_cli(settings, "token", "revoke", made["ingest_key"])
    assert code == 1 and "[unknown_key]" in err
    # Revoked at once for a process that never saw the token, within the cache time for this one.
    with TestClient(create_app(settings)) as fresh:
        assert fresh.get("/api/billing/dispute-export", params=params, headers=headers).status_code == 401
    assert cli_json(settings, "token", "list", "--site", "shop-e") == []
    assert [t["state"] for t in cli_json(settings, "token", "list", "--site", "shop-e", "--all")] == ["revoked"]

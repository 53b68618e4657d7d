"""``revkernel dispute open|list|show|investigate|resolve|close|invoice|packet --case`` end to end."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner

from kernel.cli import main
from kernel.settings import Settings
from tests.disputes.conftest import REJECTED, World
from tests.export.conftest import MONTH


def _runner(settings: Settings) -> CliRunner:
    # The same data directory as the fixture: the CLI signs with the key that froze the month.
    return CliRunner(env={"DATABASE_URL": settings.database_url or "", "REVKERNEL_DATA_DIR": str(settings.data_dir)})


def _json(runner: CliRunner, *args: str) -> Any:
    result = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.output)


def test_support_workflow_on_the_command_line(
    world: World, settings: Settings, app_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    runner = _runner(settings)
    opened = _json(
        runner,
        "dispute",
        "open",
        "--site",
        "own-shop",
        "--year-month",
        MONTH,
        "--keys",
        f"evt-0001,evt-0008,{REJECTED}",
        "--reason",
        "three events were bots",
        "--customer-reference",
        "ZD-1234",
        "--actor",
        "alice@support",
    )
    case_id = opened["case"]["case_id"]
    assert opened["changed"] is True and opened["case"]["opened_by"] == "alice@support"
    assert opened["case"]["hold"]["active"] is True

    listed = _json(runner, "dispute", "list", "--site", "own-shop", "--state", "open")
    assert [c["case_id"] for c in listed["cases"]] == [case_id]

    illegal = runner.invoke(main, ["dispute", "close", case_id])
    assert illegal.exit_code == 1
    assert illegal.stderr.strip().splitlines() == [illegal.stderr.strip()]  # one line, no traceback
    assert (
        illegal.stderr.startswith("error: cannot close a case that is open")
        and "[illegal_transition]" in illegal.stderr
    )

    investigated = runner.invoke(main, ["dispute", "investigate", case_id, "--note", "pulling the ledger"])
    assert investigated.exit_code == 0 and "investigating" in investigated.output

    refused = runner.invoke(
        main,
        [
            "dispute",
            "resolve",
            case_id,
            "--outcome",
            "partially_upheld",
            "--credit-keys",
            REJECTED,
            "--credit-reason",
            "bots",
        ],
    )
    assert refused.exit_code == 1 and "[credit_not_billable]" in refused.stderr

    resolved = _json(
        runner,
        "dispute",
        "resolve",
        case_id,
        "--outcome",
        "partially_upheld",
        "--credit-keys",
        "evt-0001,evt-0008",
        "--credit-reason",
        "bot traffic",
        "--note",
        "two of three were bots",
    )
    correction = resolved["case"]["correction"]
    assert correction["credited_keys"] == ["evt-0001", "evt-0008"] and correction["key_id"] == world.key.key_id

    shown = runner.invoke(main, ["dispute", "show", case_id])
    assert shown.exit_code == 0, shown.output
    assert "partially_upheld" in shown.output and "dispute_resolve" in shown.output and "two of three" in shown.output

    invoice = _json(runner, "dispute", "invoice", "--year-month", MONTH, "--site", "own-shop")
    assert invoice[0]["billable"] == 9 and invoice[0]["credited"] == 2 and invoice[0]["net_billable"] == 7
    table = runner.invoke(main, ["dispute", "invoice", "--year-month", MONTH])
    assert table.exit_code == 0 and "own-shop" in table.output and "other-shop" in table.output

    out = tmp_path / "case.zip"
    packet = runner.invoke(main, ["dispute", "packet", "--case", case_id, "--out", str(out), "--no-report"])
    assert packet.exit_code == 0, packet.output + packet.stderr
    both = runner.invoke(main, ["dispute", "packet", "--case", case_id, "--site", "own-shop", "--out", str(out)])
    assert both.exit_code == 1 and "[invalid_packet_scope]" in both.stderr
    checked = runner.invoke(main, ["dispute", "verify", str(out), "--trusted-key", world.key.public_key.hex()])
    assert checked.exit_code == 0, checked.output
    assert "correction:1" in checked.output and "net_invoice" in checked.output and "verdict: PASS" in checked.output

    closed = _json(runner, "dispute", "close", case_id, "--note", "customer informed")
    assert closed["case"]["state"] == "closed" and closed["case"]["hold"]["active"] is False
    again = _json(runner, "dispute", "close", case_id)
    assert again["changed"] is False


def test_cli_errors_are_one_line(world: World, settings: Settings) -> None:
    runner = _runner(settings)
    for args, code in (
        (["dispute", "show", "not-a-uuid"], "invalid_case_id"),
        (["dispute", "show", str(uuid.uuid4())], "unknown_case"),
        (
            [
                "dispute",
                "open",
                "--site",
                "nowhere",
                "--year-month",
                MONTH,
                "--whole-month",
                "--reason",
                "r",
                "--customer-reference",
                "c",
            ],
            "unknown_site",
        ),
        (
            [
                "dispute",
                "open",
                "--site",
                "own-shop",
                "--year-month",
                MONTH,
                "--reason",
                "r",
                "--customer-reference",
                "c",
            ],
            "invalid_dispute_scope",
        ),
        (["dispute", "packet", "--out", "x.zip"], "invalid_packet_scope"),
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith("error: ") and result.stderr.rstrip().endswith(f"[{code}]"), result.stderr

"""``revkernel dispute packet|verify``: assemble dispute evidence, and check it with no database.

The case commands (``open|list|show|investigate|resolve|close|invoice``) live in
``kernel.cli.dispute_cases`` and are attached to this group by ``register``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from kernel.cli.context import CliContext, pass_cli
from kernel.cli.dispute_cases import add_case_commands, case_packet
from kernel.clock import clock_from_spec
from kernel.errors import InputError
from kernel.export.packet import build_packet, parse_disputed_keys
from kernel.export.verify import Verification, verify_packet

__all__ = ["register"]

DETAIL_COLUMN_CHARS = 100


@click.group("dispute")
def dispute_group() -> None:
    """Dispute evidence packets (SPEC §6)."""


@dispute_group.command("packet")
@click.option("--site", "site_ref", default=None, help="Site UUID or public id.")
@click.option("--year-month", default=None, help="The frozen month, YYYY-MM.")
@click.option("--keys", default="", help="Comma-separated disputed idempotency keys (inclusion proofs).")
@click.option("--case", "case_id", default=None, help="A dispute case: its month, keys, state and corrections.")
@click.option(
    "--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Packet zip to write."
)
@click.option("--no-report", is_flag=True, help="Skip the rendered notebook report (no Jupyter kernel needed).")
@pass_cli
def packet(
    cli: CliContext,
    site_ref: str | None,
    year_month: str | None,
    keys: str,
    case_id: str | None,
    out: Path,
    no_report: bool,
) -> None:
    """Assemble the evidence packet of a frozen site-month (or of a case) and verify it before writing it."""
    if case_id is not None:
        result = case_packet(cli, case_id, out=out, render_report=not no_report, other=(site_ref, year_month, keys))
    elif site_ref is None or year_month is None:
        raise InputError("give --site and --year-month, or --case", code="invalid_packet_scope")
    else:
        result = build_packet(
            cli.db,
            site_ref=site_ref,
            year_month=year_month,
            disputed_keys=parse_disputed_keys(keys),
            out=out,
            clock=clock_from_spec(cli.settings.clock),
            actor="cli:dispute-packet",
            render_report=not no_report,
        )
    counts = result.manifest["counts"]
    click.echo(f"packet: {result.path}")
    click.echo(f"  {counts['rows']} rows, {counts['billable']} billable, merkle root {result.manifest['merkle_root']}")
    click.echo(f"  snapshot {result.manifest['snapshot']['snapshot_hash']} signed by key {result.manifest['key_id']}")
    for entry in result.manifest["disputed"]:
        click.echo(f"  disputed {entry['idempotency_key']}: {entry['status']}")
    if result.report_verdict is not None:
        click.echo(f"  report verdict: {result.report_verdict}")
    click.echo(f"  self-check: {'PASS' if result.verification.ok else 'FAIL'}")


def format_table(verification: Verification) -> str:
    """The pass/fail table printed by ``dispute verify``."""
    rows = [(c.name, "pass" if c.ok else "FAIL", c.reason or "", c.detail) for c in verification.checks]
    width = max([len("check"), *(len(r[0]) for r in rows)])
    reason_width = max([len("reason"), *(len(r[2]) for r in rows)])
    lines = [f"{'check':<{width}}  result  {'reason':<{reason_width}}  detail"]
    for name, result, reason, detail in rows:
        short = detail if len(detail) <= DETAIL_COLUMN_CHARS else detail[: DETAIL_COLUMN_CHARS - 1] + "…"
        lines.append(f"{name:<{width}}  {result:<6}  {reason:<{reason_width}}  {short}")
    lines.append(f"verdict: {'PASS' if verification.ok else 'FAIL'}")
    return "\n".join(lines)


@dispute_group.command("verify")
@click.argument("packet_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--trusted-key",
    "trusted_keys",
    multiple=True,
    help="Published public key (hex) or key id the snapshot must be signed with (repeat).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(packet_path: Path, trusted_keys: tuple[str, ...], as_json: bool) -> None:
    """Verify a packet offline (no database): files, CSV, Merkle root, signature, proofs."""
    verification = verify_packet(packet_path, trusted_keys=trusted_keys)
    if as_json:
        click.echo(json.dumps(verification.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(format_table(verification))
    verification.raise_for_failure()


def register(main: click.Group) -> None:
    add_case_commands(dispute_group)  # issue 15: open, list, show, investigate, resolve, close, invoice
    main.add_command(dispute_group)

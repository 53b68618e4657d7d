"""``revkernel dispute packet|verify``: assemble dispute evidence, and check it with no database."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kernel.cli.context import CliContext, pass_cli
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
@click.option("--site", "site_ref", required=True, help="Site UUID or public id.")
@click.option("--year-month", required=True, help="The frozen month, YYYY-MM.")
@click.option("--keys", default="", help="Comma-separated disputed idempotency keys (inclusion proofs).")
@click.option(
    "--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Packet zip to write."
)
@click.option("--no-report", is_flag=True, help="Skip the rendered notebook report (no Jupyter kernel needed).")
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Keep the packet when a disputed key is not in the month's ledger (answered not_in_ledger).",
)
@pass_cli
def packet(
    cli: CliContext, site_ref: str, year_month: str, keys: str, out: Path, no_report: bool, allow_missing: bool
) -> None:
    """Assemble the evidence packet of a frozen site-month and verify it before writing it.

    A disputed key that is not in the month's ledger is usually a typo or the wrong month: the
    command warns, removes the packet and exits non-zero, unless ``--allow-missing`` is given.
    """
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
    missing = [e["idempotency_key"] for e in result.manifest["disputed"] if e["status"] == "not_in_ledger"]
    if missing:
        click.echo(
            f"warning: {len(missing)} disputed key(s) not in the {year_month} ledger: {', '.join(missing)}",
            err=True,
        )
        if not allow_missing:
            result.path.unlink(missing_ok=True)
            raise InputError(
                f"packet not kept: {len(missing)} disputed key(s) are not in the month "
                "(check the keys and the month, or pass --allow-missing)",
                code="disputed_key_not_in_month",
            )


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
    main.add_command(dispute_group)

"""``revkernel dispute packet|verify``: assemble dispute evidence, and check it with no database.

``dispute verify`` exit statuses: 0 every check passed and the signing key was pinned with
``--trusted-key`` (or ``--allow-unpinned`` was given); 1 a check failed (the first failure's reason
on stderr); 2 a usage error (a malformed ``--trusted-key`` among them: ``trusted_key_malformed``);
3 every check passed but no key was pinned (``key_not_pinned``): the packet is only shown to be
consistent with the key it carries, which anyone can generate.

The case commands (``open|list|show|investigate|resolve|close|invoice``) live in
``kernel.cli.dispute_cases`` and are attached to this group by ``register``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from kernel.cli.context import CliContext, pass_cli
from kernel.cli.dispute_cases import add_case_commands, case_packet
from kernel.clock import clock_from_spec
from kernel.errors import InputError
from kernel.export.packet import build_packet, parse_disputed_keys
from kernel.export.verify import Verification, parse_trusted_keys, verify_packet

__all__ = ["EXIT_FAILED", "EXIT_PASSED", "EXIT_UNPINNED", "EXIT_USAGE", "register"]

DETAIL_COLUMN_CHARS = 100
EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNPINNED = 3
# A packet's text reaches the terminal: control characters (ANSI escapes, CR) and bidi overrides are
# shown escaped, never run or rendered.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")


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
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Keep the packet when a disputed key is not in the month's ledger (answered not_in_ledger).",
)
@pass_cli
def packet(
    cli: CliContext,
    site_ref: str | None,
    year_month: str | None,
    keys: str,
    case_id: str | None,
    out: Path,
    no_report: bool,
    allow_missing: bool,
) -> None:
    """Assemble the evidence packet of a frozen site-month (or of a case) and verify it before writing it.

    A disputed key that is not in the month's ledger is usually a typo or the wrong month: the
    command warns, removes the packet and exits non-zero, unless ``--allow-missing`` is given.
    """
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
    missing = [e["idempotency_key"] for e in result.manifest["disputed"] if e["status"] == "not_in_ledger"]
    if missing:
        click.echo(
            f"warning: {len(missing)} disputed key(s) not in the {result.manifest['year_month']} ledger: "
            f"{', '.join(missing)}",
            err=True,
        )
        if not allow_missing:
            result.path.unlink(missing_ok=True)
            raise InputError(
                f"packet not kept: {len(missing)} disputed key(s) are not in the month "
                "(check the keys and the month, or pass --allow-missing)",
                code="disputed_key_not_in_month",
            )


def _shown(text: str) -> str:
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _verdict_line(verification: Verification, allow_unpinned: bool) -> str:
    if verification.verdict == "fail":
        return "verdict: FAIL"
    if verification.verdict == "pass":
        return "verdict: PASS (signed by a pinned key)"
    if allow_unpinned:
        return "verdict: PASS, KEY NOT PINNED (--allow-unpinned): consistent with the key the packet carries"
    return (
        "verdict: KEY NOT PINNED: every check passed, but only against the key the packet carries;"
        " rerun with --trusted-key <our published public key> (GET /api/billing/public-keys)"
    )


def format_table(verification: Verification, *, allow_unpinned: bool = False) -> str:
    """The pass/fail table printed by ``dispute verify``."""
    rows = [(_shown(c.name), "pass" if c.ok else "FAIL", c.reason or "", _shown(c.detail)) for c in verification.checks]
    width = max([len("check"), *(len(r[0]) for r in rows)])
    reason_width = max([len("reason"), *(len(r[2]) for r in rows)])
    lines = [f"{'check':<{width}}  result  {'reason':<{reason_width}}  detail"]
    for name, result, reason, detail in rows:
        short = detail if len(detail) <= DETAIL_COLUMN_CHARS else detail[: DETAIL_COLUMN_CHARS - 1] + "…"
        lines.append(f"{name:<{width}}  {result:<6}  {reason:<{reason_width}}  {short}")
    lines.append(_verdict_line(verification, allow_unpinned))
    return "\n".join(lines)


@dispute_group.command("verify")
@click.argument("packet_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--trusted-key",
    "trusted_keys",
    multiple=True,
    help="Our published Ed25519 public key, as 64 hex characters or a name+hash+base64 verifier key"
    " (repeat for several). A key id is not enough.",
)
@click.option(
    "--allow-unpinned",
    is_flag=True,
    help="Exit 0 when every check passes without --trusted-key (default: exit 3, key not pinned).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def verify(
    ctx: click.Context, packet_path: Path, trusted_keys: tuple[str, ...], allow_unpinned: bool, as_json: bool
) -> None:
    """Verify a packet offline (no database): files, CSV, Merkle root, signature, proofs.

    Exits 0 on a pass with a pinned key, 1 when a check fails, 2 on a usage error (such as a
    malformed --trusted-key) and 3 when every check passes but no key was pinned.
    """
    try:
        parse_trusted_keys(trusted_keys)
    except InputError as exc:
        click.echo(f"error: {exc.message} [{exc.code}]", err=True)
        ctx.exit(EXIT_USAGE)
    verification = verify_packet(packet_path, trusted_keys=trusted_keys)
    if as_json:
        click.echo(json.dumps(verification.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(format_table(verification, allow_unpinned=allow_unpinned))
    failed = verification.first_failure
    if failed is not None:
        detail = _shown(f"{failed.name}: {failed.detail}")
        click.echo(f"error: packet verification failed: {detail} [{failed.reason or 'failed'}]", err=True)
        ctx.exit(EXIT_FAILED)
    if verification.verdict == "unpinned" and not allow_unpinned:
        click.echo(
            "error: every check passed, but the signing key is not pinned: anyone can make a packet that"
            " is consistent with its own key; pass --trusted-key <published public key> [key_not_pinned]",
            err=True,
        )
        ctx.exit(EXIT_UNPINNED)


def register(main: click.Group) -> None:
    add_case_commands(dispute_group)  # issue 15: open, list, show, investigate, resolve, close, invoice
    main.add_command(dispute_group)

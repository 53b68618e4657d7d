"""``revkernel dispute open|list|show|investigate|resolve|close|invoice``: dispute cases (issue 15).

Thin over ``kernel.disputes``: the same service functions as ``/api/billing/disputes``, and
``--json`` prints the API's answer shapes (``kernel.disputes.schemas``). The actor recorded in
``audit_log`` is ``--actor``, else ``cli:<OS user>``.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kernel.cli.context import CliContext, echo_json, pass_cli
from kernel.clock import Clock, clock_from_spec
from kernel.cron.keystore import load_signing_key
from kernel.disputes import service
from kernel.disputes.evidence import build_case_packet
from kernel.disputes.invoice import month_invoices, site_month_invoice
from kernel.disputes.lifecycle import OUTCOMES
from kernel.disputes.schemas import CaseView, case_answer, case_detail_answer, case_list, to_json
from kernel.errors import InputError
from kernel.export.packet import PacketResult
from kernel.tenants import resolve_site

__all__ = ["add_case_commands", "case_packet"]


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no user name in this environment
        return "cli:unknown"


def _clock(cli: CliContext) -> Clock:
    return clock_from_spec(cli.settings.clock)


def _keys(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


def _print_case(view: CaseView, changed: bool | None = None) -> None:
    scope = "the whole month" if view.whole_month else f"{len(view.disputed_keys)} key(s)"
    state = view.state + (f" ({view.outcome})" if view.outcome else "")
    suffix = "" if changed is None else ("" if changed else "  [unchanged: already done]")
    click.echo(f"case {view.case_id}  {view.public_id} {view.year_month}  {state}  {scope}{suffix}")
    click.echo(f"  customer reference {view.customer_reference}; opened {view.opened_at} by {view.opened_by}")
    if not view.whole_month:
        click.echo(f"  disputed: {', '.join(view.disputed_keys)}")
    if view.hold is not None:
        hold = f"active since {view.hold.held_since}" if view.hold.active else f"released {view.hold.released_at}"
        click.echo(f"  hold on the month: {hold}")
    if view.correction is not None:
        c = view.correction
        what = ", ".join(c.credited_keys) if c.credited_keys else "by count"
        click.echo(f"  correction {c.correction_hash}: credits {c.credited_count} ({what}), key {c.key_id}")


def _moved(cli: CliContext, as_json: bool, move: Callable[[Any], service.CaseMove]) -> None:
    with cli.db.connect("app", autocommit=True) as conn:
        answer = case_answer(move(conn))
    if as_json:
        echo_json(to_json(answer))
    else:
        _print_case(answer.case, answer.changed)


_json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the API's shape).")
_actor_option = click.option("--actor", default=None, help="Who does this, for audit_log (default: cli:<OS user>).")
_note_option = click.option("--note", default="", help="A note kept with the move in audit_log.")


@click.command("open")
@click.option("--site", "site_ref", required=True, help="Site UUID or public id.")
@click.option("--year-month", required=True, help="The disputed month, YYYY-MM.")
@click.option("--keys", default="", help="Comma-separated disputed idempotency keys.")
@click.option("--whole-month", is_flag=True, help="The customer disputes the whole month (no keys).")
@click.option("--reason", required=True, help="What the customer says.")
@click.option("--customer-reference", required=True, help="The customer's ticket or reference.")
@click.option("--case-id", default=None, help="A UUID of your choosing: the same open again changes nothing.")
@_actor_option
@_json_option
@pass_cli
def open_command(
    cli: CliContext,
    site_ref: str,
    year_month: str,
    keys: str,
    whole_month: bool,
    reason: str,
    customer_reference: str,
    case_id: str | None,
    actor: str | None,
    as_json: bool,
) -> None:
    """Open a dispute case for a site-month; its month is held from now on (no cleanup)."""

    def move(conn: Any) -> service.CaseMove:
        site = resolve_site(conn, site_ref)
        return service.open_case(
            conn,
            site_id=site.id,
            year_month=year_month,
            disputed_keys=_keys(keys),
            whole_month=whole_month,
            reason=reason,
            customer_reference=customer_reference,
            actor=_actor(actor),
            clock=_clock(cli),
            case_id=service.parse_case_id(case_id) if case_id else None,
        )

    _moved(cli, as_json, move)


@click.command("list")
@click.option("--site", "site_ref", default=None, help="Site UUID or public id (default: every site).")
@click.option("--year-month", default=None, help="Only cases of this month.")
@click.option("--state", default=None, help="Only these states (comma-separated: open,investigating,…).")
@_json_option
@pass_cli
def list_command(
    cli: CliContext, site_ref: str | None, year_month: str | None, state: str | None, as_json: bool
) -> None:
    """List dispute cases, newest first."""
    with cli.db.connect("app", autocommit=True) as conn:
        site_id = resolve_site(conn, site_ref).id if site_ref else None
        cases = service.find_cases(conn, site_id=site_id, year_month=year_month, states=_keys(state or "") or None)
    answer = case_list(cases)
    if as_json:
        echo_json(to_json(answer))
        return
    if not cases:
        click.echo("no dispute cases")
    for view in answer.cases:
        state_text = view.state + (f" ({view.outcome})" if view.outcome else "")
        scope = "whole month" if view.whole_month else f"{len(view.disputed_keys)} key(s)"
        click.echo(
            f"{view.case_id}  {view.public_id:<16} {view.year_month}  {state_text:<28} {scope:<11} "
            f"{view.customer_reference}"
        )


@click.command("show")
@click.argument("case_id")
@_json_option
@pass_cli
def show_command(cli: CliContext, case_id: str, as_json: bool) -> None:
    """Show a case: its hold, its correction and its history from audit_log."""
    with cli.db.connect("app", autocommit=True) as conn:
        answer = case_detail_answer(service.get_case(conn, service.parse_case_id(case_id)))
    if as_json:
        echo_json(to_json(answer))
        return
    _print_case(answer.case)
    click.echo("  history:")
    for event in answer.history:
        details = event.details
        move = f"{details.get('from', '')} → {details['to']}" if "to" in details else ""
        note = f"  note: {details['note']}" if details.get("note") else ""
        click.echo(f"    {event.at}  {event.action:<24} {move:<28} by {event.actor}{note}")


@click.command("investigate")
@click.argument("case_id")
@_note_option
@_actor_option
@_json_option
@pass_cli
def investigate_command(cli: CliContext, case_id: str, note: str, actor: str | None, as_json: bool) -> None:
    """open → investigating."""
    parsed = service.parse_case_id(case_id)
    _moved(
        cli,
        as_json,
        lambda conn: service.investigate_case(conn, parsed, note=note, actor=_actor(actor), clock=_clock(cli)),
    )


@click.command("resolve")
@click.argument("case_id")
@click.option("--outcome", type=click.Choice(OUTCOMES), required=True, help="How the case ends.")
@click.option("--credit-keys", default="", help="Comma-separated keys to credit (billable rows of the month).")
@click.option("--credit-count", type=int, default=None, help="Or: a number of events to credit.")
@click.option("--credit-reason", default="", help="Why the credit is given (signed into the correction).")
@_note_option
@_actor_option
@_json_option
@pass_cli
def resolve_command(
    cli: CliContext,
    case_id: str,
    outcome: str,
    credit_keys: str,
    credit_count: int | None,
    credit_reason: str,
    note: str,
    actor: str | None,
    as_json: bool,
) -> None:
    """investigating → resolved; upheld / partially_upheld write a signed correction (the credit)."""
    parsed = service.parse_case_id(case_id)
    keys = _keys(credit_keys)
    credit = service.Credit(credit_reason, tuple(keys), credit_count) if keys or credit_count is not None else None

    def move(conn: Any) -> service.CaseMove:
        return service.resolve_case(
            conn,
            parsed,
            outcome=outcome,
            note=note,
            credit=credit,
            actor=_actor(actor),
            clock=_clock(cli),
            signer=load_signing_key(cli.settings),
        )

    _moved(cli, as_json, move)


@click.command("close")
@click.argument("case_id")
@_note_option
@_actor_option
@_json_option
@pass_cli
def close_command(cli: CliContext, case_id: str, note: str, actor: str | None, as_json: bool) -> None:
    """resolved → closed; releases the month's hold unless another case of it is open."""
    parsed = service.parse_case_id(case_id)
    _moved(
        cli, as_json, lambda conn: service.close_case(conn, parsed, note=note, actor=_actor(actor), clock=_clock(cli))
    )


@click.command("invoice")
@click.option("--year-month", required=True, help="The month, YYYY-MM.")
@click.option("--site", "site_ref", default=None, help="One site (default: every site frozen or disputed).")
@_json_option
@pass_cli
def invoice_command(cli: CliContext, year_month: str, site_ref: str | None, as_json: bool) -> None:
    """The net invoice: the snapshot's counts minus the signed corrections, with the month's cases."""
    with cli.db.connect("app", autocommit=True) as conn:
        invoices = [site_month_invoice(conn, site_ref, year_month)] if site_ref else month_invoices(conn, year_month)
    if as_json:
        echo_json([inv.to_json() for inv in invoices])
        return
    click.echo(f"{'site':<16} {'month':<7}  {'billed':>7} {'credited':>8} {'net':>7}  {'overage net':>11}  cases")
    for inv in invoices:
        if inv.billable is None:
            figures = f"{'open':>7} {inv.credited:>8} {'-':>7}  {'-':>11}"
        else:
            figures = f"{inv.billable:>7} {inv.credited:>8} {inv.net_billable:>7}  {inv.net_overage:>11}"
        cases = f"{len(inv.open_cases)} open, {len(inv.resolved_cases)} resolved"
        click.echo(f"{inv.public_id:<16} {inv.year_month:<7}  {figures}  {cases}")


def add_case_commands(group: click.Group) -> None:
    """Attach the case commands to ``revkernel dispute``."""
    for command in (
        open_command,
        list_command,
        show_command,
        investigate_command,
        resolve_command,
        close_command,
        invoice_command,
    ):
        group.add_command(command)


def case_packet(
    cli: CliContext, case_id: str, *, out: Path, render_report: bool, other: tuple[str | None, str | None, str]
) -> PacketResult:
    """``dispute packet --case ID``: the case's month and keys; ``--site/--year-month/--keys`` are refused."""
    if any(other):
        raise InputError(
            "--case names the month and keys itself: drop --site, --year-month and --keys", code="invalid_packet_scope"
        )
    return build_case_packet(
        cli.db,
        service.parse_case_id(case_id),
        out=out,
        clock=_clock(cli),
        actor=_actor(None) + ":dispute-packet",
        render_report=render_report,
    )

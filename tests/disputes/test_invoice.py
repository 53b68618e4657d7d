"""The invoice finance reads: snapshot minus corrections, for one site-month and for a whole month."""

from __future__ import annotations

from typing import Any

import psycopg

from kernel.db.connect import Database
from kernel.disputes import Credit, invoice_frame, month_invoices, service, site_month_invoice
from kernel.disputes.invoice import INVOICE_COLUMNS
from kernel.settings import Settings
from tests.disputes.conftest import OVERAGE, World
from tests.export.conftest import MONTH, insert_rows, ledger_row, make_tenant


def _resolved(conn: psycopg.Connection[Any], world: World, keys: tuple[str, ...], credit: Credit | None) -> None:
    case_id = service.open_case(
        conn,
        site_id=world.own.site_id,
        year_month=MONTH,
        disputed_keys=list(keys),
        whole_month=not keys,
        reason="r",
        customer_reference="c",
        actor="a",
        clock=world.clock,
    ).case.case_id
    service.investigate_case(conn, case_id, note="", actor="a", clock=world.clock)
    outcome = "rejected" if credit is None else "partially_upheld"
    service.resolve_case(
        conn, case_id, outcome=outcome, note="", credit=credit, actor="a", clock=world.clock, signer=world.key
    )


def test_one_site_month_original_credited_net_and_cases(
    world: World, settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    before = site_month_invoice(app_conn, "own-shop", MONTH)
    assert (before.billable, before.overage, before.credited, before.net_billable, before.net_overage) == (
        9,
        2,
        0,
        9,
        2,
    )
    assert before.cases == () and before.frozen

    _resolved(app_conn, world, ("evt-0001", *OVERAGE), Credit("bots", keys=("evt-0001", OVERAGE[0])))
    _resolved(app_conn, world, (), Credit("goodwill", count=2))
    open_case = service.open_case(
        app_conn,
        site_id=world.own.site_id,
        year_month=MONTH,
        disputed_keys=["evt-0002"],
        whole_month=False,
        reason="r",
        customer_reference="still open",
        actor="a",
        clock=world.clock,
    ).case

    # As the notebooks read it: the read-only analyst role.
    with Database(settings).connect("analyst", autocommit=True) as analyst:
        after = site_month_invoice(analyst, str(world.own.site_id), MONTH)
    assert (after.billable, after.credited, after.net_billable) == (9, 4, 5)
    assert (after.overage, after.credited_overage, after.net_overage) == (2, 1, 1)
    assert after.corrections == 2
    assert [c.case_id for c in after.open_cases] == [str(open_case.case_id)]
    assert len(after.resolved_cases) == 2 and all(c.outcome == "partially_upheld" for c in after.resolved_cases)
    figures = after.to_json()
    assert figures["net_billable"] == 5 and figures["open_cases"] == 1 and figures["resolved_cases"] == 2
    # The other tenant's invoice is untouched by our corrections.
    other = site_month_invoice(app_conn, "other-shop", MONTH)
    assert (other.billable, other.credited, other.net_billable, other.cases) == (3, 0, 3, ())


def test_a_whole_month_in_one_set_based_call(world: World, app_conn: psycopg.Connection[Any]) -> None:
    _resolved(app_conn, world, ("evt-0001",), Credit("bots", keys=("evt-0001",)))
    unfrozen = make_tenant(app_conn, "late-shop")  # disputed, not frozen: listed with no original figures
    insert_rows(app_conn, unfrozen.site_id, [ledger_row("late-1", world.clock.now().replace(month=10, day=20))])
    service.open_case(
        app_conn,
        site_id=unfrozen.site_id,
        year_month=MONTH,
        disputed_keys=[],
        whole_month=True,
        reason="r",
        customer_reference="c",
        actor="a",
        clock=world.clock,
    )
    make_tenant(app_conn, "quiet-shop")  # neither frozen nor disputed: not on the month's invoice list
    invoices = {inv.public_id: inv for inv in month_invoices(app_conn, MONTH)}
    assert sorted(invoices) == ["late-shop", "other-shop", "own-shop"]
    assert invoices["own-shop"].net_billable == 8 and invoices["other-shop"].net_billable == 3
    late = invoices["late-shop"]
    assert not late.frozen and late.billable is None and late.net_billable is None and len(late.open_cases) == 1
    frame = invoice_frame(list(invoices.values()))
    assert list(frame.columns) == list(INVOICE_COLUMNS) and len(frame) == 3
    assert frame.set_index("public_id").loc["own-shop", "credited"] == 1

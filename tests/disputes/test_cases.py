"""Dispute cases through the service: every transition, idempotency, holds, credits, the constraints."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from kernel.clock import ManualClock
from kernel.db.connect import Database
from kernel.disputes import Credit, CreditRefused, IllegalTransition, service
from kernel.disputes.document import CorrectionDocument
from kernel.errors import Conflict, InputError, NotFound
from kernel.ledger import SnapshotDocument, verify_signature
from kernel.settings import Settings
from tests.disputes.conftest import BILLABLE, NON_BILLABLE, OPENED_AT, OVERAGE, REJECTED, World, counts
from tests.export.conftest import MONTH

ACTOR = "billing@site:test"


def _open(conn: psycopg.Connection[Any], world: World, keys: tuple[str, ...] = (), **extra: Any) -> service.CaseMove:
    return service.open_case(
        conn,
        site_id=world.own.site_id,
        year_month=extra.pop("year_month", MONTH),
        disputed_keys=list(keys),
        whole_month=not keys,
        reason=extra.pop("reason", "customer says these were bot clicks"),
        customer_reference=extra.pop("customer_reference", "TICKET-42"),
        actor=ACTOR,
        clock=world.clock,
        **extra,
    )


def _resolve(
    conn: psycopg.Connection[Any], world: World, case_id: uuid.UUID, outcome: str, credit: Credit | None
) -> Any:
    return service.resolve_case(
        conn,
        case_id,
        outcome=outcome,
        note="checked the ledger",
        credit=credit,
        actor=ACTOR,
        clock=world.clock,
        signer=world.key,
    )


def _investigated(conn: psycopg.Connection[Any], world: World, keys: tuple[str, ...] = ()) -> uuid.UUID:
    case_id = _open(conn, world, keys).case.case_id
    service.investigate_case(conn, case_id, note="looking", actor=ACTOR, clock=world.clock)
    return case_id


def _audit(conn: psycopg.Connection[Any], case_id: uuid.UUID) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (str(a), str(b), dict(c))
        for a, b, c in conn.execute(
            "SELECT action, actor, details FROM audit_log WHERE details->>'case_id' = %s ORDER BY id", (str(case_id),)
        ).fetchall()
    ]


def test_open_places_the_hold_in_the_same_transaction_and_records_who(
    world: World, app_conn: psycopg.Connection[Any]
) -> None:
    move = _open(app_conn, world, ("evt-0001", "evt-0008"))
    case = move.case
    assert move.changed and case.state == "open" and case.outcome is None
    assert case.disputed_keys == ("evt-0001", "evt-0008") and not case.whole_month
    assert case.opened_by == ACTOR and case.opened_at == OPENED_AT
    hold = app_conn.execute(
        "SELECT reason, created_at, released_at FROM dispute_holds WHERE site_id = %s AND year_month = %s",
        (world.own.site_id, MONTH),
    ).fetchone()
    assert hold is not None and str(case.case_id) in hold[0] and hold[1] == OPENED_AT and hold[2] is None
    actions = [(action, actor) for action, actor, _ in _audit(app_conn, case.case_id)]
    assert actions == [("dispute_open", ACTOR), ("dispute_hold_placed", ACTOR)]


def test_a_failed_open_leaves_neither_case_nor_hold(world: World, app_conn: psycopg.Connection[Any]) -> None:
    before = counts(app_conn)
    with pytest.raises(NotFound):
        service.open_case(
            app_conn,
            site_id=uuid.uuid4(),
            year_month=MONTH,
            disputed_keys=[],
            whole_month=True,
            reason="r",
            customer_reference="c",
            actor=ACTOR,
            clock=world.clock,
        )
    for bad, code in (
        ({"keys": (), "whole": False}, "invalid_dispute_scope"),
        ({"keys": ("evt-0001",), "whole": True}, "invalid_dispute_scope"),
        ({"keys": ("evt-0001",), "whole": False, "year_month": "2026-12"}, "month_in_future"),
        ({"keys": ("evt-0001",), "whole": False, "year_month": "2026-13"}, "invalid_year_month"),
        ({"keys": ("evt-0001",), "whole": False, "reason": "  "}, "invalid_reason"),
        ({"keys": ("evt-0001",), "whole": False, "customer_reference": "x" * 201}, "invalid_customer_reference"),
        ({"keys": ("bad\x01key",), "whole": False}, "invalid_disputed_key"),
    ):
        with pytest.raises(InputError) as raised:
            service.open_case(
                app_conn,
                site_id=world.own.site_id,
                year_month=str(bad.get("year_month", MONTH)),
                disputed_keys=list(bad["keys"]),
                whole_month=bool(bad["whole"]),
                reason=str(bad.get("reason", "r")),
                customer_reference=str(bad.get("customer_reference", "c")),
                actor=ACTOR,
                clock=world.clock,
            )
        assert raised.value.code == code, bad
    assert counts(app_conn) == before


def test_open_with_a_chosen_id_is_idempotent_and_refuses_other_contents(
    world: World, app_conn: psycopg.Connection[Any]
) -> None:
    case_id = uuid.uuid4()
    first = _open(app_conn, world, ("evt-0001",), case_id=case_id)
    before = counts(app_conn)
    again = _open(app_conn, world, ("evt-0001",), case_id=case_id)
    assert first.changed and not again.changed and again.case == first.case
    assert counts(app_conn) == before
    with pytest.raises(Conflict) as raised:
        _open(app_conn, world, ("evt-0002",), case_id=case_id)
    assert raised.value.code == "case_id_conflict"
    assert counts(app_conn) == before


def test_every_transition_in_order_each_audited_with_actor_and_note(
    world: World, app_conn: psycopg.Connection[Any]
) -> None:
    case_id = _open(app_conn, world, (REJECTED,)).case.case_id
    world.clock.advance(timedelta(hours=1))
    investigating = service.investigate_case(
        app_conn, case_id, note="pulling the ledger", actor="a1", clock=world.clock
    )
    assert investigating.changed and investigating.case.state == "investigating"
    world.clock.advance(timedelta(hours=1))
    resolved = _resolve(app_conn, world, case_id, "rejected", None)
    assert resolved.changed and resolved.case.state == "resolved" and resolved.case.outcome == "rejected"
    assert resolved.correction is None and resolved.case.resolved_at == world.clock.now()
    world.clock.advance(timedelta(hours=1))
    closed = service.close_case(app_conn, case_id, note="customer informed", actor="a2", clock=world.clock)
    assert closed.changed and closed.case.state == "closed" and closed.case.closed_at == world.clock.now()
    trail = [(a, actor, d.get("from"), d.get("to"), d.get("note")) for a, actor, d in _audit(app_conn, case_id)]
    assert trail == [
        ("dispute_open", ACTOR, None, "open", None),
        ("dispute_hold_placed", ACTOR, None, None, None),
        ("dispute_investigate", "a1", "open", "investigating", "pulling the ledger"),
        ("dispute_resolve", ACTOR, "investigating", "resolved", "checked the ledger"),
        ("dispute_close", "a2", "resolved", "closed", "customer informed"),
        ("dispute_hold_released", "a2", None, None, None),
    ]
    detail = service.get_case(app_conn, case_id)
    assert [row[2] for row in detail.history] == [t[0] for t in trail]


def test_repeating_a_done_move_changes_nothing(world: World, app_conn: psycopg.Connection[Any]) -> None:
    case_id = _investigated(app_conn, world, ("evt-0001",))
    before = counts(app_conn)
    assert not service.investigate_case(app_conn, case_id, note="again", actor=ACTOR, clock=world.clock).changed
    assert counts(app_conn) == before
    credit = Credit("bot traffic", keys=("evt-0001",))
    assert _resolve(app_conn, world, case_id, "upheld", credit).changed
    before = counts(app_conn)
    again = _resolve(app_conn, world, case_id, "upheld", Credit("bot traffic", keys=("evt-0001",)))
    assert not again.changed and again.correction is not None
    assert counts(app_conn) == before
    with pytest.raises(Conflict) as raised:
        _resolve(app_conn, world, case_id, "rejected", None)
    assert raised.value.code == "case_already_resolved"
    with pytest.raises(Conflict) as raised:
        _resolve(app_conn, world, case_id, "upheld", Credit("another reason", keys=("evt-0001",)))
    assert raised.value.code == "case_already_resolved"
    assert service.close_case(app_conn, case_id, note="", actor=ACTOR, clock=world.clock).changed
    before = counts(app_conn)
    assert not service.close_case(app_conn, case_id, note="", actor=ACTOR, clock=world.clock).changed
    assert counts(app_conn) == before


@pytest.mark.parametrize(
    ("reach", "move"),
    [
        ("open", "resolve"),
        ("open", "close"),
        ("investigating", "close"),
        ("resolved", "investigate"),
        ("closed", "investigate"),
        ("closed", "resolve"),
    ],
)
def test_illegal_transitions_are_409_and_write_nothing(
    world: World, app_conn: psycopg.Connection[Any], reach: str, move: str
) -> None:
    case_id = _open(app_conn, world, (REJECTED,)).case.case_id
    steps = ["open", "investigating", "resolved", "closed"]
    for state in steps[1 : steps.index(reach) + 1]:
        if state == "investigating":
            service.investigate_case(app_conn, case_id, note="", actor=ACTOR, clock=world.clock)
        elif state == "resolved":
            _resolve(app_conn, world, case_id, "rejected", None)
        else:
            service.close_case(app_conn, case_id, note="", actor=ACTOR, clock=world.clock)
    before = counts(app_conn)
    with pytest.raises(IllegalTransition) as raised:
        if move == "investigate":
            service.investigate_case(app_conn, case_id, note="", actor=ACTOR, clock=world.clock)
        elif move == "resolve":
            _resolve(app_conn, world, case_id, "rejected", None)
        else:
            service.close_case(app_conn, case_id, note="", actor=ACTOR, clock=world.clock)
    assert raised.value.code == "illegal_transition" and raised.value.http_status == 409
    assert f"that is {reach}" in raised.value.message
    assert counts(app_conn) == before


def test_resolution_arguments_are_checked_before_anything_is_written(
    world: World, app_conn: psycopg.Connection[Any]
) -> None:
    case_id = _investigated(app_conn, world, ("evt-0001",))
    before = counts(app_conn)
    for outcome, credit, code in (
        ("upheld", None, "credit_required"),
        ("partially_upheld", None, "credit_required"),
        ("rejected", Credit("r", keys=("evt-0001",)), "credit_not_allowed"),
        ("maybe", None, "invalid_outcome"),
        ("upheld", Credit("r"), "invalid_credit"),
        ("upheld", Credit("r", keys=("evt-0001",), count=1), "invalid_credit"),
        ("upheld", Credit("", keys=("evt-0001",)), "invalid_credit"),
        ("upheld", Credit("r", count=0), "invalid_credit"),
    ):
        with pytest.raises(InputError) as raised:
            _resolve(app_conn, world, case_id, outcome, credit)
        assert raised.value.code == code, (outcome, credit)
    with pytest.raises(NotFound):
        _resolve(app_conn, world, uuid.uuid4(), "rejected", None)
    assert counts(app_conn) == before


def test_partially_upheld_writes_a_signed_correction_chained_to_snapshot_and_previous(
    world: World, app_conn: psycopg.Connection[Any]
) -> None:
    first_case = _investigated(app_conn, world, ("evt-0001", "evt-0008", REJECTED))
    first = _resolve(
        app_conn, world, first_case, "partially_upheld", Credit("double-fired tag", keys=("evt-0008", "evt-0001"))
    )
    assert first.changed and first.case.outcome == "partially_upheld" and first.correction is not None
    record = first.correction
    document = CorrectionDocument.from_bytes(record.document)
    snapshot = app_conn.execute(
        "SELECT snapshot_hash, document FROM invoice_snapshot WHERE site_id = %s AND year_month = %s",
        (world.own.site_id, MONTH),
    ).fetchone()
    assert snapshot is not None
    assert document.snapshot_hash == snapshot[0] == SnapshotDocument.from_bytes(snapshot[1].encode()).snapshot_hash
    assert document.credited_keys == ("evt-0001", "evt-0008") and document.credited_count == 2
    assert document.prev_correction_hash is None and document.case_id == str(first_case)
    assert record.correction_hash == document.correction_hash
    assert verify_signature(world.key.public_key, record.document, record.signature)
    credits = app_conn.execute(
        "SELECT idempotency_key, billing_state FROM correction_credits WHERE site_id = %s ORDER BY 1",
        (world.own.site_id,),
    ).fetchall()
    assert credits == [("evt-0001", "ACCEPTED"), ("evt-0008", "OVERAGE")]
    # The snapshot is never edited by a correction.
    assert app_conn.execute("SELECT count(*) FROM invoice_snapshot").fetchone() == (2,)
    # A second case of the same month, credited by count, chains to the first correction.
    second_case = _investigated(app_conn, world)
    second = _resolve(app_conn, world, second_case, "upheld", Credit("goodwill", count=3))
    assert second.correction is not None
    chained = CorrectionDocument.from_bytes(second.correction.document)
    assert chained.prev_correction_hash == record.correction_hash
    assert chained.credited_keys == () and chained.credited_count == 3


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (REJECTED, "a REJECTED_QUOTA row (never billed)"),
        (NON_BILLABLE, "a scroll_depth row (never billed)"),
        ("other-1", "another tenant's billable key"),
        ("no-such-event", "a key the ledger never saw"),
    ],
)
def test_credit_of_a_row_that_is_not_billable_is_refused_and_nothing_written(
    world: World, app_conn: psycopg.Connection[Any], key: str, why: str
) -> None:
    case_id = _investigated(app_conn, world)  # a whole-month case may credit any billable row
    before = counts(app_conn)
    with pytest.raises(CreditRefused) as raised:
        _resolve(app_conn, world, case_id, "upheld", Credit("refund", keys=("evt-0001", key)))
    assert raised.value.code == "credit_not_billable" and raised.value.http_status == 422, why
    assert key in raised.value.message
    assert counts(app_conn) == before
    assert service.get_case(app_conn, case_id).case.state == "investigating"


def test_credit_of_a_key_of_another_month_is_refused(world: World, app_conn: psycopg.Connection[Any]) -> None:
    from tests.export.conftest import insert_rows, ledger_row

    insert_rows(app_conn, world.own.site_id, [ledger_row("september-1", OPENED_AT.replace(month=9, day=3))])
    case_id = _investigated(app_conn, world)
    with pytest.raises(CreditRefused) as raised:
        _resolve(app_conn, world, case_id, "upheld", Credit("refund", keys=("september-1",)))
    assert raised.value.code == "credit_not_billable"


def test_a_key_case_credits_only_its_disputed_keys(world: World, app_conn: psycopg.Connection[Any]) -> None:
    case_id = _investigated(app_conn, world, ("evt-0001",))
    before = counts(app_conn)
    with pytest.raises(CreditRefused) as raised:
        _resolve(app_conn, world, case_id, "upheld", Credit("refund", keys=("evt-0002",)))
    assert raised.value.code == "credit_not_disputed"
    assert counts(app_conn) == before


def test_a_key_is_never_credited_twice(
    world: World, app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any]
) -> None:
    first = _investigated(app_conn, world, ("evt-0001",))
    _resolve(app_conn, world, first, "upheld", Credit("refund", keys=("evt-0001",)))
    second = _investigated(app_conn, world, ("evt-0001", "evt-0002"))
    before = counts(app_conn)
    with pytest.raises(Conflict) as raised:
        _resolve(app_conn, world, second, "upheld", Credit("refund again", keys=("evt-0001", "evt-0002")))
    assert raised.value.code == "already_credited" and "evt-0001" in raised.value.message
    assert counts(app_conn) == before
    # The rule is a constraint, not only the service's check: even the owner cannot add a second credit.
    existing = owner_conn.execute("SELECT correction_hash FROM invoice_corrections").fetchone()
    assert existing is not None
    with pytest.raises(psycopg.errors.UniqueViolation):
        owner_conn.execute(
            "INSERT INTO correction_credits (site_id, idempotency_key, year_month, billing_state, correction_hash)"
            " VALUES (%s, 'evt-0001', %s, 'ACCEPTED', %s)",
            (world.own.site_id, MONTH, existing[0]),
        )


def test_credits_never_exceed_the_invoice(world: World, app_conn: psycopg.Connection[Any]) -> None:
    first = _investigated(app_conn, world)
    _resolve(app_conn, world, first, "partially_upheld", Credit("goodwill", count=len(BILLABLE) - 1))
    second = _investigated(app_conn, world)
    before = counts(app_conn)
    with pytest.raises(CreditRefused) as raised:
        _resolve(app_conn, world, second, "upheld", Credit("more goodwill", count=2))
    assert raised.value.code == "credit_exceeds_invoice"
    assert counts(app_conn) == before
    assert _resolve(app_conn, world, second, "upheld", Credit("the last one", count=1)).changed


def test_a_credit_needs_a_frozen_month(world: World, app_conn: psycopg.Connection[Any]) -> None:
    from tests.export.conftest import insert_rows, ledger_row

    insert_rows(app_conn, world.own.site_id, [ledger_row("nov-1", OPENED_AT)])
    case_id = _open(app_conn, world, ("nov-1",), year_month="2026-11").case.case_id
    service.investigate_case(app_conn, case_id, note="", actor=ACTOR, clock=world.clock)
    with pytest.raises(Conflict) as raised:
        _resolve(app_conn, world, case_id, "upheld", Credit("refund", keys=("nov-1",)))
    assert raised.value.code == "month_not_frozen"


def test_the_hold_is_released_when_the_last_case_of_the_month_closes(
    world: World, app_conn: psycopg.Connection[Any]
) -> None:
    a = _investigated(app_conn, world, (REJECTED,))
    b = _investigated(app_conn, world, (NON_BILLABLE,))

    def active() -> bool:
        row = app_conn.execute(
            "SELECT released_at IS NULL FROM dispute_holds WHERE site_id = %s AND year_month = %s",
            (world.own.site_id, MONTH),
        ).fetchone()
        return bool(row and row[0])

    for case_id in (a, b):
        _resolve(app_conn, world, case_id, "rejected", None)
    assert active()  # resolved is not closed: the evidence stays protected
    service.close_case(app_conn, a, note="", actor=ACTOR, clock=world.clock)
    assert active()  # b still holds the month
    moved = service.close_case(app_conn, b, note="", actor=ACTOR, clock=world.clock)
    assert not active() and moved.hold is not None and not moved.hold.active
    # A new case holds the month again, from its own opening time.
    world.clock.advance(timedelta(days=3))
    reopened = _open(app_conn, world, (REJECTED,))
    assert active() and reopened.hold is not None and reopened.hold.created_at == world.clock.now()


def test_corrections_are_append_only_for_everyone(
    world: World, app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any]
) -> None:
    case_id = _investigated(app_conn, world, ("evt-0001",))
    _resolve(app_conn, world, case_id, "upheld", Credit("refund", keys=("evt-0001",)))
    for conn in (app_conn, owner_conn):
        for statement in (
            "UPDATE invoice_corrections SET credited_count = 9",
            "DELETE FROM invoice_corrections",
            "TRUNCATE invoice_corrections CASCADE",
            "UPDATE correction_credits SET idempotency_key = 'x'",
            "DELETE FROM correction_credits",
            "TRUNCATE correction_credits",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert owner_conn.execute("SELECT count(*) FROM correction_credits").fetchone() == (1,)


@pytest.mark.parametrize("same", [True, False], ids=["same-resolution", "different-resolutions"])
def test_concurrent_resolves_of_one_case_exactly_one_wins(
    world: World, settings: Settings, app_conn: psycopg.Connection[Any], same: bool
) -> None:
    case_id = _investigated(app_conn, world)
    threads = 6
    barrier = threading.Barrier(threads)
    outcomes: list[Any] = [None] * threads
    db = Database(settings)

    def resolve(index: int) -> None:
        key = BILLABLE[0] if same else BILLABLE[index]
        with db.connect("app", autocommit=True) as conn:
            barrier.wait()
            try:
                outcomes[index] = service.resolve_case(
                    conn,
                    case_id,
                    outcome="upheld",
                    note=f"thread {index}",
                    credit=Credit("refund", keys=(key,)),
                    actor=f"t{index}",
                    clock=ManualClock(OPENED_AT),
                    signer=world.key,
                )
            except Exception as exc:  # collected and asserted below
                outcomes[index] = exc

    workers = [threading.Thread(target=resolve, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    winners = [o for o in outcomes if isinstance(o, service.CaseMove) and o.changed]
    assert len(winners) == 1, outcomes
    others = [o for o in outcomes if o is not winners[0]]
    if same:
        assert all(isinstance(o, service.CaseMove) and not o.changed for o in others), others
    else:
        assert all(isinstance(o, Conflict) and o.code == "case_already_resolved" for o in others), others
    assert app_conn.execute("SELECT count(*) FROM invoice_corrections").fetchone() == (1,)
    assert app_conn.execute("SELECT count(*) FROM correction_credits").fetchone() == (1,)
    resolves = app_conn.execute(
        "SELECT count(*) FROM audit_log WHERE action = 'dispute_resolve' AND details->>'case_id' = %s", (str(case_id),)
    ).fetchone()
    assert resolves == (1,)


def test_overage_credits_are_counted_as_such(world: World, app_conn: psycopg.Connection[Any]) -> None:
    case_id = _investigated(app_conn, world, OVERAGE)
    move = _resolve(app_conn, world, case_id, "upheld", Credit("overage was a bot", keys=OVERAGE))
    assert move.correction is not None and move.correction.credited_count == 2

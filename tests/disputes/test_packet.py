"""A corrected month's evidence packet: it carries the corrections with proofs, verifies offline,
and every tampered or forged correction is refused with its own reason."""

from __future__ import annotations

import copy
import json
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kernel.clock import ManualClock
from kernel.db.connect import Database
from kernel.disputes import Credit, service
from kernel.disputes.document import CorrectionDocument
from kernel.disputes.evidence import build_case_packet
from kernel.export.packet import build_packet, stage_evidence
from kernel.export.verify import MANIFEST_NAME, Verification, verify_directory, verify_packet
from kernel.ledger import SigningKey
from kernel.settings import Settings
from tests.disputes.conftest import OPENED_AT, REJECTED, World
from tests.export.conftest import MONTH

ACTOR = "support@test"
GENERATED_AT = "2026-11-06T10:00:00.000000Z"


def _case(conn: psycopg.Connection[Any], world: World, keys: tuple[str, ...], credit: Credit | None) -> uuid.UUID:
    case_id = service.open_case(
        conn,
        site_id=world.own.site_id,
        year_month=MONTH,
        disputed_keys=list(keys),
        whole_month=not keys,
        reason="bots",
        customer_reference="ZD-9",
        actor=ACTOR,
        clock=world.clock,
    ).case.case_id
    service.investigate_case(conn, case_id, note="", actor=ACTOR, clock=world.clock)
    outcome = "rejected" if credit is None else ("upheld" if credit.count else "partially_upheld")
    service.resolve_case(
        conn, case_id, outcome=outcome, note="", credit=credit, actor=ACTOR, clock=world.clock, signer=world.key
    )
    return case_id


def _failed(verification: Verification) -> dict[str, str]:
    return {c.name: c.reason or "" for c in verification.checks if not c.ok}


@pytest.fixture
def corrected(world: World, app_conn: psycopg.Connection[Any]) -> uuid.UUID:
    """The demo's story on the sample month: three keys disputed, two credited, then a count credit."""
    case_id = _case(app_conn, world, ("evt-0001", "evt-0008", REJECTED), Credit("bots", keys=("evt-0001", "evt-0008")))
    _case(app_conn, world, (), Credit("goodwill", count=1))
    return case_id


def _stage(conn: psycopg.Connection[Any], world: World, directory: Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    staged = stage_evidence(
        conn,
        site_ref=str(world.own.site_id),
        year_month=MONTH,
        disputed_keys=list(keys),
        directory=directory,
        generated_at=GENERATED_AT,
    )
    return staged.manifest


def test_packet_of_a_corrected_month_carries_the_corrections_and_verifies_offline(
    world: World, settings: Settings, corrected: uuid.UUID, tmp_path: Path
) -> None:
    out = tmp_path / "month.zip"
    result = build_packet(
        Database(settings),
        site_ref="own-shop",
        year_month=MONTH,
        disputed_keys=[],
        out=out,
        clock=ManualClock(OPENED_AT),
        actor=ACTOR,
        render_report=False,
    )
    manifest = result.manifest
    block = manifest["corrections"]
    assert len(block["chain"]) == 2
    assert block["invoice"] == {
        "billable": 9,
        "overage": 2,
        "credited": 3,
        "credited_overage": 1,
        "net_billable": 6,
        "net_overage": 1,
    }
    # The credited rows are carried with their inclusion proofs against the snapshot's root.
    proofs = {d["idempotency_key"]: d for d in manifest["disputed"]}
    assert set(proofs) == {"evt-0001", "evt-0008"}
    assert all(d["status"] == "billable" and "proof" in d for d in proofs.values())
    verification = verify_packet(out, trusted_keys=[world.key.public_key.hex()])
    assert verification.ok, _failed(verification)
    names = {c.name for c in verification.checks}
    assert {"correction:1", "correction:2", "net_invoice", "inclusion:evt-0001", "inclusion:evt-0008"} <= names
    with zipfile.ZipFile(out) as archive:
        assert "Corrections (credits) of this month" in archive.read("VERIFY.md").decode("utf-8")


def test_a_month_without_corrections_gets_the_same_packet_as_before(
    world: World, app_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    manifest = _stage(app_conn, world, tmp_path / "p", ("evt-0001",))
    assert "corrections" not in manifest and "case" not in manifest
    assert verify_directory(tmp_path / "p").ok


def test_packet_of_a_case_records_its_id_state_and_keys(
    world: World, settings: Settings, corrected: uuid.UUID, tmp_path: Path
) -> None:
    out = tmp_path / "case.zip"
    result = build_case_packet(
        Database(settings), corrected, out=out, clock=ManualClock(OPENED_AT), actor=ACTOR, render_report=False
    )
    case = result.manifest["case"]
    assert case["case_id"] == str(corrected) and case["state"] == "resolved" and case["outcome"] == "partially_upheld"
    statuses = {d["idempotency_key"]: d["status"] for d in result.manifest["disputed"]}
    assert statuses == {"evt-0001": "billable", "evt-0008": "billable", REJECTED: "not_billable"}
    verification = verify_packet(out, trusted_keys=[world.key.public_key.hex()])
    assert verification.ok, _failed(verification)
    assert any(c.name == "case" and c.ok for c in verification.checks)


def test_the_same_month_and_clock_give_the_same_packet_bytes(
    world: World, settings: Settings, corrected: uuid.UUID, tmp_path: Path
) -> None:
    zips = []
    for name in ("a.zip", "b.zip"):
        build_case_packet(
            Database(settings),
            corrected,
            out=tmp_path / name,
            clock=ManualClock(OPENED_AT),
            actor=ACTOR,
            render_report=False,
        )
        zips.append((tmp_path / name).read_bytes())
    assert zips[0] == zips[1]


# -- tampering: each forgery changes manifest.json of a staged packet and expects one reason --------


def _forge(world: World, manifest: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A correction signed with the deployment's real key, appended to the chain (an insider's forgery)."""
    signer: SigningKey = changes.pop("signer", None) or world.key
    chain = manifest["corrections"]["chain"]
    last = CorrectionDocument.from_bytes(chain[-1]["document"].encode())
    fields: dict[str, Any] = {
        "case_id": str(uuid.uuid4()),
        "site_id": last.site_id,
        "year_month": MONTH,
        "snapshot_hash": last.snapshot_hash,
        "prev_correction_hash": chain[-1]["correction_hash"],
        "outcome": "upheld",
        "credited_keys": (),
        "credited_count": 1,
        "reason": "forged",
        "issued_at": GENERATED_AT,
    }
    fields.update(changes)
    document = CorrectionDocument(**fields)
    data = document.to_bytes()
    return {
        "algorithm": "ed25519",
        "correction_hash": document.correction_hash,
        "document": data.decode(),
        "key_id": signer.key_id,
        "public_key": signer.public_key.hex(),
        "signature": signer.sign(data),
    }


def _verify_changed(directory: Path, manifest: dict[str, Any], trusted: list[str]) -> Verification:
    forged = directory.parent / f"forged-{uuid.uuid4().hex[:8]}"
    shutil.copytree(directory, forged)
    (forged / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return verify_directory(forged, trusted_keys=trusted)


def _edit_document(entry: dict[str, Any], **changes: Any) -> None:
    data = json.loads(entry["document"])
    data.update(changes)
    entry["document"] = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _tamper_cases(world: World) -> dict[str, tuple[Any, str]]:
    def reason_edited(m: dict[str, Any]) -> None:
        _edit_document(m["corrections"]["chain"][0], reason="the customer was right about everything")

    def hash_replaced(m: dict[str, Any]) -> None:
        m["corrections"]["chain"][1]["correction_hash"] = "0" * 64

    def first_dropped(m: dict[str, Any]) -> None:
        del m["corrections"]["chain"][0]

    def not_canonical(m: dict[str, Any]) -> None:
        entry = m["corrections"]["chain"][0]
        entry["document"] = json.dumps(json.loads(entry["document"]), indent=1)

    def net_inflated(m: dict[str, Any]) -> None:
        m["corrections"]["invoice"]["net_billable"] = 0

    def credit_rejected_row(m: dict[str, Any]) -> None:
        m["corrections"]["chain"].append(_forge(world, m, credited_keys=(REJECTED,)))

    def credit_without_proof(m: dict[str, Any]) -> None:
        m["corrections"]["chain"].append(_forge(world, m, credited_keys=("evt-0002",)))

    def credit_twice(m: dict[str, Any]) -> None:
        m["corrections"]["chain"].append(_forge(world, m, credited_keys=("evt-0001",)))

    def credit_more_than_billed(m: dict[str, Any]) -> None:
        m["corrections"]["chain"].append(_forge(world, m, credited_count=7))

    def other_snapshot(m: dict[str, Any]) -> None:
        m["corrections"]["chain"].append(_forge(world, m, snapshot_hash="ab" * 32))

    def other_site(m: dict[str, Any]) -> None:
        m["corrections"]["chain"].append(_forge(world, m, site_id=str(world.other.site_id)))

    def foreign_key(m: dict[str, Any]) -> None:
        m["corrections"]["chain"].append(_forge(world, m, signer=SigningKey.generate()))

    def case_correction_removed(m: dict[str, Any]) -> None:
        m["case"] = {"case_id": str(uuid.uuid4()), "state": "resolved", "outcome": "upheld"}

    return {
        "document edited, signature kept": (reason_edited, "correction_hash_mismatch"),
        "correction hash replaced": (hash_replaced, "correction_hash_mismatch"),
        "first correction dropped": (first_dropped, "correction_chain_broken"),
        "document not canonical": (not_canonical, "correction_malformed"),
        "net invoice inflated": (net_inflated, "net_invoice_mismatch"),
        "credit of a rejected row": (credit_rejected_row, "credit_not_billable"),
        "credit without an inclusion proof": (credit_without_proof, "credit_proof_missing"),
        "a key credited twice": (credit_twice, "credit_duplicated"),
        "credits beyond the invoice": (credit_more_than_billed, "credit_exceeds_invoice"),
        "correction of another snapshot": (other_snapshot, "correction_other_snapshot"),
        "correction of another site": (other_site, "correction_other_site"),
        "signed by a key we do not publish": (foreign_key, "untrusted_key"),
        "upheld case without its correction": (case_correction_removed, "case_correction_missing"),
    }


def test_every_tampered_or_forged_correction_is_refused_with_its_reason(
    world: World, app_conn: psycopg.Connection[Any], corrected: uuid.UUID, tmp_path: Path
) -> None:
    # REJECTED is disputed too, so the verifier knows its row (recorded, not billable).
    original = _stage(app_conn, world, tmp_path / "staged", (REJECTED,))
    trusted = [world.key.public_key.hex()]
    assert verify_directory(tmp_path / "staged", trusted_keys=trusted).ok
    failures = []
    for name, (tamper, reason) in _tamper_cases(world).items():
        manifest = copy.deepcopy(original)
        tamper(manifest)
        verification = _verify_changed(tmp_path / "staged", manifest, trusted)
        if verification.ok or reason not in verification.reasons:
            failures.append(f"{name}: expected {reason}, got {verification.reasons}")
    assert not failures, "\n".join(failures)


def test_a_proof_forged_for_a_non_billable_credit_fails_twice(
    world: World, app_conn: psycopg.Connection[Any], corrected: uuid.UUID, tmp_path: Path
) -> None:
    manifest = _stage(app_conn, world, tmp_path / "staged", (REJECTED,))
    manifest["corrections"]["chain"].append(_forge(world, manifest, credited_keys=(REJECTED,)))
    billable = next(d for d in manifest["disputed"] if d["idempotency_key"] == "evt-0001")
    for entry in manifest["disputed"]:
        if entry["idempotency_key"] == REJECTED:  # pretend the rejected row was billed, with a borrowed proof
            entry.update(status="billable", proof=billable["proof"], leaf=billable["leaf"])
    verification = _verify_changed(tmp_path / "staged", manifest, [world.key.public_key.hex()])
    assert {"credit_not_billable", "disputed_row_mismatch"} <= set(verification.reasons), verification.reasons

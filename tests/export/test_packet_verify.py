"""Evidence packets and the offline verifier: a good packet passes, each tampering has its reason."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from kernel.cli import main
from kernel.clock import ManualClock
from kernel.db.connect import Database
from kernel.errors import Conflict, InputError
from kernel.export.packet import MAX_DISPUTED_KEYS, build_packet, parse_disputed_keys
from kernel.export.verify import verify_packet
from kernel.ledger import SigningKey
from kernel.settings import Settings
from tests.conftest import clone_database
from tests.export.conftest import (
    FROZEN_AT,
    MONTH,
    MONTH_START,
    freeze,
    insert_rows,
    ledger_row,
    make_tenant,
    sample_rows,
)

DISPUTED = ["evt-0002", "-dash-key", "evt-0009", "no-such-event"]
Files = dict[str, bytes]


@dataclass(frozen=True)
class PacketCase:
    path: Path
    key: SigningKey
    september: tuple[str, str, str]  # document, snapshot_hash, signature of the month before
    settings: Settings


@pytest.fixture(scope="module")
def case(pg_server: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> PacketCase:
    """One frozen month and its packet, shared by the read-only tests of this module."""
    tmp = tmp_path_factory.mktemp("packet")
    settings = Settings(database_url=clone_database(pg_server, template_db), data_dir=tmp / "data", commit="test")
    key = SigningKey.generate()
    with Database(settings).connect("app", autocommit=True) as conn:
        tenant = make_tenant(conn, "disputed-shop")
        insert_rows(conn, tenant.site_id, sample_rows())
        # The month before, frozen too: its (valid, signed) snapshot is the "other month" forgery.
        insert_rows(conn, tenant.site_id, [ledger_row("sep-1", MONTH_START - timedelta(days=3))])
        freeze(settings, tenant.site_id, "2026-09", key)
        freeze(settings, tenant.site_id, MONTH, key)
        september = conn.execute(
            "SELECT document, snapshot_hash, signature FROM invoice_snapshot WHERE year_month = '2026-09'"
        ).fetchone()
    out = tmp / "packet.zip"
    build_packet(
        Database(settings),
        site_ref="disputed-shop",
        year_month=MONTH,
        disputed_keys=DISPUTED,
        out=out,
        clock=ManualClock(FROZEN_AT + timedelta(days=3)),
        render_report=False,
    )
    return PacketCase(out, key, september, settings)


@pytest.fixture
def packet(case: PacketCase) -> Path:
    return case.path


@pytest.fixture
def signing_key(case: PacketCase) -> SigningKey:
    return case.key


def _read(path: Path) -> Files:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write(files: Files, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _csv_name(files: Files) -> str:
    return str(json.loads(files["manifest.json"])["csv"]["name"])


def _tamper(
    packet: Path,
    *,
    csv: Callable[[list[bytes]], list[bytes]] | None = None,
    manifest: Callable[[dict[str, Any]], None] | None = None,
    rehash: bool = True,
) -> Path:
    """Change the packet as a careful forger would: by default the manifest's hashes are updated."""
    files = _read(packet)
    name = _csv_name(files)
    doc = json.loads(files["manifest.json"])
    if csv is not None:
        lines = files[name].split(b"\n")
        files[name] = b"\n".join(csv(lines))
    if manifest is not None:
        manifest(doc)
    if rehash:
        for entry in doc["files"]:
            entry["sha256"] = hashlib.sha256(files[entry["name"]]).hexdigest()
            entry["bytes"] = len(files[entry["name"]])
    files["manifest.json"] = json.dumps(doc).encode()
    return _write(files, packet.with_name("tampered.zip"))


def _reasons(path: Path, **kwargs: Any) -> list[str]:
    return verify_packet(path, **kwargs).reasons


def _line_of(lines: list[bytes], key: bytes) -> int:
    return next(i for i, line in enumerate(lines) if line.startswith(key + b","))


def test_a_good_packet_passes_every_check(packet: Path, signing_key: SigningKey) -> None:
    result = verify_packet(packet, trusted_keys=[signing_key.public_key.hex()])
    assert result.ok, result.to_json()
    names = [c.name for c in result.checks]
    assert {"file_hashes", "merkle_root", "signature", "row_counts"} <= set(names)
    assert {f"inclusion:{k}" for k in DISPUTED} <= set(names)
    manifest = json.loads(_read(packet)["manifest.json"])
    status = {d["idempotency_key"]: d["status"] for d in manifest["disputed"]}
    assert status == {
        "evt-0002": "billable",
        "-dash-key": "billable",
        "evt-0009": "not_billable",
        "no-such-event": "not_in_ledger",
    }
    assert manifest["key_id"] == signing_key.key_id and manifest["public_key"] == signing_key.public_key.hex()
    assert sorted(_read(packet)) == sorted(["VERIFY.md", "manifest.json", _csv_name(_read(packet))])
    # A 64-bit key id names the key but does not pin it: refused as a usage error, before any check.
    with pytest.raises(InputError) as refused:
        verify_packet(packet, trusted_keys=[signing_key.key_id])
    assert refused.value.code == "trusted_key_malformed"


def test_one_byte_changed_in_the_csv(packet: Path) -> None:
    def flip(lines: list[bytes]) -> list[bytes]:
        lines[1] = lines[1].replace(b"evt-0001", b"evt-0007")
        return lines

    assert _reasons(_tamper(packet, csv=flip, rehash=False))[0] == "file_hash_mismatch"


def test_a_row_dropped(packet: Path) -> None:
    def drop(lines: list[bytes]) -> list[bytes]:
        del lines[_line_of(lines, b"evt-0011")]
        return lines

    reasons = _reasons(_tamper(packet, csv=drop))
    assert "row_count_mismatch" in reasons and "file_hash_mismatch" not in reasons


def test_two_rows_swapped(packet: Path) -> None:
    def swap(lines: list[bytes]) -> list[bytes]:
        lines[1], lines[2] = lines[2], lines[1]
        return lines

    reasons = _reasons(_tamper(packet, csv=swap))
    assert "rows_out_of_order" in reasons and "row_count_mismatch" not in reasons


def test_a_billable_flag_flipped(packet: Path) -> None:
    def flip(lines: list[bytes]) -> list[bytes]:
        at = _line_of(lines, b"evt-0011")
        lines[at] = lines[at].replace(b",true,ACCEPTED,", b",false,ACCEPTED,")
        return lines

    reasons = _reasons(_tamper(packet, csv=flip))
    assert reasons[0] == "billable_count_mismatch" and "merkle_root_mismatch" in reasons


def test_a_billable_row_swapped_for_a_non_billable_one_keeps_counts_but_not_the_root(packet: Path) -> None:
    def flip(lines: list[bytes]) -> list[bytes]:
        billable = _line_of(lines, b"evt-0011")
        lines[billable] = lines[billable].replace(b",true,ACCEPTED,", b",false,ACCEPTED,")
        other = _line_of(lines, b"evt-0010")
        lines[other] = lines[other].replace(b",false,ACCEPTED,", b",true,ACCEPTED,")
        return lines

    assert _reasons(_tamper(packet, csv=flip)) == ["merkle_root_mismatch"]


def _forge(change: Callable[[dict[str, Any], dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        entries = {d["idempotency_key"]: d for d in doc["disputed"]}
        change(entries["evt-0002"], entries["-dash-key"])

    return apply


FORGED_PROOFS: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "sibling altered": lambda a, b: a["proof"]["path"].__setitem__(0, "00" * 32),
    "sibling appended": lambda a, b: a["proof"]["path"].append(a["proof"]["path"][0]),
    "sibling dropped": lambda a, b: a["proof"]["path"].pop(),
    "another key's proof": lambda a, b: a.__setitem__("proof", b["proof"]),
    "leaf index moved": lambda a, b: a["proof"].__setitem__("leaf_index", a["proof"]["leaf_index"] + 1),
    "tree size grown": lambda a, b: a["proof"].__setitem__("tree_size", a["proof"]["tree_size"] + 1),
    "another leaf": lambda a, b: a.__setitem__("leaf", b["leaf"]),
    "empty path claims a one-leaf tree": lambda a, b: a.__setitem__(
        "proof", {"leaf_index": 0, "tree_size": 1, "path": []}
    ),
}


@pytest.mark.parametrize("forgery", sorted(FORGED_PROOFS))
def test_a_forged_inclusion_proof(packet: Path, forgery: str) -> None:
    # GHSA-672p-m5jq-mrh8: a verifier must reject proofs valid for another tree or leaf.
    reasons = _reasons(_tamper(packet, manifest=_forge(FORGED_PROOFS[forgery])))
    assert reasons == ["inclusion_proof_invalid"], forgery


def test_a_snapshot_from_another_month(packet: Path, case: PacketCase) -> None:
    document, snapshot_hash, signature = case.september

    def swap(doc: dict[str, Any]) -> None:
        doc["snapshot"].update(document=document, snapshot_hash=snapshot_hash, signature=signature)

    reasons = _reasons(_tamper(packet, manifest=swap))
    assert "snapshot_other_month" in reasons
    assert "signature_invalid" not in reasons and "snapshot_hash_mismatch" not in reasons  # a genuine snapshot


def test_a_signature_by_another_key(packet: Path, signing_key: SigningKey) -> None:
    forger = SigningKey.generate()

    def resign(doc: dict[str, Any]) -> None:
        doc["snapshot"]["signature"] = forger.sign(doc["snapshot"]["document"].encode())

    assert _reasons(_tamper(packet, manifest=resign)) == ["signature_invalid"]

    def replace_key(doc: dict[str, Any]) -> None:
        resign(doc)
        doc["snapshot"].update(public_key=forger.public_key.hex(), key_id=forger.key_id)

    # Self-consistent with the forger's key: only pinning our published key catches it.
    forged = _tamper(packet, manifest=replace_key)
    assert _reasons(forged, trusted_keys=[signing_key.public_key.hex()]) == ["untrusted_key"]

    def key_only(doc: dict[str, Any]) -> None:
        doc["snapshot"]["public_key"] = forger.public_key.hex()

    assert _reasons(_tamper(packet, manifest=key_only)) == ["key_id_mismatch"]


def test_an_edited_snapshot_document(packet: Path) -> None:
    def edit(doc: dict[str, Any]) -> None:
        document = json.loads(doc["snapshot"]["document"])
        document["billable_count"] -= 1
        doc["snapshot"]["document"] = json.dumps(document, sort_keys=True, separators=(",", ":"))

    reasons = _reasons(_tamper(packet, manifest=edit))
    assert reasons[:2] == ["snapshot_hash_mismatch", "signature_invalid"]


def test_unsafe_and_unlisted_files(packet: Path) -> None:
    files = _read(packet)
    assert _reasons(_write({**files, "../evil.sh": b"x"}, packet.with_name("a.zip"))) == ["unsafe_file_name"]
    assert _reasons(_write({**files, "extra.txt": b"x"}, packet.with_name("b.zip"))) == ["unlisted_file"]
    del files["manifest.json"]
    assert _reasons(_write(files, packet.with_name("c.zip"))) == ["manifest_missing"]
    assert _reasons(_write({"manifest.json": b"{"}, packet.with_name("d.zip"))) == ["manifest_malformed"]
    (packet.with_name("e.zip")).write_bytes(b"not a zip")
    assert _reasons(packet.with_name("e.zip")) == ["packet_unreadable"]


def test_cli_verify_prints_a_table_and_exits_non_zero_with_the_reason(packet: Path, signing_key: SigningKey) -> None:
    runner = CliRunner()
    good = runner.invoke(main, ["dispute", "verify", str(packet), "--trusted-key", signing_key.public_key.hex()])
    assert good.exit_code == 0, good.output
    assert "verdict: PASS" in good.output and "merkle_root" in good.output

    def drop(lines: list[bytes]) -> list[bytes]:
        del lines[1]
        return lines

    bad = runner.invoke(main, ["dispute", "verify", str(_tamper(packet, csv=drop))])
    assert bad.exit_code == 1
    assert "verdict: FAIL" in bad.output
    assert "[row_count_mismatch]" in bad.stderr


def test_packets_only_for_frozen_months_and_bounded_keys(
    settings: Settings, app_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    make_tenant(app_conn, "open-shop")
    with pytest.raises(Conflict) as raised:
        build_packet(
            Database(settings),
            site_ref="open-shop",
            year_month=MONTH,
            disputed_keys=[],
            out=tmp_path / "p.zip",
            clock=ManualClock(FROZEN_AT),
            render_report=False,
        )
    assert raised.value.code == "month_not_frozen" and not (tmp_path / "p.zip").exists()
    assert parse_disputed_keys(" a, b ,a,,c") == ["a", "b", "c"]
    with pytest.raises(Exception, match="at most"):
        parse_disputed_keys([f"k{i}" for i in range(MAX_DISPUTED_KEYS + 1)])


def test_packet_refused_when_the_ledger_no_longer_matches_the_snapshot(
    settings: Settings, app_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    signing_key = SigningKey.generate()
    tenant = make_tenant(app_conn, "changed-shop")
    insert_rows(app_conn, tenant.site_id, sample_rows())
    freeze(settings, tenant.site_id, MONTH, signing_key)
    app_conn.execute(
        "UPDATE ingest_idempotency SET billable = false WHERE site_id = %s AND idempotency_key = 'evt-0011'",
        (tenant.site_id,),
    )
    with pytest.raises(Conflict) as raised:
        build_packet(
            Database(settings),
            site_ref=str(tenant.site_id),
            year_month=MONTH,
            disputed_keys=[],
            out=tmp_path / "p.zip",
            clock=ManualClock(FROZEN_AT),
            render_report=False,
        )
    assert raised.value.code == "ledger_snapshot_mismatch"
    row = app_conn.execute("SELECT count(*) FROM audit_log WHERE action = 'dispute_packet'").fetchone()
    assert row == (0,)


def test_packet_build_is_recorded_in_the_audit_log(packet: Path, case: PacketCase) -> None:
    with Database(case.settings).connect("app", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT actor, year_month, details FROM audit_log WHERE action = 'dispute_packet'"
        ).fetchall()
    assert len(rows) == 1 and rows[0][1] == MONTH
    assert rows[0][2]["disputed_keys"] == len(DISPUTED) and rows[0][2]["packet"] == packet.name
    assert rows[0][0] == "cli"


def test_the_notebook_library_reads_and_judges_an_unpacked_packet(packet: Path, tmp_path: Path) -> None:
    from kernel.export import evidence

    with zipfile.ZipFile(packet) as archive:
        archive.extractall(tmp_path / "unpacked")
    found = evidence.load_evidence("disputed-shop", MONTH, evidence_dir=str(tmp_path / "unpacked"))
    assert found.verification.ok
    summary = evidence.summary_frame(found).set_index("kind")
    assert summary.loc["billable", "csv"] == 9 and bool(summary["agree"].all())
    daily = evidence.daily_frame(found)
    assert daily.to_dict("index") == {
        "2026-10-04": {"billable": 8, "rejected": 1, "non_billable": 0},
        "2026-10-05": {"billable": 0, "rejected": 0, "non_billable": 1},
        "2026-10-06": {"billable": 1, "rejected": 0, "non_billable": 0},
    }
    disputed = evidence.disputed_frame(found).set_index("idempotency_key")
    assert (
        disputed.loc["-dash-key", "proof"] == "verified" and disputed.loc["no-such-event", "status"] == "not_in_ledger"
    )
    rows = evidence.disputed_rows(found)
    assert sorted(rows["idempotency_key"]) == ["'-dash-key", "evt-0002", "evt-0009"]
    results = evidence.write_evidence_results(found, str(tmp_path / "r.json"))
    assert results["verdict"] == "pass" and results["metrics"]["verified"] is True
    # A tampered packet: the notebook's verdict fails with the verifier's reason as a finding.
    (tmp_path / "unpacked" / "extra.txt").write_text("x")
    failed = evidence.write_evidence_results(
        evidence.load_evidence("x", MONTH, evidence_dir=str(tmp_path / "unpacked")), ""
    )
    assert failed["verdict"] == "fail" and "evidence_unlisted_file" in failed["red_flags"]


def test_the_by_hand_script_in_verify_md_recomputes_the_signed_root(packet: Path, tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    files = _read(packet)
    manifest = json.loads(files["manifest.json"])
    script = re.search(r"```python\n(.*?)```", files["VERIFY.md"].decode(), re.S)
    assert script is not None
    (tmp_path / "root.py").write_text(script.group(1))
    (tmp_path / "month.csv").write_bytes(files[manifest["csv"]["name"]])
    out = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "root.py"), str(tmp_path / "month.csv")],
        capture_output=True,
        text=True,
        check=True,
    )
    document = json.loads(manifest["snapshot"]["document"])
    assert out.stdout.split() == [str(document["billable_count"]), document["merkle_root"]]

"""Dispute evidence packets (SPEC §6): one zip a customer can verify with no access to us.

Contents (flat, fixed names, nothing taken from user input):

- ``dispute-<site_id>-<YYYY-MM>.csv``: the dispute CSV, byte for byte what the export route sends;
- ``manifest.json``: files and SHA-256s, counts, the signed snapshot document with its signature,
  public key and key id, the Merkle root, and an inclusion proof for each disputed billable key;
- ``report.html`` / ``report.results.json``: the ``dispute_evidence`` notebook rendered offline
  (no code cells, nothing loaded from the network) and its JSON results;
- ``VERIFY.md``: how to check all of it by hand.

Only frozen months get packets: evidence without a signed snapshot proves nothing. Before the zip
is written the CSV's root and counts are compared with the snapshot (the freeze computed them from
the ledger; the packet recomputes them from the CSV bytes) and every proof is verified, so we
never hand out a packet that would fail verification.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from kernel.clock import Clock, format_utc
from kernel.db.connect import Database
from kernel.errors import Conflict, InputError
from kernel.export.csv import (
    FORMULA_BLANKS,
    FORMULA_TRIGGERS,
    LEADING_TRIGGERS,
    CsvDigest,
    ExportTally,
    export_chunks,
    export_filename,
)
from kernel.export.manifest import month_manifest, snapshot_disagreements
from kernel.export.proofs import MerkleLevels
from kernel.export.queries import SnapshotRecord, load_snapshot, record_audit
from kernel.export.verify import MANIFEST_NAME, SAFE_FILE_NAME, Verification, verify_packet
from kernel.ledger import verify_inclusion
from kernel.months import parse_year_month
from kernel.settings import PROJECT_ROOT
from kernel.tenants import Site, resolve_site

__all__ = [
    "MAX_DISPUTED_KEYS",
    "PACKET_VERSION",
    "REPORT_NOTEBOOK",
    "PacketResult",
    "StagedEvidence",
    "build_packet",
    "parse_disputed_keys",
    "stage_evidence",
]

PACKET_VERSION = 1
# A dispute names a few rows, not a month (proofs themselves are cheap: see kernel.export.proofs).
MAX_DISPUTED_KEYS = 50
MAX_KEY_CHARS = 200
REPORT_NOTEBOOK = PROJECT_ROOT / "notebooks" / "dispute_evidence.ipynb"
REPORT_TIMEOUT_S = 600
REPORT_NAME = "report.html"
RESULTS_NAME = "report.results.json"
VERIFY_NAME = "VERIFY.md"
COPY_CHUNK_BYTES = 1024 * 1024
# Fixed zip timestamps and modes: the same files always give the same zip bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = 0o644 << 16
_KEY_TEXT = re.compile(r"^[^\x00-\x1f]+$")


@dataclass(frozen=True)
class StagedEvidence:
    """A packet's files in a directory, before zipping (the notebook reads them from here)."""

    directory: Path
    site: Site
    year_month: str
    digest: CsvDigest
    snapshot: SnapshotRecord
    manifest: dict[str, Any]


@dataclass(frozen=True)
class PacketResult:
    path: Path
    manifest: dict[str, Any]
    verification: Verification
    report_verdict: str | None


def parse_disputed_keys(keys: Sequence[str] | str) -> list[str]:
    """Disputed keys from a list or a comma-separated string: de-duplicated, order kept, bounded."""
    items = keys.split(",") if isinstance(keys, str) else list(keys)
    result: list[str] = []
    for item in (k.strip() for k in items):
        if not item or item in result:
            continue
        if len(item) > MAX_KEY_CHARS or not _KEY_TEXT.match(item):
            raise InputError(f"disputed key {item[:40]!r} is not an idempotency key", code="invalid_disputed_key")
        result.append(item)
    if len(result) > MAX_DISPUTED_KEYS:
        raise InputError(f"at most {MAX_DISPUTED_KEYS} disputed keys per packet", code="too_many_disputed_keys")
    return result


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    assert SAFE_FILE_NAME.match(path.name), path.name
    return {"name": path.name, "sha256": _sha256_file(path), "bytes": path.stat().st_size}


def _disputed_entries(
    digest: CsvDigest, tally: ExportTally, keys: Sequence[str], root_hex: str
) -> list[dict[str, Any]]:
    root = bytes.fromhex(root_hex)
    levels: MerkleLevels | None = None
    entries: list[dict[str, Any]] = []
    for key in keys:
        row = digest.disputed.get(key)
        if row is None:
            entries.append({"idempotency_key": key, "status": "not_in_ledger"})
            continue
        entry: dict[str, Any] = {
            "billing_state": row.billing_state,
            "created_at": row.created_at,
            "idempotency_key": key,
            "row_number": row.row_number,
            "status": "billable" if row.billable else "not_billable",
        }
        if row.billable:
            assert row.leaf_index is not None and tally.leaf_hashes is not None
            if levels is None:
                levels = MerkleLevels(tally.leaf_hashes)
                assert levels.root == root, "the CSV's tree must be the signed tree"
            proof = levels.proof(row.leaf_index)
            # Checked here as the customer will check it: never ship a proof that fails.
            assert verify_inclusion(row.leaf, proof, root), key
            entry["leaf"] = row.leaf.decode("utf-8")
            entry["proof"] = proof.to_json()
        entries.append(entry)
    return entries


def stage_evidence(
    conn: psycopg.Connection[Any],
    *,
    site_ref: str,
    year_month: str,
    disputed_keys: Sequence[str],
    directory: Path,
    generated_at: str,
    manifest_extra: dict[str, Any] | None = None,
) -> StagedEvidence:
    """Write the CSV, ``VERIFY.md`` and a manifest for a frozen site-month into ``directory``.

    Raises:
        NotFound: unknown site.
        Conflict: ``month_not_frozen``, ``signing_key_missing``, or ``ledger_snapshot_mismatch``
            when the ledger's rows no longer give the signed snapshot (rows changed or cleaned up).
    """
    month = parse_year_month(year_month)
    keys = parse_disputed_keys(disputed_keys)
    site = resolve_site(conn, site_ref)
    snapshot = load_snapshot(conn, site.id, month)
    if snapshot is None:
        raise Conflict(f"{month} of site {site.public_id} is not frozen: no signed snapshot", code="month_not_frozen")
    if snapshot.public_key is None:
        raise Conflict(f"no public key for signing key {snapshot.key_id}", code="signing_key_missing")
    from kernel.disputes.evidence import packet_corrections  # issue 15: the month's signed credits

    corrections = packet_corrections(conn, site.id, month)
    keys += [k for k in corrections.credited_keys if k not in keys]  # each credit gets its proof
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / export_filename(site.id, month)
    tally = ExportTally(year_month=month, disputed_keys=keys)
    with csv_path.open("wb") as handle:
        for chunk in export_chunks(conn, site.id, month):
            handle.write(chunk)
            tally.feed(chunk)
    digest = tally.close()
    document = snapshot.parsed
    mismatch = snapshot_disagreements(digest, document)
    if mismatch or digest.format_problem_count or digest.order_problem_count:
        problems = mismatch + list(digest.format_problems) + list(digest.order_problems)
        raise Conflict(
            f"the ledger of {site.public_id} {month} no longer matches its snapshot: {problems[0]}",
            code="ledger_snapshot_mismatch",
        )
    verify_path = directory / VERIFY_NAME
    verify_text = verify_instructions(site.id, month, csv_path.name, snapshot) + corrections.verify_section()
    verify_path.write_text(verify_text, encoding="utf-8")
    manifest = month_manifest(site.id, month, digest, snapshot, generated_at=generated_at)
    manifest.update(
        packet_version=PACKET_VERSION,
        public_id=site.public_id,
        disputed=_disputed_entries(digest, tally, keys, document.merkle_root),
        files=[_file_entry(csv_path), _file_entry(verify_path)],
        key_id=snapshot.key_id,
        public_key=snapshot.public_key,
        signature=snapshot.signature,
    )
    manifest.update(corrections.manifest_fields(document), **(manifest_extra or {}))
    _write_manifest(directory, manifest)
    return StagedEvidence(directory, site, month, digest, snapshot, manifest)


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    (directory / MANIFEST_NAME).write_text(text, encoding="utf-8")


def build_packet(
    db: Database,
    *,
    site_ref: str,
    year_month: str,
    disputed_keys: Sequence[str],
    out: Path,
    clock: Clock,
    actor: str = "cli",
    render_report: bool = True,
    manifest_extra: dict[str, Any] | None = None,
) -> PacketResult:
    """Assemble, self-verify and write the packet zip to ``out``; record it in ``audit_log``.

    Raises:
        NotFound, Conflict: see ``stage_evidence``.
        NotebookFailed: the report could not be rendered (with ``render_report``).
        PacketVerificationFailed: the finished packet does not verify (a bug: never shipped).
    """
    generated_at = format_utc(clock.now())
    with tempfile.TemporaryDirectory(prefix="revkernel-packet-") as tmp:
        stage = Path(tmp) / "packet"
        with db.connect("app", autocommit=True) as conn:
            staged = stage_evidence(
                conn,
                site_ref=site_ref,
                year_month=year_month,
                disputed_keys=disputed_keys,
                directory=stage,
                generated_at=generated_at,
                manifest_extra=manifest_extra,
            )
        verdict = _render_report(staged, Path(tmp) / "render") if render_report else None
        zip_tmp = out.with_name(out.name + ".tmp")
        out.parent.mkdir(parents=True, exist_ok=True)
        _zip_directory(stage, zip_tmp)
        verification = verify_packet(zip_tmp)
        if not verification.ok:
            zip_tmp.unlink(missing_ok=True)
            verification.raise_for_failure()
        os.replace(zip_tmp, out)
    with db.connect("app", autocommit=True) as conn:
        record_audit(
            conn,
            at=clock.now(),
            actor=actor,
            action="dispute_packet",
            site_id=staged.site.id,
            year_month=staged.year_month,
            details={
                "csv_sha256": staged.digest.sha256,
                "disputed_keys": len(staged.manifest["disputed"]),
                "packet": out.name,
                "report": render_report,
                "snapshot_hash": staged.snapshot.snapshot_hash,
            },
        )
    return PacketResult(out, staged.manifest, verification, verdict)


def _render_report(staged: StagedEvidence, render_dir: Path) -> str:
    from kernel.reporting.render import render_notebook

    parameters = {
        "site": str(staged.site.id),
        "year_month": staged.year_month,
        "disputed_keys": ",".join(str(d["idempotency_key"]) for d in staged.manifest["disputed"]),
        "evidence_dir": str(staged.directory),
        "results_path": str(render_dir / RESULTS_NAME),
    }
    result = render_notebook(REPORT_NOTEBOOK, parameters, render_dir, timeout_s=REPORT_TIMEOUT_S, name="report")
    shutil.copyfile(result.html_path, staged.directory / REPORT_NAME)
    shutil.copyfile(result.results_path, staged.directory / RESULTS_NAME)
    staged.manifest["files"] += [
        _file_entry(staged.directory / REPORT_NAME),
        _file_entry(staged.directory / RESULTS_NAME),
    ]
    staged.manifest["report_verdict"] = result.verdict
    _write_manifest(staged.directory, staged.manifest)
    return result.verdict


def _zip_directory(directory: Path, target: Path) -> None:
    names = sorted(p.name for p in directory.iterdir())
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for name in names:
            assert SAFE_FILE_NAME.match(name), name
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = _ZIP_MODE
            with (directory / name).open("rb") as src, archive.open(info, "w", force_zip64=True) as dst:
                shutil.copyfileobj(src, dst, COPY_CHUNK_BYTES)


def verify_instructions(site_id: uuid.UUID, year_month: str, csv_name: str, snapshot: SnapshotRecord) -> str:
    """The text of ``VERIFY.md``: how to check the packet by hand, with standard tools only."""
    return _VERIFY_TEMPLATE.format(
        site_id=site_id,
        year_month=year_month,
        csv_name=csv_name,
        key_id=snapshot.key_id,
        snapshot_hash=snapshot.snapshot_hash,
        # The formula-neutralisation rule of kernel.export.csv, spelled out for a script with no kernel.
        formula_blanks=FORMULA_BLANKS,
        formula_triggers=FORMULA_TRIGGERS,
        leading_triggers=LEADING_TRIGGERS,
    )


_VERIFY_TEMPLATE = """\
# Verifying this dispute evidence packet

Site `{site_id}`, month `{year_month}`. Signing key id `{key_id}`, snapshot hash `{snapshot_hash}`.

The quickest check is `revkernel dispute verify PACKET.zip --trusted-key <our published public key>`.
It needs no database and no network. Everything it does can also be done by hand:

## 1. The files are the ones we sent
`manifest.json` lists every other file with its SHA-256. Compare with `sha256sum *`.

## 2. The snapshot is ours and is for this month
`manifest.json` → `snapshot.document` is the signed invoice snapshot (canonical JSON, SPEC §5).
Save it byte for byte (no trailing newline) as `snapshot.json`, then:

- `sha256sum snapshot.json` equals `snapshot.snapshot_hash`;
- its `site_id` and `year_month` are `{site_id}` and `{year_month}`;
- the key id is the first 16 hex characters of SHA-256 of the raw 32-byte public key
  (`snapshot.public_key`), and the public key is the one we publish;
- the Ed25519 signature (`snapshot.signature`, hex) verifies over the document bytes. With OpenSSL:

```
echo 302a300506032b6570032100<public_key hex> | xxd -r -p > pub.der
openssl pkey -pubin -inform DER -in pub.der -out pub.pem
echo <signature hex> | xxd -r -p > sig.bin
openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in snapshot.json -sigfile sig.bin
```

## 3. The CSV is exactly the invoiced month
`{csv_name}` holds every ledger row of the month, billable or not, ordered by `created_at`, then
`idempotency_key` compared bytewise. Spreadsheet formula protection: a cell whose first non-blank
character is `= + - @` (or their fullwidth forms U+FF1D, U+FF0B, U+FF0D, U+FF20), or that began
with a tab, CR, LF or `'`, carries one extra leading `'`; `restore` in the script below removes it
before hashing.

- rows with `billable` = `true` are the invoice: their number is `billable_count`, those in state
  `OVERAGE` are `overage_count`; `REJECTED_QUOTA` rows are `rejected_count`; the other
  non-billable rows are `non_billable_count`.
- The Merkle root (RFC 6962) over the billable rows, in file order, equals `merkle_root` of the
  document. Leaf bytes: UTF-8 of `idempotency_key<TAB>created_at<TAB>billing_state`; leaf hash
  `SHA-256(0x00 || leaf)`; node hash `SHA-256(0x01 || left || right)`; a list of n > 1 leaves is
  split at the largest power of two smaller than n; no leaves: `SHA-256("")`.

```python
import csv, hashlib, sys
def h(b): return hashlib.sha256(b).digest()
def root(leaves):
    if not leaves: return h(b"")
    if len(leaves) == 1: return h(b"\\x00" + leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return h(b"\\x01" + root(leaves[:k]) + root(leaves[k:]))
BLANKS, TRIGGERS, LEADING = {formula_blanks!r}, {formula_triggers!r}, {leading_triggers!r}
def protected(v):
    first = v[:1]
    return first in LEADING + TRIGGERS or (first != "" and first in BLANKS and v.lstrip(BLANKS)[:1] in TRIGGERS)
def restore(cell): return cell[1:] if cell[:1] == "'" and protected(cell[1:]) else cell
with open(sys.argv[1], newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
leaves = [f"{{restore(r['idempotency_key'])}}\\t{{r['created_at']}}\\t{{r['billing_state']}}".encode()
          for r in rows if r["billable"] == "true"]
print(len(leaves), root(leaves).hex())
```

## 4. A disputed row is in the invoice
For each entry of `disputed` with status `billable`, `proof` is the RFC 9162 §2.1.3 audit path of
the leaf `leaf` at `leaf_index` in a tree of `tree_size` leaves. Check that `tree_size` equals the
document's `billable_count`, that the leaf is the CSV row of that key, and that hashing up the path
gives the document's `merkle_root`. Status `not_billable` means the row was recorded but never
invoiced; `not_in_ledger` means we hold no such event for this month.
"""

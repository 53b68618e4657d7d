"""The offline verifier of dispute evidence packets (SPEC §5, §6): no database, no network.

``verify_packet`` reads a packet zip (or ``verify_directory`` a staged directory) and runs every
check below, never stopping at the first failure, so the table shows everything that is wrong.
Each failure carries its own stable reason code:

| check | fails with |
|---|---|
| packet_files | ``packet_unreadable``, ``unsafe_file_name``, ``manifest_missing``, |
| | ``manifest_malformed``, ``missing_file``, ``unlisted_file`` |
| file_hashes | ``file_hash_mismatch`` (a listed file's SHA-256 or size differs) |
| csv_format | ``csv_malformed`` (header, field formats, RFC 4180 quoting) |
| row_order | ``rows_out_of_order`` (not strictly by ``created_at``, then key bytewise) |
| csv_month | ``rows_outside_month`` |
| snapshot_document | ``snapshot_malformed`` (not a canonical SPEC §5 document) |
| snapshot_hash | ``snapshot_hash_mismatch`` |
| snapshot_scope | ``snapshot_other_month``, ``snapshot_other_site`` |
| signature | ``public_key_malformed``, ``key_id_mismatch``, ``untrusted_key``, ``signature_invalid`` |
| row_counts | ``row_count_mismatch``, ``billable_count_mismatch``, ``overage_count_mismatch``, |
| | ``rejected_count_mismatch``, ``non_billable_count_mismatch`` |
| manifest_counts | ``manifest_counts_mismatch`` |
| merkle_root | ``merkle_root_mismatch`` |
| inclusion:<key> | ``inclusion_proof_invalid``, ``disputed_row_mismatch`` |

Inclusion proofs are checked against the root of the *signed* document, never a root the packet
states elsewhere, and the proof's tree size must be the document's ``billable_count`` and its leaf
index the row's position among the CSV's billable rows: a proof that is valid for some other tree
or some other leaf is refused (immudb shipped a verifier that accepted such proofs,
GHSA-672p-m5jq-mrh8). The signer's key can be pinned with ``trusted_keys`` (the public keys we
publish); without a pin the verifier can only say the packet is consistent with the key it carries.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from kernel.errors import KernelError
from kernel.export.csv import CsvDigest, ExportTally
from kernel.ledger import InclusionProof, SnapshotDocument, key_id, snapshot_hash, verify_inclusion, verify_signature

__all__ = [
    "MANIFEST_NAME",
    "MAX_PACKET_FILES",
    "MAX_PACKET_UNCOMPRESSED_BYTES",
    "SAFE_FILE_NAME",
    "Check",
    "PacketVerificationFailed",
    "Verification",
    "verify_directory",
    "verify_packet",
]

MANIFEST_NAME = "manifest.json"
# A packet is a handful of flat files; anything beyond these limits is refused before reading.
MAX_PACKET_FILES = 16
MAX_PACKET_UNCOMPRESSED_BYTES = 16 * 1024**3
MAX_MANIFEST_BYTES = 16 * 1024**2
READ_CHUNK_BYTES = 1024 * 1024
# Flat names only: no directories, no "..", no absolute paths, no backslashes, no hidden files.
SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class PacketVerificationFailed(KernelError):
    """A packet failed verification; ``code`` is the first failing check's reason."""

    code = "packet_verification_failed"
    http_status = 422


@dataclass(frozen=True)
class Check:
    """One row of the verification table."""

    name: str
    ok: bool
    detail: str
    reason: str | None = None  # stable code when failed

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class Verification:
    """Every check's outcome; the packet passes only when all of them pass."""

    checks: tuple[Check, ...]
    site_id: str | None = None
    year_month: str | None = None
    digest: CsvDigest | None = None
    document: SnapshotDocument | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [c.reason or "failed" for c in self.checks if not c.ok]

    @property
    def first_failure(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "reasons": self.reasons, "checks": [c.to_json() for c in self.checks]}

    def raise_for_failure(self) -> None:
        failed = self.first_failure
        if failed is not None:
            raise PacketVerificationFailed(
                f"packet verification failed: {failed.name}: {failed.detail}", code=failed.reason or "failed"
            )


class _PacketFiles(Protocol):
    def names(self) -> list[str]: ...

    def size(self, name: str) -> int: ...

    def open(self, name: str) -> IO[bytes]: ...


class _ZipFiles:
    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive
        self.infos = {info.filename: info for info in archive.infolist()}

    def names(self) -> list[str]:
        return [info.filename for info in self.archive.infolist()]

    def size(self, name: str) -> int:
        return self.infos[name].file_size

    def open(self, name: str) -> IO[bytes]:
        return self.archive.open(self.infos[name])


class _DirFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir())

    def size(self, name: str) -> int:
        return (self.root / name).stat().st_size

    def open(self, name: str) -> IO[bytes]:
        path = self.root / name
        if not path.is_file() or path.is_symlink():
            raise OSError(f"{name} is not a regular file")
        return path.open("rb")


def verify_packet(path: Path, *, trusted_keys: Sequence[str] = ()) -> Verification:
    """Verify a packet zip; never raises for bad content (failures are checks)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return _verify(_ZipFiles(archive), trusted_keys)
    except (OSError, zipfile.BadZipFile) as exc:
        return Verification((Check("packet_files", False, f"cannot read {path.name}: {exc}", "packet_unreadable"),))


def verify_directory(root: Path, *, trusted_keys: Sequence[str] = ()) -> Verification:
    """Verify an unpacked (or staged) packet directory with the same checks."""
    if not root.is_dir():
        return Verification((Check("packet_files", False, f"{root} is not a directory", "packet_unreadable"),))
    return _verify(_DirFiles(root), trusted_keys)


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(READ_CHUNK_BYTES):
        yield chunk


@dataclass
class _Run:
    files: _PacketFiles
    trusted: frozenset[str]
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str, reason: str) -> bool:
        self.checks.append(Check(name, ok, detail, None if ok else reason))
        return ok


def _verify(files: _PacketFiles, trusted_keys: Sequence[str]) -> Verification:
    run = _Run(files, frozenset(k.strip().lower() for k in trusted_keys if k.strip()))
    manifest = _packet_files(run)
    if manifest is None:
        return Verification(tuple(run.checks))
    site_id, year_month = str(manifest["site_id"]), str(manifest["year_month"])
    _file_hashes(run, manifest)
    digest = _csv_checks(run, manifest)
    document = _snapshot_checks(run, manifest)
    if document is not None and digest is not None:
        _count_checks(run, manifest, digest, document)
        _inclusion_checks(run, manifest, digest, document)
        from kernel.disputes.verify import correction_checks  # issue 15: corrections and case

        run.checks += correction_checks(manifest, digest, document, lambda entry, doc: _signature_of(run, entry, doc))
    return Verification(tuple(run.checks), site_id, year_month, digest, document)


def _packet_files(run: _Run) -> dict[str, Any] | None:
    try:
        names = run.files.names()
    except (OSError, zipfile.BadZipFile) as exc:
        run.add("packet_files", False, f"cannot list the packet: {exc}", "packet_unreadable")
        return None
    unsafe = [n for n in names if not SAFE_FILE_NAME.match(n)]
    if unsafe or len(names) != len(set(names)):
        detail = f"unsafe or duplicate file names: {sorted(set(unsafe)) or 'duplicates'}"
        run.add("packet_files", False, detail, "unsafe_file_name")
        return None
    if len(names) > MAX_PACKET_FILES or sum(run.files.size(n) for n in names) > MAX_PACKET_UNCOMPRESSED_BYTES:
        run.add("packet_files", False, f"more than {MAX_PACKET_FILES} files or too large", "packet_unreadable")
        return None
    if MANIFEST_NAME not in names:
        run.add("packet_files", False, f"no {MANIFEST_NAME}", "manifest_missing")
        return None
    manifest = _read_manifest(run)
    if manifest is None:
        return None
    listed = [entry["name"] for entry in manifest["files"]]
    missing = [n for n in listed if n not in names]
    unlisted = [n for n in names if n != MANIFEST_NAME and n not in listed]
    if missing:
        run.add("packet_files", False, f"listed but absent: {missing}", "missing_file")
    elif unlisted:
        run.add("packet_files", False, f"present but not in the manifest: {unlisted}", "unlisted_file")
    else:
        run.add("packet_files", True, f"{len(names)} files, names safe, all listed", "")
    return manifest


def _read_manifest(run: _Run) -> dict[str, Any] | None:
    try:
        if run.files.size(MANIFEST_NAME) > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES} bytes")
        with run.files.open(MANIFEST_NAME) as handle:
            manifest = json.loads(handle.read(MAX_MANIFEST_BYTES + 1).decode("utf-8"))
        _require_shape(manifest)
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        run.add("packet_files", False, f"{MANIFEST_NAME} unusable: {exc}", "manifest_malformed")
        return None
    result: dict[str, Any] = manifest
    return result


def _require_shape(manifest: Any) -> None:
    if not isinstance(manifest, dict):
        raise ValueError("not a JSON object")
    for key, kind in (
        ("site_id", str),
        ("year_month", str),
        ("files", list),
        ("csv", dict),
        ("counts", dict),
        ("snapshot", dict),
        ("disputed", list),
        ("merkle_root", str),
    ):
        if not isinstance(manifest.get(key), kind):
            raise ValueError(f"{key} missing or not a {kind.__name__}")
    for entry in manifest["files"]:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("name", "sha256")):
            raise ValueError("files entries need a name and a sha256")
        if not SAFE_FILE_NAME.match(entry["name"]) or entry["name"] == MANIFEST_NAME:
            raise ValueError(f"unsafe file name {entry['name']!r} in the manifest")
    snapshot = manifest["snapshot"]
    for key in ("document", "snapshot_hash", "signature", "key_id", "public_key"):
        if not isinstance(snapshot.get(key), str):
            raise ValueError(f"snapshot.{key} missing")
    if not isinstance(manifest["csv"].get("name"), str):
        raise ValueError("csv.name missing")


def _sha256_of(run: _Run, name: str) -> tuple[str, int]:
    sha, size = hashlib.sha256(), 0
    with run.files.open(name) as handle:
        for chunk in _chunks(handle):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def _file_hashes(run: _Run, manifest: dict[str, Any]) -> None:
    names = set(run.files.names())
    bad: list[str] = []
    for entry in manifest["files"]:
        if entry["name"] not in names:
            continue
        try:
            digest, size = _sha256_of(run, entry["name"])
        except (OSError, zipfile.BadZipFile, zlib.error) as exc:
            bad.append(f"{entry['name']} unreadable ({exc})")
            continue
        if digest != entry["sha256"].lower() or ("bytes" in entry and entry["bytes"] != size):
            bad.append(f"{entry['name']} has sha256 {digest[:16]}…, manifest says {entry['sha256'][:16]}…")
    if bad:
        run.add("file_hashes", False, "; ".join(bad), "file_hash_mismatch")
    else:
        run.add("file_hashes", True, f"{len(manifest['files'])} files match their SHA-256", "")


def _csv_checks(run: _Run, manifest: dict[str, Any]) -> CsvDigest | None:
    name = manifest["csv"]["name"]
    listed = {entry["name"] for entry in manifest["files"]}
    if name not in listed or name not in run.files.names():
        run.add("csv_format", False, f"the CSV {name!r} is not in the packet", "csv_malformed")
        return None
    keys = [str(d.get("idempotency_key")) for d in manifest["disputed"] if isinstance(d, dict)]
    tally = ExportTally(year_month=str(manifest["year_month"]), disputed_keys=keys)
    try:
        with run.files.open(name) as handle:
            for chunk in _chunks(handle):
                tally.feed(chunk)
    except (OSError, zipfile.BadZipFile, zlib.error) as exc:
        run.add("csv_format", False, f"cannot read {name}: {exc}", "csv_malformed")
        return None
    digest = tally.close()
    if digest.format_problem_count:
        detail = f"{digest.format_problem_count} problem(s), first: {digest.format_problems[0]}"
        run.add("csv_format", False, detail, "csv_malformed")
    else:
        run.add("csv_format", True, f"header and {digest.row_count} rows well-formed", "")
    if digest.order_problem_count:
        detail = f"{digest.order_problem_count} row(s) out of order, first: {digest.order_problems[0]}"
        run.add("row_order", False, detail, "rows_out_of_order")
    else:
        run.add("row_order", True, "strictly ordered by created_at, then idempotency_key bytewise", "")
    if digest.month_problem_count:
        detail = f"{digest.month_problem_count} row(s), first: {digest.month_problems[0]}"
        run.add("csv_month", False, detail, "rows_outside_month")
    else:
        run.add("csv_month", True, f"every row is in {manifest['year_month']}", "")
    return digest


def _snapshot_checks(run: _Run, manifest: dict[str, Any]) -> SnapshotDocument | None:
    snapshot = manifest["snapshot"]
    document_bytes = snapshot["document"].encode("utf-8")
    try:
        document = SnapshotDocument.from_bytes(document_bytes)
    except (ValueError, TypeError, KeyError) as exc:
        run.add("snapshot_document", False, f"not a SPEC §5 document: {exc}", "snapshot_malformed")
        return None
    run.add("snapshot_document", True, f"canonical hash_version {document.hash_version} document", "")
    actual = snapshot_hash(document_bytes)
    run.add(
        "snapshot_hash",
        actual == snapshot["snapshot_hash"],
        f"SHA-256 of the document is {actual}",
        "snapshot_hash_mismatch",
    )
    if document.year_month != manifest["year_month"]:
        detail = f"snapshot is of {document.year_month}, the packet is for {manifest['year_month']}"
        run.add("snapshot_scope", False, detail, "snapshot_other_month")
    elif document.site_id != str(manifest["site_id"]).lower():
        run.add("snapshot_scope", False, f"snapshot is of site {document.site_id}", "snapshot_other_site")
    else:
        run.add("snapshot_scope", True, f"site {document.site_id}, month {document.year_month}", "")
    _signature_check(run, snapshot, document_bytes)
    return document


def _signature_check(run: _Run, snapshot: dict[str, Any], document_bytes: bytes) -> None:
    try:
        public_key = bytes.fromhex(snapshot["public_key"])
        if len(public_key) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
    except ValueError as exc:
        run.add("signature", False, f"public key unusable: {exc}", "public_key_malformed")
        return
    kid = key_id(public_key)
    if kid != snapshot["key_id"]:
        run.add(
            "signature", False, f"the public key's id is {kid}, the packet says {snapshot['key_id']}", "key_id_mismatch"
        )
    elif run.trusted and public_key.hex() not in run.trusted and kid not in run.trusted:
        run.add("signature", False, f"key {kid} is not one of the trusted keys given", "untrusted_key")
    elif not verify_signature(public_key, document_bytes, snapshot["signature"]):
        run.add("signature", False, f"Ed25519 signature does not verify with key {kid}", "signature_invalid")
    else:
        pinned = "pinned" if run.trusted else "NOT pinned: compare this key id with the published one"
        run.add("signature", True, f"Ed25519 signature valid, key {kid} ({pinned})", "")


def _signature_of(run: _Run, signed: dict[str, Any], document_bytes: bytes) -> Check:
    """The signature check of another signed document of the packet (a correction), same trust."""
    probe = _Run(run.files, run.trusted)
    _signature_check(probe, signed, document_bytes)
    return probe.checks[-1]


def _count_checks(run: _Run, manifest: dict[str, Any], digest: CsvDigest, document: SnapshotDocument) -> None:
    expected = document.counts()
    actual = digest.counts()
    wrong = [name for name in expected if expected[name] != actual[name]]
    if wrong:
        first = wrong[0]
        detail = ", ".join(f"{n}: CSV {actual[n]} vs snapshot {expected[n]}" for n in wrong)
        reason = "row_count_mismatch" if first == "rows" else f"{first}_count_mismatch"
        run.add("row_counts", False, detail, reason)
    else:
        run.add("row_counts", True, ", ".join(f"{n} {actual[n]}" for n in expected), "")
    stated = {k: manifest["counts"].get(k) for k in actual}
    run.add(
        "manifest_counts",
        stated == actual,
        "the manifest's counts are the CSV's" if stated == actual else f"manifest says {stated}, CSV has {actual}",
        "manifest_counts_mismatch",
    )
    same = digest.merkle_root == document.merkle_root and manifest["merkle_root"] == document.merkle_root
    run.add(
        "merkle_root",
        same,
        f"recomputed {digest.merkle_root}; snapshot {document.merkle_root}; manifest {manifest['merkle_root']}",
        "merkle_root_mismatch",
    )


def _inclusion_checks(run: _Run, manifest: dict[str, Any], digest: CsvDigest, document: SnapshotDocument) -> None:
    root = bytes.fromhex(document.merkle_root)
    for entry in manifest["disputed"]:
        key = str(entry.get("idempotency_key")) if isinstance(entry, dict) else "?"
        name = f"inclusion:{key}"
        row = digest.disputed.get(key)
        status = entry.get("status") if isinstance(entry, dict) else None
        if status == "not_in_ledger":
            run.add(name, row is None, "not in the month's ledger", "disputed_row_mismatch")
            continue
        if status == "not_billable":
            ok = row is not None and not row.billable
            run.add(name, ok, "recorded, not billable: not in the invoice", "disputed_row_mismatch")
            continue
        if status != "billable" or row is None or not row.billable:
            run.add(name, False, f"status {status!r} does not match the CSV row", "disputed_row_mismatch")
            continue
        try:
            proof = InclusionProof.from_json(entry["proof"])
            leaf = str(entry["leaf"]).encode("utf-8")
        except (KeyError, TypeError, ValueError) as exc:
            run.add(name, False, f"malformed proof: {exc}", "inclusion_proof_invalid")
            continue
        problems = []
        if leaf != row.leaf:
            problems.append("the proof's leaf is not the CSV row's leaf")
        if proof.tree_size != document.billable_count:
            problems.append(f"tree size {proof.tree_size} is not the signed billable_count {document.billable_count}")
        if proof.leaf_index != row.leaf_index:
            problems.append(f"leaf index {proof.leaf_index} is not the row's position {row.leaf_index}")
        if not verify_inclusion(leaf, proof, root):
            problems.append("the audit path does not lead to the signed Merkle root")
        detail = "; ".join(problems) or f"leaf {proof.leaf_index} of {proof.tree_size} leads to the signed root"
        run.add(name, not problems, detail, "inclusion_proof_invalid")

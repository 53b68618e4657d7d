"""Write the hostile packet corpus of ``tests/export/hostile_packets/`` (issue 12 §5), byte for byte.

Run ``python -m tests.export.hostile_packets.generate`` from the project root; the files are
committed, and ``tests/export/test_hostile_packets.py`` checks that this script still writes
exactly them. Everything is deterministic: a fixed signing seed, fixed rows, fixed zip dates.

``good.zip`` is a genuine v1 packet (built with the packet builder's own functions from fixed rows,
signed with ``CORPUS_SEED``); every other file attacks one reader of the verifier. ``_case_table`` names,
for each, the reason code the verifier must report first: written here by hand, never by running
the verifier. ``expected.json`` is that table.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernel.export.csv import EXPORT_HEADER, ExportTally, export_filename
from kernel.export.manifest import month_manifest
from kernel.export.packet import PACKET_VERSION, VERIFY_NAME, _disputed_entries, _zip_directory, verify_instructions
from kernel.export.queries import SnapshotRecord
from kernel.ledger import SigningKey, SnapshotDocument

HERE = Path(__file__).resolve().parent
CORPUS_SEED = hashlib.sha256(b"revkernel hostile packet corpus").digest()
SITE_ID = uuid.UUID("00000000-0000-4000-8000-000000000014")
MONTH = "2026-10"
GENERATED_AT = "2026-11-03T00:00:00.000000Z"
DISPUTED = ["evt-0002", "evt-0004", "no-such-event"]
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

Files = dict[str, bytes]


def corpus_key() -> SigningKey:
    return SigningKey.from_seed(CORPUS_SEED)


def _rows() -> bytes:
    lines = [
        "evt-0001,2026-10-04T09:00:00.000000Z,2026-10,true,ACCEPTED,billable,page,view,'=cmd,{h},2",
        "evt-0002,2026-10-04T09:00:01.000000Z,2026-10,true,ACCEPTED,billable,page,view,,{h},2",
        "evt-0003,2026-10-04T09:00:02.000000Z,2026-10,false,REJECTED_QUOTA,rejected_quota,page,view,,{h},2",
        'evt-0004,2026-10-05T10:00:00.000000Z,2026-10,true,OVERAGE,overage,page,view,"a, ""b""",{h},2',
        "evt-0005,2026-10-06T11:00:00.000000Z,2026-10,false,ACCEPTED,scroll_depth,interaction,scroll,,{h},1",
    ]
    body = "".join(line.format(h=hashlib.sha256(str(i).encode()).hexdigest()) + "\n" for i, line in enumerate(lines))
    return EXPORT_HEADER + body.encode("utf-8")


def good_files() -> Files:
    """A genuine packet's files, made with the packet builder's own functions."""
    key = corpus_key()
    data = _rows()
    tally = ExportTally(year_month=MONTH, disputed_keys=DISPUTED)
    tally.feed(data)
    digest = tally.close()
    document = SnapshotDocument(
        site_id=str(SITE_ID),
        year_month=MONTH,
        billable_count=digest.billable_count,
        overage_count=digest.overage_count,
        rejected_count=digest.rejected_count,
        non_billable_count=digest.non_billable_count,
        merkle_root=digest.merkle_root,
        prev_snapshot_hash=None,
        frozen_at="2026-11-01T00:10:00.000000Z",
    )
    body = document.to_bytes()
    snapshot = SnapshotRecord(body, document.snapshot_hash, key.sign(body), key.key_id, key.public_key.hex())
    csv_name = export_filename(SITE_ID, MONTH)
    verify_md = verify_instructions(SITE_ID, MONTH, csv_name, snapshot).encode("utf-8")
    manifest = month_manifest(SITE_ID, MONTH, digest, snapshot, generated_at=GENERATED_AT)
    manifest.update(
        packet_version=PACKET_VERSION,
        public_id="corpus-shop",
        disputed=_disputed_entries(digest, tally, DISPUTED, document.merkle_root),
        files=[_entry(csv_name, data), _entry(VERIFY_NAME, verify_md)],
        key_id=snapshot.key_id,
        public_key=snapshot.public_key,
        signature=snapshot.signature,
    )
    return {csv_name: data, VERIFY_NAME: verify_md, "manifest.json": _manifest_bytes(manifest)}


def _entry(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _zip(files: Files, *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            archive.writestr(info, files[name], compresslevel=9)
    return out.getvalue()


def _good_zip() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        stage, target = Path(tmp) / "stage", Path(tmp) / "good.zip"
        stage.mkdir()
        for name, data in good_files().items():
            (stage / name).write_bytes(data)
        _zip_directory(stage, target)  # the builder's own zip writer
        return target.read_bytes()


def _with_csv(csv: bytes, **changes: Any) -> Files:
    """The good packet with another CSV, its manifest entry rehashed (a careful forger)."""
    files = good_files()
    manifest = json.loads(files["manifest.json"])
    name = manifest["csv"]["name"]
    files[name] = csv
    manifest["files"][0] = _entry(name, csv)
    manifest.update(changes)
    files["manifest.json"] = _manifest_bytes(manifest)
    return files


def _with_manifest(change: Callable[[dict[str, Any]], None]) -> Files:
    files = good_files()
    manifest = json.loads(files["manifest.json"])
    change(manifest)
    files["manifest.json"] = _manifest_bytes(manifest)
    return files


def _manifest_with_surrogate() -> bytes:
    manifest = json.loads(good_files()["manifest.json"])
    manifest["snapshot"]["document"] = "\ud800"  # valid JSON text (escaped), no valid Unicode
    return json.dumps(manifest, indent=2, sort_keys=True).encode("ascii")


def _central_entries(data: bytes) -> list[int]:
    """Offsets of the central directory entries of a zip written by ``_zip``."""
    offsets, at = [], data.find(b"PK\x01\x02")
    while at >= 0:
        offsets.append(at)
        at = data.find(b"PK\x01\x02", at + 4)
    return offsets


def _patch_member(data: bytes, name: str, **fields: int) -> bytes:
    """Rewrite header fields of one member in both its local and its central header."""
    buf = bytearray(data)
    # (local offset, central offset, struct format) of each field, from APPNOTE 4.3.7 and 4.3.12.
    layout = {"flags": (6, 8, "<H"), "method": (8, 10, "<H"), "crc": (14, 16, "<L"), "file_size": (22, 24, "<L")}
    for central in _central_entries(data):
        name_len = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46 : central + 46 + name_len] != name.encode():
            continue
        local = struct.unpack_from("<L", data, central + 42)[0]
        for field, value in fields.items():
            local_at, central_at, fmt = layout[field]
            struct.pack_into(fmt, buf, local + local_at, value)
            struct.pack_into(fmt, buf, central + central_at, value)
        return bytes(buf)
    raise KeyError(name)


def _member_info(data: bytes, name: str) -> zipfile.ZipInfo:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.getinfo(name)


def _declared_zip64_sizes(sizes: dict[str, int]) -> bytes:
    """A zip of small stored members whose ZIP64 central headers declare ``sizes`` uncompressed bytes."""
    data = _zip({name: b"x" * 64 for name in sizes}, compression=zipfile.ZIP_STORED)
    entries = _central_entries(data)
    eocd = data.rfind(b"PK\x05\x06")
    directory = b""
    for central in entries:
        name_len = struct.unpack_from("<H", data, central + 28)[0]  # _zip writes no extras or comments
        name = data[central + 46 : central + 46 + name_len].decode()
        entry = bytearray(data[central : central + 46 + name_len])
        # Sizes 0xFFFFFFFF in the fixed part send readers to the ZIP64 extra field (APPNOTE 4.5.3).
        extra = struct.pack("<HHQQ", 0x0001, 16, sizes[name], 64)
        struct.pack_into("<LL", entry, 20, 0xFFFFFFFF, 0xFFFFFFFF)
        struct.pack_into("<H", entry, 30, len(extra))
        directory += bytes(entry) + extra
    tail = bytearray(data[eocd:])
    struct.pack_into("<L", tail, 12, len(directory))
    return data[: entries[0]] + directory + bytes(tail)


def _huge_central_directory() -> bytes:
    data = _good_zip()
    eocd = data.rfind(b"PK\x05\x06")
    buf = bytearray(data)
    struct.pack_into("<L", buf, eocd + 12, 0x7FFFFFFF)  # size of the central directory
    return bytes(buf)


def _overlapping() -> bytes:
    data = _zip({"VERIFY.md": b"v" * 2000, "manifest.json": b"{}"}, compression=zipfile.ZIP_STORED)
    buf = bytearray(data)
    first, second = _central_entries(data)
    struct.pack_into("<L", buf, second + 42, struct.unpack_from("<L", data, first + 42)[0])
    return bytes(buf)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _case_table() -> dict[str, tuple[str, str, Callable[[], bytes]]]:
    """name -> (check, first reason code, how the file is made)."""
    good = _good_zip
    csv_name = export_filename(SITE_ID, MONTH)
    good_csv = _rows()
    return {
        "good.zip": ("", "", good),
        # The 2 KB zip of issue 12 §5: one quoted field that never ends, 900 KB once inflated.
        "unterminated_quote.zip": (
            "csv_limits",
            "csv_too_large",
            lambda: _zip(_with_csv(good_csv + b'"' + b"a\n" * 450_000)),
        ),
        "field_too_long.zip": (
            "csv_limits",
            "csv_too_large",
            lambda: _zip(
                _with_csv(
                    good_csv
                    + b"evt-0009,2026-10-07T00:00:00.000000Z,2026-10,false,ACCEPTED,x,y,z,"
                    + b"w" * 5000
                    + b",h,2\n"
                )
            ),
        ),
        "ratio_bomb.zip": (
            "packet_files",
            "compression_ratio_exceeded",
            lambda: _zip(_with_csv(b"\n" * (8 * 1024**2))),
        ),
        "declared_huge_member.zip": (
            "packet_files",
            "member_too_large",
            lambda: _declared_zip64_sizes({"dispute.csv": 1 << 40}),
        ),
        "declared_huge_total.zip": (
            "packet_files",
            "packet_too_large",
            lambda: _declared_zip64_sizes({"a.csv": 10 << 30, "b.csv": 10 << 30}),
        ),
        "too_many_members.zip": (
            "packet_files",
            "packet_too_large",
            lambda: _zip({f"f{i:02d}.csv": b"" for i in range(17)}, compression=zipfile.ZIP_STORED),
        ),
        "huge_central_directory.zip": ("packet_files", "packet_too_large", _huge_central_directory),
        "overlapping_members.zip": ("packet_files", "member_overlap", _overlapping),
        "encrypted_member.zip": (
            "packet_files",
            "member_encrypted",
            lambda: _patch_member(good(), "manifest.json", flags=0x1),
        ),
        "unknown_compression.zip": (
            "packet_files",
            "member_compression_unsupported",
            lambda: _patch_member(good(), csv_name, method=99),
        ),
        "truncated_member.zip": (
            "file_hashes",
            "member_unreadable",
            lambda: _patch_member(good(), csv_name, file_size=_member_info(good(), csv_name).file_size + 4096),
        ),
        "bad_crc.zip": ("file_hashes", "member_unreadable", lambda: _patch_member(good(), csv_name, crc=0)),
        "truncated_zip.zip": ("packet_files", "packet_unreadable", lambda: good()[: len(good()) // 2]),
        "not_a_zip.zip": ("packet_files", "packet_unreadable", lambda: b"PK\x03\x04 this is not a zip" * 40),
        "empty.zip": ("packet_files", "packet_unreadable", lambda: b""),
        "deep_manifest.zip": (
            "packet_files",
            "json_too_deep",
            lambda: _zip({**good_files(), "manifest.json": _deep(100_000).encode()}),
        ),
        "shallow_but_too_deep_manifest.zip": (
            "packet_files",
            "json_too_deep",
            lambda: _zip(_with_manifest(lambda m: m.__setitem__("extra", json.loads(_deep(40))))),
        ),
        "deep_snapshot_document.zip": (
            "snapshot_document",
            "json_too_deep",
            lambda: _zip(_with_manifest(lambda m: m["snapshot"].__setitem__("document", _deep(100_000)))),
        ),
        "duplicate_keys.zip": (
            "packet_files",
            "manifest_malformed",
            lambda: _zip(
                {**good_files(), "manifest.json": good_files()["manifest.json"][:-2] + b',"merkle_root":"00"}\n'}
            ),
        ),
        "lone_surrogate.zip": (
            "packet_files",
            "manifest_malformed",
            lambda: _zip({**good_files(), "manifest.json": _manifest_with_surrogate()}),
        ),
        "nan_count.zip": (
            "packet_files",
            "manifest_malformed",
            lambda: _zip(
                {**good_files(), "manifest.json": good_files()["manifest.json"].replace(b'"rows": 5', b'"rows": NaN')}
            ),
        ),
        "huge_integer.zip": (
            "packet_files",
            "manifest_malformed",
            lambda: _zip(
                {
                    **good_files(),
                    "manifest.json": good_files()["manifest.json"].replace(b'"rows": 5', b'"rows": 1' + b"0" * 5000),
                }
            ),
        ),
        "manifest_lists_a_file_twice.zip": (
            "packet_files",
            "manifest_malformed",
            lambda: _zip(_with_manifest(lambda m: m["files"].append(m["files"][0]))),
        ),
        "long_proof_path.zip": (
            "inclusion:evt-0002",
            "inclusion_proof_invalid",
            lambda: _zip(_with_manifest(lambda m: m["disputed"][0]["proof"].__setitem__("path", ["00" * 32] * 10_000))),
        ),
        "terminal_escape_key.zip": (
            "inclusion:\x1b]0;owned\x07\x1b[2J",
            "disputed_row_mismatch",
            lambda: _zip(
                _with_manifest(
                    lambda m: m["disputed"].append({"idempotency_key": "\x1b]0;owned\x07\x1b[2J", "status": "billable"})
                )
            ),
        ),
        "proof_is_a_string.zip": (
            "inclusion:evt-0002",
            "inclusion_proof_invalid",
            lambda: _zip(_with_manifest(lambda m: m["disputed"][0].__setitem__("proof", "nope"))),
        ),
    }


def write(directory: Path) -> dict[str, Any]:
    """Write every corpus file and ``expected.json`` into ``directory``; returns the expectations."""
    directory.mkdir(parents=True, exist_ok=True)
    expected: dict[str, Any] = {
        "description": "Hostile dispute packets (issue 12 §5): the first failing check and its reason code.",
        "trusted_key": corpus_key().public_key.hex(),
        "cases": {},
    }
    for name, (check, reason, make) in _case_table().items():
        (directory / name).write_bytes(make())
        expected["cases"][name] = {"check": check, "reason": reason}
    (directory / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return expected


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    cases = write(out)["cases"]
    for name in sorted(cases):
        print(f"{(out / name).stat().st_size:>9} bytes  {name}")

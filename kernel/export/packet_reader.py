"""Bounded readers for everything the offline verifier is handed: the packet zip, its files, JSON, keys.

A packet comes from whoever sends it, so nothing in it is read before its size is known and
bounded, and every read is linear in the bytes it returns. The limits (each refused with the
reason code shown, as a failed check of the verification table, never an exception):

| limit | value | reason |
|---|---|---|
| ``MAX_CENTRAL_DIRECTORY_BYTES`` | 64 KiB of zip directory, checked before parsing | ``packet_too_large`` |
| ``MAX_PACKET_FILES`` | 16 files (zip members or directory entries) | ``packet_too_large`` |
| ``MAX_PACKET_UNCOMPRESSED_BYTES`` | 16 GiB, all files together (declared sizes) | ``packet_too_large`` |
| ``MAX_MEMBER_BYTES`` | 16 GiB per file, declared and as actually read | ``member_too_large`` |
| ``MAX_MANIFEST_BYTES`` | 4 MiB for ``manifest.json`` (also the JSON size limit) | ``member_too_large`` |
| ``MAX_COMPRESSION_RATIO`` | 100:1 uncompressed to compressed, files over 1 MiB | ``compression_ratio_exceeded`` |
| ``MAX_JSON_DEPTH`` | 16 nested arrays/objects (the manifest needs 5) | ``json_too_deep`` |
| ``MAX_CSV_RECORD_BYTES`` | 256 KiB of one CSV record (``kernel.export.csv``) | ``csv_too_large`` |
| ``MAX_CSV_FIELD_CHARS`` | 4096 characters of one CSV field (``kernel.export.csv``) | ``csv_too_large`` |

Other container problems: ``packet_unreadable`` (not a zip, broken central directory),
``member_encrypted``, ``member_compression_unsupported`` (only stored and deflate are read),
``member_overlap`` (two members share bytes: the "overlapping files" zip bomb),
``member_unreadable`` (truncated, corrupt deflate data, bad CRC, fewer or more bytes than declared,
not a regular file). JSON must be UTF-8 with no duplicate keys, no ``NaN``/``Infinity`` and no
unpaired surrogates (else the caller's ``*_malformed`` code).

Trusted keys (``parse_trusted_key``) are pinned by the full Ed25519 public key: 64 hex characters,
or the C2SP signed-note verifier key ``<name>+<hash>+<base64 of 0x01 || key>`` whose hash is
checked. A 16-hex-character key id is refused: 64 bits name a key, they do not pin one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kernel.errors import InputError

__all__ = [
    "COMPRESSION_RATIO_FLOOR_BYTES",
    "MAX_CENTRAL_DIRECTORY_BYTES",
    "MAX_COMPRESSION_RATIO",
    "MAX_JSON_DEPTH",
    "MAX_MANIFEST_BYTES",
    "MAX_MEMBER_BYTES",
    "MAX_PACKET_FILES",
    "MAX_PACKET_UNCOMPRESSED_BYTES",
    "READ_CHUNK_BYTES",
    "PacketFiles",
    "PacketReadError",
    "TrustedKey",
    "open_directory_packet",
    "open_zip_packet",
    "parse_trusted_key",
    "read_json",
]

MAX_CENTRAL_DIRECTORY_BYTES = 64 * 1024
MAX_PACKET_FILES = 16
MAX_PACKET_UNCOMPRESSED_BYTES = 16 * 1024**3
MAX_MEMBER_BYTES = 16 * 1024**3
MAX_MANIFEST_BYTES = 4 * 1024**2
# A dispute CSV deflates about 3:1, HTML and JSON less than 10:1; a zip bomb needs 1000:1.
MAX_COMPRESSION_RATIO = 100
COMPRESSION_RATIO_FLOOR_BYTES = 1024**2  # smaller files cannot hurt whatever their ratio
MAX_JSON_DEPTH = 16
READ_CHUNK_BYTES = 1024 * 1024

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record (APPNOTE 4.3.16)
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # APPNOTE 4.3.15
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # APPNOTE 4.3.14
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
_MAX_ZIP_COMMENT_BYTES = 0xFFFF
_READ_SUPPORTED = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
# What reading a hostile zip can raise (zipfile, zlib and struct errors, truncation, encryption,
# unknown methods, undecodable names): each becomes a reason code, never a traceback.
_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    RuntimeError,
    OverflowError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
)


class PacketReadError(Exception):
    """A packet (or one of its files) cannot be read within the limits; ``reason`` is the code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class PacketFiles(Protocol):
    """The flat files of a packet, read only through bounded, linear-time reads."""

    def names(self) -> list[str]: ...

    def chunks(self, name: str, *, max_bytes: int = MAX_MEMBER_BYTES) -> Iterator[bytes]: ...

    def read(self, name: str, *, max_bytes: int) -> bytes: ...


def _read_all(files: PacketFiles, name: str, max_bytes: int) -> bytes:
    return b"".join(files.chunks(name, max_bytes=max_bytes))


def _check_declared_sizes(sizes: dict[str, int]) -> None:
    for name, size in sizes.items():
        if size > MAX_MEMBER_BYTES:
            raise PacketReadError("member_too_large", f"{name!r} declares {size} bytes, over {MAX_MEMBER_BYTES}")
    total = sum(sizes.values())
    if total > MAX_PACKET_UNCOMPRESSED_BYTES:
        detail = f"the files declare {total} bytes together, over {MAX_PACKET_UNCOMPRESSED_BYTES}"
        raise PacketReadError("packet_too_large", detail)


# --- zip ---------------------------------------------------------------------------------------


def _central_directory_size(handle: Any, file_bytes: int) -> int:
    """Size of the central directory the zip's end record declares, found as ``zipfile`` finds it.

    Read from the last 64 KiB of the file before ``zipfile`` parses the directory, so that a
    directory of millions of entries is refused without being loaded.
    """
    tail_bytes = min(file_bytes, _EOCD.size + _MAX_ZIP_COMMENT_BYTES)
    handle.seek(file_bytes - tail_bytes)
    tail = handle.read(tail_bytes)
    at = len(tail) - _EOCD.size
    if at < 0 or tail[at : at + 4] != _EOCD_SIGNATURE or tail[-2:] != b"\x00\x00":
        at = tail.rfind(_EOCD_SIGNATURE)
    if at < 0 or len(tail) - at < _EOCD.size:
        raise PacketReadError("packet_unreadable", "not a zip file: no end of central directory record")
    cd_bytes = int(_EOCD.unpack_from(tail, at)[5])
    locator_at = at - _ZIP64_LOCATOR.size
    if locator_at >= 0 and tail[locator_at : locator_at + 4] == _ZIP64_LOCATOR_SIGNATURE:
        # zipfile reads the ZIP64 end record right before the locator, whatever the locator says.
        record_at = file_bytes - tail_bytes + locator_at - _ZIP64_EOCD.size
        if record_at < 0:
            raise PacketReadError("packet_unreadable", "ZIP64 end record before the start of the file")
        handle.seek(record_at)
        record = handle.read(_ZIP64_EOCD.size)
        if len(record) != _ZIP64_EOCD.size or record[:4] != _ZIP64_EOCD_SIGNATURE:
            raise PacketReadError("packet_unreadable", "ZIP64 locator without a ZIP64 end record")
        cd_bytes = int(_ZIP64_EOCD.unpack(record)[8])
    return cd_bytes


def _member_problem(info: zipfile.ZipInfo) -> PacketReadError | None:
    name = info.filename
    if info.flag_bits & 0x1:
        return PacketReadError("member_encrypted", f"{name!r} is encrypted")
    if info.compress_type not in _READ_SUPPORTED:
        return PacketReadError(
            "member_compression_unsupported", f"{name!r} uses compression method {info.compress_type}"
        )
    ratio_limit = MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
    if info.file_size > COMPRESSION_RATIO_FLOOR_BYTES and info.file_size > ratio_limit:
        detail = f"{name!r} inflates {info.compress_size} bytes to {info.file_size}, over {MAX_COMPRESSION_RATIO}:1"
        return PacketReadError("compression_ratio_exceeded", detail)
    return None


def _check_no_overlap(infos: list[zipfile.ZipInfo], file_bytes: int) -> None:
    ordered = sorted(infos, key=lambda i: i.header_offset)
    ends = [i.header_offset for i in ordered[1:]] + [file_bytes]
    for info, next_start in zip(ordered, ends, strict=True):
        if info.header_offset + info.compress_size > next_start:
            raise PacketReadError("member_overlap", f"{info.filename!r} overlaps the next member's bytes")


@dataclass
class _ZipPacket:
    archive: zipfile.ZipFile
    infos: dict[str, zipfile.ZipInfo]
    all_names: list[str]

    def names(self) -> list[str]:
        return list(self.all_names)

    def chunks(self, name: str, *, max_bytes: int = MAX_MEMBER_BYTES) -> Iterator[bytes]:
        info = self.infos[name]
        if info.file_size > max_bytes:
            raise PacketReadError("member_too_large", f"{name!r} declares {info.file_size} bytes, over {max_bytes}")
        read = 0
        try:
            with self.archive.open(info) as handle:
                while chunk := handle.read(READ_CHUNK_BYTES):
                    read += len(chunk)
                    if read > info.file_size:
                        raise PacketReadError("member_unreadable", f"{name!r} holds more than its declared size")
                    yield chunk
        except _READ_ERRORS as exc:
            raise PacketReadError("member_unreadable", f"cannot read {name!r}: {exc}") from exc
        if read != info.file_size:
            raise PacketReadError("member_unreadable", f"{name!r} holds {read} bytes, declares {info.file_size}")

    def read(self, name: str, *, max_bytes: int) -> bytes:
        return _read_all(self, name, max_bytes)


@contextmanager
def open_zip_packet(path: Path) -> Iterator[PacketFiles]:
    """Open a packet zip after checking its directory and every member's header against the limits.

    Raises:
        PacketReadError: the zip is unreadable or breaks a limit (see the module doc).
    """
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise PacketReadError("packet_unreadable", f"cannot open {path.name}: {exc.strerror or exc}") from exc
    with handle:
        try:
            file_bytes = os.fstat(handle.fileno()).st_size
            cd_bytes = _central_directory_size(handle, file_bytes)
            if cd_bytes > MAX_CENTRAL_DIRECTORY_BYTES:
                detail = f"a central directory of {cd_bytes} bytes, over {MAX_CENTRAL_DIRECTORY_BYTES}"
                raise PacketReadError("packet_too_large", detail)
            handle.seek(0)
            archive = zipfile.ZipFile(handle)
        except PacketReadError:
            raise
        except _READ_ERRORS as exc:
            raise PacketReadError("packet_unreadable", f"cannot read {path.name}: {exc}") from exc
        with archive:
            infos = archive.infolist()
            if len(infos) > MAX_PACKET_FILES:
                raise PacketReadError("packet_too_large", f"{len(infos)} files, more than {MAX_PACKET_FILES}")
            _check_declared_sizes({info.filename: info.file_size for info in infos})
            for info in infos:
                problem = _member_problem(info)
                if problem is not None:
                    raise problem
            _check_no_overlap(infos, file_bytes)
            yield _ZipPacket(archive, {info.filename: info for info in infos}, [info.filename for info in infos])


# --- directory ---------------------------------------------------------------------------------


@dataclass
class _DirectoryPacket:
    root: Path
    all_names: list[str]

    def names(self) -> list[str]:
        return list(self.all_names)

    def chunks(self, name: str, *, max_bytes: int = MAX_MEMBER_BYTES) -> Iterator[bytes]:
        try:
            # No symlinks followed, and no blocking on a FIFO: only a regular file is read.
            fd = os.open(self.root / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise PacketReadError("member_unreadable", f"cannot open {name!r}: {exc.strerror or exc}") from exc
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise PacketReadError("member_unreadable", f"{name!r} is not a regular file")
            read = 0
            try:
                while chunk := handle.read(READ_CHUNK_BYTES):
                    read += len(chunk)
                    if read > max_bytes:
                        raise PacketReadError("member_too_large", f"{name!r} holds more than {max_bytes} bytes")
                    yield chunk
            except OSError as exc:
                raise PacketReadError("member_unreadable", f"cannot read {name!r}: {exc}") from exc

    def read(self, name: str, *, max_bytes: int) -> bytes:
        return _read_all(self, name, max_bytes)


@contextmanager
def open_directory_packet(root: Path) -> Iterator[PacketFiles]:
    """An unpacked (or staged) packet directory, with the same limits as a zip.

    Raises:
        PacketReadError: not a directory, too many entries, or files over the size limits.
    """
    sizes: dict[str, int] = {}
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                if len(sizes) == MAX_PACKET_FILES:
                    raise PacketReadError("packet_too_large", f"more than {MAX_PACKET_FILES} files in {root}")
                sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
    except OSError as exc:
        raise PacketReadError("packet_unreadable", f"cannot list {root}: {exc.strerror or exc}") from exc
    _check_declared_sizes(sizes)
    yield _DirectoryPacket(root, sorted(sizes))


# --- JSON --------------------------------------------------------------------------------------


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}: readers would disagree on its value")
            seen.add(key)
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                break
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def read_json(data: bytes, *, max_bytes: int = MAX_MANIFEST_BYTES) -> Any:
    """Parse JSON from a packet: bounded in size and depth, strict about what JSON is.

    Raises:
        PacketReadError: ``json_too_deep`` (more than ``MAX_JSON_DEPTH`` levels).
        ValueError: larger than ``max_bytes``, not UTF-8, not JSON, a duplicate key, ``NaN``, an
            unpaired surrogate, or an integer of more than 4300 digits.
    """
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise PacketReadError("json_too_deep", f"nested deeper than {MAX_JSON_DEPTH} levels") from exc
    if _depth(value) > MAX_JSON_DEPTH:
        raise PacketReadError("json_too_deep", f"nested deeper than {MAX_JSON_DEPTH} levels")
    # A lone surrogate (\ud800) parses, but no UTF-8 text, hash or terminal can take it.
    json.dumps(value, ensure_ascii=False).encode("utf-8")
    return value


# --- trusted keys ------------------------------------------------------------------------------

_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")
_KEY_ID = re.compile(r"^[0-9a-fA-F]{16}$")
_NOTE_KEY = re.compile(r"^([^+\s]+)\+([0-9a-fA-F]{8})\+([A-Za-z0-9+/]+={0,2})$")
_NOTE_ALG_ED25519 = 0x01


@dataclass(frozen=True)
class TrustedKey:
    """A pinned Ed25519 public key and how the user wrote it."""

    public_key: bytes
    form: str  # "hex" or "c2sp-vkey"
    name: str | None = None  # the C2SP key name


def _note_key_hash(name: str, key_data: bytes) -> bytes:
    # C2SP signed-note: the first 4 bytes of SHA-256(key name || 0x0A || signature type || key).
    return hashlib.sha256(name.encode("utf-8") + b"\n" + key_data).digest()[:4]


def parse_trusted_key(text: str) -> TrustedKey:
    """Parse one ``--trusted-key``: the full public key as hex, or a C2SP note verifier key.

    Raises:
        InputError: ``trusted_key_malformed`` (a usage error: the key is refused before any check).
    """
    value = text.strip()
    if _HEX_KEY.match(value):
        return TrustedKey(bytes.fromhex(value), "hex")
    if _KEY_ID.match(value):
        raise InputError(
            f"{value!r} is a 64-bit key id: pin the full public key (64 hex characters, or the"
            " name+hash+base64 verifier key) from GET /api/billing/public-keys",
            code="trusted_key_malformed",
        )
    match = _NOTE_KEY.match(value)
    if match is not None:
        name, hash_hex, encoded = match.groups()
        try:
            key_data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            key_data = b""
        if len(key_data) != 33 or key_data[0] != _NOTE_ALG_ED25519:
            raise InputError(
                f"verifier key {name!r} does not hold an Ed25519 key (0x01 and 32 bytes, base64)",
                code="trusted_key_malformed",
            )
        if _note_key_hash(name, key_data) != bytes.fromhex(hash_hex):
            raise InputError(
                f"verifier key {name!r}: its hash {hash_hex} is not the hash of its name and key",
                code="trusted_key_malformed",
            )
        return TrustedKey(key_data[1:], "c2sp-vkey", name)
    shown = value if len(value) <= 80 else value[:79] + "…"
    raise InputError(
        f"--trusted-key {shown!r} is neither a 64-hex-character Ed25519 public key nor a name+hash+base64 verifier key",
        code="trusted_key_malformed",
    )

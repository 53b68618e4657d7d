"""The backup directory and its ``manifest.json``: the format, and the checks a restore makes first.

A backup is one directory::

    manifest.json                          written last: a directory without it is not a backup
    database.dump                          pg_dump --format=custom of the kernel's database
    archive/<site_id>/<YYYY-MM>.csv.gz     every ledger archive listed in ledger_archive
    signing/ed25519.seed                   only with --include-signing-key (mode 0600)

``manifest.json`` is one JSON object (UTF-8, at most ``MANIFEST_MAX_BYTES``)::

    format          "revkernel-backup"
    format_version  1
    created_at      server time of the backup's snapshot (YYYY-MM-DDTHH:MM:SS.ffffffZ)
    finished_at     when the last file was written
    method          "pg_dump --format=custom"
    source          {"mode": "embedded" | "database_url", "database", "server_version",
                     "pg_dump_version", "snapshot": pg_current_snapshot() of the dump}
    migrations      [{"name", "sha256"}]            schema_migrations as dumped
    tables          {"<table>": row count}          every table of schema public, as dumped
    sites           [{"site_id", "public_id", "year_month", "snapshot_hash"}]
                    every site and its latest invoice snapshot (null when it has none)
    archives        [{"site_id", "year_month", "path", "sha256", "row_count", "merkle_root"}]
                    ledger_archive as dumped; "path" is null when the file could not be found
    signing_key     {"included": bool, "key_id": str | null}
    damaged         ["<reason>", ...]                what the backup found wrong in the store
    files           [{"path", "kind", "size", "sha256"}]   every file above but the manifest

Every number in ``tables`` and every hash in ``sites`` comes from the same database snapshot
as the dump (``pg_export_snapshot``), so a restore can compare them with what it restored.

What ``check_backup`` refuses, before anything is written (``InputError`` with the code):
``manifest_missing``, ``manifest_unreadable`` (not a regular file, too big, not JSON, wrong
shape), ``manifest_unsupported`` (format or version), ``unsafe_path`` (anything but the three
path forms above: absolute, ``..``, backslashes, control characters), ``duplicate_file``,
``declared_size_too_large`` (over ``FILE_MAX_BYTES``), ``too_many_files``, ``symlink_refused``
and ``not_a_regular_file`` (anywhere in the directory), ``unlisted_file`` (a file under
``archive/`` or ``signing/``, or a ``*.dump``, that the manifest does not list), ``file_missing``,
``file_size_mismatch``, ``file_hash_mismatch``, ``archive_not_listed`` (an archive entry naming a
file the manifest does not list). Other files at the top level (a README someone added) are
reported and left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel.errors import InputError

__all__ = [
    "DATABASE_FILE",
    "FILE_MAX_BYTES",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MANIFEST_MAX_BYTES",
    "MAX_FILES",
    "SIGNING_KEY_FILE",
    "BackupFile",
    "CheckedBackup",
    "archive_member",
    "check_backup",
    "file_sha256",
    "parse_manifest",
]

FORMAT = "revkernel-backup"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
DATABASE_FILE = "database.dump"
SIGNING_KEY_FILE = "signing/ed25519.seed"
# A manifest lists sites and archives: 64 MiB is room for about a million of each.
MANIFEST_MAX_BYTES = 64 * 1024 * 1024
# No single file of a backup is declared larger than this (a lie here must not size a buffer).
FILE_MAX_BYTES = 16 * 1024**4
MAX_FILES = 5_000_000
HASH_CHUNK_BYTES = 1024 * 1024
DAMAGE_NOTE_MAX_CHARS = 2000

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_YEAR_MONTH = r"\d{4}-(?:0[1-9]|1[0-2])"
_ARCHIVE = re.compile(rf"^archive/(?P<site_id>{_UUID})/(?P<year_month>{_YEAR_MONTH})\.csv\.gz$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KINDS = {"database", "archive", "signing_key"}
# Trees whose every file must be listed: an unlisted file there would be restored by nobody,
# or worse, taken for evidence.
_LISTED_TREES = ("archive", "signing")


@dataclass(frozen=True)
class BackupFile:
    """One file the manifest lists: a path of one of the three allowed forms, size and hash."""

    path: str
    kind: str  # database | archive | signing_key
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class CheckedBackup:
    """A backup directory whose manifest and files passed every check of ``check_backup``."""

    root: Path
    manifest: dict[str, Any]
    files: dict[str, BackupFile]
    ignored: tuple[str, ...]

    @property
    def database(self) -> Path:
        return self.root / DATABASE_FILE

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def archives(self) -> list[dict[str, Any]]:
        return list(self.manifest["archives"])


def archive_member(site_id: str, year_month: str) -> str:
    """The path of a site-month's archive inside a backup (same layout as the data directory)."""
    return f"archive/{site_id}/{year_month}.csv.gz"


def file_sha256(path: Path, on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
    """(SHA-256 hex, size) of a regular file, read without following a symlink."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise InputError(f"{path} is not a regular file", code="not_a_regular_file")
        digest = hashlib.sha256()
        size = 0
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest(), size


def _refuse(message: str, code: str) -> InputError:
    return InputError(message, code=code)


def _safe_member(path: Any) -> tuple[str, str]:
    """Validate one manifest path; returns (path, kind). Only the three layouts are accepted."""
    if not isinstance(path, str) or not path:
        raise _refuse(f"a manifest path must be a non-empty string, not {path!r}", "unsafe_path")
    shown = path.encode("unicode_escape").decode("ascii")[:120]
    if path == DATABASE_FILE:
        return path, "database"
    if path == SIGNING_KEY_FILE:
        return path, "signing_key"
    if _ARCHIVE.match(path):
        return path, "archive"
    raise _refuse(
        f"manifest names {shown!r}: only {DATABASE_FILE}, {SIGNING_KEY_FILE} and archive/<site_id>/<YYYY-MM>.csv.gz "
        "are allowed",
        "unsafe_path",
    )


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _refuse(f"{what} must be a non-negative integer, not {value!r}", "manifest_unreadable")
    return value


def parse_manifest(document: dict[str, Any]) -> dict[str, BackupFile]:
    """Check the manifest's shape and every file entry; return the files by path.

    Raises:
        InputError: with one of the codes of the module docstring.
    """
    if document.get("format") != FORMAT:
        raise _refuse(f"not a revkernel backup manifest (format {document.get('format')!r})", "manifest_unsupported")
    if document.get("format_version") != FORMAT_VERSION:
        raise _refuse(
            f"backup format version {document.get('format_version')!r} is not supported (this code reads "
            f"{FORMAT_VERSION})",
            "manifest_unsupported",
        )
    shapes: tuple[tuple[str, type], ...] = (
        ("files", list),
        ("archives", list),
        ("sites", list),
        ("tables", dict),
        ("migrations", list),
    )
    for name, shape in shapes:
        if not isinstance(document.get(name), shape):
            raise _refuse(f"manifest field {name!r} must be a JSON {shape.__name__}", "manifest_unreadable")
    entries = document["files"]
    if len(entries) > MAX_FILES:
        raise _refuse(f"manifest lists {len(entries)} files, more than {MAX_FILES}", "too_many_files")
    files: dict[str, BackupFile] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise _refuse("every manifest file entry must be an object", "manifest_unreadable")
        path, kind = _safe_member(entry.get("path"))
        if path in files:
            raise _refuse(f"manifest lists {path} twice", "duplicate_file")
        if entry.get("kind") != kind:
            raise _refuse(
                f"manifest says {path} is a {entry.get('kind')!r}, its path says {kind}", "manifest_unreadable"
            )
        size = _int(entry.get("size"), f"size of {path}")
        if size > FILE_MAX_BYTES:
            raise _refuse(
                f"manifest declares {path} as {size} bytes, over the limit of {FILE_MAX_BYTES}",
                "declared_size_too_large",
            )
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise _refuse(f"sha256 of {path} must be 64 lowercase hex characters", "manifest_unreadable")
        files[path] = BackupFile(path, kind, size, digest)
    if DATABASE_FILE not in files:
        raise _refuse(f"manifest does not list {DATABASE_FILE}", "file_missing")
    for name, count in document["tables"].items():
        if not isinstance(name, str):
            raise _refuse("table names must be strings", "manifest_unreadable")
        _int(count, f"row count of table {name}")
    for archive in document["archives"]:
        if not isinstance(archive, dict):
            raise _refuse("every archive entry must be an object", "manifest_unreadable")
        member = archive.get("path")
        if member is None:
            continue  # the backup could not find this archive; it said so in "damaged"
        path, kind = _safe_member(member)
        if kind != "archive" or path not in files:
            raise _refuse(f"archive entry names {path}, which the manifest's files do not list", "archive_not_listed")
        match = _ARCHIVE.match(path)
        assert match is not None
        if (archive.get("site_id"), archive.get("year_month")) != (match["site_id"], match["year_month"]):
            raise _refuse(f"archive entry for {path} names another site-month", "manifest_unreadable")
    damaged = document.get("damaged", [])
    # Shown to the operator as notes: plain, short text only (no terminal control sequences).
    if not isinstance(damaged, list) or not all(
        isinstance(d, str) and len(d) <= DAMAGE_NOTE_MAX_CHARS and d.isprintable() for d in damaged
    ):
        raise _refuse("manifest field 'damaged' must be a list of short printable strings", "manifest_unreadable")
    signing = document.get("signing_key")
    included = isinstance(signing, dict) and signing.get("included") is True
    if included != (SIGNING_KEY_FILE in files):
        raise _refuse("manifest's signing_key entry and its file list disagree", "manifest_unreadable")
    return files


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_FILE
    try:
        info = path.lstat()
    except FileNotFoundError as exc:
        raise _refuse(f"{root} has no {MANIFEST_FILE}: not a backup, or an unfinished one", "manifest_missing") from exc
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(f"{path} is a symlink", "symlink_refused")
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(f"{path} is not a regular file", "manifest_unreadable")
    if info.st_size > MANIFEST_MAX_BYTES:
        raise _refuse(f"{path} is {info.st_size} bytes, over the limit of {MANIFEST_MAX_BYTES}", "manifest_unreadable")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(MANIFEST_MAX_BYTES + 1)
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _refuse(f"{path} is not UTF-8 JSON: {exc}", "manifest_unreadable") from exc
    if not isinstance(document, dict):
        raise _refuse(f"{path} must hold one JSON object", "manifest_unreadable")
    return document


def _walk(root: Path, listed: dict[str, BackupFile]) -> list[str]:
    """Every entry of the directory tree: refuse links, devices and unlisted files that matter."""
    ignored: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in [*dirnames, *filenames]:
            full = here / name
            member = full.relative_to(root).as_posix()
            info = full.lstat()
            if stat.S_ISLNK(info.st_mode):
                raise _refuse(f"{member} is a symlink: a backup holds regular files only", "symlink_refused")
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                raise _refuse(f"{member} is not a regular file", "not_a_regular_file")
            if member == MANIFEST_FILE or member in listed:
                continue
            if member.split("/", 1)[0] in _LISTED_TREES or member.endswith(".dump"):
                raise _refuse(f"{member} is in the backup but not in its manifest", "unlisted_file")
            ignored.append(member)
    return sorted(ignored)


def check_backup(root: Path, bar: Callable[[int], Any] | None = None) -> CheckedBackup:
    """Check a backup directory completely before a restore writes anything.

    Args:
        root: The backup directory.
        bar: ``bar(total_bytes)`` returns a tqdm-like progress bar for the hashing, or None.

    Raises:
        InputError: the first problem found, with a code of the module docstring.
    """
    root = root.expanduser()
    if not root.is_dir():
        raise _refuse(f"{root} is not a directory", "manifest_missing")
    root = root.resolve()
    document = _read_manifest(root)
    files = parse_manifest(document)
    ignored = _walk(root, files)
    for member, entry in sorted(files.items()):
        full = root / member
        try:
            info = full.lstat()
        except FileNotFoundError as exc:
            raise _refuse(f"{member} is listed in the manifest but missing", "file_missing") from exc
        if info.st_size != entry.size:
            raise _refuse(f"{member} is {info.st_size} bytes, the manifest says {entry.size}", "file_size_mismatch")
    progress = bar(sum(f.size for f in files.values())) if bar is not None else None
    try:
        for member, entry in sorted(files.items()):
            digest, size = file_sha256(root / member, progress.update if progress is not None else None)
            if size != entry.size:
                raise _refuse(f"{member} changed size while it was read", "file_size_mismatch")
            if digest != entry.sha256:
                raise _refuse(
                    f"{member} does not match its SHA-256 in the manifest (it has {digest[:16]}…, "
                    f"the manifest says {entry.sha256[:16]}…)",
                    "file_hash_mismatch",
                )
    finally:
        if progress is not None:
            progress.close()
    return CheckedBackup(root, document, files, tuple(ignored))

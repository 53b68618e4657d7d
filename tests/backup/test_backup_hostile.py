"""Hostile backup directories: one named attack per test, each refused with a stable code.

Each test damages a private copy of a real backup, runs `revkernel db restore` into an empty
embedded data directory, and checks the one error line, the exit code, and that nothing at all was
written: not in the target, not next to the backup, not where a path in the manifest points.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kernel.backup import check_backup
from kernel.errors import InputError
from kernel.settings import Settings
from tests.backup.support import cli_env, error_line, revkernel


def _manifest(backup: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((backup / "manifest.json").read_text())
    return document


def _save(backup: Path, document: dict[str, Any]) -> None:
    (backup / "manifest.json").write_text(json.dumps(document))


def _archive_entry(document: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = next(f for f in document["files"] if f["kind"] == "archive")
    return entry


def _list_file(backup: Path, target: Path, path: str, kind: str = "archive") -> None:
    """Add a manifest entry naming ``path`` with the real size and hash of ``target``."""
    document = _manifest(backup)
    data = target.read_bytes()
    document["files"].append(
        {"path": path, "kind": kind, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    )
    _save(backup, document)


def _names_outside(relative: str) -> Callable[[Path, Path], None]:
    def attack(backup: Path, outside: Path) -> None:
        _list_file(backup, outside / "victim.txt", relative)

    return attack


def _symlinked_archive(backup: Path, outside: Path) -> None:
    archive = backup / _archive_entry(_manifest(backup))["path"]
    archive.unlink()
    archive.symlink_to(outside / "victim.txt")


def _symlinked_directory(backup: Path, outside: Path) -> None:
    site_dir = (backup / _archive_entry(_manifest(backup))["path"]).parent
    moved = outside / "moved-site"
    site_dir.rename(moved)
    site_dir.symlink_to(moved, target_is_directory=True)


def _symlinked_manifest(backup: Path, outside: Path) -> None:
    real = outside / "manifest.json"
    (backup / "manifest.json").rename(real)
    (backup / "manifest.json").symlink_to(real)


def _listed_twice(backup: Path, outside: Path) -> None:
    document = _manifest(backup)
    document["files"].append(dict(_archive_entry(document)))
    _save(backup, document)


def _huge_size(backup: Path, outside: Path) -> None:
    document = _manifest(backup)
    _archive_entry(document)["size"] = 10**18
    _save(backup, document)


def _wrong_size(backup: Path, outside: Path) -> None:
    document = _manifest(backup)
    _archive_entry(document)["size"] += 1
    _save(backup, document)


def _unlisted_archive(backup: Path, outside: Path) -> None:
    member = _archive_entry(_manifest(backup))["path"]
    extra = (backup / member).with_name("2020-01.csv.gz")
    extra.write_bytes((backup / member).read_bytes())


def _fifo(backup: Path, outside: Path) -> None:
    os.mkfifo(backup / "archive" / "pipe")


def _not_json(backup: Path, outside: Path) -> None:
    (backup / "manifest.json").write_bytes(b"\xff{not json")


def _future_format(backup: Path, outside: Path) -> None:
    document = _manifest(backup)
    document["format_version"] = 99
    _save(backup, document)


def _archive_entry_unlisted(backup: Path, outside: Path) -> None:
    document = _manifest(backup)
    document["archives"][0]["path"] = "archive/00000000-0000-0000-0000-000000000000/2020-01.csv.gz"
    _save(backup, document)


def _kind_lie(backup: Path, outside: Path) -> None:
    document = _manifest(backup)
    _archive_entry(document)["kind"] = "database"
    _save(backup, document)


def _terminal_escape_note(backup: Path, outside: Path) -> None:
    document = _manifest(backup)
    document["damaged"] = ["\x1b]0;pwned\x07\x1b[2J"]
    _save(backup, document)


ATTACKS: list[tuple[str, Callable[[Path, Path], None], str]] = [
    ("path ../../etc/passwd", _names_outside("../../etc/passwd"), "unsafe_path"),
    ("path into the parent", _names_outside("../outside/victim.txt"), "unsafe_path"),
    ("absolute path", _names_outside("/etc/passwd"), "unsafe_path"),
    ("dot-dot inside archive/", _names_outside("archive/../../outside/victim.txt"), "unsafe_path"),
    ("backslash path", _names_outside("archive\\..\\victim.txt"), "unsafe_path"),
    ("NUL in a path", _names_outside("database.dump\x00.txt"), "unsafe_path"),
    ("symlinked archive", _symlinked_archive, "symlink_refused"),
    ("symlinked site directory", _symlinked_directory, "symlink_refused"),
    ("symlinked manifest", _symlinked_manifest, "symlink_refused"),
    ("file listed twice", _listed_twice, "duplicate_file"),
    ("huge declared size", _huge_size, "declared_size_too_large"),
    ("declared size off by one", _wrong_size, "file_size_mismatch"),
    ("unlisted archive", _unlisted_archive, "unlisted_file"),
    ("fifo in the backup", _fifo, "not_a_regular_file"),
    ("manifest not JSON", _not_json, "manifest_unreadable"),
    ("future format version", _future_format, "manifest_unsupported"),
    ("archive entry names an unlisted file", _archive_entry_unlisted, "archive_not_listed"),
    ("kind contradicts the path", _kind_lie, "manifest_unreadable"),
    ("terminal escapes in a note", _terminal_escape_note, "manifest_unreadable"),
]


@pytest.mark.parametrize(("attack", "code"), [(a, c) for _, a, c in ATTACKS], ids=[name for name, _, _ in ATTACKS])
def test_hostile_backup_is_refused_and_nothing_is_written(
    backup_copy: Path, tmp_path: Path, attack: Callable[[Path, Path], None], code: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("must stay as it is\n")
    attack(backup_copy, outside)
    data_dir = tmp_path / "target"
    before = {p: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in tmp_path.rglob("*")}
    passwd = Path("/etc/passwd").read_bytes()

    result = revkernel(["db", "restore", str(backup_copy)], cli_env(Settings(data_dir=data_dir), DATABASE_URL=None))

    assert result.exit_code == 1, result.output
    assert error_line(result).endswith(f"[{code}]")
    assert not data_dir.exists()
    assert {p: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in tmp_path.rglob("*")} == before
    assert Path("/etc/passwd").read_bytes() == passwd
    assert (outside / "victim.txt").read_text() == "must stay as it is\n"


def test_manifest_over_the_size_limit_is_refused_unread(backup_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kernel.backup.manifest as manifest_module

    monkeypatch.setattr(manifest_module, "MANIFEST_MAX_BYTES", 100)
    with pytest.raises(InputError) as refused:
        check_backup(backup_copy)
    assert refused.value.code == "manifest_unreadable"


def test_a_stray_top_level_file_is_reported_not_restored(backup_copy: Path) -> None:
    (backup_copy / "README.txt").write_text("copied to tape on Monday\n")
    checked = check_backup(backup_copy)
    assert checked.ignored == ("README.txt",)
    assert "README.txt" not in checked.files

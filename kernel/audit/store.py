"""``revkernel verify``: the whole store checked at once, after a restore, an upgrade or on any day.

It adds no rule of its own: each check calls the code that owns the rule.

- **schema**: ``kernel.db.migrations.status``. Codes ``schema_behind``,
  ``migration_checksum_mismatch``, ``migration_unknown``.
- **snapshots**: every month's ``audit_fleet`` (set-based metrics and one ordered stream of the
  leaves) and ``check_snapshot``. A month with a ``ledger_archive`` row is checked against its
  archive instead of its (cleaned up) ledger rows, and the rows cleanup left must be in the
  archive exactly as archived. Codes ``merkle_root_mismatch``, ``snapshot_counts_mismatch``,
  ``snapshot_hash_mismatch``, ``snapshot_document_mismatch``, ``ledger_not_in_archive``, …
- **snapshot chains**: ``check_snapshot``'s link to the site's previous snapshot.
  Code ``snapshot_chain_broken``.
- **signatures**: ``check_snapshot`` against ``signing_keys`` (the published keys), and every
  published key's id recomputed. Codes ``signature_invalid``, ``signing_key_unknown``,
  ``signing_key_id_mismatch``.
- **archives**: every ``ledger_archive`` file's SHA-256, then ``kernel.cron.cleanup.archive_root``
  (root and rows) against the recorded row and the snapshot. Codes ``archive_missing``,
  ``archive_unreadable``, ``archive_sha256_mismatch``, ``archive_root_mismatch``,
  ``archive_row_count_mismatch``, ``archive_snapshot_mismatch``, ``archive_without_snapshot``.
- **counters**: the fleet findings ``counter_mismatch`` / ``counter_missing``; for an archived
  month, the counter against the verified snapshot.
- **ledger rules**: every other ``fail`` finding of the fleet audit (quota, hard cap, outbox
  integrity), for months whose ledger is complete; the code is the finding's.

Everything is read in one REPEATABLE READ, read-only transaction as the analyst role, so a
running service cannot make two checks see two different stores. Memory stays bounded: the
leaves are streamed per month (``audit_fleet``), archives are hashed and re-rooted as streams,
and only one month's per-site metrics are held at a time.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from kernel.audit.findings import Finding, Severity
from kernel.audit.fleet import audit_fleet
from kernel.audit.snapshots import check_snapshot
from kernel.clock import Clock

# The archive's COPY statement is cleanup's: ledger rows compared with an archive are rendered by
# the very statement that wrote it.
from kernel.cron.cleanup import _ARCHIVE_SQL as ARCHIVE_COPY_SQL
from kernel.cron.cleanup import archive_root
from kernel.cron.keystore import public_keys
from kernel.db import migrations
from kernel.ledger import key_id
from kernel.release.checks import CheckResult

__all__ = ["CHECKS", "StoreFailure", "StoreVerification", "verify_store"]

CHECKS = ("schema", "snapshots", "snapshot chains", "signatures", "archives", "counters", "ledger rules")
_CHAIN_CODES = frozenset({"snapshot_chain_broken"})
_SIGNATURE_CODES = frozenset({"signature_invalid", "signing_key_unknown"})
_COUNTER_CODES = frozenset({"counter_mismatch", "counter_missing"})
HASH_CHUNK_BYTES = 1024 * 1024
# Failures quoted word for word in a check's detail; the evidence file keeps all of them.
DETAIL_FAILURES = 3

_MONTHS = """
SELECT year_month FROM invoice_snapshot
UNION SELECT year_month FROM site_usage_monthly
UNION SELECT year_month FROM ledger_archive
UNION SELECT DISTINCT year_month FROM ingest_idempotency
ORDER BY 1
"""
_ARCHIVES = """
SELECT a.site_id::text, s.public_id, a.year_month, a.file_path, a.sha256, a.row_count, a.merkle_root,
       i.merkle_root, i.billable_count + i.rejected_count + i.non_billable_count
FROM ledger_archive a
JOIN sites s ON s.id = a.site_id
LEFT JOIN invoice_snapshot i ON i.site_id = a.site_id AND i.year_month = a.year_month
ORDER BY a.site_id, a.year_month
"""
_ARCHIVE_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, csv.Error)


@dataclass(frozen=True)
class StoreFailure:
    """One named reason why the store does not verify."""

    check: str
    code: str
    message: str
    site_id: str | None = None
    public_id: str | None = None
    year_month: str | None = None

    def line(self) -> str:
        where = " ".join(x for x in (self.public_id or self.site_id, self.year_month) if x)
        return f"{self.check}: {self.code}" + (f" ({where})" if where else "") + f": {self.message}"


@dataclass
class StoreVerification:
    """The pass/fail rows, every failure, notes and figures of one whole-store check."""

    results: list[CheckResult] = field(default_factory=list)
    failures: list[StoreFailure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results) and not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "figures": dict(self.figures),
            "failures": [asdict(f) for f in self.failures],
            "notes": list(self.notes),
        }


@dataclass
class _Tally:
    figures: dict[str, int] = field(default_factory=dict)
    durations_ms: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.figures[name] = self.figures.get(name, 0) + n


def _schema(conn: psycopg.Connection[Any], fail: Callable[..., None], tally: _Tally) -> str:
    states = migrations.status(conn)
    for s in states:
        if s.state == "pending":
            fail("schema", "schema_behind", f"migration {s.name} is not applied: run `revkernel db migrate`")
        elif s.state == "modified":
            fail("schema", "migration_checksum_mismatch", f"applied migration {s.name} differs from the code's file")
        elif s.state == "unknown":
            fail("schema", "migration_unknown", f"the database has migration {s.name}, the code does not")
    tally.add("migrations", sum(1 for s in states if s.state == "applied"))
    return f"{tally.figures.get('migrations', 0)} migrations applied, checksums match the code"


def _signing_keys(conn: psycopg.Connection[Any], fail: Callable[..., None], tally: _Tally) -> None:
    for key in public_keys(conn):
        try:
            raw = bytes.fromhex(key["public_key"])
        except ValueError:
            raw = b""
        if len(raw) != 32 or key_id(raw) != key["key_id"]:
            fail(
                "signatures",
                "signing_key_id_mismatch",
                f"published key {key['key_id']} is not the id of its public key",
            )
        tally.add("published_keys")


def _copy_lines(chunks: Iterable[Any]) -> Iterator[str]:
    """COPY … CSV output as lines for ``csv.reader`` (which joins a quoted field's newlines)."""
    pending = b""
    for chunk in chunks:
        *lines, pending = (pending + bytes(chunk)).split(b"\n")
        for line in lines:
            yield line.decode("utf-8") + "\n"
    if pending:
        yield pending.decode("utf-8")


def _ledger_not_in_archive(conn: psycopg.Connection[Any], site_id: str, year_month: str, path: Path) -> str | None:
    """The first ledger row left in an archived month that is not, as it was archived, in the archive.

    Both sides are the same COPY statement (cleanup's archive format) in leaf order, so the rows
    cleanup left must be a subsequence of the archive's, field for field; one pass over each.
    """
    query = sql.SQL(ARCHIVE_COPY_SQL).format(site=sql.Literal(site_id), month=sql.Literal(year_month))
    problem: str | None = None
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
            archived = csv.reader(handle)
            next(archived, None)  # the header; archive_root checks it
            with conn.cursor().copy(query) as copy:
                # Read the COPY to its end whatever is found: the connection is busy until then.
                for record in csv.reader(_copy_lines(copy)):
                    if problem is None and not any(candidate == record for candidate in archived):
                        problem = f"ledger row {record[0]} is not in the month's archive as it was archived and signed"
    except _ARCHIVE_READ_ERRORS:
        return None  # an unreadable archive is the archives check's failure
    return problem


def _months(
    conn: psycopg.Connection[Any],
    archived: dict[tuple[str, str], Path],
    clock: Clock,
    fail: Callable[..., None],
    tally: _Tally,
    notes: list[str],
    bar: Any | None,
) -> None:
    months = [str(r[0]) for r in conn.execute(_MONTHS).fetchall()]
    if bar is not None:
        bar.total = len(months)
        bar.refresh()
    for year_month in months:
        fleet = audit_fleet(conn, year_month, clock=clock)
        findings_by_site: dict[str, list[Finding]] = {}
        for finding in fleet.findings:
            findings_by_site.setdefault(finding.site_id, []).append(finding)
        for record in fleet.records:
            sid, pid = str(record["site_id"]), str(record["public_id"])
            where = {"site_id": sid, "public_id": pid, "year_month": year_month}
            is_archived = (sid, year_month) in archived
            # An archived month's ledger may be cleaned up (wholly or in part): its archive stands in
            # for it (check_snapshot compares the archive's root; the files are checked below).
            check = check_snapshot(record, None) if is_archived else fleet.snapshots[sid]
            if check.status != "missing":
                tally.add("snapshots")
                tally.add("snapshots_from_archives", int(is_archived))
                tally.add("chain_links", int(record["snap_prev_snapshot_hash"] is not None))
                for code, text in sorted(check.problems.items()):
                    name = (
                        "snapshot chains"
                        if code in _CHAIN_CODES
                        else "signatures"
                        if code in _SIGNATURE_CODES
                        else "snapshots"
                    )
                    fail(name, code, text, **where)
            if is_archived:
                if int(record["total_count"]) > 0:
                    # Cleaned up in part: the rows left must be the archived (and signed) ones.
                    problem = _ledger_not_in_archive(conn, sid, year_month, archived[(sid, year_month)])
                    if problem is not None:
                        fail("snapshots", "ledger_not_in_archive", problem, **where)
                _archived_counter(record, fail, tally, where)
                continue
            findings = findings_by_site.get(sid, [])
            if record["has_counter"] or int(record["billable_count"]) > 0:
                tally.add("counters")
            for finding in findings:
                if finding.code in check.problems:
                    continue  # reported above, under its own check
                if finding.severity is Severity.FAIL:
                    name = "counters" if finding.code in _COUNTER_CODES else "ledger rules"
                    fail(name, finding.code, finding.message, **where)
                elif finding.code in ("counter_breakdown_mismatch", "snapshot_missing"):
                    notes.append(f"{pid} {year_month}: {finding.message}")
            tally.add("site_months")
        if bar is not None:
            bar.update(1)


def _archived_counter(record: dict[str, Any], fail: Callable[..., None], tally: _Tally, where: dict[str, str]) -> None:
    # Cleanup removed ledger rows; the counter still states the month, and must state the snapshot.
    if not record["has_snapshot"]:
        return
    tally.add("counters")
    stated = int(record["snap_billable_count"])
    if not record["has_counter"]:
        if stated > 0:
            fail("counters", "counter_missing", f"no site_usage_monthly row for {stated} billable rows", **where)
    elif int(record["counter_billable"]) != stated:
        fail(
            "counters",
            "counter_mismatch",
            f"site_usage_monthly.event_count is {record['counter_billable']}, "
            f"the archived month's snapshot says {stated}",
            **where,
        )
    tally.add("site_months")


def _archives(rows: list[tuple[Any, ...]], fail: Callable[..., None], tally: _Tally, bar: Any | None) -> None:
    for sid, pid, year_month, file_path, digest, row_count, root, snap_root, snap_rows in rows:
        where = {"site_id": sid, "public_id": pid, "year_month": year_month}
        path = Path(file_path)
        tally.add("archives")
        if not path.is_file():
            fail("archives", "archive_missing", f"{path} does not exist", **where)
            continue
        try:
            with path.open("rb") as handle:
                actual = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as exc:
            fail("archives", "archive_unreadable", f"{path}: {exc}", **where)
            continue
        if bar is not None:
            bar.update(path.stat().st_size)
        if actual != digest:
            fail(
                "archives",
                "archive_sha256_mismatch",
                f"{path} has SHA-256 {actual[:16]}…, recorded {digest[:16]}…",
                **where,
            )
        try:
            recomputed_root, rows_in_file = archive_root(path)
        except _ARCHIVE_READ_ERRORS as exc:
            fail("archives", "archive_unreadable", f"{path}: {type(exc).__name__}: {exc}", **where)
            continue
        if recomputed_root != root:
            fail(
                "archives",
                "archive_root_mismatch",
                f"the file gives Merkle root {recomputed_root[:16]}…, ledger_archive says {root[:16]}…",
                **where,
            )
        if rows_in_file != int(row_count):
            fail(
                "archives",
                "archive_row_count_mismatch",
                f"the file has {rows_in_file} rows, recorded {row_count}",
                **where,
            )
        if snap_root is None:
            fail("archives", "archive_without_snapshot", "an archived month without an invoice snapshot", **where)
        elif recomputed_root != snap_root or rows_in_file != int(snap_rows):
            fail(
                "archives",
                "archive_snapshot_mismatch",
                f"the file ({rows_in_file} rows, root {recomputed_root[:16]}…) does not give the snapshot "
                f"({snap_rows} rows, root {str(snap_root)[:16]}…)",
                **where,
            )


def _detail(name: str, failures: list[StoreFailure], passed_text: str) -> tuple[bool, str]:
    mine = [f for f in failures if f.check == name]
    if not mine:
        return True, passed_text
    codes: dict[str, int] = {}
    for f in mine:
        codes[f.code] = codes.get(f.code, 0) + 1
    summary = ", ".join(f"{code} x{n}" for code, n in sorted(codes.items()))
    quoted = "; ".join(f.line().split(": ", 1)[1] for f in mine[:DETAIL_FAILURES])
    return False, f"{len(mine)} failure(s): {summary}. {quoted}"


def verify_store(
    conn: psycopg.Connection[Any],
    *,
    clock: Clock,
    progress: Callable[[int, str, str], Any] | None = None,
) -> StoreVerification:
    """Check the whole store (module docstring); never changes anything.

    Args:
        conn: An autocommit connection, normally as the read-only analyst role.
        clock: Decides which months are over (the fleet audit's notion of a closed month).
        progress: ``progress(total, unit, description)`` returns a tqdm-like bar, or None.
    """
    report = StoreVerification()
    tally = _Tally()
    started = time.perf_counter()

    def fail(check: str, code: str, message: str, **where: str) -> None:
        report.failures.append(StoreFailure(check, code, message, **where))

    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    ms: dict[str, int] = {}
    with conn.transaction():
        schema_text = _schema(conn, fail, tally)
        _signing_keys(conn, fail, tally)
        archive_rows = conn.execute(_ARCHIVES).fetchall()
        archived = {(str(r[0]), str(r[2])): Path(r[3]) for r in archive_rows}
        ms["schema"] = _since(started)
        bar = progress(0, "month", "verify months") if progress is not None else None
        try:
            _months(conn, archived, clock, fail, tally, report.notes, bar)
        finally:
            if bar is not None:
                bar.close()
        # One pass over the months checks snapshots, chains, signatures, counters and rules together.
        ms["snapshots"] = _since(started) - ms["schema"]
        sizes = sum(Path(r[3]).stat().st_size for r in archive_rows if Path(r[3]).is_file())
        bar = progress(sizes, "B", "verify archives") if progress is not None and archive_rows else None
        try:
            _archives(archive_rows, fail, tally, bar)
        finally:
            if bar is not None:
                bar.close()
        ms["archives"] = _since(started) - ms["schema"] - ms["snapshots"]
    f = tally.figures
    texts = {
        "schema": schema_text,
        "snapshots": (
            f"{f.get('snapshots', 0)} snapshot(s) recomputed: counts, Merkle root, document hash "
            f"({f.get('snapshots_from_archives', 0)} from archives)"
        ),
        "snapshot chains": f"{f.get('chain_links', 0)} link(s) to the previous snapshot, every site's chain intact",
        "signatures": (
            f"{f.get('snapshots', 0)} Ed25519 signature(s) verified against "
            f"{f.get('published_keys', 0)} published key(s)"
        ),
        "archives": f"{f.get('archives', 0)} archive(s): SHA-256, Merkle root and row count match",
        "counters": f"{f.get('counters', 0)} site-month counter(s) equal the ledger",
        "ledger rules": f"{f.get('site_months', 0)} site-month(s): quota, hard cap and outbox integrity hold",
    }
    for name in CHECKS:
        passed, detail = _detail(name, report.failures, texts[name])
        report.results.append(CheckResult(name, passed, detail, ms.get(name, 0)))
    report.figures = dict(sorted(f.items()))
    report.figures["duration_ms"] = _since(started)
    return report


def _since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)

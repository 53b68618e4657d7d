"""The dispute CSV of SPEC §4.3: its exact bytes, how they are streamed, and how they are read back.

Format (one site-month, every row, billable or not):

- Columns, in order: ``EXPORT_COLUMNS``. ``created_at`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC),
  ``billable`` as ``true``/``false``, NULL text as an empty field.
- Rows ordered by ``created_at, idempotency_key COLLATE "C"`` (the leaf order of SPEC §5).
- RFC 4180 quoting (PostgreSQL ``COPY … CSV`` writes it): a field holding ``,``, ``"``, CR or LF
  is enclosed in double quotes and its quotes doubled. Records end with LF, as COPY writes them;
  RFC 4180 readers (Python's ``csv``, spreadsheets) accept LF as well as CRLF.
- Formula-injection neutralisation (OWASP "CSV injection"): a text cell that starts with
  ``= + - @``, a tab or a CR gets a leading apostrophe, so a spreadsheet shows it as text. A cell
  that itself starts with an apostrophe gets one too, which makes the mapping reversible:
  ``restore_cell`` strips exactly one leading apostrophe. The verifier restores the
  ``idempotency_key`` before hashing, so the Merkle leaves are the stored keys.

The bytes are produced by PostgreSQL in one ``COPY (SELECT …) TO STDOUT`` statement (one snapshot
of the data, no Python per row on the server path) and regrouped into chunks of at most about
``EXPORT_CHUNK_BYTES``: memory stays bounded whatever the month's size, and the same rows always
give the same bytes. ``ExportTally`` reads the bytes back (manifest, packet, offline verifier):
it hashes the file, counts the rows, checks their order and recomputes the Merkle root.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from kernel.ledger import BILLING_STATES, RootBuilder, leaf_bytes, leaf_hash

__all__ = [
    "EXPORT_CHUNK_BYTES",
    "EXPORT_COLUMNS",
    "EXPORT_HEADER",
    "EXPORT_STATEMENT_TIMEOUT_MS",
    "FORMULA_BLANKS",
    "FORMULA_TRIGGERS",
    "LEADING_TRIGGERS",
    "MAX_CSV_FIELD_CHARS",
    "MAX_CSV_RECORD_BYTES",
    "CsvDigest",
    "DisputedRow",
    "ExportTally",
    "export_chunks",
    "export_copy_statement",
    "export_filename",
    "neutralise_cell",
    "neutralised_sql",
    "restore_cell",
]

EXPORT_COLUMNS: tuple[str, ...] = (
    "idempotency_key",
    "created_at",
    "year_month",
    "billable",
    "billing_state",
    "billing_reason",
    "event_category",
    "event_action",
    "event_label",
    "payload_hash",
    "idempotency_version",
)
EXPORT_HEADER = (",".join(EXPORT_COLUMNS) + "\n").encode("ascii")
# Bytes handed to the HTTP layer per write: big enough to amortise the ASGI stack, small enough
# that a slow client never makes the server hold more than one chunk per export.
EXPORT_CHUNK_BYTES = 256 * 1024
# A COPY blocked by a client that stopped reading is cut after this long (ms, PostgreSQL setting).
EXPORT_STATEMENT_TIMEOUT_MS = 30 * 60 * 1000
# How many format problems the tally keeps word for word (it counts all of them).
MAX_REPORTED_PROBLEMS = 20
# Reading limits (a limit on everything): genuine cells are at most a few hundred characters
# (ingest caps text at 200), so these bounds only ever stop hostile or broken files.
MAX_CSV_FIELD_CHARS = 4096  # characters of one field, after unquoting
# Bytes the reader holds for a record it has not seen the end of. Eleven fields at the field limit
# (4 bytes a character, or 2 for a doubled quote) fit, so only a record that is refused anyway
# (too many fields, a field too long, an unterminated quote) ever reaches it.
MAX_CSV_RECORD_BYTES = 256 * 1024

# Characters that start a formula when they are a cell's first non-blank character (OWASP "CSV
# injection"), with the fullwidth forms that spreadsheets fold to ASCII.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")
# Characters a spreadsheet skips before it looks for a formula trigger.
FORMULA_BLANKS = (
    " \t\n\r\x0b\x0c\x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x2010))  # en quad … hair space, zero-width, LRM/RLM
    + "".join(chr(c) for c in range(0x2028, 0x2030))  # line/paragraph separators, bidi marks, NNBSP
    + "\u205f\u2060\u3000\ufeff"  # math space, word joiner, ideographic space, BOM
)
# A cell starting with one of these is always neutralised: the control characters OWASP lists as
# triggers on their own, and the apostrophe itself, which is what makes the mapping reversible.
LEADING_TRIGGERS = ("\t", "\r", "\n", "'")
_CREATED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_ALWAYS = frozenset(FORMULA_TRIGGERS + LEADING_TRIGGERS)
_FIRST = _ALWAYS | frozenset(FORMULA_BLANKS)  # a cell starting with none of these is left as it is


def _needs_apostrophe(value: str) -> bool:
    first = value[:1]
    if not first or first not in _FIRST:
        return False  # the fast path: almost every cell starts with a letter or a digit
    return first in _ALWAYS or value.lstrip(FORMULA_BLANKS)[:1] in FORMULA_TRIGGERS


def neutralise_cell(value: str | None) -> str | None:
    """The cell as exported: one leading apostrophe before a formula (see the module doc)."""
    if value and _needs_apostrophe(value):
        return "'" + value
    return value


def restore_cell(cell: str) -> str:
    """Inverse of ``neutralise_cell`` for a cell read from the CSV (export, archive, packets)."""
    if cell[:1] == "'" and _needs_apostrophe(cell[1:]):
        return cell[1:]
    return cell


def _code_points(chars: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Literal(ord(c)) for c in sorted(set(chars)))


# Compared by code point: ascii() (the first character's code point) costs far less per row than
# left(x, 1) IN (...) on text, and turns the common cell away before ltrim() runs.
_NEUTRALISED_SQL = (
    "CASE WHEN ascii({c}) IN ({first}) AND (ascii({c}) IN ({always})"
    " OR ascii(ltrim({c}, {blanks})) IN ({triggers})) THEN '''' || {c} ELSE {c} END"
)


def neutralised_sql(column: str) -> sql.Composable:
    """``neutralise_cell`` of a text column, in SQL: the rule COPY applies to every exported cell."""
    return sql.SQL(_NEUTRALISED_SQL).format(
        c=sql.Identifier(column),
        first=_code_points(_FIRST),
        always=_code_points(_ALWAYS),
        blanks=sql.Literal(FORMULA_BLANKS),
        triggers=_code_points(FORMULA_TRIGGERS),
    )


def export_filename(site_id: uuid.UUID | str, year_month: str) -> str:
    """``dispute-<site_id>-<YYYY-MM>.csv`` (the attachment name and the packet's file name)."""
    return f"dispute-{uuid.UUID(str(site_id))}-{year_month}.csv"


def export_copy_statement(*, neutralise: Callable[[str], sql.Composable] = neutralised_sql) -> sql.Composed:
    """``COPY (SELECT …) TO STDOUT CSV`` of one site-month; parameters ``(site_id, year_month)``.

    ``neutralise`` is for the export benchmark only, which times the statement with an older rule.
    """
    text = ("billing_reason", "event_category", "event_action", "event_label", "payload_hash")
    select = sql.SQL(
        """
        SELECT {key},
               to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               year_month,
               CASE WHEN billable THEN 'true' ELSE 'false' END,
               billing_state,
               {text},
               idempotency_version
        FROM ingest_idempotency
        WHERE site_id = %s AND year_month = %s
        ORDER BY created_at, idempotency_key COLLATE "C"
        """
    ).format(key=neutralise("idempotency_key"), text=sql.SQL(", ").join(neutralise(c) for c in text))
    return sql.SQL("COPY ({select}) TO STDOUT WITH (FORMAT csv)").format(select=select)


_TIMEOUT_SQL = "SELECT set_config('statement_timeout', %s, true)"


def export_chunks(
    conn: psycopg.Connection[Any],
    site_id: uuid.UUID,
    year_month: str,
    *,
    chunk_bytes: int = EXPORT_CHUNK_BYTES,
) -> Iterator[bytes]:
    """The CSV of a site-month as chunks, header first (synchronous: CLI, packets, notebooks).

    Runs in a transaction of its own on ``conn`` so the statement timeout stays local to it.
    """
    yield EXPORT_HEADER
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_TIMEOUT_SQL, (str(EXPORT_STATEMENT_TIMEOUT_MS),))
        with cur.copy(export_copy_statement(), (site_id, year_month)) as copy:
            buffer = bytearray()
            for data in copy:
                buffer += data
                if len(buffer) >= chunk_bytes:
                    yield bytes(buffer)
                    buffer.clear()
            if buffer:
                yield bytes(buffer)


@dataclass(frozen=True)
class DisputedRow:
    """A disputed key as found in the CSV: its row, and its leaf index when billable."""

    idempotency_key: str
    row_number: int  # 1-based data row (the header is row 0)
    created_at: str
    billable: bool
    billing_state: str
    leaf_index: int | None

    @property
    def leaf(self) -> bytes:
        return leaf_bytes(self.idempotency_key, self.created_at, self.billing_state)


@dataclass(frozen=True)
class CsvDigest:
    """What a dispute CSV says about its month: hash, counts, Merkle root, problems found."""

    sha256: str
    byte_count: int
    row_count: int
    billable_count: int
    overage_count: int
    rejected_count: int
    non_billable_count: int
    merkle_root: str
    header_ok: bool
    format_problems: tuple[str, ...]
    format_problem_count: int
    order_problems: tuple[str, ...]
    order_problem_count: int
    month_problems: tuple[str, ...]
    month_problem_count: int
    disputed: dict[str, DisputedRow]
    # The first reading limit the file broke (``MAX_CSV_*``), if any: a size, not a format, problem.
    limit_problem: str | None = None

    def counts(self) -> dict[str, int]:
        return {
            "rows": self.row_count,
            "billable": self.billable_count,
            "overage": self.overage_count,
            "rejected": self.rejected_count,
            "non_billable": self.non_billable_count,
        }


@dataclass
class _Problems:
    kept: list[str] = field(default_factory=list)
    count: int = 0

    def add(self, text: str) -> None:
        self.count += 1
        if len(self.kept) < MAX_REPORTED_PROBLEMS:
            self.kept.append(text)


class ExportTally:
    """Reads a dispute CSV back from its bytes, fed in chunks of any size (push style).

    Hashes every byte, parses RFC 4180 records, checks the header, each field's format, the row
    order and the month, counts rows by kind and builds the Merkle root of the billable rows
    (SPEC §5) in O(log n) memory. With ``disputed_keys`` it also records where those keys are and,
    only then, keeps the leaf hashes (32 bytes per billable row) for inclusion proofs.
    """

    def __init__(self, *, year_month: str | None = None, disputed_keys: Iterable[str] = ()) -> None:
        self._sha = hashlib.sha256()
        self._bytes = 0
        self._pending = bytearray()
        self._records = _RecordEnds()
        self._limit_problem: str | None = None
        self._header_seen = False
        self._header_ok = False
        self._year_month = year_month
        self._wanted = set(disputed_keys)
        self._disputed: dict[str, DisputedRow] = {}
        self.leaf_hashes: bytearray | None = bytearray() if self._wanted else None
        self._root = RootBuilder()
        self._rows = 0
        self._overage = 0
        self._rejected = 0
        self._non_billable = 0
        self._last: tuple[str, bytes] | None = None
        self._format = _Problems()
        self._order = _Problems()
        self._month = _Problems()
        self._closed = False

    def feed(self, chunk: bytes) -> None:
        """Add the next bytes of the file."""
        assert not self._closed, "feed after close"
        self._sha.update(chunk)
        self._bytes += len(chunk)
        if self._limit_problem is not None:
            return  # past a broken limit nothing more is parsed; the bytes are still hashed
        cut = self._records.last_end(chunk)
        if cut:
            self._parse(bytes(self._pending) + chunk[:cut])
            self._pending.clear()
        self._pending += chunk[cut:]
        if len(self._pending) > MAX_CSV_RECORD_BYTES:
            self._limit_problem = (
                f"the record after row {self._rows} is longer than {MAX_CSV_RECORD_BYTES} bytes"
                " (an unterminated quoted field?): the rest of the file was not read"
            )
            self._pending.clear()

    def close(self) -> CsvDigest:
        """Finish reading (a last record without its newline counts) and return the digest."""
        if not self._closed:
            self._closed = True
            if self._pending:
                self._parse(bytes(self._pending))
                self._pending.clear()
        if not self._header_seen:
            self._format.add("the file is empty: no header")
        return CsvDigest(
            sha256=self._sha.hexdigest(),
            byte_count=self._bytes,
            row_count=self._rows,
            billable_count=self._root.size,
            overage_count=self._overage,
            rejected_count=self._rejected,
            non_billable_count=self._non_billable,
            merkle_root=self._root.root().hex(),
            header_ok=self._header_ok,
            format_problems=tuple(self._format.kept),
            format_problem_count=self._format.count,
            order_problems=tuple(self._order.kept),
            order_problem_count=self._order.count,
            month_problems=tuple(self._month.kept),
            month_problem_count=self._month.count,
            disputed=dict(self._disputed),
            limit_problem=self._limit_problem,
        )

    def _parse(self, data: bytes) -> None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._format.add(f"not UTF-8 near row {self._rows + 1}: {exc.reason}")
            text = data.decode("utf-8", errors="replace")
        try:
            for record in csv.reader(io.StringIO(text, newline=""), strict=True):
                if not self._header_seen:
                    self._header_seen = True
                    self._header_ok = tuple(record) == EXPORT_COLUMNS
                    if not self._header_ok:
                        self._format.add(f"header is {','.join(record)!r}, expected {','.join(EXPORT_COLUMNS)!r}")
                    continue
                self._row(record)
        except csv.Error as exc:
            self._format.add(f"not RFC 4180 CSV near row {self._rows + 1}: {exc}")

    def _row(self, record: list[str]) -> None:
        self._rows += 1
        n = self._rows
        if len(record) != len(EXPORT_COLUMNS):
            self._format.add(f"row {n}: {len(record)} fields, expected {len(EXPORT_COLUMNS)}")
            return
        if max(map(len, record)) > MAX_CSV_FIELD_CHARS:
            self._limit_problem = self._limit_problem or f"row {n} has a field over {MAX_CSV_FIELD_CHARS} characters"
            self._format.add(f"row {n}: a field is longer than {MAX_CSV_FIELD_CHARS} characters")
            return
        key = restore_cell(record[0])
        created_at, year_month, billable_text, state = record[1], record[2], record[3], record[4]
        if not key or not _CREATED_AT.match(created_at) or state not in BILLING_STATES:
            self._format.add(f"row {n}: malformed idempotency_key, created_at or billing_state")
            return
        if billable_text not in ("true", "false") or record[10] not in ("1", "2"):
            self._format.add(f"row {n}: billable must be true/false and idempotency_version 1/2")
            return
        billable = billable_text == "true"
        if (state == "REJECTED_QUOTA" and billable) or (state == "OVERAGE" and not billable):
            self._format.add(f"row {n}: billing_state {state} contradicts billable={billable_text}")
            return
        if year_month != created_at[:7] or (self._year_month is not None and year_month != self._year_month):
            self._month.add(f"row {n}: year_month {year_month} / created_at {created_at} outside {self._year_month}")
        position = (created_at, key.encode("utf-8"))
        if self._last is not None and position <= self._last:
            self._order.add(f"row {n}: ({created_at}, {key}) does not come after the row before it")
        self._last = position
        leaf_index: int | None = None
        if billable:
            leaf_index = self._root.size
            digest = leaf_hash(leaf_bytes(key, created_at, state))
            self._root.add_leaf_hash(digest)
            if self.leaf_hashes is not None:
                self.leaf_hashes += digest
            if state == "OVERAGE":
                self._overage += 1
        elif state == "REJECTED_QUOTA":
            self._rejected += 1
        else:
            self._non_billable += 1
        if key in self._wanted and key not in self._disputed:
            self._disputed[key] = DisputedRow(key, n, created_at, billable, state, leaf_index)


class _RecordEnds:
    """Finds where CSV records end in a byte stream, looking at each byte once (linear time).

    A newline ends a record when it is outside quotes, i.e. when an even number of ``"`` precede it
    in the whole stream (RFC 4180: quotes appear only around fields and doubled inside them). The
    parity of everything fed so far is kept, so a chunk is scanned once, backwards from its end to
    its last record end, and the bytes before it never again: an unterminated quote costs no more
    than a well-formed file (the rescan from the first byte this replaces was quadratic, and hung
    on a 2 KB zip).
    """

    def __init__(self) -> None:
        self._odd_quotes = False  # parity of the quotes in every byte fed so far

    def last_end(self, chunk: bytes) -> int:
        """Length of the longest prefix of ``chunk`` that ends a record (0 if none)."""
        end_odd = self._odd_quotes ^ bool(chunk.count(b'"') & 1)
        self._odd_quotes = end_odd
        odd_after, scanned_to = False, len(chunk)
        end = chunk.rfind(b"\n")
        while end >= 0:
            odd_after ^= bool(chunk.count(b'"', end, scanned_to) & 1)
            scanned_to = end
            if end_odd == odd_after:  # an even number of quotes in the stream before this newline
                return end + 1
            end = chunk.rfind(b"\n", 0, end)
        return 0

"""The interactive investigation notebook's actions: each widget calls one of these functions.

``Explorer`` holds the notebook's engine and runs every widget action through ``Explorer.run``,
which turns a bad month, an unknown site or key into one line in the widget's output instead of a
traceback. The engine re-opens its connections on demand, so the widgets keep working after the
notebook's last cell disposed it (Run All).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from kernel.audit import queries
from kernel.audit.connect import AuditDB, pg_connection, read_frame, read_limited
from kernel.audit.display import Block, table
from kernel.clock import format_utc
from kernel.errors import InputError, KernelError, NotFound
from kernel.ledger import inclusion_proof, leaf_bytes, leaf_hash, verify_inclusion
from kernel.ledger.rows import BILLING_STATES
from kernel.months import month_bounds, parse_year_month
from kernel.tenants import Site, list_sites, resolve_site

__all__ = [
    "MAX_LEDGER_ROWS",
    "Explorer",
    "key_detail",
    "key_detail_block",
    "ledger_rows",
    "one_line",
    "reason_choices",
    "site_choices",
    "site_of",
]

# Rows the ledger browser shows at most per filter.
MAX_LEDGER_ROWS = 200


def site_of(conn: AuditDB, ref: str) -> Site:
    """The site a person picked or typed: public id or UUID (``NotFound`` otherwise)."""
    with pg_connection(conn) as pg:
        return resolve_site(pg, ref.strip())


def site_choices(conn: AuditDB, year_month: str | None = None) -> list[tuple[str, str]]:
    """(label, public id) of every site, or of the sites that existed in ``year_month``.

    A site created after the month with nothing recorded in it is left out (the same rule as the
    fleet report), so sites created after the demo do not change the demo month's pickers.
    """
    with pg_connection(conn) as pg:
        sites = list_sites(pg)
        if year_month is not None:
            _, month_end = month_bounds(parse_year_month(year_month))
            rows = pg.execute(
                "SELECT s.id FROM sites s WHERE s.created_at < %(end)s"
                " OR EXISTS (SELECT 1 FROM site_usage_monthly u WHERE u.site_id = s.id AND u.year_month = %(ym)s)"
                " OR EXISTS (SELECT 1 FROM ingest_idempotency i WHERE i.site_id = s.id AND i.year_month = %(ym)s)",
                {"end": month_end, "ym": year_month},
            ).fetchall()
            existed = {r[0] for r in rows}
            sites = [s for s in sites if s.id in existed]
    return [(f"{s.public_id} — {s.name} ({s.billing_mode})", s.public_id) for s in sites]


def reason_choices(conn: AuditDB, site: Site, year_month: str) -> list[str]:
    """The billing reasons present in the site-month, for the reason filter."""
    frame = read_frame(
        conn,
        "SELECT DISTINCT billing_reason FROM ingest_idempotency WHERE site_id = %(site_id)s"
        " AND year_month = %(year_month)s ORDER BY billing_reason",
        {"site_id": site.id, "year_month": parse_year_month(year_month)},
    )
    return [str(r) for r in frame["billing_reason"]]


def ledger_rows(
    conn: AuditDB,
    site: Site,
    year_month: str,
    *,
    billing_state: str = "",
    billing_reason: str = "",
    limit: int = MAX_LEDGER_ROWS,
) -> pd.DataFrame:
    """Ledger rows of the site-month in leaf order, filtered by state and/or reason ('' = any).

    At most ``limit`` rows; ``frame.attrs["total_rows"]`` says how many match in all.
    """
    if billing_state and billing_state not in BILLING_STATES:
        raise InputError(f"billing_state must be one of {', '.join(BILLING_STATES)}", code="invalid_billing_state")
    if not 1 <= limit <= MAX_LEDGER_ROWS:
        raise InputError(f"limit must be 1..{MAX_LEDGER_ROWS}", code="invalid_limit")
    params = {
        "site_id": site.id,
        "year_month": parse_year_month(year_month),
        "billing_state": billing_state or None,
        "billing_reason": billing_reason or None,
        "limit": limit,
    }
    return read_limited(conn, queries.LEDGER_ROWS, params)


def key_detail(conn: AuditDB, site: Site, idempotency_key: str) -> dict[str, Any]:
    """One ledger row with its outbox state and, when its month is frozen, its inclusion proof.

    The proof is recomputed from the ledger and checked against the snapshot's stored root, so
    the answer says whether this disputed row is provably part of the invoice.
    """
    with pg_connection(conn) as pg:
        return _key_detail(pg, site, idempotency_key)


def _key_detail(conn: Any, site: Site, idempotency_key: str) -> dict[str, Any]:
    if not idempotency_key.strip():
        raise InputError("type an idempotency key first", code="missing_idempotency_key")
    row = conn.execute(queries.LEDGER_ROW, {"site_id": site.id, "idempotency_key": idempotency_key}).fetchone()
    if row is None:
        raise NotFound(f"no ledger row {idempotency_key!r} for site {site.public_id}", code="unknown_idempotency_key")
    (key, version, created_at, year_month, billable, state, reason, ec, ea, el, payload_hash, occurred_at) = row[:12]
    outbox_id, published_at, attempts = row[12:]
    detail: dict[str, Any] = {
        "idempotency_key": key,
        "idempotency_version": int(version),
        "created_at": format_utc(created_at),
        "year_month": year_month,
        "billable": bool(billable),
        "billing_state": state,
        "billing_reason": reason,
        "event": {"category": ec, "action": ea, "label": el},
        "payload_hash": payload_hash,
        "occurred_at": None if occurred_at is None else format_utc(occurred_at),
        "outbox": "missing"
        if outbox_id is None
        else ("published" if published_at is not None else f"pending ({attempts} attempts)"),
        "inclusion": "not billable: not a leaf" if not billable else "month not frozen",
    }
    snap = conn.execute(
        "SELECT merkle_root FROM invoice_snapshot WHERE site_id = %s AND year_month = %s", (site.id, year_month)
    ).fetchone()
    if billable and snap is not None:
        leaves = conn.execute(
            "SELECT idempotency_key, created_at, billing_state FROM ingest_idempotency "
            "WHERE site_id = %s AND year_month = %s AND billable "
            'ORDER BY created_at, idempotency_key COLLATE "C"',
            (site.id, year_month),
        ).fetchall()
        hashes = [leaf_hash(leaf_bytes(k, format_utc(c), s)) for k, c, s in leaves]
        index = next(i for i, (k, _, _) in enumerate(leaves) if k == key)
        proof = inclusion_proof(hashes, index)
        ok = verify_inclusion(leaf_bytes(key, format_utc(created_at), state), proof, bytes.fromhex(str(snap[0])))
        detail["inclusion"] = "proved against the snapshot root" if ok else "NOT in the snapshot's Merkle tree"
        detail["merkle_root"] = str(snap[0])
        detail["proof"] = proof.to_json()
    return detail


def key_detail_block(detail: dict[str, Any]) -> Block:
    """One key's drill-down as two readable tables: the row, then its inclusion proof step by step."""
    event = detail.get("event", {})
    fields = [
        ("idempotency key", detail["idempotency_key"]),
        ("key version", detail["idempotency_version"]),
        ("received (server time)", detail["created_at"]),
        ("month", detail["year_month"]),
        ("billable", "yes" if detail["billable"] else "no"),
        ("billing state", detail["billing_state"]),
        ("billing reason", detail["billing_reason"]),
        ("event", " / ".join(str(event.get(k) or "-") for k in ("category", "action", "label"))),
        ("payload hash", detail["payload_hash"]),
        ("client time", detail["occurred_at"] or "-"),
        ("outbox", detail["outbox"]),
        ("in the invoice snapshot", detail["inclusion"]),
    ]
    row = table(pd.DataFrame(fields, columns=["field", "value"]))
    proof = detail.get("proof")
    if not proof:
        return row
    steps = pd.DataFrame(
        [(i + 1, h) for i, h in enumerate(proof.get("path", []))],
        columns=["step (leaf to root)", "sibling hash"],
    )
    head = (
        f"<p>Inclusion proof: leaf {int(proof.get('leaf_index', 0)) + 1:,} of {int(proof.get('tree_size', 0)):,}, "
        f"root {detail.get('merkle_root', '')}</p>"
    )
    path = table(steps, empty="A one-leaf tree: the leaf hash is the root.")
    return Block(row.html + head + path.html, f"{row.text}\n{head}\n{path.text}")


def one_line(exc: BaseException) -> str:
    """A widget's error as one line: ``error: … [code]`` for the kernel's errors."""
    if isinstance(exc, KernelError):
        return f"error: {exc.message} [{exc.code}]"
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"error: {type(exc).__name__}: {first}"


@dataclass
class Explorer:
    """The widget actions of ``investigate``, on the notebook's engine (each opens what it needs)."""

    db: AuditDB
    last: Any = field(default=None, repr=False)  # what the last action showed (a table or an error line)
    controls: dict[str, Any] = field(default_factory=dict, repr=False)  # the widgets, by name

    def reasons(self, site_ref: str, year_month: str) -> list[str]:
        """The reason filter's options for the chosen site and month ("" = any)."""
        return ["", *reason_choices(self.db, site_of(self.db, site_ref), year_month)]

    def rows(self, site_ref: str, year_month: str, billing_state: str = "", billing_reason: str = "") -> Block:
        frame = ledger_rows(
            self.db, site_of(self.db, site_ref), year_month, billing_state=billing_state, billing_reason=billing_reason
        )
        return table(frame, total_rows=frame.attrs["total_rows"], empty="No ledger row matches this filter.")

    def key(self, site_ref: str, idempotency_key: str) -> Block:
        return key_detail_block(key_detail(self.db, site_of(self.db, site_ref), idempotency_key.strip()))

    def run(self, action: Callable[..., Any], *args: Any) -> Any:
        """Run one action; a failure comes back as one line (also kept in ``last``), never raised."""
        try:
            self.last = action(*args)
        except Exception as exc:  # a widget must answer, not print a traceback into the notebook
            self.last = one_line(exc)
        return self.last

    def widget(self, site_ref: str, year_month: str) -> Any:
        """The ipywidgets explorer: site and month pickers, state and reason filters, a key box.

        The reason list follows the chosen site and month; every button runs one action through
        ``run`` into the output area. JupyterLab only (the cell is tagged ``skip-execution``).
        """
        import ipywidgets as widgets
        from IPython.display import display

        site = widgets.Dropdown(options=site_choices(self.db), value=site_ref, description="site")
        month = widgets.Text(value=year_month, description="month", continuous_update=False)
        state = widgets.Dropdown(options=["", *BILLING_STATES], description="state")
        reason = widgets.Dropdown(options=self.reasons(site_ref, year_month), description="reason")
        key = widgets.Text(description="key", placeholder="an idempotency key")
        rows_button = widgets.Button(description="Show rows")
        key_button = widgets.Button(description="Drill into key")
        out = widgets.Output()

        def show(result: Any) -> None:
            with out:
                out.clear_output()
                display(result)  # type: ignore[no-untyped-call]

        def follow(_: Any) -> None:
            found = self.run(self.reasons, site.value, month.value.strip())
            if isinstance(found, str):
                show(found)
            else:
                reason.options = found

        site.observe(follow, names="value")
        month.observe(follow, names="value")
        rows_button.on_click(
            lambda _: show(self.run(self.rows, site.value, month.value.strip(), state.value, reason.value))
        )
        key_button.on_click(lambda _: show(self.run(self.key, site.value, key.value)))
        self.controls = {"site": site, "month": month, "state": state, "reason": reason, "key": key,
                         "rows": rows_button, "drill": key_button, "output": out}  # fmt: skip
        return widgets.VBox(
            [
                widgets.HBox([site, month]),
                widgets.HBox([state, reason]),
                widgets.HBox([key, rows_button, key_button]),
                out,
            ]
        )

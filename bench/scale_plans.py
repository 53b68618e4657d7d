"""Is every hot query keyed by ``site_id``? The plans of the statements the product really runs.

No SQL is re-typed here. The benchmark turns on ``auto_explain`` for its database
(``session_preload_libraries``, ``log_min_duration = 0``, ``log_format = json``,
``log_nested_statements = on``, ``client_min_messages = log``), then calls the product's own
functions: the ingest lookups and ``write_events`` (the statements *inside* the ``ingest_write``
PL/pgSQL function are logged one by one), the export's access checks and ``COPY``, a freeze, a
reconcile recount, a cleanup run and a one-site audit. Each plan arrives on the calling
connection as a LOG notice holding the same JSON as ``EXPLAIN (FORMAT JSON)``, for the plan the
server really used on the big ledger.

Each plan is then judged against the Citus distribution plan (README "Scale and distribution"):

- a scan of a **distributed** table (``DISTRIBUTED``) is *keyed* when it goes through an index
  whose first column is ``site_id`` with ``site_id = <constant or parameter>`` in its index
  condition (one shard). ``site_id = <other table>.site_id`` is a co-located join, and
  ``site_id = ANY(...)`` a list of shards; a sequential scan or any other index is *unkeyed*;
- an INSERT into a distributed table is routed by the inserted row's ``site_id``;
- **reference** tables (``REFERENCE``) are replicated to every node: any access is local, but the
  auth lookup (``INDEXED_REFERENCE``) must still go through the ``key_hash`` index;
- **coordinator** tables (``COORDINATOR``) stay on the coordinator.

The verdicts are meaningful at the benchmark's size: on a ledger of a few thousand rows the
planner rightly scans small tables (a few hundred snapshots or archives) instead.

A statement is ``single-shard`` when no distributed access is unkeyed and one is keyed (equality
on ``site_id`` carries across co-located joins, as in Citus's router planner), ``local`` when it
touches no distributed table, ``site-list`` when it is keyed by a list of sites, ``multi-shard``
otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from kernel.db.connect import Database
from kernel.settings import Settings

__all__ = [
    "COORDINATOR",
    "DISTRIBUTED",
    "REFERENCE",
    "CapturingDatabase",
    "PlanCapture",
    "auto_explain",
    "judge",
]

DISTRIBUTED = frozenset(
    {
        "ingest_idempotency",
        "site_usage_monthly",
        "ingest_outbox",
        "ingest_publish_failures",
        "invoice_snapshot",
        "ledger_archive",
        "dispute_holds",
        "reconciliation_drift_log",
    }
)
REFERENCE = frozenset({"sites", "site_plans", "api_keys", "signing_keys"})
INDEXED_REFERENCE = frozenset({"api_keys"})  # the auth lookup by key_hash
COORDINATOR = frozenset({"cron_runs", "audit_log", "billing_reconciliation_jobs", "schema_migrations"})

_AUTO_EXPLAIN = {
    "session_preload_libraries": "auto_explain",
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_format": "json",
    "auto_explain.log_nested_statements": "on",
    "client_min_messages": "log",
}
_KEYED = re.compile(r"\bsite_id = (\$\d+|'[^']*'::uuid)")
_LISTED = re.compile(r"\bsite_id = ANY \(")
_LITERAL = re.compile(r"'[^']*'")
_COLOCATED = re.compile(r'\bsite_id = "?\w+"?\.site_id\b')


class auto_explain:
    """Log the plan of every statement run in ``dbname`` while the block runs (owner connection)."""

    def __init__(self, owner_conninfo: str, dbname: str) -> None:
        self.owner_conninfo = owner_conninfo
        self.dbname = dbname

    def _alter(self, assignment: sql.Composable) -> None:
        with psycopg.connect(self.owner_conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ").format(sql.Identifier(self.dbname)) + assignment)

    def __enter__(self) -> auto_explain:
        for name, value in _AUTO_EXPLAIN.items():
            self._alter(sql.SQL("SET {} = {}").format(sql.Identifier(*name.split(".")), sql.Literal(value)))
        return self

    def __exit__(self, *exc: object) -> None:
        for name in _AUTO_EXPLAIN:
            self._alter(sql.SQL("RESET {}").format(sql.Identifier(*name.split("."))))


@dataclass
class PlanCapture:
    """Collects the auto_explain plans arriving on connections, labelled by the current step."""

    step: str = ""
    plans: list[dict[str, Any]] = field(default_factory=list)

    def on_notice(self, diag: psycopg.errors.Diagnostic) -> None:
        message = diag.message_primary or ""
        if diag.severity_nonlocalized != "LOG" or "plan:" not in message:
            return
        document = json.loads(message.split("plan:", 1)[1])
        self.plans.append({"step": self.step, "query": document.get("Query Text", ""), "plan": document["Plan"]})


class CapturingDatabase(Database):
    """The product's ``Database`` whose connections report their plans to a ``PlanCapture``."""

    def __init__(self, settings: Settings, capture: PlanCapture) -> None:
        super().__init__(settings)
        self.capture = capture

    def connect(self, role: Any = "app", **kwargs: Any) -> psycopg.Connection[Any]:
        conn = super().connect(role, **kwargs)
        conn.add_notice_handler(self.capture.on_notice)
        return conn


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _index_conditions(node: dict[str, Any]) -> list[tuple[str, str]]:
    """(index name, index condition) of a scan node, bitmap children included."""
    if "Index Name" in node:
        return [(node["Index Name"], node.get("Index Cond", ""))]
    if node["Node Type"] == "Bitmap Heap Scan":
        return [
            (child["Index Name"], child.get("Index Cond", ""))
            for child in _nodes(node)
            if child["Node Type"] == "Bitmap Index Scan"
        ]
    return []


def _first_columns(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """First column of every index of the public schema, by index name."""
    rows = conn.execute(
        """
        SELECT c.relname, a.attname
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        """
    ).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def _access(node: dict[str, Any], first_columns: dict[str, str]) -> dict[str, Any] | None:
    relation = node.get("Relation Name")
    if relation is None:
        return None
    kind = "distributed" if relation in DISTRIBUTED else "reference" if relation in REFERENCE else "coordinator"
    if node["Node Type"] == "ModifyTable":
        operation = node.get("Operation", "")
        # UPDATE and DELETE find their rows through the scan below them, judged on its own.
        if operation == "Insert":
            keyed = "routed by the row's site_id" if kind == "distributed" else "insert"
        else:
            keyed = "by the scan below"
        return {"relation": relation, "table": kind, "node": f"{operation}", "index": None, "access": keyed}
    indexes = _index_conditions(node)
    if not indexes:
        access = "seq scan" if kind != "distributed" else "unkeyed: seq scan"
        return {"relation": relation, "table": kind, "node": node["Node Type"], "index": None, "access": access}
    name, condition = indexes[0]
    first = first_columns.get(name, "?")
    if kind != "distributed":
        access = f"index on {first}"
    elif first != "site_id":
        access = f"unkeyed: index on {first}"
    elif _KEYED.search(condition):
        access = "keyed: site_id = value"
    elif _COLOCATED.search(condition):
        access = "co-located join on site_id"
    elif _LISTED.search(condition):
        access = "site list: site_id = ANY(...)"
    else:
        # e.g. site_id = s.id: joined to the reference table sites, which prunes no shard.
        access = "unkeyed: no site_id = value condition"
    return {"relation": relation, "table": kind, "node": node["Node Type"], "index": name, "access": access}


def _shape(distributed: list[dict[str, Any]]) -> str:
    """How many shards a statement reaches, from its accesses to distributed tables."""
    if not distributed:
        return "local"
    accesses = [a["access"] for a in distributed]
    if any(a.startswith(("unkeyed", "site list")) for a in accesses):
        return "site-list" if not any(a.startswith("unkeyed") for a in accesses) else "multi-shard"
    # Equality on site_id carries across co-located joins: one keyed access keys the statement.
    if any(a.startswith(("keyed", "routed")) for a in accesses):
        return "single-shard"
    return "multi-shard"


def judge(conn: psycopg.Connection[Any], captured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per distinct (step, statement): its accesses and ``single-shard``/``local``/``multi-shard``."""
    first_columns = _first_columns(conn)
    verdicts: dict[tuple[str, str], dict[str, Any]] = {}
    for item in captured:
        accesses = [a for n in _nodes(item["plan"]) if (a := _access(n, first_columns)) is not None]
        distributed = [a for a in accesses if a["table"] == "distributed"]
        shape = _shape(distributed)
        writes = any(a["node"] in ("Insert", "Update", "Delete") for a in distributed)
        # The big tables must be read through an index; so must the auth lookup. A reference
        # table of a few rows (signing_keys) is rightly scanned.
        indexed = all(
            a["index"] is not None or a["node"] in ("Insert", "Update", "Delete")
            for a in accesses
            if a["table"] == "distributed" or a["relation"] in INDEXED_REFERENCE
        )
        query = " ".join(item["query"].split())
        # Statements that inline their values (cleanup's archive COPY) count once.
        verdicts.setdefault(
            (item["step"], _LITERAL.sub("?", query)),
            {
                "step": item["step"],
                "query": query[:400],
                "shape": shape,
                "writes_distributed": writes,
                "every_scan_indexed": indexed,
                "accesses": sorted(
                    {f"{a['relation']}: {a['access']}" + (f" ({a['index']})" if a["index"] else "") for a in accesses}
                ),
            },
        )
    return list(verdicts.values())

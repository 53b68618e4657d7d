"""``PortableScript``: the two non-portable lines of a pg_restore 18 script, and never a data row."""

from __future__ import annotations

from kernel.backup.pgtools import PortableScript

SCRIPT = b"""SET statement_timeout = 0;
SET transaction_timeout = 0;
CREATE TABLE public.sites (
    id uuid NOT NULL
);
ALTER TABLE ONLY public.sites ALTER COLUMN id SET (pg_attver=30898768);
ALTER TABLE ONLY public.sites ALTER COLUMN name SET (n_distinct=100, pg_attver=30898768);
ALTER TABLE ONLY public.sites ALTER COLUMN label SET (n_distinct=-1);
COPY public.ingest_idempotency (idempotency_key, event_label) FROM stdin;
k1\tSET transaction_timeout = 0;
ALTER TABLE ONLY public.sites ALTER COLUMN id SET (pg_attver=1);
\\.
SELECT 1;
"""


def _run(target_version: int) -> tuple[bytes, int]:
    script = PortableScript(target_server_version_num=target_version)
    kept = [script(line) for line in SCRIPT.splitlines(keepends=True)]
    return b"".join(line for line in kept if line is not None), script.dropped


def test_for_a_server_before_17_both_lines_go_and_data_rows_stay() -> None:
    out, dropped = _run(150020)
    assert b"SET transaction_timeout = 0;\nCREATE" not in out
    assert b"SET statement_timeout = 0;\nCREATE TABLE public.sites" in out
    assert b"ALTER COLUMN id SET (pg_attver=30898768)" not in out
    assert b"ALTER TABLE ONLY public.sites ALTER COLUMN name SET (n_distinct=100);\n" in out
    assert b"ALTER TABLE ONLY public.sites ALTER COLUMN label SET (n_distinct=-1);\n" in out
    # Inside the COPY block everything is data, however much it looks like a statement.
    assert (
        b"k1\tSET transaction_timeout = 0;\nALTER TABLE ONLY public.sites ALTER COLUMN id SET (pg_attver=1);\n\\.\n"
        in out
    )
    assert out.endswith(b"SELECT 1;\n")
    assert dropped == 3


def test_for_a_server_17_or_newer_transaction_timeout_stays() -> None:
    out, dropped = _run(180006)
    assert out.startswith(b"SET statement_timeout = 0;\nSET transaction_timeout = 0;\nCREATE")
    assert dropped == 2

"""Ingest throughput: HTTP ``POST /api/sync`` against pgbench running the same ledger transaction.

One run, one bench PostgreSQL (``bench.context``), 64 sites with unlimited plans:

1. **Baseline** — ``pgbench -M prepared -c 16`` runs exactly the service's ledger transaction
   (``kernel.ingest.queries.WRITE_EVENTS``: one call of the ``ingest_write`` function, the same
   statement the service sends), with 1 event and with 100 events per transaction.
2. **HTTP** — ``revkernel serve --workers 2`` (uvloop + httptools) driven by ``wrk`` with a Lua
   script that sends unique ``event_id``s over the 64 sites' keys: single events, then 100-event
   batches. ``wrk`` is a Debian package (``apt-get install -y wrk``); the benchmark checks that it
   is installed and reports an error line otherwise. It shares the 2 cores with the server and
   PostgreSQL, which the ratios below include.
3. **Where time goes** — ``/healthz`` through the same stack (the framework's ceiling with no
   database), and CPU seconds per 1,000 requests of the uvicorn workers, the PostgreSQL backends
   and wrk, measured with psutil over the single-event run.

Goals (issue 4): single-event HTTP ≥ 0.5x pgbench TPS with p99 < 25 ms; batch rows/s ≥ 0.5x
pgbench's 100-row transaction.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench.context import BenchContext
from kernel.db import embedded
from kernel.db.connect import Database
from kernel.ingest import queries
from kernel.tenants import create_site

SITES = 64
PGBENCH_CLIENTS = 16
DURATION_S = 12
WRK_CONNECTIONS = 32
WRK_THREADS = 2
BATCH_EVENTS = 100
START_TIMEOUT_S = 60
KEY_PREFIX = "rk_ingest_bench_"

# pgbench expressions standing in for the service's bound parameters (same statement text):
# the events array is built on the server from the same fields the service sends.
_PGBENCH_EVENT = (
    "jsonb_build_object('k', 'pgb-' || :client_id::text || '-' || :n::text || '-' || g, 'v', 2, 'c', NULL,"
    " 'h', repeat('0', 64), 'ec', 'load', 'ea', 'buy', 'el', NULL, 'url', 'https://bench.example/p',"
    " 'fp', NULL, 'at', NULL, 'p', jsonb_build_object('ec', 'load', 'ea', 'buy'))"
)
_PGBENCH_PARAMS = {
    "%(site_id)s": "(lpad(to_hex(:site::int), 32, '0'))",
    "%(now)s": "now()",
    "%(billing_enabled)s": "true",
    "%(request_id)s": "'pgbench'",
    "%(events)s": f"(SELECT jsonb_agg({_PGBENCH_EVENT} ORDER BY g) FROM generate_series(1, {{n}}) g)",
}


def run(ctx: BenchContext) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        return {"error": "wrk is not installed: run `apt-get install -y wrk` (Debian) and rerun `make bench`"}
    settings = ctx.fresh_database()
    db = Database(settings)
    with db.transaction("app") as conn:
        for k in range(1, SITES + 1):
            create_site(
                conn,
                name=f"bench {k}",
                monthly_limit=10**12,
                rate_limit_per_minute=10**7,
                public_id=f"bench-{k:03d}",
                site_id=uuid.UUID(int=k),
                ingest_key=f"{KEY_PREFIX}{k:04d}",
            )
    app_conninfo = db.conninfo("app")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_dir:
        tmp = Path(tmp_dir)
        single_pg = _pgbench(app_conninfo, tmp, events=1)
        batch_pg = _pgbench(app_conninfo, tmp, events=BATCH_EVENTS)
        result: dict[str, Any] = {
            "setup": {
                "sites": SITES,
                "pgbench_clients": PGBENCH_CLIENTS,
                "wrk_connections": WRK_CONNECTIONS,
                "duration_s": DURATION_S,
                "workers": 2,
                "redis": bool(os.environ.get("REDIS_URL")),
            },
            "pgbench_single": single_pg,
            "pgbench_batch100": batch_pg,
        }
        assert settings.database_url is not None
        with _serve(settings.database_url, tmp) as url:
            result["http_healthz"] = _measured(wrk, url + "/healthz", tmp, script=None)
            result["http_single"] = _measured(wrk, url + "/api/sync", tmp, script=_lua(tmp, batch=1))
            result["http_single_8_connections"] = _measured(
                wrk, url + "/api/sync", tmp, script=_lua(tmp, batch=1, tag="c"), connections=8
            )
            result["http_batch100"] = _measured(wrk, url + "/api/sync", tmp, script=_lua(tmp, batch=BATCH_EVENTS))
            result["http_batch100"]["rows_per_s"] = round(result["http_batch100"]["requests_per_s"] * BATCH_EVENTS)
    result["ledger_rows"] = _ledger_rows(app_conninfo)
    single_ratio = result["http_single"]["requests_per_s"] / max(1.0, single_pg["tps"])
    batch_ratio = result["http_batch100"]["rows_per_s"] / max(1.0, batch_pg["rows_per_s"])
    result["ratios"] = {
        "http_single_vs_pgbench": round(single_ratio, 3),
        "http_batch_rows_vs_pgbench_batch_rows": round(batch_ratio, 3),
        "http_single_vs_healthz": round(
            result["http_single"]["requests_per_s"] / max(1.0, result["http_healthz"]["requests_per_s"]), 3
        ),
    }
    # Where the time goes: the CPU of one request, split by process (ms per request).
    single_cpu = result["http_single"]["cpu_ms_per_request"]
    framework_cpu = result["http_healthz"]["cpu_ms_per_request"]["uvicorn"]
    result["profile_ms_per_single_request"] = {
        "uvicorn_framework_floor": framework_cpu,
        "uvicorn_ingest_handler": round(single_cpu["uvicorn"] - framework_cpu, 3),
        "postgres": single_cpu["postgres"],
        "wrk": single_cpu["wrk"],
    }
    result["goals"] = {
        "single_ratio_ge_0_5": single_ratio >= 0.5,
        "single_p99_lt_25ms": result["http_single"]["latency_ms_p99"] < 25,
        "batch_ratio_ge_0_5": batch_ratio >= 0.5,
    }
    return result


def _pgbench_script(events: int) -> str:
    """The service's ``WRITE_EVENTS`` statement with pgbench variables for its parameters."""
    text = queries.WRITE_EVENTS
    for placeholder, value in _PGBENCH_PARAMS.items():
        text = text.replace(placeholder, value.replace("{n}", str(events)))
    assert "%(" not in text, text
    statement = " ".join(text.split())
    return f"\\set site random(1, {SITES})\n\\set n random(1, 1000000000000)\n{statement};\n"


def _pgbench_binary() -> str:
    bundled = embedded.bin_dir() / "pgbench"
    return str(bundled) if bundled.exists() else (shutil.which("pgbench") or "pgbench")


def _pgbench(conninfo: str, tmp: Path, *, events: int) -> dict[str, Any]:
    script = tmp / f"ledger_{events}.sql"
    script.write_text(_pgbench_script(events))
    params = conninfo_to_dict(conninfo)
    env = {**os.environ, "PGHOST": str(params.get("host", "")), "PGUSER": str(params.get("user", ""))}
    if params.get("port"):
        env["PGPORT"] = str(params["port"])
    log_prefix = tmp / f"pgbench_{events}"
    cmd = [
        _pgbench_binary(),
        "-n",
        "-M",
        "prepared",
        "-c",
        str(PGBENCH_CLIENTS),
        "-j",
        "2",
        "-T",
        str(DURATION_S),
        "-f",
        str(script),
        "-l",
        "--log-prefix",
        str(log_prefix),
        str(params.get("dbname")),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=tmp)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stderr.strip()[-500:]}")
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))  # type: ignore[union-attr]
    latencies_us = sorted(
        int(line.split()[2]) for path in tmp.glob(f"{log_prefix.name}.*") for line in path.read_text().splitlines()
    )
    for path in tmp.glob(f"{log_prefix.name}.*"):
        path.unlink()
    return {
        "tps": round(tps, 1),
        "rows_per_s": round(tps * events),
        "latency_ms_p50": _pct(latencies_us, 0.50) / 1000,
        "latency_ms_p99": _pct(latencies_us, 0.99) / 1000,
        "transactions": len(latencies_us),
    }


def _pct(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


class _serve:
    """``revkernel serve --workers 2`` on a free port for the duration of the block."""

    def __init__(self, database_url: str, tmp: Path) -> None:
        self.database_url = database_url
        self.tmp = tmp
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "REVKERNEL_CLOCK"}
        env.update(DATABASE_URL=self.database_url, REVKERNEL_DATA_DIR=str(self.tmp / "serve"))
        self.log = (self.tmp / "serve.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kernel.cli", "serve", "--port", str(port), "--workers", "2"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200 and len(_server_pids()["uvicorn"]) >= 2:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("revkernel serve did not become ready")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        self.log.close()


def _server_pids() -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {"uvicorn": [], "postgres": [], "wrk": []}
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "spawn_main" in cmdline and "kernel" not in cmdline:
            groups["uvicorn"].append(proc.pid)
        elif proc.info["name"] == "postgres":
            groups["postgres"].append(proc.pid)
        elif proc.info["name"] == "wrk":
            groups["wrk"].append(proc.pid)
    return groups


def _measured(
    wrk: str, url: str, tmp: Path, *, script: Path | None, connections: int = WRK_CONNECTIONS
) -> dict[str, Any]:
    """One wrk run, with the CPU seconds per 1,000 requests of uvicorn, PostgreSQL and wrk."""
    before = _cpu(_server_pids())
    result = _wrk(wrk, url, tmp, script=script, on_done=_server_pids, connections=connections)
    after = result.pop("pids")
    # The CPU snapshot is taken 1 s before wrk stops: scale to the measured part of the run.
    measured_requests = max(1, result["requests"] * (DURATION_S - 1) / DURATION_S)
    result["cpu_ms_per_request"] = {
        name: round(_cpu_delta(before, after, name) * 1000 / measured_requests, 3)
        for name in ("uvicorn", "postgres", "wrk")
    }
    return result


def _cpu(groups: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    """CPU seconds (user + system) of every process of each group, by pid."""
    totals: dict[str, dict[int, float]] = {}
    for name, pids in groups.items():
        totals[name] = {}
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            totals[name][pid] = times.user + times.system
    return totals


def _cpu_delta(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], name: str) -> float:
    """CPU used by a group between two snapshots (processes born in between count whole)."""
    return sum(t - before.get(name, {}).get(pid, 0.0) for pid, t in after.get(name, {}).items())


_LUA = """
local keys = {%(keys)s}
local counter = 0
local thread_id = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  thread_id = tid
  math.randomseed(thread_id)
end
function request()
  counter = counter + 1
  local key = keys[math.random(#keys)]
  local headers = {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}
  local body
  if %(batch)d == 1 then
    body = '{"event_id":"%(tag)s' .. thread_id .. '-' .. counter .. '","ec":"load","ea":"buy","url":"https://bench.example/p"}'
  else
    local parts = {}
    for i = 1, %(batch)d do
      parts[i] = '{"event_id":"%(tag)sb' .. thread_id .. '-' .. counter .. '-' .. i .. '","ec":"load","ea":"buy"}'
    end
    body = '{"events":[' .. table.concat(parts, ",") .. ']}'
  end
  return wrk.format("POST", nil, headers, body)
end
"""


def _lua(tmp: Path, *, batch: int, tag: str = "w") -> Path:
    keys = ",".join(f'"{KEY_PREFIX}{k:04d}"' for k in range(1, SITES + 1))
    path = tmp / f"ingest_{batch}_{tag}.lua"
    path.write_text(_LUA % {"keys": keys, "batch": batch, "tag": tag})
    return path


def _wrk(
    wrk: str, url: str, tmp: Path, *, script: Path | None, on_done: Any = None, connections: int = WRK_CONNECTIONS
) -> dict[str, Any]:
    cmd = [wrk, "-t", str(WRK_THREADS), "-c", str(connections), "-d", f"{DURATION_S}s", "--latency", url]
    if script is not None:
        cmd[1:1] = ["-s", str(script)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp)
    pids = None
    if on_done is not None:
        # Snapshot the processes near the end of the run, while wrk and every backend still live.
        time.sleep(DURATION_S - 1)
        pids = on_done()
        pids_cpu = _cpu(pids)
    out, err = process.communicate(timeout=DURATION_S * 3)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed: {err.strip()[-300:]}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    result: dict[str, Any] = {
        "requests": requests,
        "requests_per_s": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), 1),  # type: ignore[union-attr]
        "latency_ms_p50": _wrk_ms(out, "50%"),
        "latency_ms_p99": _wrk_ms(out, "99%"),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
    }
    if pids is not None:
        result["pids"] = pids_cpu
    return result


def _wrk_ms(out: str, label: str) -> float:
    match = re.search(rf"\s{re.escape(label)}\s+([\d.]+)(us|ms|s)", out)
    if match is None:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return round(value / 1000 if unit == "us" else value * 1000 if unit == "s" else value, 3)


def _ledger_rows(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM ingest_idempotency").fetchone()
    return int(row[0]) if row else 0

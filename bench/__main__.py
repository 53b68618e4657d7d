"""`python -m bench [NAME ...]`: run the benchmarks, write reports/bench/*.json, print a summary.

Without names it runs every benchmark except the opt-in ones (``OPT_IN``).
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.context import BenchContext

BENCH_DIR = Path(__file__).parent
OUT_DIR = Path(__file__).resolve().parent.parent / "reports" / "bench"
# Run only when named (`make bench BENCH=scale`): the 50M-row ledger takes hours and tens of GB.
OPT_IN = frozenset({"scale"})


def main(argv: list[str]) -> int:
    every = sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))
    names = argv or [name for name in every if name not in OPT_IN]
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    failures = 0
    with BenchContext.start() as ctx:
        for name in names:
            module = importlib.import_module(f"bench.bench_{name}")
            print(f"== {name}", flush=True)
            started = time.perf_counter()
            try:
                result = module.run(ctx)
            except Exception as exc:  # a failed benchmark is reported, the others still run
                failures += 1
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["_meta"] = {
                "name": name,
                "measured_at": datetime.now(UTC).isoformat(),
                "wall_s": round(time.perf_counter() - started, 2),
                "machine": {"python": platform.python_version(), "cores": _cores()},
            }
            (OUT_DIR / f"{name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
            print(json.dumps({k: v for k, v in result.items() if k != "_meta"}, indent=2, sort_keys=True))
    return 1 if failures else 0


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

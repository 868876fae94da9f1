"""bench/serve_load.py on a tiny budget (2 clients x 2 requests x 4 tokens, int and the simulated board): no
errors, every response equal to its single-request answer, and the servers exit 0 on SIGTERM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serve_load_bench_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_load.py"), "--clients", "2", "--requests", "2",
                          "--max-tokens", "4", "--deadline", "300", "--json"],
                         capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert [r["backend"] for r in rows] == ["int", "board-sim"]
    for r in rows:
        assert r["requests"] == 4 and r["errors"] == 0 and r["mismatches"] == 0 and r["exit_code"] == 0
        assert r["load_tokens"] == 16 and r["tokens_per_s"] > 0 and 0 < r["p50_s"] <= r["p99_s"]


def test_serve_load_bench_refuses_unbounded_runs():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_load.py"), "--clients", "1000"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "--clients" in out.stderr

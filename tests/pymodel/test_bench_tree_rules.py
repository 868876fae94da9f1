"""bench/speculative.py --tree-rules on a tiny budget: the JSON the docs table is rendered from, every rule at every k
in both domains and decoding modes, and the greedy replay checked against real speculative decoding."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tree_rules_bench_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "speculative.py"), "--tree-rules", "--prompts", "2",
                          "--prompt-tokens", "8", "--new-tokens", "10", "--check", "1", "--json"],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["ks"] == [2, 3, 4, 8] and set(res["packages"]) == {"amaranth", "numpy", "torch", "tqdm"}
    combos = {(r["domain"], r["decoding"], r["rule"]) for r in res["rows"]}
    assert len(combos) == len(res["rows"]) == 12
    for r in res["rows"]:
        for k, m in r["k"].items():
            assert 1.0 <= m["tokens_per_step"] <= int(k) and m["emitted"] == 2 * 9
    assert [c["rule"] for c in res["checks"]] == ["template", "count-guided"]

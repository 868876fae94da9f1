"""bench/sim_speculative.py on a tiny budget: one held-out prompt, plain and trigram-drafted generation on the
simulated board (drafts on the host, or the on-chip loop), bit-exact, the same tokens, and the JSON the docs are
rendered from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.sim
@pytest.mark.parametrize("onchip", [False, True], ids=["host-drafts", "onchip"])
def test_sim_speculative_bench_smoke(onchip):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "sim_speculative.py"), "--prompts", "1",
                          "--prompt-tokens", "4", "--new-tokens", "6", "--json"] + (["--onchip"] if onchip else []),
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["prompts"] == 1 and res["k"] == 4 and res["write_logits"] is False and res["onchip"] is onchip
    row = res["rows"][0]
    assert row["plain_decode_passes"] == 5 and row["spec_decode_passes"] <= 5
    assert res["speedup_decode"] == row["plain_decode_cycles"] / row["spec_decode_cycles"] > 0
    assert 1.0 <= res["tokens_per_pass"] <= 4.0

"""bench/gpu_train.py under the Triton interpreter on a tiny model (`--tiny`): the script runs end to end and
reports tokens/s, MFU ("n/a" on CPU), the hardware-exact step and a torch.profiler table. The GPU run itself
(370M/1.3B shapes) is the benchmark; this only checks the script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(configs: list[str]) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_train.py"), "--tiny", "--profile", "--json",
                          "--configs", *configs], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_gpu_train_bench_tiny():
    res = _run(["naive fp32", "hardware fp32"])
    rows = res["presets"]["tiny"]
    assert set(rows) == {"naive fp32", "hardware fp32"}
    for r in rows.values():
        assert r["tokens_per_s"] > 0 and r["mfu"] == "n/a" and "Self CPU" in r["profile"]
    assert "numerics hardware" in rows["hardware fp32"]["kernels"]


@pytest.mark.slow
def test_gpu_train_bench_tiny_triton():
    rows = _run(["triton bf16"])["presets"]["tiny"]
    assert rows["triton bf16"]["tokens_per_s"] > 0

"""`mmfree energy` end to end with the backends available here; absent backends give one row saying why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"backend", "device", "tokens_per_s", "watts", "joules_per_token", "joules_per_token_above_idle", "boundary",
        "method", "available", "reason"}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mmfree", "energy", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def test_energy_json_all_backends(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("def \nimport os\n")
    png = tmp_path / "e.png"
    out = _cli("--model", "default", "--tokens", "3", "--prompts", str(prompts), "--json", "--plot", str(png))
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["backend"] for r in rows] == ["cpu", "gpu", "fpga-model", "board"]
    for r in rows:
        assert KEYS <= set(r)
        if not r["available"]:
            assert r["reason"]
    cpu = rows[0]
    assert cpu["tokens_per_s"] > 0                     # measured even when RAPL is not readable
    if not cpu["available"]:
        assert cpu["joules_per_token"] is None and "energy unavailable" in cpu["reason"]
    fm = rows[2]
    assert fm["available"] and fm["joules_per_token"] > 0 and "modeled" in fm["method"]
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_energy_table_and_shapes():
    out = _cli("--model", "1.3B", "--backends", "fpga-model,cpu", "--board", "kv260")
    assert out.returncode == 0, out.stderr
    assert "fpga-model" in out.stdout and "unavailable" in out.stdout      # cpu needs weights, not a shape


def test_energy_bad_backend():
    out = _cli("--backends", "cpu,tpu")
    assert out.returncode == 1 and "tpu" in out.stderr


def test_energy_speculative_fpga_model_row():
    """--k/--accept-len: the modeled row of a k-token build emitting accept-len tokens per pass: more tokens/s
    and fewer J/token than plain decode, labeled with the assumption; a bad accept length is refused."""
    plain = json.loads(_cli("--model", "1.3B", "--backends", "fpga-model", "--board", "kv260", "--json").stdout)[0]
    out = _cli("--model", "1.3B", "--backends", "fpga-model", "--board", "kv260", "--k", "2", "--accept-len", "1.75",
               "--json")
    assert out.returncode == 0, out.stderr
    spec = json.loads(out.stdout)[0]
    assert spec["available"] and spec["tokens_per_s"] > 1.5 * plain["tokens_per_s"]
    assert spec["joules_per_token"] < plain["joules_per_token"] and "k = 2" in spec["method"]
    bad = _cli("--model", "1.3B", "--backends", "fpga-model", "--board", "kv260", "--k", "2", "--accept-len", "3",
               "--json")
    assert "accept-len" in bad.stdout + bad.stderr

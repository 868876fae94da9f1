"""`mmfree energy` end to end with the backends available here; absent backends give one row saying why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


# ======================================================================================================
# --compare (issue 25): one table over CPU, GPU, every board and the published anchors
# ======================================================================================================
METHODS = {"measured", "modeled", "published", "unavailable"}


def _check_rows(rows, boards=("kv260", "zcu104", "pynq-z2")):
    from mmfree.boards.cli_energy import COMPARE_KEYS

    assert [r["backend"] for r in rows[:2]] == ["cpu", "gpu"]
    assert [r["backend"] for r in rows[2:2 + 2 * len(boards)]] == ["fpga-model"] * len(boards) + ["board"] * len(boards)
    assert {r["backend"] for r in rows[2 + 2 * len(boards):]} == {"cpu-published", "gpu-published", "fpga-published"}
    for r in rows:
        assert set(COMPARE_KEYS) <= set(r) and r["method"] in METHODS, r
        if r["method"] == "unavailable":
            assert r["reason"] and r["joules_per_token"] is None, r
        if r["method"] == "published":
            assert r["source"]
        if r["method"] == "measured":
            assert r["joules_per_token"] > 0 and r["tokens_per_s"] > 0
    assert all(r["method"] == "modeled" and r["joules_per_token"] > 0 for r in rows[2:2 + len(boards)])
    cpu = rows[0]
    assert cpu["tokens_per_s"] > 0 and "fast CPU decode" in cpu["detail"]       # measured even without power
    return cpu


def test_compare_json_and_plot(tmp_path):
    png = tmp_path / "cmp.png"
    out = _cli("--compare", "--model", "default", "--tokens", "2", "--idle-s", "0", "--json", "--plot", str(png))
    assert out.returncode == 0, out.stderr
    cpu = _check_rows(json.loads(out.stdout))
    if cpu["method"] == "unavailable":                # no RAPL here: power unavailable with the reason
        assert "RAPL" in cpu["reason"] or "powercap" in cpu["reason"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_compare_shape_uses_random_weights_and_says_so():
    out = _cli("--compare", "--model", "370M", "--tokens", "1", "--idle-s", "0", "--boards", "kv260", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    cpu = _check_rows(rows, boards=("kv260",))
    assert "random weights of the 370M shape" in cpu["weights"] and cpu["model"] == "370M"


def _meter_log(path, start, stop, watts=20.0, step=0.25):
    n = int((stop - start) / step) + 1
    path.write_text("timestamp,watts\n" + "".join(f"{start + i * step:.3f},{watts}\n" for i in range(n)))
    return path


def test_compare_with_meter_log_measures_the_cpu_row(tmp_path):
    """A meter log covering the run: the CPU row is measured (gross and above-idle J/token from the same log)."""
    import time

    now = time.time()
    log = _meter_log(tmp_path / "meter.csv", now - 10, now + 600)
    out = _cli("--compare", "--model", "default", "--tokens", "2", "--idle-s", "0.3", "--boards", "kv260",
               "--meter", str(log), "--json")
    assert out.returncode == 0, out.stderr
    cpu = _check_rows(json.loads(out.stdout), boards=("kv260",))
    assert cpu["method"] == "measured" and "meter" in cpu["boundary"]
    assert cpu["watts"] == pytest.approx(20.0) and cpu["idle_watts"] == pytest.approx(20.0)
    assert cpu["joules_per_token"] == pytest.approx(20.0 / cpu["tokens_per_s"], rel=1e-6)
    assert cpu["joules_per_token_above_idle"] == pytest.approx(0.0, abs=1e-9)


def test_compare_meter_log_not_covering_the_run_is_unavailable(tmp_path):
    import time

    now = time.time()
    log = _meter_log(tmp_path / "old.csv", now - 600, now - 300)         # logged before the run: no overlap
    out = _cli("--compare", "--model", "default", "--tokens", "1", "--idle-s", "0", "--boards", "kv260",
               "--meter", str(log), "--json")
    assert out.returncode == 0, out.stderr
    cpu = json.loads(out.stdout)[0]
    assert cpu["method"] == "unavailable" and "not covered" in cpu["reason"] and cpu["tokens_per_s"] > 0


@pytest.mark.parametrize("args,why", [(["--threads", "0"], "--threads"), (["--idle-s", "nan"], "--idle-s"),
                                      (["--idle-w", "-1"], "--idle-w"), (["--meter", "/nonexistent.csv"], "--meter"),
                                      (["--boards", ","], "--boards"), (["--meter-offset", "inf"], "--meter-offset")])
def test_compare_bad_inputs(args, why):
    out = _cli("--compare", "--model", "default", *args)
    # nan / inf are usage errors (exit 2, mmfree.cli.check_finite); the other bad values are errors (exit 1)
    code = 2 if args[-1] in ("nan", "inf") else 1
    assert out.returncode == code and why in out.stderr and "Traceback" not in out.stderr


def test_compare_bad_meter_file(tmp_path):
    """A malformed meter log is refused before any work, naming the line."""
    p = tmp_path / "m.csv"
    p.write_text("1,2\n1,3\n")
    out = _cli("--compare", "--model", "default", "--tokens", "1", "--idle-s", "0", "--boards", "kv260", "--meter",
               str(p), "--json")
    assert out.returncode == 1 and "line 2" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_compare_1p3b_acceptance():
    """The issue's acceptance command: one row per backend/board, the CPU row a measured tok/s (fast path)."""
    out = _cli("--compare", "--model", "1.3B", "--tokens", "2", "--idle-s", "0", "--json")
    assert out.returncode == 0, out.stderr
    cpu = _check_rows(json.loads(out.stdout))
    assert "1.3B" in cpu["weights"]


def test_energy_bad_model_flags_are_errors():
    """--clock-mhz <= 0 and --k < 1 are one clear error (exit 1), not an 'unavailable' row with exit 0."""
    for flags, field in ((("--clock-mhz", "-1"), "--clock-mhz"),
                         (("--k", "0"), "--k")):
        out = _cli("--model", "370M", "--backends", "fpga-model", "--json", *flags)
        assert out.returncode == 1, (flags, out.stdout)
        assert f"mmfree energy: error: {field}" in out.stderr and "Traceback" not in out.stderr

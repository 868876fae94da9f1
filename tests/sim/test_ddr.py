"""The DDR model from published figures (mmfree.sim.ddr): per-board numbers, the simulated DDR's plusargs, bad
board files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmfree import MmfreeError
from mmfree.boardfile import load_board
from mmfree.sim import ddr as D

ROOT = Path(__file__).resolve().parents[2]


def test_kv260_and_pynq_z2_models():
    kv = D.ddr_model(load_board("kv260"))
    assert kv.device_gbit == 8 and kv.trfc_ns == 350.0 and kv.trefi_ns == 7800.0
    assert kv.aggregate_bytes_per_s == pytest.approx(16.0e9)              # the BitNet-2B port's head stream
    assert kv.refresh_fraction == pytest.approx(350 / 7800)
    z2 = D.ddr_model(load_board("pynq-z2"))
    assert z2.device_gbit == 4 and z2.read_efficiency == 0.97
    assert z2.aggregate_bytes_per_s == pytest.approx(0.97 * 2.1e9)
    assert D.ddr_model(load_board("zcu104")).device_gbit == 4
    assert all(src for _, src in D.EVIDENCE.values())


def test_sim_plusargs_encode_the_model():
    """The plusargs give the same average rate as the model: refresh stalls + the rate between them."""
    kv = D.ddr_model(load_board("kv260"))
    plus = D.sim_plusargs(kv, 250e6, 16, 0.9, 24, seed=7)
    v = {a.split("=")[0]: int(a.split("=")[1]) for a in plus}
    assert v["+MMFREE_REF_PERIOD"] == 1950 and v["+MMFREE_REF_CYCLES"] == 88       # 7.8 us, 350 ns at 250 MHz
    between = v["+MMFREE_DDR_NUM"] / v["+MMFREE_DDR_DEN"]
    avg_bps = between * (1 - 88 / 1950) * 16 * 250e6
    assert avg_bps == pytest.approx(kv.aggregate_bytes_per_s, rel=0.01)
    assert v["+MMFREE_PORT_NUM"] / v["+MMFREE_PORT_DEN"] == pytest.approx(0.9)
    assert v["+MMFREE_RD_JITTER"] == 12 and v["+MMFREE_DDR_SEED"] == 7


@pytest.mark.parametrize("field,value,match", [("ps", "versal", "field 'ps'"), ("ddr.type", "LPDDR4", "ddr.type")])
def test_unknown_ps_or_ddr_type_is_refused(tmp_path, field, value, match):
    """A board file whose PS or DDR type has no published figures here: one clear error, from the model and from
    `mmfree perf` (exit 1, no traceback)."""
    import subprocess
    import sys

    d = json.loads((ROOT / "boards" / "kv260" / "board.json").read_text())
    if field == "ps":
        d["ps"] = value
    else:
        d["ddr"]["type"] = value
    f = tmp_path / "b.json"
    f.write_text(json.dumps(d))
    if field == "ps":                           # the board-file loader refuses an unknown PS itself
        with pytest.raises(MmfreeError, match=match):
            load_board(f"custom:{f}")
        return
    b = load_board(f"custom:{f}")
    with pytest.raises(MmfreeError, match=match):
        D.ddr_model(b)
    out = subprocess.run([sys.executable, "-m", "mmfree", "perf", "--model", "370M", "--board", f"custom:{f}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "mmfree perf: error:" in out.stderr and "Traceback" not in out.stderr


def test_fixed_order_rate():
    """The simulated controller's fixed-order share: the equal share / port cap where the aggregate does not bind
    (1 and 4 KV260 ports: 0.9); where it binds, the schedule's last port sets the rate (6 KV260 ports: ports 0-3 at
    0.9 for 1/0.9 cycles, port 4 at the 0.5875 left, port 5 at nothing, then both at 0.9: 2/0.9 cycles per unit,
    0.45); a one-port aggregate cap binds as is; bad inputs are one clear error."""
    agg = 67 / 16                               # the KV260 plusargs' aggregate between refreshes, beats per cycle
    assert D.fixed_order_rate(0.9, agg, 1) == pytest.approx(0.9)
    assert D.fixed_order_rate(0.9, agg, 4) == pytest.approx(0.9)
    assert D.fixed_order_rate(0.9, agg, 6) == pytest.approx(0.45)
    assert D.fixed_order_rate(0.9, agg, 6) < agg / 6
    assert D.fixed_order_rate(0.9, 0.5, 1) == pytest.approx(0.5)
    for bad in ((0.0, agg, 6), (0.9, -1.0, 6), (0.9, agg, 0)):
        with pytest.raises(MmfreeError, match="fixed_order_rate needs positive rates and ports >= 1"):
            D.fixed_order_rate(*bad)


def test_python_memory_pause_patterns():
    """The Python memory's pause patterns give the HDL model's average rate (refresh + port rate) and are seeded."""
    import itertools

    kv = D.ddr_model(load_board("kv260"))
    s = D.parse_plusargs(D.sim_plusargs(kv, 250e6, 16, 0.9, 24, seed=3))
    r = list(itertools.islice(D.r_pauses(s), 19500))            # 10 refresh periods
    assert 1 - sum(r) / len(r) == pytest.approx(0.9 * (1 - 88 / 1950), abs=0.002)
    assert all(r[:88]) and all(r[1950:1950 + 88])                # refresh: no beat
    a = list(itertools.islice(D.ar_pauses(s), 1000))
    assert a == list(itertools.islice(D.ar_pauses(s), 1000)) and 0 < sum(a) < 1000
    with pytest.raises(MmfreeError, match="MMFREE_"):
        D.parse_plusargs(["+MMFREE_DDR_NUM=x"])


def test_random_backpressure_plusargs_and_pauses():
    """The random back-pressure on reads (a bus rate < 1): plusargs as n/d with the seed; the Python memory's R
    pause pattern gives the rate on average, seeded (same seed, same pattern; another seed, another); bad rates are
    refused with one error naming the rate."""
    import itertools

    assert D.random_plusargs(0.5, seed=3) == ["+MMFREE_BUS_RATE_NUM=1", "+MMFREE_BUS_RATE_DEN=2", "+MMFREE_DDR_SEED=3"]
    assert D.random_plusargs(0.75)[:2] == ["+MMFREE_BUS_RATE_NUM=3", "+MMFREE_BUS_RATE_DEN=4"]
    s = D.parse_plusargs(D.random_plusargs(0.75, seed=5))
    r = list(itertools.islice(D.r_pauses(s), 20000))
    assert 1 - sum(r) / len(r) == pytest.approx(0.75, abs=0.01)
    assert r == list(itertools.islice(D.r_pauses(s), 20000))
    assert r != list(itertools.islice(D.r_pauses(dict(s, DDR_SEED=6)), 20000))
    assert not any(itertools.islice(D.r_pauses(D.parse_plusargs(D.random_plusargs(1.0))), 1000))   # rate 1: none
    for bad in (0, 0.0, -0.5, 1.5, float("nan"), "0.5", True, 0.001):
        with pytest.raises(MmfreeError, match="random back-pressure bus rate"):
            D.random_plusargs(bad)


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("memory", ["hdl", "python"])
def test_realistic_memory_is_bit_exact_and_slower(memory):
    """Generation on the RTL with the realistic DDR (KV260 figures) stays bit-exact against IntModel, and takes
    more cycles than on the ideal memory (refresh, 0.9 port rate, longer latency)."""
    import sys

    from mmfree.sim.accel import simulate_generation

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import perf_validate as V
    finally:
        sys.path.pop(0)
    model = V.export_config("d64")
    plus = V.realistic("default", 24)[0]
    real = simulate_generation(model, [1, 2], 2, progress=False, memory=memory, ddr_plusargs=plus)
    assert real["bit_exact"], real["problems"]
    if memory == "hdl":
        ideal = simulate_generation(model, [1, 2], 2, progress=False, memory=memory)
        assert ideal["bit_exact"] and real["tokens"] == ideal["tokens"]
        assert real["cycles"] > ideal["cycles"]


@pytest.mark.sim
@pytest.mark.parametrize("hw_name", ["default", "pynqz2"])
def test_random_backpressure_is_bit_exact_and_slower(hw_name):
    """Generation on the RTL with the simulated DDR's random back-pressure (every read port at rate 0.5) stays
    bit-exact against IntModel with the ideal memory's tokens, and takes more cycles."""
    import sys

    from mmfree.sim.accel import simulate_generation

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import perf_validate as V
    finally:
        sys.path.pop(0)
    model, hw = V.export_config("d64"), V.hw_for(hw_name)
    rnd = simulate_generation(model, [1, 2], 2, progress=False, hw=hw, ddr_plusargs=D.random_plusargs(0.5))
    assert rnd["bit_exact"], rnd["problems"]
    ideal = simulate_generation(model, [1, 2], 2, progress=False, hw=hw)
    assert ideal["bit_exact"] and rnd["tokens"] == ideal["tokens"]
    assert rnd["cycles"] > ideal["cycles"]

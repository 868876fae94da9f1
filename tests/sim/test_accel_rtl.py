"""The whole accelerator RTL under Verilator + cocotb, driven through its AXI4-Lite CSRs with DDR in the
HDL memory model (or cocotbext-axi's AxiRam with random pauses), every result compared exactly with
IntModel. One Verilator build (cached under build/verilator) serves every test here."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from mmfree.rtl.compiler import compile_model
from tests.sim import helpers as H

pytestmark = pytest.mark.sim


def _script(im, steps, memory="hdl", pause_seed=None, rd_latency=24, hw=None):
    """Run scripted passes on the RTL (the default build, or ``hw``): (passes with their arrays, raw result)."""
    from mmfree.sim.accel import DEFAULT_HW, run_job

    with tempfile.TemporaryDirectory(prefix="mmfree-rtl-test-") as td:
        td = Path(td)
        compile_model(im).save(td / "compiled")
        job = {"kind": "script", "compiled": str(td / "compiled"), "steps": steps, "max_wait_cycles": 5_000_000}
        if pause_seed is not None:
            job["pause_seed"] = pause_seed
        res = run_job(job, hw=hw or DEFAULT_HW, memory=memory, rd_latency=rd_latency, workdir=td / "run")
    out = []
    arrays = res.get("arrays", {})
    for i, p in enumerate(res["passes"]):
        q = dict(p)
        for key in ("logits", "states", "argmax"):
            if f"{key}{i}" in arrays:
                q[key] = arrays[f"{key}{i}"]
        out.append(q)
    return out, res


def _chains_and_trees_exact(hw, shapes, seed: int) -> None:
    """Every shape's chain and tree steps (tests/sim/helpers.py) on the build ``hw``, each replayed exactly
    against IntModel."""
    for shape in shapes:
        im = H.load(shape)
        steps = H.chain_and_tree_steps(im, np.random.default_rng(seed))
        results, _ = _script(im, steps, hw=hw)
        H.replay_steps(im, steps, results)


@pytest.mark.parametrize("shape", sorted(H.SHAPES))
def test_rtl_bit_exact_chains_and_trees(shape):
    """d in {64, 96, 200}, 1-3 layers, odd vocabularies; k = 1 and 4; chains and a tree; random start
    states; committed prefixes."""
    im = H.load(shape)
    steps = H.chain_and_tree_steps(im, np.random.default_rng(7))
    results, _ = _script(im, steps)
    H.replay_steps(im, steps, results)


def test_rtl_generation_matches_reference():
    """`simulate_generation` on a random model: greedy tokens, every pass bit-exact, k = 1 and k = 4."""
    from mmfree.sim.accel import simulate_generation

    path = H.export_random("d96")
    im = H.load("d96")
    prompt = [3, 7, 3, 9]
    state, logits = im.prefill(im.initial_state(), prompt)
    ref = []
    for _ in range(6):
        ref.append(int(np.argmax(logits)))
        state, logits = im.step(state, ref[-1])
    for k in (1, 4):
        r = simulate_generation(str(path), prompt, 6, progress=False, k=k)
        assert r["bit_exact"], r["problems"]
        assert r["tokens"] == ref
        for key in ("cycles", "cycles_per_token", "ddr_bytes", "stall_cycles", "roofline_fraction"):
            assert r[key] is not None and r[key] >= 0
        assert 0 < r["roofline_fraction"] <= 1


def test_rtl_error_codes_and_recovery():
    """Bad inputs give the emulator's error code and detail, nothing hangs, the next pass is exact."""
    from mmfree.sim.accel import DEFAULT_HW, SIM_MEM_BASE, SIM_MEM_BYTES

    im = H.load("d64")
    c = compile_model(im)
    cases = H.error_steps(c, DEFAULT_HW, (SIM_MEM_BASE, SIM_MEM_BASE + SIM_MEM_BYTES))
    results, _ = _script(im, [st for st, _ in cases])
    for (st, exp), res in zip(cases, results):
        if exp is None:
            assert "error" not in res, (st, res)
            H.replay_steps(im, [st], [res])
        else:
            assert (res.get("error"), res.get("detail")) == exp, (st, res)


def test_rtl_axi_protocol_with_random_pauses():
    """cocotbext-axi AxiRam with random pauses on every AXI channel (back-pressure and read latency) checks
    the protocol (4 KiB rule, burst sizes) while the results stay bit-exact."""
    im = H.load("d64")
    rng = np.random.default_rng(3)
    L, d, V = im.dims.layers, im.dims.d, im.dims.vocab
    steps = [{"tokens": [5, 9], "h0": rng.integers(-(1 << 18), 1 << 18, size=(L, d)).tolist()},
             {"tokens": [int(t) for t in rng.integers(0, V, 3)], "parents": [-1, 0, 0]}]
    results, _ = _script(im, steps, memory="python", pause_seed=11)
    H.replay_steps(im, steps, results)


def test_rtl_latency_does_not_change_results():
    im = H.load("d64")
    steps = [{"tokens": [4, 2], "h0": np.zeros((im.dims.layers, im.dims.d), dtype=np.int64).tolist()}]
    fast, _ = _script(im, steps, rd_latency=2)
    slow, _ = _script(im, steps, rd_latency=120)
    H.replay_steps(im, steps, fast)
    H.replay_steps(im, steps, slow)
    assert slow[0]["cycles"] > fast[0]["cycles"]


@pytest.mark.slow
def test_rtl_64bit_bus_bit_exact():
    """A 64-bit AXI build shaped like the PYNQ-Z2's (two weight ports, one engine each; its own Verilator
    build: slow the first time) on two shapes, k up to 2."""
    from mmfree.rtl.compiler import HwConfig

    hw = HwConfig(bus_bytes=8, max_tokens=2, max_width=1024, weight_ports=2, matvec_engines=1)
    for shape in ("d64", "d200"):
        im = H.load(shape)
        L, d, V = im.dims.layers, im.dims.d, im.dims.vocab
        rng = np.random.default_rng(5)
        steps = [{"tokens": [3, 8], "h0": rng.integers(-(1 << 18), 1 << 18, size=(L, d)).tolist()},
                 {"tokens": [V - 1, 0], "parents": [-1, -1]}, {"tokens": [7]}]
        results, _ = _script(im, steps, hw=hw)
        H.replay_steps(im, steps, results)


@pytest.mark.slow
def test_rtl_pipelined_units_bit_exact():
    """The default build with the pipelined vector units (``HwConfig.pipelined_units``, its own Verilator build,
    shared with ``bench/perf_validate.py --hw pipelined``) on the default model and on d96: chains and a tree, k = 1
    and 4, every logit, state and argmax bit-exact with IntModel, and the added latency shows in CYCLES."""
    import dataclasses

    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.sim.accel import DEFAULT_HW

    piped = dataclasses.replace(DEFAULT_HW, pipelined_units=True)
    for im in (open_int_model("default")[0], H.load("d96")):
        steps = H.chain_and_tree_steps(im, np.random.default_rng(13))
        results, _ = _script(im, steps, hw=piped)
        H.replay_steps(im, steps, results)
    plain, _ = _script(im, steps[:1])
    assert results[0]["cycles"] > plain[0]["cycles"]


def test_rtl_weight_ports_bit_exact():
    """The four-weight-port build (sim.accel.PORTS4_HW, its own Verilator build, shared with the perf
    validation): port p reads rows p, p + 4, ... of every matrix into its own two engines. Every shape (d
    64/96/200: row counts that are not a multiple of the 8 engines, odd vocabularies), chains and trees, k up
    to 4, bit-exact."""
    from mmfree.sim.accel import PORTS4_HW

    _chains_and_trees_exact(PORTS4_HW, sorted(H.SHAPES), seed=11)


def test_rtl_six_weight_ports_bit_exact():
    """The six-weight-port build (sim.accel.PORTS6_HW: every HP and HPC port of a ZynqMP, 12 engines; its own
    Verilator build, shared with the perf validation): port p reads rows p, p + 6, ... (row r is way r mod 12), row
    counts from a constant division. Every shape (rows not a multiple of 6: d = 64 / 200, vocabularies 97 / 101 /
    333; d64v163's last head chunk of 3 rows, fewer than the ports: ports 3..5 have no row of it), chains and trees,
    k up to 4, bit-exact against IntModel."""
    from mmfree.sim.accel import PORTS6_HW

    _chains_and_trees_exact(PORTS6_HW, sorted(H.SHAPES) + ["d64v163"], seed=13)


def test_rtl_six_weight_ports_default_model():
    """The six-port build (PORTS6_HW, the build above) generating on the default model (d 240, 4 layers, vocabulary
    4096: head chunks of 640 rows, not multiples of 6 or of the 12 ways) at k = 1 and k = 4: every pass bit-exact
    against IntModel, the tokens IntModel's greedy ones."""
    from mmfree.sim.accel import PORTS6_HW, simulate_generation

    r1 = simulate_generation("default", [1, 2], 3, progress=False, k=1, hw=PORTS6_HW)
    assert r1["bit_exact"], r1["problems"]
    r4 = simulate_generation("default", [1, 2], 3, progress=False, k=4, hw=PORTS6_HW)
    assert r4["bit_exact"], r4["problems"]
    assert r4["tokens"] == r1["tokens"] and len(r1["tokens"]) == 3


@pytest.mark.slow
def test_rtl_vector_lanes_bit_exact():
    """The default build with 4 vector lanes (sim.accel.LANES4_HW, its own Verilator build, shared with the perf
    validation's ``--hw lanes4``): QSTATS / QCODES on 4 elements per cycle out of the banked buffers, the
    other engines' element ports on the same banks. Every shape, chains and trees, k up to 4, bit-exact."""
    from mmfree.sim.accel import LANES4_HW

    _chains_and_trees_exact(LANES4_HW, sorted(H.SHAPES), seed=13)


def test_rtl_six_ports_one_engine_bit_exact():
    """Six weight ports x ONE engine each (sim.accel.PORTS6E1_HW, 6 ways: row r is way r mod 6, so each port's rows
    all go to its single way; its own Verilator build, shared with the perf validation). The small shapes (rows not a
    multiple of 6; d64v163's last head chunk of 3 rows, fewer than the ports) with chains and a tree at k = 1 and 3,
    then the default model (d 240, 4 layers, vocabulary 4096: head chunks of 640 rows, not a multiple of 6) with a
    k = 1 pass, a k = 3 chain and a k = 3 tree (root with two children: two drafts verified side by side) from random
    states, and a committed k = 3 chain: every logit, argmax and state bit-exact against IntModel."""
    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.sim.accel import PORTS6E1_HW

    for shape in sorted(H.SHAPES) + ["d64v163"]:
        im = H.load(shape)
        steps = H.chain_and_tree_steps(im, np.random.default_rng(17), k_values=(1, 3))
        results, _ = _script(im, steps, hw=PORTS6E1_HW)
        H.replay_steps(im, steps, results)
    im, _ = open_int_model("default")
    rng = np.random.default_rng(19)
    L, d, V = im.dims.layers, im.dims.d, im.dims.vocab
    steps = [{"tokens": [int(rng.integers(0, V))], "h0": rng.integers(-(1 << 18), 1 << 18, size=(L, d)).tolist()},
             {"tokens": [int(t) for t in rng.integers(0, V, size=3)], "commit": 2,
              "h0": rng.integers(-(1 << 18), 1 << 18, size=(L, d)).tolist()},
             {"tokens": [int(t) for t in rng.integers(0, V, size=3)], "parents": [-1, 0, 0], "commit": 0},
             {"tokens": [5, V - 1, 0]}]
    results, _ = _script(im, steps, hw=PORTS6E1_HW)
    H.replay_steps(im, steps, results)


def test_rtl_sim_cli_weight_ports(tmp_path):
    """`mmfree sim --weight-ports 4` runs the four-port build (shared with the test above) end to end: bit-exact
    generation, the build reported in the JSON, the bandwidth counted over every port."""
    import json
    import subprocess
    import sys

    path = H.export_random("d96")
    out = subprocess.run([sys.executable, "-m", "mmfree", "sim", "--model", str(path), "--prompt-ids", "3,7",
                          "--tokens", "3", "--weight-ports", "4", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["bit_exact"] is True and len(r["tokens"]) == 3
    assert r["hw"]["weight_ports"] == 4 and r["bus_bytes_per_cycle"] == 64


def test_rtl_wait_times_out_with_a_clear_message():
    """Every wait is bounded: a pass that cannot finish in the cycle budget ends the run with the host's
    time-out message (STATUS and PC), not a hang."""
    from mmfree import MmfreeError
    from mmfree.sim.accel import run_job

    im = H.load("d64")
    with tempfile.TemporaryDirectory(prefix="mmfree-rtl-timeout-") as td:
        td = Path(td)
        compile_model(im).save(td / "compiled")
        job = {"kind": "script", "compiled": str(td / "compiled"), "steps": [{"tokens": [1]}], "max_wait_cycles": 300}
        with pytest.raises(MmfreeError, match=r"did not finish within .*STATUS 0x\w+, PC 0x\w+"):
            run_job(job, workdir=td / "run")


def test_rtl_sim_cli_json_is_one_object():
    """`mmfree sim --json` on a random export: stdout is exactly one JSON object (the simulator's own output
    goes to stderr), bit-exact, exit status 0."""
    import json
    import subprocess
    import sys

    path = H.export_random("d64")
    out = subprocess.run([sys.executable, "-m", "mmfree", "sim", "--model", str(path), "--prompt-ids", "3,1",
                          "--tokens", "3", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["bit_exact"] is True and len(res["tokens"]) == 3
    assert res["cycles_per_token"] > 0 and 0 < res["roofline_fraction"] <= 1


@pytest.mark.slow
def test_rtl_waves_on_request():
    """``waves=True`` (``mmfree sim --waves``): a traced build writes a waveform file, FST or, where Verilator's
    FST writer cannot compile (no lz4 headers), VCD; the run is still compared with IntModel."""
    from mmfree.sim.accel import simulate_generation
    from mmfree.sim.runner import wave_format

    res = simulate_generation(str(H.export_random("d64")), [3, 7], 1, progress=False, waves=True)
    assert res["bit_exact"], res.get("problems")
    wave = Path(res["waves"])
    assert wave.suffix == "." + wave_format() and wave.stat().st_size > 10_000
    wave.unlink()

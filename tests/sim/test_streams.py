"""Multi-stream passes on the accelerator: the forest program (compile_model(streams=B)), the ISA emulator and the
RTL under Verilator, every stream bit-exact against plain greedy decoding and every pass against IntModel."""

from __future__ import annotations

import numpy as np
import pytest

from mmfree import MmfreeError
from mmfree.host.accel import AccelHost, AccelRunError
from mmfree.host.generate import generate_streams
from mmfree.pymodel.generate import generate
from mmfree.pymodel.intmodel import IntBackend, forest_of
from mmfree.rtl import isa as I
from mmfree.rtl import regmap as RM
from mmfree.rtl.compiler import HwConfig, compile_model
from mmfree.sim.accel import replay_forest
from mmfree.sim.emulator import EmulatedBoard
from tests.sim import helpers as H

HW = HwConfig(bus_bytes=16, max_tokens=4, max_width=1024)


def _plain(im, prompt, n):
    return generate(IntBackend(im), prompt, n).tokens


def test_forest_program_loads_every_stream():
    im = H.load("d64")
    one, three = compile_model(im), compile_model(im, streams=3)
    assert one.streams == 1 and three.streams == 3
    assert I.Header.decode(three.program).streams == 3
    hroot = [i for i in three.instrs if i.op == "LOAD" and i["dst"] == I.LD_HROOT]
    assert len(hroot) == 2 * im.dims.layers and {i["stream"] for i in hroot} == {1, 2}
    assert [i for i in three.instrs if not (i.op == "LOAD" and i["dst"] == I.LD_HROOT)] == one.instrs
    assert all(I.Instr.decode(i.encode()) == i for i in hroot)
    with pytest.raises(MmfreeError, match="streams"):
        compile_model(im, streams=0)


@pytest.mark.parametrize("shape", ["d64", "d96"])
def test_emulator_forest_pass_equals_intmodel(shape):
    im = H.load(shape)
    rng = np.random.default_rng(3)
    L, d = im.dims.layers, im.dims.d
    host = AccelHost(EmulatedBoard(HW), compile_model(im, streams=3))
    starts = [rng.integers(-(1 << 20), 1 << 20, size=(L, d)) for _ in range(3)]
    toks, parents, _ = forest_of([([5, 6], [-1, 0]), ([7], None), ([1], None)])
    res = host.run_forest(toks, parents, starts)
    hs, logits = im.forward(np.stack(starts), toks, parents=parents)
    np.testing.assert_array_equal(res.logits, logits)
    np.testing.assert_array_equal(res.states, hs)
    # the next pass goes on from positions of this one (moved into place in the area it wrote)
    nxt = [res.state_addrs[3], res.state_addrs[1]]
    res2 = host.run_forest([2, 3], [-1, -2], nxt)
    hs2, logits2 = im.forward(np.stack([hs[3], hs[1]]), [2, 3], parents=[-1, -2])
    np.testing.assert_array_equal(res2.logits, logits2)
    np.testing.assert_array_equal(res2.states, hs2)


def test_scripted_forest_steps_equal_intmodel():
    """``run_script`` steps with ``starts`` (what bench/perf_validate.py --streams runs on the RTL): each a forest
    pass from the given start states, nothing committed, equal to IntModel (replay_forest); a start state of the
    wrong shape is refused with MmfreeError."""
    from mmfree.host.generate import run_script

    im = H.load("d64")
    rng = np.random.default_rng(5)
    L, d = im.dims.layers, im.dims.d
    host = AccelHost(EmulatedBoard(HW), compile_model(im, streams=2))
    starts = np.stack([rng.integers(-(1 << 20), 1 << 20, size=(L, d)) for _ in range(2)])
    steps = [{"tokens": [5, 6], "parents": [-1, -2], "starts": starts.tolist(), "write_logits": wl}
             for wl in (True, False)]
    recs = run_script(host, steps)
    assert [r["logits"] is None for r in recs] == [False, True]
    ok, problems = replay_forest(im, [dict(r, starts=starts) for r in recs])
    assert ok, problems
    with pytest.raises(MmfreeError, match="start state"):
        run_script(host, [{"tokens": [5, 6], "parents": [-1, -2], "starts": [starts[0][:, :3]] * 2}])


@pytest.mark.parametrize("B", [1, 2, 4])
def test_emulator_streams_equal_plain_decoding(B):
    im = H.load("d64")
    prompts = [[3, 7, 3, 9, 3], [1], [4, 4], [9, 8, 7, 6, 5, 4]][:B]
    host = AccelHost(EmulatedBoard(HW), compile_model(im, streams=B))
    tokens, passes = generate_streams(host, prompts, 6, keep_arrays=True)
    assert tokens == [_plain(im, p, 6) for p in prompts]
    ok, problems = replay_forest(im, passes)
    assert ok, problems
    assert sum(not p["prefill"] for p in passes) == 5            # one forest pass per decode step


def test_forest_bad_inputs_refused():
    im = H.load("d64")
    host = AccelHost(EmulatedBoard(HW), compile_model(im, streams=2))
    z = np.zeros((im.dims.layers, im.dims.d), dtype=np.int64)
    with pytest.raises(AccelRunError) as e:                          # stream 2's root: the program serves 2
        host.run_forest([1, 2], [-1, -3], [z, z])
    assert e.value.code == RM.ERR_BAD_PARENT and e.value.detail == 1
    with pytest.raises(MmfreeError, match="1..2 streams"):
        host.run_forest([1, 2, 3], [-1, -2, -3], [z, z, z])
    with pytest.raises(MmfreeError, match="start state is"):
        host.run_forest([1, 2], [-1, -2], [z, z[:, :1]])
    with pytest.raises(MmfreeError, match="streams"):
        generate_streams(host, [[1], [2], [3]], 2)
    one = AccelHost(EmulatedBoard(HW), compile_model(im))
    with pytest.raises(AccelRunError) as e:                          # a single-stream program refuses roots < -1
        one.run([1, 2], parents=[-1, -2])
    assert e.value.code == RM.ERR_BAD_PARENT


def _sim_cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "mmfree", "sim", *args], capture_output=True, text=True, timeout=3000)


@pytest.mark.sim
def test_rtl_streams_bit_exact_per_stream():
    """`mmfree sim --streams 2` on the RTL (Verilator, d200: 3 layers, odd vocabulary): every stream equals plain
    greedy decoding of its prompt, every pass (prefill chains and forests of 2 roots) equals IntModel.forward from
    its start states; the cycle model of the forest pass is within 5 % of the RTL's."""
    import json

    from mmfree.rtl import params as PARAMS
    from mmfree.rtl.compiler import emit_program
    from mmfree.sim import perf as P
    from mmfree.sim.accel import DEFAULT_HW

    path = H.export_random("d200")
    out = _sim_cli("--model", str(path), "--prompt-ids", "3,7,3,9;1,4", "--streams", "2", "--tokens", "4", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    im = H.load("d200")
    assert r["bit_exact"] is True and r["problems"] == []
    assert r["tokens"] == [_plain(im, [3, 7, 3, 9], 4), _plain(im, [1, 4], 4)]
    assert r["decode_passes"] == 3 and r["streams"] == 2
    model = P.pass_cycles(im.dims, DEFAULT_HW, 2, rate=1.0, rd_latency=PARAMS.SIM_RD_LATENCY, write_logits=True,
                          prog=emit_program(im.dims, streams=2)).cycles
    assert abs(model - r["cycles_per_decode_pass"]) <= 0.05 * r["cycles_per_decode_pass"], (model, r)


@pytest.mark.parametrize("args, needle", [
    (("--streams", "5"), "--streams must be 1..4"), (("--streams", "2", "--k", "2"), "--k does not apply"),
    (("--streams", "3", "--prompt-ids", "1,2;3"), "gives 2 prompts"),
    (("--streams", "3", "--prompt-ids", "1,2"), "the prompt is 2 tokens")])
def test_sim_streams_bad_input(args, needle):
    out = _sim_cli("--model", str(H.export_random("d64")), *args)
    assert out.returncode == 1 and "mmfree sim: error: " in out.stderr and needle in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr

"""The ISA, the compiler and the ISA emulator, bit-exact against IntModel (no Verilator): every shape of
tests/sim/helpers.py, k in {1, 4}, chains and trees from random start states, greedy and drafted
generation, relocation, and the error checks the hardware must make."""

from __future__ import annotations

import numpy as np
import pytest

from mmfree.host.accel import AccelHost
from mmfree.host.generate import generate, run_script
from mmfree.pymodel import layout as LY
from mmfree.rtl import isa as I
from mmfree.rtl import regmap as RM
from mmfree.rtl.compiler import HwConfig, compile_model, must_move_bytes
from mmfree.sim.emulator import EmulatedBoard
from tests.sim import helpers as H

HW = HwConfig(bus_bytes=16, max_tokens=4, max_width=1024)


@pytest.fixture(scope="module", params=sorted(H.SHAPES))
def model(request):
    return H.load(request.param)


def test_isa_roundtrip_and_field_limits():
    for name, (code, fields) in I.OPS.items():
        args = {}
        for i, f in enumerate(fields):
            hi = (1 << (f.width - 1)) - 1 if f.signed else (1 << f.width) - 1
            args[f.name] = -3 if f.signed else min(hi, 5 + i)
        ins = I.Instr(name, args)
        raw = ins.encode()
        assert len(raw) == I.INSTR_BYTES and raw[0] == code
        assert I.Instr.decode(raw).args == args
    with pytest.raises(I.IsaError, match="MATVEC.bank"):
        I.Instr("MATVEC", {"bank": 16}).encode()
    with pytest.raises(I.IsaError, match="no operand"):
        I.Instr("HALT", {"x": 1}).encode()
    with pytest.raises(I.IsaError, match="unknown opcode"):
        I.Instr.decode(bytes(16))


def test_hwconfig_rejects_bad_parameters():
    with pytest.raises(ValueError, match="bus_bytes"):
        HwConfig(bus_bytes=4)
    with pytest.raises(ValueError, match="max_width"):
        HwConfig(max_width=1000)
    with pytest.raises(ValueError, match="max_tokens"):
        HwConfig(max_tokens=0)
    for bad in (3, 0, 16, True, 2.0):
        with pytest.raises(ValueError, match="vector_lanes"):
            HwConfig(vector_lanes=bad)


def test_compiled_image_layout(model):
    c = compile_model(model)
    assert all(off % 64 == 0 for off in c.symbols.values())
    hdr, instrs = I.disassemble(c.program)
    assert hdr.n_instr == len(instrs) and instrs[-1].op == "HALT"
    assert hdr.width_units * I.WIDTH_UNIT >= max(model.dims.d, model.dims.inter)
    # packed weights are the export's bytes
    spec = model.bitlinear_specs["layers.0.attn.o_proj"]
    w = model.tensor(spec.w).tobytes()
    off = c.symbols["layers.0.w_o"]
    assert c.image[off:off + len(w)] == w


def test_emulator_bit_exact_chains_and_trees(model):
    c = compile_model(model)
    host = AccelHost(EmulatedBoard(HW), c)
    steps = H.chain_and_tree_steps(model, np.random.default_rng(model.dims.d))
    H.replay_steps(model, steps, run_script(host, steps))


@pytest.mark.parametrize("k", [1, 4])
def test_emulator_generation_is_greedy(k):
    im = H.load("d96")
    host = AccelHost(EmulatedBoard(HW), compile_model(im))
    prompt = [3, 7, 3, 9, 3]
    tokens, passes = generate(host, prompt, 12, k=k, keep_arrays=True)
    state = im.initial_state()
    ref = []
    state, logits = im.prefill(state, prompt)
    for _ in range(12):
        t = int(np.argmax(logits))
        ref.append(t)
        state, logits = im.step(state, t)
    assert tokens == ref
    from mmfree.sim.accel import replay_and_compare

    ok, problems = replay_and_compare(im, passes)
    assert ok, problems


def test_program_is_relocatable():
    im = H.load("d64")
    c = compile_model(im)
    outs = []
    for base in (0x4000_0000, 0x1234_5000):
        host = AccelHost(EmulatedBoard(HW, mem_base=base, mem_size=8 << 20), c)
        res = host.run([5, 6])
        outs.append((res.logits, res.states))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_emulator_error_codes():
    im = H.load("d64")
    c = compile_model(im)
    board = EmulatedBoard(HW)
    host = AccelHost(board, c)
    cases = H.error_steps(c, HW, board.mem_window)
    results = run_script(host, [st for st, _ in cases])
    for (st, exp), res in zip(cases, results):
        if exp is None:
            assert "error" not in res, (st, res)
        else:
            assert (res.get("error"), res.get("detail")) == exp, (st, res)


def test_model_too_wide_for_the_build():
    im = H.load("d200")
    from mmfree import MmfreeError

    # the host refuses before it loads anything (HW_LIMITS); a host that went ahead would get ERR_TOO_WIDE
    # from the hardware's own check (error_steps covers that with a patched program header)
    with pytest.raises(MmfreeError, match="wider than this bitstream|this bitstream's buffers hold 128"):
        AccelHost(EmulatedBoard(HwConfig(max_width=128)), compile_model(im)).run([1])


def test_must_move_bytes_definition():
    dims = LY.Dims(vocab=100, d=1024, inter=2816, layers=1)
    w = 4 * 1024 * 205 + 2 * 2816 * 205 + 1024 * 564 + 100 * 205
    got = must_move_bytes(dims, k=1, write_logits=False)
    assert got > w and got - w < 200_000
    assert must_move_bytes(dims, k=2, write_logits=False) - got == must_move_bytes(dims, 1, False) - \
        (w + sum(t.nbytes for t in LY.tensors(dims) if t.name.endswith((".n", ".nw", "one_minus_lb"))) + 4 * 1024)
    assert RM.state_stride(200, 3) % 64 == 0

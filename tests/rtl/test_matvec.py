"""The ternary matvec engine under amaranth.sim: exact accumulators, stalls, banks, back-to-back
commands, one weight beat per cycle, and illegal parameters."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from mmfree.pymodel import numerics as N
from mmfree.rtl.matvec import LEGAL_LANES, TernaryMatVec, beats_per_row, decode_rom_words
from tests.rtl.cases import matvec_job, matvec_unpack
from tests.rtl.streams import collect, drive


def simulate(dut, job, stall, seed=0):
    """Load codes, then the commands; weights offered from the start. Returns (outputs, weight cycles)."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    out, cycles, beat_cycles = [], [], []

    async def loader(ctx):
        await drive(ctx, dut.act, job.act, stall, seed + 1)
        await drive(ctx, dut.cmd, job.cmd, stall, seed + 2)

    async def weights(ctx):
        await drive(ctx, dut.weights, job.weights, stall, seed + 3)

    async def watch(ctx):
        t = 0
        while len(beat_cycles) < len(job.weights):
            _, _, v, r = await ctx.tick().sample(dut.weights.valid, dut.weights.ready)
            if v and r:
                beat_cycles.append(t)
            t += 1

    async def sink(ctx):
        await collect(ctx, dut.out, len(job.last), stall, seed + 4, out, cycles)

    for tb in (loader, weights, watch, sink):
        sim.add_testbench(tb)
    sim.run()
    return out, beat_cycles


CONFIGS = [  # lanes, tokens, [(rows, K) per command]
    (5, 1, [(7, 63), (5, 1)]),
    (10, 2, [(6, 60), (4, 61)]),
    (20, 3, [(5, 100), (3, 79)]),
    (40, 1, [(9, 1000), (3, 80)]),
    (80, 4, [(6, 1000), (5, 63)]),
]


@pytest.mark.parametrize("stall", [0.0, 0.35], ids=["nostall", "stall"])
@pytest.mark.parametrize("lanes,tokens,shapes", CONFIGS, ids=[f"l{c[0]}_k{c[1]}" for c in CONFIGS])
def test_matvec_matches_reference(lanes, tokens, shapes, stall):
    rng = np.random.default_rng(lanes * 10 + tokens)
    dut = TernaryMatVec(lanes=lanes, tokens=tokens, max_k=1024, banks=2)
    job = matvec_job(dut, rng, shapes)
    out, beat_cycles = simulate(dut, job, stall, seed=lanes)
    expected = job.acc
    produced, last = matvec_unpack(dut, out)
    np.testing.assert_array_equal(produced, expected)
    np.testing.assert_array_equal(last, job.last)
    if not stall:   # the weight stream never waits, across rows and across the two commands
        assert beat_cycles[-1] - beat_cycles[0] + 1 == len(job.weights)


WAYS = [  # lanes, tokens, ways, [(rows, K) per command]
    (5, 2, 2, [(6, 63), (4, 1)]),
    (10, 2, 8, [(16, 100), (8, 63)]),
    (40, 3, 3, [(9, 60), (6, 99)]),
    (80, 4, 8, [(16, 1000), (8, 63)]),          # the four-port accelerator's engine
]


def _rows_exact(dut, rng, shapes, stall: float, seed: int):
    """A random job of ``shapes`` on ``dut`` (with ``stall``): every row's accumulators and last flags exactly the
    reference's. Returns (job, beat cycles)."""
    job = matvec_job(dut, rng, shapes)
    out, beat_cycles = simulate(dut, job, stall, seed=seed)
    produced, last = matvec_unpack(dut, out)
    np.testing.assert_array_equal(produced, job.acc)
    np.testing.assert_array_equal(last, job.last)
    return job, beat_cycles


@pytest.mark.parametrize("stall", [0.0, 0.35], ids=["nostall", "stall"])
@pytest.mark.parametrize("lanes,tokens,ways,shapes", WAYS, ids=[f"l{c[0]}_k{c[1]}_w{c[2]}" for c in WAYS])
def test_matvec_ways_share_the_codes(lanes, tokens, ways, shapes, stall):
    """`ways` rows side by side: every row exact, one group per beat position, the stream never waits."""
    rng = np.random.default_rng(lanes * 7 + ways)
    dut = TernaryMatVec(lanes=lanes, tokens=tokens, max_k=1024, banks=2, ways=ways)
    job, beat_cycles = _rows_exact(dut, rng, shapes, stall, seed=ways)
    if not stall:
        assert beat_cycles[-1] - beat_cycles[0] + 1 == len(job.weights)


VLANES = [  # lanes, tokens, vlanes, [(rows, K) per command]: K not a multiple of V (a partial last transfer)
    (80, 2, 4, [(6, 1000), (5, 63)]),
    (40, 3, 8, [(4, 99), (3, 80)]),
    (10, 1, 2, [(5, 61), (2, 10)]),
]


@pytest.mark.parametrize("stall", [0.0, 0.35], ids=["nostall", "stall"])
@pytest.mark.parametrize("lanes,tokens,vlanes,shapes", VLANES, ids=[f"l{c[0]}_k{c[1]}_v{c[2]}" for c in VLANES])
def test_matvec_takes_v_codes_per_transfer(lanes, tokens, vlanes, shapes, stall):
    """``vlanes`` V: each ``act`` transfer writes V consecutive column positions of every enabled token (the
    vector engine's QCODES with V vector lanes); every row exact."""
    rng = np.random.default_rng(lanes + vlanes)
    dut = TernaryMatVec(lanes=lanes, tokens=tokens, max_k=1024, banks=2, vlanes=vlanes)
    _rows_exact(dut, rng, shapes, stall, seed=vlanes)


@pytest.mark.slow
@pytest.mark.parametrize("lanes", LEGAL_LANES)
@pytest.mark.parametrize("tokens", [1, 4])
def test_matvec_many_rows_slow(lanes, tokens):
    rng = np.random.default_rng(lanes + tokens)
    dut = TernaryMatVec(lanes=lanes, tokens=tokens, max_k=1024, banks=2)
    job = matvec_job(dut, rng, [(250, int(rng.integers(1, 1025))), (150, 1000)])
    out, _ = simulate(dut, job, 0.3, seed=tokens)
    produced, last = matvec_unpack(dut, out)
    np.testing.assert_array_equal(produced, job.acc)


def test_decode_rom_is_the_spec_table():
    t = N.trit_decode_table()
    words = decode_rom_words()
    for b in range(256):
        for i in range(N.TRITS_PER_BYTE):
            pos, neg = (words[b] >> i) & 1, (words[b] >> (N.TRITS_PER_BYTE + i)) & 1
            assert pos - neg == t[b, i]


def test_beats_per_row():
    assert beats_per_row(1024, 80) == N.row_bytes(1024) // 16 == 13
    assert beats_per_row(1024, 40) == 26
    assert beats_per_row(60, 5) == 16


@pytest.mark.parametrize("kw,name", [
    ({"lanes": 15}, "lanes"), ({"lanes": 0}, "lanes"), ({"lanes": 7}, "lanes"), ({"lanes": 160}, "lanes"),
    ({"lanes": 30}, "lanes"), ({"tokens": 0}, "tokens"), ({"max_k": 0}, "max_k"),
    ({"max_k": N.MAX_K + 1}, "max_k"), ({"banks": 0}, "banks"), ({"max_rows": 0}, "max_rows"),
    ({"lanes": 80.0}, "lanes"), ({"ways": 0}, "ways"), ({"vlanes": 0}, "vlanes"), ({"lanes": 40, "vlanes": 16}, "vlanes"),
    ({"lanes": 20, "vlanes": 8}, "vlanes"),
])
def test_illegal_parameters_are_named(kw, name):
    with pytest.raises(ValueError, match=name) as exc:
        TernaryMatVec(**kw)
    if name == "lanes":
        assert "(5, 10, 20, 40, 80)" in str(exc.value)


def test_argmax_parameter_is_named():
    from mmfree.rtl.activation import Argmax

    with pytest.raises(ValueError, match="max_len"):
        Argmax(max_len=0)

"""rtl/pipeline.py ``div_const``: the constant division of the six-port weight fetch (rows per port, row groups per
command), exact under amaranth.sim at the edges of its width and on random values; the bad-argument error."""

import random

import pytest
from amaranth import Module, Signal, signed
from amaranth.sim import Simulator

from mmfree.rtl.pipeline import ceil_div_table, div_const


@pytest.mark.parametrize("width,d", [(32, 6), (33, 12), (32, 3), (32, 5), (16, 7), (8, 6), (32, 1), (32, 4), (3, 6)])
def test_div_const_is_exact(width, d):
    m = Module()
    x, q = Signal(width), Signal(width)
    m.d.comb += q.eq(div_const(x, d))
    top = (1 << width) - 1
    rng = random.Random(width * 100 + d)
    values = sorted({*range(0, min(top, 4 * d) + 1), *(v for k in range(1, 40) for v in (k * d - 1, k * d, k * d + 1)),
                     top, top - 1, top - d, *(rng.randrange(top + 1) for _ in range(400))} & set(range(top + 1))
                    if top < 1 << 12 else
                    {*range(0, 4 * d + 1), top, top - 1, top - d, *(top // d * d - j for j in range(3)),
                     *(rng.randrange(top + 1) for _ in range(800))})
    wrong = []

    async def bench(ctx):
        for v in values:
            ctx.set(x, v)
            if ctx.get(q) != v // d:
                wrong.append((v, ctx.get(q), v // d))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert wrong == []


@pytest.mark.parametrize("d", [0, -6, 2.0])
def test_div_const_refuses_a_bad_divisor(d):
    with pytest.raises(ValueError, match="div_const divides an unsigned value by an integer >= 1"):
        div_const(Signal(8), d)


def test_div_const_refuses_a_signed_value():
    with pytest.raises(ValueError, match="unsigned"):
        div_const(Signal(signed(8)), 3)


@pytest.mark.parametrize("width,d,max_x", [(16, 80, 1024), (16, 80, 4096), (16, 5, 4096), (12, 80, 1000),
                                           (8, 1, 200), (8, 6, 255), (8, 16, 100), (3, 80, 7)])
def test_ceil_div_table_is_exact_up_to_its_bound(width, d, max_x):
    """``ceil_div_table`` (the sequencer's ``ceil(count / 80)`` without a multiplier) equals ``ceil(x / d)`` for
    every ``x`` from 0 to ``max_x`` (exhaustive), whatever the bits above it."""
    m = Module()
    x, q = Signal(width), Signal(16)
    m.d.comb += q.eq(ceil_div_table(x, d, max_x))
    wrong = []

    async def bench(ctx):
        for v in range(min(max_x, (1 << width) - 1) + 1):
            ctx.set(x, v)
            if ctx.get(q) != -(-v // d):
                wrong.append((v, ctx.get(q), -(-v // d)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert wrong == []


@pytest.mark.parametrize("d,max_x,signed_x", [(0, 10, False), (2.0, 10, False), (5, -1, False), (5, 10, True)])
def test_ceil_div_table_refuses_bad_arguments(d, max_x, signed_x):
    x = Signal(signed(8) if signed_x else 8)
    with pytest.raises(ValueError, match="ceil_div_table"):
        ceil_div_table(x, d, max_x)

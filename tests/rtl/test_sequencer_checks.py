"""The sequencer's own check expressions (mmfree.rtl.sequencer) against their integer definitions, under
amaranth.sim."""

from __future__ import annotations

import random

import pytest
from amaranth import Module, Signal, signed
from amaranth.sim import Simulator

from mmfree.rtl.sequencer import Sequencer


@pytest.mark.parametrize("bits", [1, 3])
def test_bad_parent_is_the_emulators_rule(bits):
    """PAR's check without a 32-bit carry chain is ``q + roots < 0 or q >= widx`` (``q``: a signed 32-bit
    parent), at the edges and at random, for every small ``roots`` and ``widx``."""
    q, roots, widx, out = Signal(signed(32)), Signal(bits), Signal(bits), Signal()
    m = Module()
    m.d.comb += out.eq(Sequencer._bad_parent(q, roots, widx))
    rng = random.Random(1)
    qs = [*range(-12, 12), -2**31, -2**31 + 1, 2**31 - 1, *(rng.randrange(-2**31, 2**31) for _ in range(40))]

    async def bench(ctx):
        for a in qs:
            for r in range(1 << bits):
                for w in range(1 << bits):
                    ctx.set(q, a)
                    ctx.set(roots, r)
                    ctx.set(widx, w)
                    assert ctx.get(out) == ((a + r < 0) or (a >= w)), (a, r, w)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_header_fits_is_the_window():
    """CHECK's header window as one carry chain is ``lo <= a and a + HEADER_BYTES <= hi`` for 64-bit registers,
    at the edges (the end at, one below and one past MEM_HI; wrap-around) and at random."""
    from mmfree.rtl import isa as I

    n = I.HEADER_BYTES
    a, lo, hi, out = Signal(64), Signal(64), Signal(64), Signal()
    m = Module()
    m.d.comb += out.eq(Sequencer._header_fits(a, lo, hi))
    rng = random.Random(2)
    cases = []
    for _ in range(2000):
        x = rng.choice([0, 1, 2**64 - 1, 2**64 - n, rng.randrange(2**64), rng.randrange(2**20)])
        low = rng.choice([0, x, x + 1, x - 1, rng.randrange(2**64)]) % 2**64
        high = rng.choice([x + n, x + n - 1, x + n + 1, x, x - 1, 2**64 - 1, rng.randrange(2**64)]) % 2**64
        cases.append((x, low, high))

    async def bench(ctx):
        for x, low, high in cases:
            ctx.set(a, x)
            ctx.set(lo, low)
            ctx.set(hi, high)
            assert ctx.get(out) == (low <= x and x + n <= high), (x, low, high)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()

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

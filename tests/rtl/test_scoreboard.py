"""The hazard scoreboard (mmfree.rtl.scoreboard) against a model of its slots, under amaranth.sim: random issues
and completions (and ``clear``); wherever the sequencer reads ``hazard`` (two cycles after its masks were set, with no issue in
between) it must equal the hazard of the slots held then, and ``room`` / ``all_idle`` those slots every cycle."""

from __future__ import annotations

import random

from amaranth.sim import Simulator

from mmfree.rtl import isa as I
from mmfree.rtl.decoder import ENGINE_ID, ENGINES
from mmfree.rtl.scoreboard import ENGINE_SLOTS, Scoreboard

NR = I.N_RESOURCES
STREAMED = sum(1 << b for b in I.STREAMED)


def _hazard(slots, rmask, wmask) -> bool:
    reads = rmask & ~STREAMED
    return any((reads & w) or (wmask & (r | w)) for held in slots.values() for r, w in held)


def _masks(rng):
    """Sparse random read / write sets (a few resources each, so that both outcomes occur)."""
    def one():
        return sum(1 << rng.choice([0, 1, 2, 3, rng.randrange(NR)]) for _ in range(rng.randrange(0, 3)))
    return one(), one()


def test_scoreboard_hazard_matches_the_slots():
    dut = Scoreboard()
    rng = random.Random(7)
    seen = {True: 0, False: 0}

    async def bench(ctx):
        slots = {e: [] for e in ENGINES}           # (read, write) per held slot, oldest first
        rmask, wmask = _masks(rng)
        quiet = 0                                  # cycles since the last issue / mask change
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        for _ in range(4000):
            e = rng.choice(ENGINES)
            done = [int(bool(slots[x]) and rng.random() < 0.3) for x in ENGINES]
            issue = quiet >= 3 and rng.random() < 0.4
            ctx.set(dut.engine, ENGINE_ID[e])
            ctx.set(dut.rmask, rmask)
            ctx.set(dut.wmask, wmask)
            ctx.set(dut.done_pulse, sum(d << i for i, d in enumerate(done)))
            assert ctx.get(dut.room) == (len(slots[e]) < ENGINE_SLOTS[e])
            assert ctx.get(dut.all_idle) == (not any(slots.values()))
            if quiet >= 2:                         # the masks set two cycles ago, no issue since
                want = _hazard(slots, rmask, wmask)
                assert ctx.get(dut.hazard) == want
                seen[want] += 1
            issue = issue and (len(slots[e]) < ENGINE_SLOTS[e] or bool(done[ENGINE_ID[e]]))
            clear = not issue and rng.random() < 0.02          # a new run: every slot empties
            ctx.set(dut.issue, int(issue))
            ctx.set(dut.clear, int(clear))
            await ctx.tick()
            ctx.set(dut.clear, 0)
            for x, d in zip(ENGINES, done):
                if d:
                    slots[x].pop(0)
            if clear:
                slots = {x: [] for x in ENGINES}
            quiet += 1
            if issue:
                slots[e].append((rmask, wmask))
                quiet = 0
            if issue or rng.random() < 0.1:
                rmask, wmask = _masks(rng)
                quiet = 0
            ctx.set(dut.issue, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert min(seen.values()) > 100, seen

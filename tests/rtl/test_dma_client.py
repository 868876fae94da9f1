"""DmaReadClient (rtl/axi.py), the one reader client of the sequencer's control reads, the load engine and EMBED,
under amaranth.sim: the command it puts to the reader and the records it hands on, against DDR as bytes."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from mmfree.rtl.axi import DmaReadClient

MEM = np.random.default_rng(7).integers(0, 1 << 32, size=4096, dtype=np.uint64).astype("<u4")


def _run(bus_bytes: int, requests, stall: float, seed: int):
    """Each request (addr, words, fields): returns [(cmd addr, cmd beats, records)]."""
    dut = DmaReadClient(addr_width=32, bus_bytes=bus_bytes, max_fields=4)
    rng = random.Random(seed)
    raw = MEM.tobytes()
    out = []

    async def bench(ctx):
        for addr, words, fields in requests:
            ctx.set(dut.req, 1)
            ctx.set(dut.addr, addr)
            ctx.set(dut.words, words)
            ctx.set(dut.fields, fields)
            await ctx.tick()
            ctx.set(dut.req, 0)
            assert ctx.get(dut.cmd.valid)
            c_addr, c_beats = ctx.get(dut.cmd.payload.addr), ctx.get(dut.cmd.payload.beats)
            ctx.set(dut.cmd.ready, 1)
            await ctx.tick()
            ctx.set(dut.cmd.ready, 0)
            assert not ctx.get(dut.cmd.valid)
            beats = [int.from_bytes(raw[c_addr + bus_bytes * b: c_addr + bus_bytes * (b + 1)], "little")
                     for b in range(c_beats)]
            recs, want = [], words // fields
            ctx.set(dut.rec.ready, 1)
            for _ in range(20 * (c_beats + want) + 50):
                if beats and rng.random() >= stall:
                    ctx.set(dut.beat.valid, 1)
                    ctx.set(dut.beat.payload, beats[0])
                else:
                    ctx.set(dut.beat.valid, 0)
                b_taken = ctx.get(dut.beat.valid) and ctx.get(dut.beat.ready)
                r_taken = ctx.get(dut.rec.valid)
                rec = [ctx.get(dut.rec.payload.w[i]) for i in range(fields)]
                await ctx.tick()
                if b_taken:
                    beats.pop(0)
                if r_taken and len(recs) < want:
                    recs.append(rec)
                if len(recs) == want and not beats:
                    break
            ctx.set(dut.beat.valid, 0)
            out.append((c_addr, c_beats, recs))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


@pytest.mark.parametrize("bus_bytes", [8, 16])
@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_requests_give_the_words_as_records(bus_bytes, stall):
    rng = random.Random(bus_bytes)
    requests = [(0, 4, 4), (4, 1, 1), (12, 7, 1), (64, 12, 3), (bus_bytes - 4, 8, 2)]
    requests += [(4 * rng.randrange(0, 512), f * rng.randrange(1, 40), f) for f in (1, 2, 3, 4) for _ in range(3)]
    got = _run(bus_bytes, requests, stall, seed=bus_bytes)
    for (addr, words, fields), (c_addr, c_beats, recs) in zip(requests, got):
        skip = (addr % bus_bytes) // 4
        assert c_addr == addr - addr % bus_bytes
        assert c_beats == -(-(skip + words) * 4 // bus_bytes)
        flat = [w for r in recs for w in r]
        assert flat == [int(x) for x in MEM[addr // 4: addr // 4 + words]], (addr, words, fields)

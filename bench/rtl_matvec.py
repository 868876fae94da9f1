"""Throughput of the ternary matvec engine (mmfree.rtl.matvec.TernaryMatVec) in simulation.

Streams an N x M ternary matrix (packed as the export packs it) through the engine with the weight
stream always valid and the output always ready, checks every accumulator against the exact integer
product, and reports

* cycles: from the first weight beat accepted to the last row result accepted,
* ideal: N * M / lanes (one weight per lane per cycle, no padding),
* beats: N * beats_per_row(M) (the padded rows the engine must read),
* ratio = cycles / ideal and cycles / beats (1.0 = one beat every cycle).

Usage::

    python bench/rtl_matvec.py                       # N=64, M=1024, lanes 80, k = 1 and 4
    python bench/rtl_matvec.py --rows 32 --cols 2816 --lanes 40 --tokens 1 2 4 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def measure(rows: int, cols: int, lanes: int, tokens: int, seed: int = 0) -> dict:
    from amaranth import Value
    from amaranth.sim import Simulator

    from mmfree.pymodel import numerics as N
    from mmfree.rtl.matvec import TernaryMatVec, beats_per_row

    rng = np.random.default_rng(seed)
    W = rng.integers(-1, 2, (rows, cols))
    codes = rng.integers(-N.CODE_MAX, N.CODE_MAX + 1, (tokens, cols))
    dut = TernaryMatVec(lanes=lanes, tokens=tokens, max_k=cols, banks=1)
    bpr = beats_per_row(cols, lanes)
    beats = [int.from_bytes(bytes(b), "little") for b in N.pack_ternary(W).reshape(-1, lanes // N.TRITS_PER_BYTE)]
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    got, times = [], {"first_beat": None, "last_out": None}

    async def feed(ctx):
        for t in range(tokens):                       # codes: one per cycle
            for j in range(cols):
                ctx.set(dut.act.valid, 1)
                ctx.set(Value.cast(dut.act.payload), 0)
                ctx.set(dut.act.payload.code, int(codes[t, j]))
                ctx.set(dut.act.payload.token, t)
                ctx.set(dut.act.payload.first, int(j == 0))
                await ctx.tick()
        ctx.set(dut.act.valid, 0)
        ctx.set(dut.cmd.valid, 1)
        ctx.set(dut.cmd.payload.rows, rows)
        ctx.set(dut.cmd.payload.beats, bpr)
        await ctx.tick().until(dut.cmd.ready)
        ctx.set(dut.cmd.valid, 0)

    async def weights(ctx):
        cycle = 0
        ctx.set(dut.weights.valid, 1)
        for b in beats:
            ctx.set(dut.weights.payload, b)
            while True:
                _, _, ready = await ctx.tick().sample(dut.weights.ready)
                cycle += 1
                if ready:
                    if times["first_beat"] is None:
                        times["first_beat"] = cycle
                    break
        ctx.set(dut.weights.valid, 0)
        times["weights_done"] = cycle

    async def sink(ctx):
        cycle = 0
        ctx.set(dut.out.ready, 1)
        while len(got) < rows:
            _, _, valid, payload = await ctx.tick().sample(dut.out.valid, dut.out.payload.acc)
            cycle += 1
            if valid:
                got.append([int(payload[t]) for t in range(tokens)])
        times["last_out"] = cycle

    for tb in (feed, weights, sink):
        sim.add_testbench(tb)
    t0 = time.time()
    sim.run()
    wall = time.time() - t0
    expected = W.astype(np.int64) @ codes.T.astype(np.int64)
    produced = np.array(got, dtype=np.int64)
    np.testing.assert_array_equal(produced, expected)
    cycles = times["last_out"] - times["first_beat"] + 1
    ideal = rows * cols / lanes
    return {"rows": rows, "cols": cols, "lanes": lanes, "tokens": tokens, "cycles": cycles,
            "ideal": ideal, "beats": rows * bpr, "ratio_ideal": cycles / ideal, "ratio_beats": cycles / (rows * bpr),
            "beats_per_row": bpr, "exact": True, "sim_seconds": round(wall, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=64, help="N")
    ap.add_argument("--cols", type=int, default=1024, help="M (the input length K)")
    ap.add_argument("--lanes", type=int, default=80)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 4], help="k values to measure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = [measure(args.rows, args.cols, args.lanes, k) for k in args.tokens]
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{'N x M':>12} {'lanes':>5} {'k':>3} {'cycles':>8} {'N*M/lanes':>10} {'padded beats':>12} "
          f"{'cycles/ideal':>12} {'cycles/beats':>12}")
    for r in results:
        print(f"{r['rows']:>5} x {r['cols']:<5} {r['lanes']:>5} {r['tokens']:>3} {r['cycles']:>8} {r['ideal']:>10.1f} "
              f"{r['beats']:>12} {r['ratio_ideal']:>12.4f} {r['ratio_beats']:>12.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

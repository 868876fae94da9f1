"""Read bandwidth of one AXI read client (mmfree.rtl.axi.AxiReader) against the memory's read latency (simulated).

The reader of a weight port (one client, FIFO ``--fifo`` beats, 16-beat bursts, ``MAX_OUTSTANDING`` bursts)
in Amaranth's simulator, against a slave that accepts every AR at once and returns its beats ``L`` cycles
later, one beat per cycle; the client takes a beat every cycle. Prints the steady-state beats per cycle
(from beat ``--beats`` / 4 over whole multiples of the FIFO depth, so neither the first request's latency
nor the grouping of the arrivals is counted) for each latency.

    python bench/rtl_axi_latency.py [--fifo 64,256] [--window fixed|latency] [--latency 24,75,125,300] [--beats 2048] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys


def measure(fifo: int, latency: int, beats: int, max_outstanding: int, adaptive: bool = False,
            row_beats: int | None = None) -> dict:
    """Cycles at which each beat reached the client; the steady-state rate of the last 3/4 of them.
    ``adaptive``: the client's window follows the measured latency (``rtl/params.py`` WEIGHT_WINDOW_BASE and
    READ_WINDOW_MARGIN, as the accelerator's weight clients) instead of being the whole FIFO. ``row_beats``: read
    rows of that many beats (a strided client, as the weight clients: bursts end at each row's end) instead of
    one contiguous command."""
    from amaranth.sim import Simulator

    from mmfree.rtl import params as PARAMS
    from mmfree.rtl.axi import AxiReader

    windows = {0: (min(fifo, PARAMS.WEIGHT_WINDOW_BASE), PARAMS.READ_WINDOW_MARGIN)} if adaptive else None
    dut = AxiReader(addr_width=32, bus_bytes=16, fifo_depths=(fifo,), max_burst=16, max_outstanding=max_outstanding,
                    latency_windows=windows, row_clients=1 if row_beats else 0)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    axi, arrivals = dut.axi, []

    async def slave(ctx):
        queue, t, n_left = [], 0, 0           # (first-beat cycle, length) of each accepted burst
        ctx.set(axi.arready, 1)
        while True:
            valid = bool(queue) and queue[0][0] <= t
            ctx.set(axi.rvalid, valid)
            ctx.set(axi.rlast, valid and n_left == 1)
            _, _, arvalid, arlen = await ctx.tick().sample(axi.arvalid, axi.arlen)
            t += 1
            if arvalid:
                queue.append([t + latency, arlen + 1])
                if len(queue) == 1:
                    n_left = arlen + 1
            if valid:
                n_left -= 1
                if n_left == 0:
                    queue.pop(0)
                    n_left = queue[0][1] if queue else 0

    async def client(ctx):
        cmd, dat = dut.client_cmd(0), dut.data[0]
        ctx.set(cmd.payload.addr, 0x1000)
        ctx.set(cmd.payload.beats, row_beats or beats)
        if row_beats:
            ctx.set(cmd.payload.rows, beats // row_beats)
            ctx.set(cmd.payload.stride, 16 * row_beats)
        ctx.set(cmd.valid, 1)
        await ctx.tick().until(cmd.ready)
        ctx.set(cmd.valid, 0)
        ctx.set(dat.ready, 1)
        t = 0
        while len(arrivals) < beats:
            _, _, v = await ctx.tick().sample(dat.valid)
            t += 1
            if v:
                arrivals.append(t)

    sim.add_testbench(slave, background=True)
    sim.add_testbench(client)
    sim.run()
    q = beats // 4                            # whole windows of beats: arrivals come in groups of `fifo`
    n = fifo * ((beats - 1 - q) // fifo) if beats - 1 - q >= fifo else beats - 1 - q
    rate = n / (arrivals[q + n] - arrivals[q])
    return {"fifo": fifo, "adaptive": adaptive, "row_beats": row_beats, "max_outstanding": max_outstanding,
            "rd_latency": latency, "beats": beats,
            "cycles": arrivals[-1], "steady_beats_per_cycle": round(rate, 4)}


def main() -> int:
    from mmfree.rtl import params as PARAMS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fifo", default=f"64,{PARAMS.WEIGHT_CLIENT_FIFO}", help="client FIFO depths, beats")
    ap.add_argument("--latency", default="24,75,125,300", help="read latencies, cycles")
    ap.add_argument("--beats", type=int, default=2048, help="beats read per run (>= 64)")
    ap.add_argument("--window", default="fixed", choices=("fixed", "latency"),
                    help="fixed: the whole FIFO; latency: the weight clients' latency-following window (rtl/params.py)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.beats < 64:
        ap.error(f"--beats must be >= 64, got {args.beats}")
    rows = []
    for fifo in (int(x) for x in args.fifo.split(",")):
        for lat in (int(x) for x in args.latency.split(",")):
            rows.append(measure(fifo, lat, args.beats, PARAMS.MAX_OUTSTANDING, adaptive=args.window == "latency"))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print("| client FIFO (beats) | window | read latency (cycles) | ns at 250 MHz | beats per cycle (simulated) |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['fifo']} | {args.window} | {r['rd_latency']} | {4 * r['rd_latency']} | "
                  f"{r['steady_beats_per_cycle']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

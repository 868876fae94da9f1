"""Weight streaming against DDR read latency, on the accelerator RTL (simulated) and in the perf model (modeled).

``--rtl``: one pass (k = 1, logits not written, from the zero state) of a random model on the RTL in Verilator
(``mmfree.sim.accel.run_job``, HDL DDR model: 16 bytes per cycle per port) at each read latency; prints CYCLES,
the read bandwidth (DDR bytes read / cycles, as a fraction of the ports' 16 bytes per cycle) and the slowdown
against the first latency. Builds and shapes: ``default`` (one weight port) on ``d512`` of
``bench/perf_validate.py``; ``ports4`` (four weight ports) on ``d2048-1.3B-d`` (one layer of the 1.3B
model's d = 2048, intermediate 4096 = the 4096-wide build's max_width instead of 5632; vocabulary 256).

``--weight-fifo N`` (bench only): elaborate the RTL with an N-beat weight read FIFO instead of
``rtl/params.py``'s ``WEIGHT_CLIENT_FIFO`` (64 reproduces the design before issue 27: the latency-following
window cannot grow past the FIFO), under its own Verilog cache key. Rows record their window: ``fixed`` (the
whole FIFO, the withdrawn 256-beat experiment and the 64-beat design) or ``latency`` (the window follows the
measured read latency, ``WEIGHT_WINDOW_BASE`` .. the FIFO).

``--model``: tokens/s of the 1.3B model on the KV260 (``mmfree.sim.perf.predict``: the board's 4-port build
and a 1-port build) against the read latency in ns.

    python bench/rtl_latency.py --rtl [--hw default,ports4] [--latency 24,75,125,300] [--weight-fifo N] [--record]
    python bench/rtl_latency.py --model [--record]

``--record`` adds the RTL runs to boards/data/rtl_latency.json (keyed by FIFO depth) and rewrites the
sections ``latency-rtl`` / ``latency-model`` of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, write_section  # noqa: E402

DATA_FILE = ROOT / "boards" / "data" / "rtl_latency.json"
CONFIG_OF = {"default": "d512", "ports4": "d2048-1.3B-d"}
MODEL_NS = (0, 96, 200, 300, 500, 750, 1000, 1500, 2000)


def override_weight_fifo(depth: int) -> None:
    """Elaborate the RTL with a ``depth``-beat weight read FIFO (this process only), under its own cache key."""
    from mmfree.rtl import params as PARAMS
    from mmfree.sim import accel

    PARAMS.WEIGHT_CLIENT_FIFO = depth
    PARAMS.MAIN_READER_FIFO_DEPTHS = PARAMS.MAIN_READER_FIFO_DEPTHS[:3] + (depth,)
    key = accel._rtl_source_key
    accel._rtl_source_key = lambda hw: f"{key(hw)}-wfifo{depth}"


def rtl_rows(hws, lats) -> list[dict]:
    """One row per (build, latency): cycles, bytes read and the read bandwidth as a fraction of the ports' peak."""
    import perf_validate as V

    from mmfree.rtl import params as PARAMS

    rows = []
    for hw_name in hws:
        ports = V.hw_for(hw_name).weight_ports
        for lat in lats:
            r = V.rtl_cycles(CONFIG_OF[hw_name], (1,), hw_name, lat, (False,))
            v = next(iter(r.values()))
            window = "latency" if PARAMS.WEIGHT_CLIENT_FIFO > PARAMS.WEIGHT_WINDOW_BASE else "fixed"
            rows.append({"hw": hw_name, "config": CONFIG_OF[hw_name], "weight_fifo": PARAMS.WEIGHT_CLIENT_FIFO,
                         "window": window,
                         "rd_latency": lat, "cycles": v["cycles"], "rd_bytes": v["rd_bytes"],
                         "bandwidth": v["rd_bytes"] / v["cycles"] / (16 * ports)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def rtl_table(rows: list[dict]) -> str:
    out = ["| build | config | weight FIFO (beats) | window | read latency (cycles) | ns at 250 MHz | CYCLES (simulated) "
           "| read bandwidth / port peak | vs 24 cycles |", "|---|---|---|---|---|---|---|---|---|"]
    base = {_key(r)[:3]: r["cycles"] for r in rows if r["rd_latency"] == 24}
    for r in sorted(rows, key=_key):
        b = base.get(_key(r)[:3])
        rel = f"{b / r['cycles']:.2f}" if b else "-"
        out.append(f"| {r['hw']} | {r['config']} | {r['weight_fifo']} | {r.get('window', 'fixed')} | {r['rd_latency']} | "
                   f"{4 * r['rd_latency']} | "
                   f"{r['cycles']} | {r['bandwidth']:.3f} | {rel} |")
    return "\n".join(out)


def _key(r: dict) -> tuple:
    """(build, FIFO depth, window kind, latency): what identifies a recorded row."""
    return r["hw"], r["weight_fifo"], r.get("window", "fixed"), r["rd_latency"]


def model_table() -> str:
    from mmfree.sim import perf as P

    dims = P.dims_for("1.3B")
    builds = (("4 weight ports (board build)", None), ("1 weight port", P.default_hw(dims, None, 1, weight_ports=1)))
    out = ["| read latency (ns) | cycles at 250 MHz | " + " | ".join(f"tokens/s, {n}" for n, _ in builds) + " |",
           "|---|---|" + "---|" * len(builds)]
    for ns in MODEL_NS:
        tps = [P.predict(dims, "kv260", 250, hw=hw, latency_ns=ns)["tokens_per_s"] for _, hw in builds]
        out.append(f"| {ns} | {ns / 4:g} | " + " | ".join(f"{t:.1f}" for t in tps) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rtl", action="store_true", help="simulate the RTL at each latency")
    ap.add_argument("--model", action="store_true", help="tokens/s of the KV260 1.3B builds against latency (modeled)")
    ap.add_argument("--hw", default="default,ports4", help="builds: default, ports4")
    ap.add_argument("--latency", default="24,75,125,300", help="read latencies, cycles")
    ap.add_argument("--weight-fifo", type=int, default=None, help="weight read FIFO depth, beats (bench override)")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    if not (args.rtl or args.model):
        ap.error("give --rtl and/or --model")
    if args.weight_fifo is not None:
        if args.weight_fifo < 16:
            ap.error(f"--weight-fifo must be >= 16 beats (a burst), got {args.weight_fifo}")
        override_weight_fifo(args.weight_fifo)
    if args.rtl:
        rows = rtl_rows([h.strip() for h in args.hw.split(",")], [int(x) for x in args.latency.split(",")])
        print(rtl_table(rows))
        if args.record:
            record_rtl(rows)
    if args.model:
        text = model_table()
        print(text)
        if args.record:
            write_section("performance.md", "latency-model",
                          "Tokens/s of the 1.3B model on the KV260 at 250 MHz against the DDR read latency (modeled: "
                          "`mmfree.sim.perf.predict(..., latency_ns=...)`, i.e. `mmfree perf --model 1.3B --board kv260 "
                          "--latency-ns N`; the other assumptions as listed by `mmfree perf`), from "
                          f"`{command_line()}`.\n\n" + text)
    return 0


def record_rtl(rows: list[dict]) -> None:
    from mmfree.atomic import write_text

    rec = json.loads(DATA_FILE.read_text()) if DATA_FILE.exists() else {"runs": [], "commands": []}
    keep = {_key(r) for r in rows}
    rec["runs"] = [r for r in rec["runs"] if _key(r) not in keep] + rows
    if command_line() not in rec["commands"]:
        rec["commands"].append(command_line())
    write_text(DATA_FILE, json.dumps(rec, indent=1) + "\n")
    write_section("performance.md", "latency-rtl",
                  "Weight streaming against read latency on the RTL (simulated: Verilator, HDL DDR model 16 bytes "
                  "per cycle per port; one pass, k = 1, logits not written), from "
                  + "; ".join(f"`{c}`" for c in rec["commands"]) + ".\n\n" + rtl_table(rec["runs"]))


if __name__ == "__main__":
    sys.exit(main())

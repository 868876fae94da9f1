"""Bandwidth efficiency of the accelerator RTL per model shape, measured in Verilator with the fixed-bandwidth
DDR model (one 16-byte beat per cycle, 24-cycle read latency).

For each shape a random model is exported (cached), the accelerator generates ``--tokens`` tokens greedily
after a 3-token prompt, every pass is checked bit for bit against IntModel, and the decode passes give
cycles per token and the roofline fraction

    roofline_fraction = (must_move_bytes per token / 16 bytes per cycle) / cycles per token

with ``must_move_bytes`` = :func:`mmfree.rtl.compiler.must_move_bytes` (packed ternary weights at 5 trits per
byte without row padding, the norm vectors, the state in/out, the token's embedding row, argmax, logits).

    python bench/sim_roofline.py [--shapes 370M-width,d200,...] [--k 1,4] [--tokens 4] [--record]

--record writes the table into docs/sim.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, export_random_model, write_section  # noqa: E402

#: name -> (d, intermediate, layers, vocab)
SHAPES = {
    "d64-L1": (64, 172, 1, 97),
    "d200-L3": (200, 84, 3, 333),
    "default-like": (240, 640, 4, 4096),
    "370M-width-L1": (1024, 2816, 1, 512),
    "370M-width-L2": (1024, 2816, 2, 512),
}


def export_shape(name: str) -> Path:
    d, inter, L, V = SHAPES[name]
    return export_random_model(name, d, inter, L, V, "bench-exports")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {', '.join(SHAPES)}")
    ap.add_argument("--k", default="1,4", help="tokens per pass to measure")
    ap.add_argument("--tokens", type=int, default=4, help="tokens to generate per run")
    ap.add_argument("--record", action="store_true", help="write the table into docs/sim.md")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from mmfree.sim.accel import simulate_generation

    rows = []
    for name in args.shapes.split(","):
        path = export_shape(name)
        for k in [int(x) for x in args.k.split(",")]:
            t0 = time.perf_counter()
            r = simulate_generation(str(path), [1, 2, 3], args.tokens, progress=False, k=k)
            d, inter, L, V = SHAPES[name]
            row = {"shape": name, "d": d, "inter": inter, "layers": L, "vocab": V, "k": k,
                   "bit_exact": r["bit_exact"], "cycles_per_token": r["cycles_per_token"],
                   "must_move_bytes_per_token": r["must_move_bytes_per_token"],
                   "roofline_fraction": r["roofline_fraction"], "stall_cycles": r["stall_cycles"],
                   "decode_passes": r["decode_passes"], "wall_s": time.perf_counter() - t0}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    table = ["| shape | d | I | L | V | k | bit-exact | cycles/token | must-move bytes/token | roofline fraction |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['shape']} | {r['d']} | {r['inter']} | {r['layers']} | {r['vocab']} | {r['k']} | "
                     f"{r['bit_exact']} | {r['cycles_per_token']:.0f} | {r['must_move_bytes_per_token']:.0f} | "
                     f"{r['roofline_fraction']:.3f} |")
    text = "\n".join(table)
    print(text)
    if args.record:
        body = (f"Measured with `{command_line()}` (Verilator, 128-bit bus, DDR model: 16 bytes/cycle, "
                f"read latency 24 cycles; random weights; prompt of 3 tokens, {args.tokens} generated, decode "
                f"passes only):\n\n" + text)
        write_section("sim.md", "roofline", body)
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

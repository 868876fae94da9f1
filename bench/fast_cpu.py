"""Fast CPU decode (mmfree.hls.fastcpu) next to the numpy integer reference, one run, random weights.

Builds random images of the 370M and 1.3B shapes (mmfree.hls.fastcpu.random_image: no float model needed),
times FastIntModel.step with 1 thread and with every core, checks its first logits equal IntModel's at 370M,
and times IntModel.step (the numpy reference, float32 BLAS over unpacked weights) at 370M. Prints tok/s and
the ratio fast / reference (target >= 10x at 370M).

    python bench/fast_cpu.py [--tokens 32] [--ref-tokens 4] [--shapes 370M,1.3B] [--json] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, write_section  # noqa: E402

from mmfree.hls.fastcpu import FastIntModel, random_image  # noqa: E402
from mmfree.pymodel import layout as LY  # noqa: E402
from mmfree.pymodel.config import MMFreeConfig  # noqa: E402
from mmfree.pymodel.intmodel import IntModel  # noqa: E402


def tok_per_s(model, n: int) -> float:
    """Decode tokens/s of ``model.step`` over ``n`` steps after one warm-up step."""
    st, _ = model.step(model.initial_state(), 1)
    t0 = time.perf_counter()
    for i in range(n):
        st, _ = model.step(st, 2 + i % 50)
    return n / (time.perf_counter() - t0)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32, help="decode steps timed for the fast path")
    ap.add_argument("--ref-tokens", type=int, default=4, help="decode steps timed for the numpy reference")
    ap.add_argument("--shapes", default="370M,1.3B")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--record", action="store_true", help="write the table into docs/energy.md")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    rows, ref370 = [], None
    for shape in args.shapes.split(","):
        dims = LY.Dims.of(MMFreeConfig.preset(shape))
        im = IntModel(*random_image(dims))
        row = {"shape": shape}
        for th in sorted({1, cores}):
            fast = FastIntModel(im, threads=th)
            row[f"fast_tok_s_{th}t"] = tok_per_s(fast, args.tokens)
        row["packed_mb"] = fast.packed_bytes() / 1e6
        if shape == "370M":
            _, lf = fast.step(fast.initial_state(), 1)
            _, lr = im.step(im.initial_state(), 1)
            row["first_logits_equal"] = bool(np.array_equal(lf, lr))
            im.warm()
            ref370 = row["ref_tok_s"] = tok_per_s(im, args.ref_tokens)
        rows.append(row)
        del im, fast
    for r in rows:
        best = max(v for k, v in r.items() if k.startswith("fast_tok_s"))
        r["fast_over_ref"] = best / ref370 if ref370 and r["shape"] == "370M" else None
    if args.json:
        print(json.dumps(rows, indent=1))
    cols = [f"fast_tok_s_{t}t" for t in sorted({1, cores})]
    table = ("| shape | " + " | ".join(f"fast tok/s, {c.split('_')[-1][:-1]} thread(s)" for c in cols)
             + " | numpy IntModel tok/s | fast / numpy (best) | packed weights MB |\n|---" * 1
             + "|---" * (len(cols) + 3) + "|\n")
    for r in rows:
        table += (f"| {r['shape']} | " + " | ".join(f"{r[c]:.2f}" for c in cols)
                  + (f" | {r['ref_tok_s']:.2f} | " if "ref_tok_s" in r else " | not run (float32 copies: 4 bytes/weight) | ")
                  + (f"{r['fast_over_ref']:.1f}x" if r["fast_over_ref"] else "-")
                  + f" | {r['packed_mb']:.1f} |\n")
    body = (f"Measured on {cpu_name()} ({cores} cores visible, shared with other jobs), random weights, one token "
            f"per step, batch 1; the fast path's first logits equal IntModel's at 370M: "
            f"{rows[0].get('first_logits_equal')}.\n\n{table}\nCommand: `{command_line()}`")
    print(body)
    if args.record:
        write_section("energy.md", "fastcpu", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

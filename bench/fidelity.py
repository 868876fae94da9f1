"""Fidelity of the integer reference against the float model, teacher-forced on held-out text.

Measures next-token top-1 agreement between IntModel and the float model (official fake quantization)
and the perplexity of both (and of the hardware-exact float mode, which must equal IntModel), on the
validation split of the stdlib corpus the default model never trained on.

    python bench/fidelity.py [--model default] [--tokens 20000] [--record]

--record writes the results into docs/numerics.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import command_line, write_section  # noqa: E402

from mmfree.pymodel import data as D  # noqa: E402
from mmfree.pymodel.checkpoint import load_model  # noqa: E402
from mmfree.pymodel.intmodel import open_int_model  # noqa: E402
from mmfree.pymodel.tokenizer import load_tokenizer  # noqa: E402


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=20000, help="held-out tokens to score")
    ap.add_argument("--window", type=int, default=512, help="tokens per forward call (state carried across)")
    ap.add_argument("--record", action="store_true", help="write the results into docs/numerics.md")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    model = load_model(args.model)
    model64 = load_model(args.model).double()   # the float model's own rounding noise, for reference
    im, _ = open_int_model(args.model)
    tok = load_tokenizer(args.model)
    _, val = D.split(D.stdlib_documents())
    ids = D.tokenize(val, tok, tok.token_id("</s>") or 2)[: args.tokens + 1].astype(np.int64)
    n = len(ids) - 1
    t0 = time.perf_counter()
    agree = agree64 = 0
    nll_f = nll_i = 0.0
    state_f = model.initial_state(1)
    state_64 = model64.initial_state(1)
    h = im.initial_state().h
    for s in range(0, n, args.window):
        chunk = ids[s:min(s + args.window, n)]
        target = ids[s + 1:s + 1 + len(chunk)]
        with torch.no_grad():
            lf, state_f = model(torch.from_numpy(chunk)[None], state=state_f, return_state=True)
            l64, state_64 = model64(torch.from_numpy(chunk)[None], state=state_64, return_state=True)
        lf = lf[0].double().numpy()
        agree64 += int(np.sum(lf.argmax(-1) == l64[0].numpy().argmax(-1)))
        hs, li = im.forward(h, chunk)
        h = hs[-1]
        li = im.to_float(li)
        agree += int(np.sum(lf.argmax(-1) == li.argmax(-1)))
        rows = np.arange(len(chunk))
        nll_f -= float(log_softmax(lf)[rows, target].sum())
        nll_i -= float(log_softmax(li)[rows, target].sum())
    res = {
        "model": args.model, "tokens": n, "top1_agreement": agree / n, "float32_vs_float64_agreement": agree64 / n,
        "ppl_float": math.exp(nll_f / n), "ppl_int": math.exp(nll_i / n),
        "ppl_rel_diff": math.exp(nll_i / n) / math.exp(nll_f / n) - 1, "seconds": time.perf_counter() - t0,
    }
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"held-out tokens: {n}\ntop-1 agreement IntModel vs float: {res['top1_agreement'] * 100:.2f} % "
              f"(float32 vs float64 float model: {res['float32_vs_float64_agreement'] * 100:.2f} %)\n"
              f"perplexity float {res['ppl_float']:.3f}, IntModel {res['ppl_int']:.3f} "
              f"({res['ppl_rel_diff'] * 100:+.2f} %)")
    if args.record:
        body = (f"Measured on {platform.python_version()} / {platform.machine()}, model `{args.model}`, "
                f"{n} held-out tokens (validation split of the stdlib corpus), teacher forced:\n\n"
                f"| metric | value | target |\n|---|---|---|\n"
                f"| top-1 agreement, IntModel vs float model | {res['top1_agreement'] * 100:.2f} % | ≥ 99 % |\n"
                f"| top-1 agreement, float model fp32 vs fp64 (its own noise floor) | "
                f"{res['float32_vs_float64_agreement'] * 100:.2f} % | |\n"
                f"| perplexity, float model (official fake quantization) | {res['ppl_float']:.3f} | |\n"
                f"| perplexity, IntModel (this spec) | {res['ppl_int']:.3f} | within 1 % |\n"
                f"| relative perplexity difference | {res['ppl_rel_diff'] * 100:+.2f} % | |\n\n"
                f"Command: `{command_line()}`")
        write_section("numerics.md", "fidelity", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

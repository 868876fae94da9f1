"""Fidelity of the integer reference against the float model, teacher-forced on held-out text: a thin caller
of `mmfree eval` (:func:`mmfree.pymodel.evaluate.evaluate_corpus`) on two corpora.

* ``stdlib:val``: the validation split of the stdlib corpus (modules the default model never trained on);
* a third-party package's Python sources from this environment (default ``tqdm``): not the training family.

Backends float (fp32), float64 (the float model's own rounding floor) and int (the integer reference).

    python bench/fidelity.py [--model default] [--tokens 10000] [--package tqdm] [--record]

--record writes the results into docs/numerics.md.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, write_section  # noqa: E402

from mmfree.pymodel.evaluate import STDLIB_VAL, evaluate_corpus  # noqa: E402

BACKENDS = ["float", "float64", "int"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=10000, help="tokens to score per corpus")
    ap.add_argument("--package", default="tqdm", help="installed third-party package whose sources form corpus 2")
    ap.add_argument("--record", action="store_true", help="write the results into docs/numerics.md")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pkg_dir = Path(importlib.import_module(args.package).__file__).parent
    pkg = f"{args.package} {importlib.metadata.version(args.package)} sources"
    results = {}
    for label, corpus in ((f"stdlib validation split (Python {platform.python_version()})", [STDLIB_VAL]),
                          (pkg, [str(pkg_dir)])):
        results[label] = evaluate_corpus(args.model, corpus, BACKENDS, args.tokens, progress=not args.json)
    if args.json:
        print(json.dumps(results, indent=2))
    rows = []
    for label, r in results.items():
        ppl = {b["name"]: b["perplexity"] for b in r["backends"]}
        fi, ff = r["agreement"]["float/int"], r["agreement"]["float/float64"]
        rows.append(f"| {label} | {r['tokens']} | {fi['top1'] * 100:.2f} % | {ff['top1'] * 100:.2f} % | "
                    f"{fi['mean_abs_logit_diff']:.4f} | {ff['mean_abs_logit_diff']:.4f} | {ppl['float']:.3f} | "
                    f"{ppl['int']:.3f} ({(ppl['int'] / ppl['float'] - 1) * 100:+.2f} %) |")
    table = ("| corpus | tokens | top-1 agreement int vs float | float fp32 vs fp64 (floor) | mean abs logit diff "
             "int vs float | fp32 vs fp64 | perplexity float | perplexity int |\n|---|---|---|---|---|---|---|---|\n"
             + "\n".join(rows))
    if not args.json:
        print(table)
    if args.record:
        body = (f"Measured on {platform.python_version()} / {platform.machine()}, model `{args.model}`, teacher forced "
                f"(`mmfree eval`), targets: top-1 agreement ≥ 99 %, perplexity within 1 %:\n\n{table}\n\n"
                f"Command: `{command_line()}`; one corpus by hand: `mmfree eval --model {args.model} --corpus "
                f"stdlib:val --backends float,float64,int --tokens {args.tokens}`")
        write_section("numerics.md", "fidelity", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Trigram-draft speculative decoding on held-out code: tokens per verification step and the speedup
in model passes (weight passes) over plain decoding, on the integer reference.

Prompts are windows of the validation split of the stdlib corpus (whole top-level modules the default
model never trained on; the offline trigram table is built from the training split only). Each prompt
is decoded greedily twice, plainly and speculatively, and the two outputs must be identical (the bench
fails otherwise). A sweep over tree shapes, two ablations (no online adaptation; online adaptation
only) and a sampling run (temperature 0.8, multi-candidate rule) follow.

    python bench/speculative.py [--model default] [--prompts 32] [--new-tokens 128] [--record] [--json]

--record writes the results into docs/speculative.md.

    python bench/speculative.py --tree-rules [--prompts 32] [--new-tokens 128] [--record] [--json]

--tree-rules compares the draft tree rules side by side instead (issue 28): the fixed template, the count-guided
rule and the count-guided rule with the prompt-lookup source, at k = 2, 3, 4, 8 tokens per pass, greedy and
sampled (temperature 0.7, top-p 0.95, the multi-candidate rule), on held-out code (third-party packages in the
venv: sources neither the default model nor its table saw) and held-out English (the pydoc topics, validation
split). Each prompt is decoded plainly once per decoding mode; every rule and k is then measured by replaying
its drafts against that output (:func:`mmfree.pymodel.drafters.replay`: exact for greedy, the same distribution
for the sampling rule), and the greedy figures of the first --check prompts are checked step for step against
real speculative decoding on the integer reference. --record writes the table into docs/speculative.md
("tree-rules").
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, write_section  # noqa: E402

from mmfree.pymodel import data as D  # noqa: E402
from mmfree.pymodel import drafters as DR  # noqa: E402
from mmfree.pymodel.generate import generate  # noqa: E402
from mmfree.pymodel.intmodel import IntBackend, open_int_model  # noqa: E402
from mmfree.pymodel.speculative import model_table_path, speculative_generate  # noqa: E402
from mmfree.pymodel.tokenizer import load_tokenizer  # noqa: E402
from mmfree.pymodel.trigram import TrigramTable  # noqa: E402

SWEEP = [(1, 1), (2, 2), (4, 4), (4, 8), (4, 16), (4, 24), (6, 32), (8, 64)]
#: Held-out code for --tree-rules: packages the project installs (pyproject dependencies), never in the corpus.
CODE_PACKAGES = ("amaranth", "numpy", "torch", "tqdm")
TREE_KS = (2, 3, 4, 8)
#: (label, TrigramDrafter keywords) of the rules --tree-rules compares.
TREE_RULES = (("template", dict(tree_rule="template")), ("count-guided", dict(tree_rule="count-guided")),
              ("count-guided + lookup (host)", dict(tree_rule="count-guided", lookup=True)))
SAMPLING = dict(temperature=0.7, top_p=0.95)


def held_out_prompts(tok_dir: str, n: int, length: int, new_tokens: int) -> list[list[int]]:
    """``n`` prompt windows of ``length`` tokens from distinct validation documents, at a position fixed by
    a CRC32 of the document name (reproducible, not cherry-picked)."""
    tok = load_tokenizer(tok_dir)
    val = [d for d in D.split(D.stdlib_documents())[1] if not d.name.startswith("pydoc_data:")]
    encoded = [(d, tok.encode(d.text)) for d in val]
    encoded = [(d, ids) for d, ids in encoded if len(ids) >= length + new_tokens]
    if not encoded:
        raise SystemExit("no validation document is long enough; lower --prompt-tokens/--new-tokens")
    step = max(1, len(encoded) // n)
    out = []
    for d, ids in encoded[::step][:n]:
        start = zlib.crc32(d.name.encode()) % (len(ids) - length - new_tokens + 1)
        out.append(ids[start:start + length])
    return out


def windows(docs, tok, n: int, length: int, new_tokens: int, what: str) -> list[list[int]]:
    """``n`` prompt windows of ``length`` tokens, one per document, spread evenly over ``docs`` (those with room
    for ``new_tokens`` more), each at a position fixed by a CRC32 of the document's name."""
    encoded = [(d, tok.encode(d.text)) for d in docs]
    encoded = [(d, ids) for d, ids in encoded if len(ids) >= length + new_tokens]
    if len(encoded) < n:
        raise SystemExit(f"only {len(encoded)} {what} documents are long enough; lower --prompts/--new-tokens")
    out = []
    for j in range(n):
        d, ids = encoded[j * len(encoded) // n]
        start = zlib.crc32(d.name.encode()) % (len(ids) - length - new_tokens + 1)
        out.append(ids[start:start + length])
    return out


def package_documents(names=CODE_PACKAGES) -> tuple[list, dict]:
    """The ``.py`` files of installed packages (test folders left out), interleaved package by package so an even
    spread takes from each; and the packages' versions."""
    per, versions = [], {}
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"package {name} is not installed (it is a dependency of mmfree: pip install -e .)")
        root = Path(list(spec.submodule_search_locations)[0])
        files = [f for f in sorted(root.rglob("*.py"))
                 if not {"tests", "test", "testing"} & set(f.relative_to(root).parts[:-1])]
        docs = []
        for f in files:
            try:
                docs.append(D.Document(f"{name}/{f.relative_to(root).as_posix()}", f.read_text(encoding="utf-8")))
            except (UnicodeDecodeError, OSError):
                continue
        per.append(docs)
        versions[name] = importlib.metadata.version(name)
    mixed = [docs[i * len(docs) // 64] for i in range(64) for docs in per if docs]    # 64 evenly spaced per package
    return mixed, versions


def replay_all(table, prompts, outputs, k: int, **drafter_kw) -> dict:
    steps = emitted = 0
    for prompt, out in zip(prompts, outputs):
        r = DR.replay(DR.TrigramDrafter(table, **drafter_kw), prompt, out, k)
        steps += r["verify_steps"]
        emitted += r["emitted"]
    return {"tokens_per_step": emitted / steps, "verify_steps": steps, "emitted": emitted}


def tree_rules(im, tok_dir, table, args, log) -> dict:
    """The --tree-rules comparison (see the module docstring)."""
    tok = load_tokenizer(tok_dir)
    code_docs, versions = package_documents()
    english = [d for d in D.split(D.stdlib_documents())[1] if d.name.startswith("pydoc_data:")]
    domains = {"code": windows(code_docs, tok, args.prompts, args.prompt_tokens, args.new_tokens, "package"),
               "English": windows(english, tok, args.prompts, args.prompt_tokens, args.new_tokens, "pydoc topic")}
    res = {"model": args.model, "prompts": args.prompts, "prompt_tokens": args.prompt_tokens,
           "new_tokens": args.new_tokens, "table_info": table.info(), "packages": versions, "sampling": SAMPLING,
           "ks": list(TREE_KS), "rows": [], "checks": []}
    backend, res["plain_decoder"] = plain_backend(im)
    for domain, prompts in domains.items():
        for mode, kw in (("greedy", {}), ("sampled", SAMPLING)):
            t0 = time.perf_counter()
            outs = [generate(backend, p, args.new_tokens, seed=1000 + i, **kw).tokens
                    for i, p in enumerate(prompts)]
            log(f"{domain}, {mode}: {len(prompts)} plain decodes in {time.perf_counter() - t0:.0f} s")
            for label, dkw in TREE_RULES:
                row = {"domain": domain, "decoding": mode, "rule": label,
                       "k": {k: replay_all(table, prompts, outs, k, **dkw) for k in TREE_KS}}
                res["rows"].append(row)
                log(f"  {label:30s} " + "  ".join(f"k={k}: {r['tokens_per_step']:.2f}" for k, r in row["k"].items()))
            if mode == "greedy" and domain == "code":
                res["checks"] = check_against_real(im, table, prompts[:args.check], outs[:args.check])
    return res


def plain_backend(im):
    """(backend, name) for the plain decodes: the fast CPU decoder (hls/fastcpu.py: logits equal to IntModel's,
    about 30x faster on the default model) where it builds (g++), else the integer reference itself."""
    from mmfree import MmfreeError

    try:
        from mmfree.hls.fastcpu import FastBackend, FastIntModel

        return FastBackend(FastIntModel(im)), "fast CPU decoder, hls/fastcpu.py, whose logits equal IntModel's"
    except (MmfreeError, OSError) as exc:
        print(f"fast CPU decoder unavailable ({exc}); decoding with IntModel", file=sys.stderr)
        return IntBackend(im), "IntModel"


def check_against_real(im, table, prompts, outs, k: int = 4) -> list[dict]:
    """Greedy speculative decoding on the integer reference for both rules: the tokens must equal the plain
    output and the verification steps the replay's, else the bench fails."""
    checks = []
    for rule in ("template", "count-guided"):
        for prompt, out in zip(prompts, outs):
            r = speculative_generate(im, prompt, len(out), max_draft=k - 1, max_nodes=k - 1, table=table,
                                     tree_rule=rule, log=lambda m: None)
            rep = DR.replay(DR.TrigramDrafter(table, tree_rule=rule), prompt, out, k)
            if r.tokens != out or r.extra["verify_steps"] != rep["verify_steps"] or \
                    r.extra["accepted_depth_histogram"][:k] != rep["histogram"]:
                raise SystemExit(f"replay and speculative decoding disagree ({rule}, k = {k}): "
                                 f"{r.extra['verify_steps']} vs {rep['verify_steps']} steps")
            checks.append({"rule": rule, "k": k, "verify_steps": rep["verify_steps"]})
    return checks


def render_tree_rules(res: dict, cmd: str) -> str:
    ti = res["table_info"]
    pk = ", ".join(f"{n} {v}" for n, v in res["packages"].items())
    ks = res["ks"]
    lines = [
        f"Measured: model `{res['model']}`, integer reference; its own table ({ti['contexts']} contexts, built from "
        f"{ti['meta'].get('tokens', '?')} stdlib training-split tokens), adapted online. Per domain "
        f"{res['prompts']} prompts of {res['prompt_tokens']} tokens, {res['new_tokens']} new tokens each. Held-out "
        f"code: {pk} (installed in the venv; never in the model's or the table's corpus). English: the pydoc topics "
        "(validation split). Greedy, and sampled at temperature 0.7, top-p 0.95 (the multi-candidate rule; seed "
        "1000 + prompt index). "
        "Tokens per verification step (the greedy maximum is k):",
        "",
        "| held out | decoding | tree rule | " + " | ".join(f"k = {k}" for k in ks) + " |",
        "|---|---|---|" + "---|" * len(ks),
    ]
    for r in res["rows"]:
        vals = [r["k"][k]["tokens_per_step"] for k in ks]
        lines.append(f"| {r['domain']} | {r['decoding']} | {r['rule']} | " + " | ".join(f"{v:.2f}" for v in vals)
                     + " |")
    n = len(res["checks"])
    lines += ["", f"How: each prompt is decoded plainly once per decoding mode (by the {res['plain_decoder']}), "
              "then each rule's drafts are replayed "
              "against that output (`mmfree.pymodel.drafters.replay`): exact for greedy decoding; for sampling the "
              "multi-candidate rule emits each token with the model's probability and accepts a drafted child exactly "
              "when the emitted token is that child, so replaying a plain sample has the same distribution (the "
              "sampled rows share their samples across rules and k). "
              f"Checked: {n} greedy runs of real speculative decoding (k = 4, both rules) took exactly the replay's "
              "verification steps.", "", f"Command: `{cmd}`"]
    return "\n".join(lines)


def repeated_trigram_fraction(prompts, outputs) -> float:
    """Fraction of output tokens whose trigram (two tokens before + the token) occurred earlier in the same
    prompt + output: how much of the text an adaptive table could have seen before."""
    hit = total = 0
    for p, o in zip(prompts, outputs):
        seq = list(p) + list(o)
        seen = {tuple(seq[i - 2:i + 1]) for i in range(2, len(p))}
        for i in range(max(2, len(p)), len(seq)):
            tri = tuple(seq[i - 2:i + 1])
            hit += tri in seen
            total += 1
            seen.add(tri)
    return hit / max(1, total)


def run(im, prompts, plain, new_tokens, table, **kw) -> dict:
    steps = emitted = passes = plain_passes = nodes = 0
    hist = None
    t0 = time.perf_counter()
    for prompt, ref in zip(prompts, plain):
        r = speculative_generate(im, prompt, new_tokens, table=table, **kw)
        if kw.get("temperature", 0.0) == 0.0 and r.tokens != ref:
            raise SystemExit(f"speculative output differs from plain greedy output for prompt {prompt[:8]}...")
        ex = r.extra
        steps += ex["verify_steps"]
        emitted += len(r.tokens) - 1
        passes += ex["model_passes"]
        plain_passes += ex["plain_passes"]
        nodes += ex["mean_draft_nodes"] * ex["verify_steps"]
        h = ex["accepted_depth_histogram"]
        hist = h if hist is None else [a + b for a, b in zip(hist, h + [0] * (len(hist) - len(h)))]
    return {"tokens_per_step": emitted / steps, "speedup_passes": plain_passes / passes,
            "verify_steps": steps, "model_passes": passes, "plain_passes": plain_passes,
            "mean_tree_nodes": nodes / steps, "accepted_depth_histogram": hist,
            "seconds": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="checkpoint, export directory or 'default'")
    ap.add_argument("--table", default=None, help="trigram table (default: the model's own)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--max-draft", type=int, default=4)
    ap.add_argument("--max-nodes", type=int, default=24)
    ap.add_argument("--no-sweep", action="store_true", help="only the main configuration")
    ap.add_argument("--record", action="store_true", help="write the results into docs/speculative.md")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tree-rules", action="store_true", help="compare the draft tree rules (module docstring)")
    ap.add_argument("--check", type=int, default=2, help="--tree-rules: prompts checked against real decoding")
    args = ap.parse_args()

    im, tok_dir = open_int_model(args.model)
    im.warm()
    table_path = Path(args.table) if args.table else model_table_path(im, tok_dir)
    table = TrigramTable.load(table_path)
    if args.tree_rules:
        log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
        res = tree_rules(im, tok_dir, table, args, log)
        if args.json:
            print(json.dumps(res, indent=2, default=str))
        if args.record:
            write_section("speculative.md", "tree-rules", render_tree_rules(res, command_line()))
        return 0
    prompts = held_out_prompts(tok_dir, args.prompts, args.prompt_tokens, args.new_tokens)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    log(f"{len(prompts)} held-out prompts x {args.new_tokens} new tokens; table {table_path} "
        f"({table.n_contexts} contexts)")

    t0 = time.perf_counter()
    plain = [generate(IntBackend(im), p, args.new_tokens).tokens for p in prompts]
    plain_s = time.perf_counter() - t0
    res = {"model": args.model, "prompts": len(prompts), "prompt_tokens": args.prompt_tokens,
           "new_tokens": args.new_tokens, "table": str(table_path), "table_info": table.info(),
           "plain_seconds": plain_s, "repeated_trigram_fraction": repeated_trigram_fraction(prompts, plain)}
    main_cfg = dict(max_draft=args.max_draft, max_nodes=args.max_nodes)
    res["main"] = {**main_cfg, **run(im, prompts, plain, args.new_tokens, table, **main_cfg)}
    m = res["main"]
    log(f"greedy, depth {args.max_draft}, {args.max_nodes} nodes: {m['tokens_per_step']:.2f} tokens/step, "
        f"{m['speedup_passes']:.2f}x fewer model passes (outputs identical to plain greedy)")
    res["main"]["cpu_speedup"] = plain_s / m["seconds"]

    res["ablations"] = {}
    res["ablations"]["no online update"] = run(im, prompts, plain, args.new_tokens, table, adapt=False, **main_cfg)
    online_only = TrigramTable.empty(table.vocab_size, table.params, table.tokenizer_sha256)
    online_only.update(None, 0, 0)       # one bigram entry: not "empty", so drafting stays on
    res["ablations"]["online update only (no corpus)"] = run(im, prompts, plain, args.new_tokens, online_only,
                                                             **main_cfg)
    for name, r in res["ablations"].items():
        log(f"  {name}: {r['tokens_per_step']:.2f} tokens/step, {r['speedup_passes']:.2f}x")
    res["sampling"] = run(im, prompts, plain, args.new_tokens, table, temperature=0.8, seed=1, **main_cfg)
    log(f"  sampling (T=0.8): {res['sampling']['tokens_per_step']:.2f} tokens/step, "
        f"{res['sampling']['speedup_passes']:.2f}x")
    if not args.no_sweep:
        res["sweep"] = []
        for depth, nodes in SWEEP:
            if (depth, nodes) == (args.max_draft, args.max_nodes):
                r = {k: v for k, v in res["main"].items() if k not in ("max_draft", "max_nodes", "cpu_speedup")}
            else:
                r = run(im, prompts, plain, args.new_tokens, table, max_draft=depth, max_nodes=nodes)
            res["sweep"].append({"max_draft": depth, "max_nodes": nodes, **r})
            log(f"  depth {depth}, {nodes:2d} nodes: {r['tokens_per_step']:.2f} tokens/step, "
                f"{r['speedup_passes']:.2f}x, tree {r['mean_tree_nodes']:.1f} nodes")
    if args.json:
        print(json.dumps(res, indent=2, default=str))
    if args.record:
        write_section("speculative.md", "results", render(res, command_line()))
    return 0


def render(res: dict, cmd: str) -> str:
    m = res["main"]
    ti = res["table_info"]
    lines = [
        f"Model `{res['model']}`, integer reference, {res['prompts']} prompts of {res['prompt_tokens']} "
        f"tokens from the held-out validation split, {res['new_tokens']} new tokens each; the model's own table "
        f"({ti['contexts']} contexts, built from {ti['meta'].get('tokens', '?')} training-split tokens). "
        "Greedy outputs were checked identical to plain greedy decoding. "
        f"{100 * res['repeated_trigram_fraction']:.0f}% of the greedy output tokens repeat a trigram that occurred "
        "earlier in the same prompt + output (small models repeat themselves; the online update exploits it).",
        "",
        "| configuration | tokens / verification step | speedup in model passes | mean tree nodes |",
        "|---|---|---|---|",
        f"| **greedy, depth {m['max_draft']}, {m['max_nodes']} nodes (default)** | **{m['tokens_per_step']:.2f}** | "
        f"**{m['speedup_passes']:.2f}x** | {m['mean_tree_nodes']:.1f} |",
    ]
    for name, r in res["ablations"].items():
        lines.append(f"| {name} | {r['tokens_per_step']:.2f} | {r['speedup_passes']:.2f}x | {r['mean_tree_nodes']:.1f} |")
    s = res["sampling"]
    lines.append(f"| sampling, temperature 0.8 (multi-candidate rule) | {s['tokens_per_step']:.2f} | "
                 f"{s['speedup_passes']:.2f}x | {s['mean_tree_nodes']:.1f} |")
    if "sweep" in res:
        lines += ["", "Tree shape (greedy): depth = draft tokens per path, nodes = template size.", "",
                  "| depth | nodes | tokens / step | speedup in model passes | mean tree nodes |", "|---|---|---|---|---|"]
        for r in res["sweep"]:
            lines.append(f"| {r['max_draft']} | {r['max_nodes']} | {r['tokens_per_step']:.2f} | "
                         f"{r['speedup_passes']:.2f}x | {r['mean_tree_nodes']:.1f} |")
    h = m["accepted_depth_histogram"]
    lines += ["", "Accepted draft tokens per step (default configuration): "
              + ", ".join(f"{d}: {c}" for d, c in enumerate(h)) + ".",
              "", f"Speedup in model passes = plain passes / speculative passes, the prompt pass counted in both "
              f"(plain: {m['plain_passes']}, speculative: {m['model_passes']}). On this CPU the numpy reference "
              f"ran {m['cpu_speedup']:.2f}x faster in wall time ({platform.machine()}); that number depends on the "
              "reference's per-call overhead and says nothing about the accelerator.",
              "", f"Command: `{cmd}`"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

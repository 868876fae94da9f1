"""`mmfree generate`, `mmfree train`, `mmfree export`, `mmfree eval` (the pymodel area's commands)."""

from __future__ import annotations

import math
import sys

from mmfree import MmfreeError
from mmfree.cli import add_subcommand, print_json
from mmfree.cli_args import add_json, add_model, add_prompt, choices, parse_ids
from mmfree.pymodel.config import Kernels, Numerics, Parallel, TrainDtype


def register(sub) -> None:
    p = add_subcommand(
        sub, "generate", _generate, "generate text with the float model or the integer reference",
        "Encodes --prompt with the checkpoint's tokenizer (or takes --prompt-ids), adding BOS when its\n"
        "tokenizer_config.json asks for it as transformers.AutoTokenizer does (the official checkpoints), then decodes\n"
        "--max-new-tokens tokens. --backend float runs the PyTorch model; --backend int runs the\n"
        "bit-exact integer reference on an exported image (exported on the fly when --model is a float\n"
        "checkpoint). Temperature 0 is greedy. --json prints {tokens, text, prompt_ids, tokens_per_s, ...}.",
    )
    add_model(p, note="an export directory for --backend int only")
    add_prompt(p, default_text=None)
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--backend", choices=["float", "int", "hardware-float"], default="float",
                   help="float: PyTorch (official fake quantization); int: the integer reference; "
                        "hardware-float: PyTorch in hardware-exact mode")
    p.add_argument("--draft", choices=["none", "trigram"], default="none",
                   help="speculative decoding with the trigram drafter (int backend)")
    p.add_argument("--max-draft", type=int, default=4, help="draft tree depth (tokens per path) per verification step")
    p.add_argument("--draft-nodes", type=int, default=None, help="draft tree size (nodes per verification step)")
    p.add_argument("--tree-rule", choices=["count-guided", "template"], default=None,   # trigram.TREE_RULES
                   help="draft tree shape: count-guided (the most likely nodes by the table's counts) or template "
                        "(fixed rank paths, depth --max-draft); default: docs/speculative.md")
    p.add_argument("--trigram-table", default=None, help="trigram table file (default: the model's own)")
    p.add_argument("--stop-at-eos", action="store_true", help="stop after the end-of-sequence token")
    add_json(p)

    p = add_subcommand(
        sub, "export", _export, "turn a float checkpoint into the hardware image (packed ternary weights, scales, LUTs)",
        "Writes OUT/manifest.json (config, layout, per-tensor offsets and sha256, per-BitLinear constants,\n"
        "format and numerics-spec versions) and OUT/weights.bin (ternary weights at 1.6 bits/weight, 31-bit\n"
        "norm-vector mantissas, int32 embedding rows, lookup tables), plus tokenizer.json (and its\n"
        "tokenizer_config.json) when the checkpoint has them. Streams: one tensor in memory at a time.\n"
        "The image is what the integer reference, the RTL simulation, the HLS harness and the board load.\n"
        "Formats: docs/numerics.md. The directory is written atomically.",
    )
    add_model(p, kinds=("default", "checkpoint"))
    p.add_argument("--out", required=True, help="output directory: new or empty (an earlier export is replaced "
                                                "atomically with --force; never the checkpoint's own directory)")
    p.add_argument("--force", action="store_true", help="replace an earlier export at --out")
    add_json(p, "a summary as JSON")

    p = add_subcommand(
        sub, "eval", _eval, "perplexity of several backends on a corpus, and their agreement (teacher forced)",
        "Encodes the corpus with the model's tokenizer (documents separated by EOS), takes the first --tokens\n"
        "tokens and scores them with every backend, window by window with the recurrent state carried:\n"
        "perplexity per backend, and per pair of backends the top-1 agreement and the mean |logit difference|.\n"
        "Backends: float (PyTorch, float32), float64 (the float model's own rounding floor), hardware-float\n"
        "(PyTorch in hardware-exact mode), int (the integer reference on the exported image; the only one an\n"
        "export directory can run). --corpus stdlib:val is the held-out split of the default model's corpus.\n"
        "--json prints {model, corpus, tokens, backends: [{name, perplexity, mean_nll}], agreement: {\"a/b\":\n"
        "{top1, mean_abs_logit_diff}}}.",
    )
    add_model(p, note="an export directory runs the int backend only")
    p.add_argument("--corpus", nargs="+", required=True, help="text files, directories (*.py, *.txt, *.md) or stdlib:val")
    p.add_argument("--backends", default="float,int", help="comma-separated: float, float64, hardware-float, int")
    p.add_argument("--tokens", type=int, default=5000, help="tokens to score")
    p.add_argument("--window", type=int, default=512, help="tokens per forward call (state carried across)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add_subcommand(
        sub, "train", _train, "train a ternary model (CPU here; CUDA and torchrun multi-GPU where available)",
        "Text corpus -> tokenizer (a byte-level BPE is trained unless --tokenizer is given) -> packed\n"
        "token stream -> AdamW with warm-up, cosine decay, the LR halved at the midpoint and weight decay\n"
        "off for the second half. Writes OUT/model (HF layout, with tokenizer.json and training.json)\n"
        "and resumable checkpoints in OUT/checkpoints/last, atomically. Without --corpus it trains on\n"
        "the Python standard library's sources and pydoc topics (how the default model was made).\n"
        "Several processes: `torchrun --nproc_per_node N -m mmfree.cli train ...`.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--corpus", nargs="*", default=[], help="text files or directories (default: the Python stdlib)")
    p.add_argument("--data", default=None, help="a `mmfree data prepare` directory (instead of --corpus/--tokenizer)")
    p.add_argument("--preset", default=None, choices=["370M", "1.3B", "2.7B"],
                   help="official model shape and recipe (docs/training.md); flags given explicitly override it")
    p.add_argument("--config", default=None, help="JSON/YAML file of TrainConfig fields (may name a preset); "
                                                 "explicit flags override it")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--keep", type=int, default=None,
                   help="also keep the N newest checkpoints as OUT/checkpoints/step-* (default 0)")
    p.add_argument("--log-dir", default=None, help="write train.jsonl and TensorBoard events here")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or checkpoint dir to reuse instead of training a BPE")
    p.add_argument("--vocab-size", type=int, default=None, help="vocabulary of the trained BPE (default 4096)")
    p.add_argument("--init", default=None, help="start from this checkpoint (fine-tuning) instead of random weights")
    p.add_argument("--hidden-size", type=int, default=None, help="(default 240)")
    p.add_argument("--layers", type=int, default=None, help="(default 4)")
    p.add_argument("--intermediate-size", type=int, default=None, help="(default 640)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="sequences per optimizer step, all processes and micro-batches together (default 16)")
    p.add_argument("--seq-len", type=int, default=None, help="(default 256)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 4e-3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 100)")
    p.add_argument("--weight-decay", type=float, default=None, help="(default 0.1)")
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=None, help="(default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", choices=choices(TrainDtype), default=None, help="autocast dtype (default float32)")
    p.add_argument("--numerics", choices=choices(Numerics), default=None,
                   help="fake: the official fake quantization; hardware: train on exactly what the hardware computes")
    p.add_argument("--kernels", choices=choices(Kernels), default=None,
                   help="auto: Triton on CUDA, plain torch elsewhere")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute layers in backward to save memory")
    p.add_argument("--parallel", choices=choices(Parallel), default=None,
                   help="several processes: DistributedDataParallel, or FSDP when the model does not fit (auto)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last")
    p.add_argument("--force", action="store_true", help="replace an earlier `mmfree train` output at --out")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json(p, "the training summary as JSON at the end")

    p = add_subcommand(sub, "data", None, "prepare training data (pre-tokenised memmap shards)")
    q = add_subcommand(
        p.add_subparsers(dest="data_cmd", required=True, metavar="{prepare}"), "prepare", _data_prepare,
        "tokenise a corpus into uint16/uint32 memmap shards + meta.json for `mmfree train --data`",
        "Documents: the blank-line-separated blocks of each --corpus file (one per row of --hf-dataset);\n"
        "identical documents are merged, then a seeded hold-out of --val-fraction of them is validation,\n"
        "so no document is in both splits. Writes OUT/train.bin, OUT/val.bin, OUT/tokenizer.json and\n"
        "OUT/meta.json atomically. --hf-dataset reads local files / the local HF cache (HF_DATASETS_OFFLINE=1).",
    )
    q.add_argument("--corpus", nargs="+", default=None, help="text files or directories")
    q.add_argument("--hf-dataset", default=None, help="Hugging Face dataset NAME[:SPLIT] with a 'text' column")
    q.add_argument("--tokenizer", required=True, help="tokenizer.json or a checkpoint directory")
    q.add_argument("--out", required=True, help="output directory: new or empty (an earlier one is replaced "
                                                "with --force)")
    q.add_argument("--val-fraction", type=float, default=0.1, help="share of the documents held out")
    q.add_argument("--seed", type=int, default=0, help="seed of the hold-out")
    q.add_argument("--force", action="store_true", help="replace an earlier `mmfree data prepare` output")
    add_json(q, "meta.json's summary")


def _load_prompt(args, tok_source):
    if args.prompt_ids is not None:
        return parse_ids(args.prompt_ids), None
    from mmfree.pymodel.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_source)
    text = args.prompt if args.prompt is not None else ""
    ids = tok.encode_prompt(text)   # with BOS where the checkpoint's tokenizer config asks for it
    if not ids:
        raise MmfreeError("the prompt encodes to no tokens; give --prompt TEXT or --prompt-ids")
    return ids, tok


def _generate(args) -> int:
    from mmfree.pymodel.generate import TorchBackend, generate

    if args.max_new_tokens < 0:
        raise MmfreeError("--max-new-tokens must be >= 0")
    if args.temperature < 0:
        raise MmfreeError("--temperature must be >= 0")
    if not 0 < args.top_p <= 1:
        raise MmfreeError("--top-p must be in (0, 1]")
    extra = {}
    if args.backend in ("float", "hardware-float"):
        if args.draft != "none" or args.tree_rule is not None:
            raise MmfreeError("--draft trigram (and --tree-rule) runs on --backend int (and on `mmfree sim`)")
        from mmfree.pymodel.checkpoint import load_model

        model = load_model(args.model)
        if args.backend == "hardware-float":
            model.numerics = "hardware"
        backend = TorchBackend(model)
        tok_source = args.model
    else:
        from mmfree.pymodel.intmodel import IntBackend, open_int_model

        im, tok_source = open_int_model(args.model)
        backend = IntBackend(im)
    if args.tree_rule is not None and args.draft != "trigram":
        raise MmfreeError("--tree-rule chooses the shape of trigram draft trees: add --draft trigram")
    prompt_ids, tok = _load_prompt(args, tok_source)
    eos = 2 if args.stop_at_eos else None
    stream = None if args.json else TextStream(tok, args.prompt or "")
    try:
        if args.draft == "trigram":
            from mmfree.pymodel.speculative import speculative_generate

            extra_kw = {} if args.draft_nodes is None else {"max_nodes": args.draft_nodes}
            res = speculative_generate(backend.model, prompt_ids, args.max_new_tokens, max_draft=args.max_draft, **extra_kw,
                                       temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                       table=args.trigram_table, model_dir=tok_source, eos_id=eos, progress=stream,
                                       tree_rule=args.tree_rule)
            extra = res.extra
        else:
            res = generate(backend, prompt_ids, args.max_new_tokens, args.temperature, args.top_p, args.seed, eos,
                           progress=stream)
    except ValueError as exc:
        raise MmfreeError(str(exc)) from exc
    text = tok.decode(res.tokens) if tok is not None else None
    if args.json:
        print_json({"backend": args.backend, "prompt_ids": res.prompt_ids, "tokens": res.tokens, "text": text,
                    "seconds": res.seconds, "tokens_per_s": res.tokens_per_s, **extra})
    else:
        stream.finish()
        print(f"[{len(res.tokens)} tokens, {res.tokens_per_s:.1f} tok/s, backend {args.backend}"
              + (f", {extra['mean_accepted']:.2f} tokens per verification step" if "mean_accepted" in extra else "")
              + "]", file=sys.stderr)
    return 0


class TextStream:
    """Writes generated text to stdout as tokens arrive (``stream(token)``), then ``finish()`` ends the line.

    Text is the tokenizer's decoding of all tokens so far; only the new suffix is written, and nothing while
    the decoding ends in an incomplete UTF-8 sequence (U+FFFD). Without a tokenizer the ids are written.
    The whole output equals ``prompt + decode(tokens) + "\\n"``.
    """

    def __init__(self, tok, prompt: str):
        self.tok, self.tokens, self.shown = tok, [], ""
        if tok is not None:
            sys.stdout.write(prompt)
            sys.stdout.flush()

    def __call__(self, token: int) -> None:
        self.tokens.append(int(token))
        if self.tok is None:
            sys.stdout.write(("" if len(self.tokens) == 1 else " ") + str(int(token)))
        else:
            text = self.tok.decode(self.tokens)
            if text.endswith("\ufffd") or not text.startswith(self.shown):
                return
            sys.stdout.write(text[len(self.shown):])
            self.shown = text
        sys.stdout.flush()

    def finish(self) -> None:
        if self.tok is not None:
            text = self.tok.decode(self.tokens)
            sys.stdout.write(text[len(self.shown):] if text.startswith(self.shown) else "\n" + text)
        sys.stdout.write("\n")
        sys.stdout.flush()


def _export(args) -> int:
    from pathlib import Path

    from mmfree.pymodel.checkpoint import expected_shapes
    from mmfree.pymodel.config import MMFreeConfig
    from mmfree.pymodel.export import export_checkpoint
    from mmfree.pymodel.intmodel import read_manifest

    out = export_checkpoint(args.model, args.out, progress=not args.json and sys.stderr.isatty(),
                            force=args.force)
    m = read_manifest(Path(out))
    n_weights = sum(c["K"] * c["N"] for c in m["bitlinears"].values())
    cfg = MMFreeConfig.from_dict(m["config"])
    n_params = sum(math.prod(s) for k, s in expected_shapes(cfg).items())
    summary = {"out": str(out), "weights_bytes": m["weights_bytes"], "packed_weight_bytes": m["packed_weight_bytes"],
               "ternary_weights": n_weights, "bits_per_weight": m["bits_per_weight"],
               # measured on the image: packed rows with their padding / the whole weights.bin
               "bits_per_ternary_weight": 8 * m["packed_weight_bytes"] / n_weights,
               "parameters": n_params, "bits_per_parameter": 8 * m["weights_bytes"] / n_params,
               "spec_version": m["spec_version"], "format_version": m["format_version"],
               "weights_sha256": m["weights_sha256"]}
    if args.json:
        print_json(summary)
    else:
        print(f"exported {args.model} -> {out}: {n_weights / 1e6:.2f}M ternary weights in "
              f"{m['packed_weight_bytes'] / 2**20:.2f} MiB ({summary['bits_per_ternary_weight']:.3f} bits/weight with "
              f"row padding), image {m['weights_bytes'] / 2**20:.2f} MiB ({summary['bits_per_parameter']:.2f} bits per "
              f"parameter), spec v{m['spec_version']}")
    return 0


def _eval(args) -> int:
    from mmfree.pymodel.evaluate import evaluate_corpus

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    res = evaluate_corpus(args.model, args.corpus, backends, args.tokens, args.window,
                          progress=not (args.no_progress or args.json))
    if args.json:
        print_json(res)
        return 0
    print(f"{res['tokens']} tokens of {', '.join(res['corpus'])}, teacher forced")
    for b in res["backends"]:
        print(f"  perplexity {b['name']:>14}: {b['perplexity']:.3f}")
    for pair, a in res["agreement"].items():
        print(f"  {pair:>22}: top-1 agreement {a['top1'] * 100:.2f} %, mean |logit diff| {a['mean_abs_logit_diff']:.3g}")
    return 0


def _data_prepare(args) -> int:
    from mmfree.pymodel.shards import prepare

    meta = prepare(args.out, args.tokenizer, corpus=args.corpus, hf_dataset=args.hf_dataset,
                   val_fraction=args.val_fraction, seed=args.seed, force=args.force)
    if args.json:
        print_json(meta)
    else:
        print(f"{meta['train_documents']} train / {meta['val_documents']} val documents, {meta['train_tokens']} / "
              f"{meta['val_tokens']} tokens ({meta['dtype']}), {meta['overlap_documents']} documents in both -> {args.out}")
    return 0


def _train(args) -> int:
    from mmfree.pymodel.train import TrainConfig, train
    from mmfree.pymodel.trainlog import load_config, preset

    fields = load_config(args.config) if args.config else {}
    if args.preset:
        fields = {**preset(args.preset), **{k: v for k, v in fields.items() if k not in preset(args.preset)}}
    flags = dict(corpus=args.corpus, data=args.data, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                 init=args.init, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                 intermediate_size=args.intermediate_size, steps=args.steps, batch_size=args.batch_size,
                 seq_len=args.seq_len, lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay,
                 eval_every=args.eval_every, save_every=args.save_every, seed=args.seed, device=args.device,
                 dtype=args.dtype, numerics=args.numerics, kernels=args.kernels, grad_accum=args.grad_accum,
                 keep=args.keep, log_dir=args.log_dir, grad_checkpointing=args.grad_checkpointing or None,
                 parallel=args.parallel, resume=args.resume or None, force=args.force or None, threads=args.threads)
    fields.update({k: v for k, v in flags.items() if v is not None and v != []})
    fields.setdefault("progress", not args.no_progress and not args.json)
    tc = TrainConfig(out=args.out, **fields)
    if isinstance(tc.warmup, int) and isinstance(tc.steps, int) and not isinstance(tc.warmup, bool):
        tc.warmup = min(tc.warmup, tc.steps)
    summary = train(tc, log=(lambda *a: print(*a, file=sys.stderr)) if args.json else print)
    if args.json:
        print_json(summary)
    return 0

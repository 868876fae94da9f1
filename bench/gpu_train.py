"""Training throughput and peak memory of whole models on one GPU: naive torch path vs the fused kernels.

For the 370M and 1.3B presets (mmfree.pymodel.config.PRESETS), runs a few AdamW training steps on random
tokens (``--batch`` x ``--seq-len``, the same for every configuration) and reports tokens/s and the peak
CUDA memory of each configuration, measured one after the other in one process:

* ``naive fp32``        kernels naive, float32 (the plain torch model)
* ``naive bf16``        kernels naive, bf16 autocast
* ``triton bf16``       the fused Triton kernels, bf16 autocast
* ``triton bf16 ckpt``  the same with gradient checkpointing per layer
* ``hardware fp32``     hardware-exact QAT (``numerics="hardware"``, integer parameters derived on the device)

* ``released bf16``     the released ``HGRNBitForCausalLM`` (matmulfreellm), bf16 autocast: not installable
                        from PyPI, so restated op for op in ``bench/released_hgrn.py``, on fla-core's kernels
                        where fla imports (a GPU), plain torch elsewhere (the row's note says which)

with MFU (:mod:`mmfree.pymodel.trainlog`: 6 x BitLinear weights per token over the GPU's dense bf16 peak;
"n/a" on CPU), the hardware-exact step over the fake-quant step (target <= 2x), mmfree's fused step over the
released model's (target >= 1.3x its tokens/s at <= its peak memory), and with ``--profile`` a
torch.profiler per-kernel table of one step per configuration. Defaults: 8 x 2048 = 16,384 tokens per step,
20 timed steps after 2 warm-ups; the slow naive rows (a Python loop over time) only with ``--configs``.

and the ratios against ``naive fp32``: the target is ``triton`` >= 61 % less memory on the 1.3B shape
(the paper's 82 -> 32 GB). The step is the one ``mmfree train`` runs (autocast, cross entropy in fp32,
gradient clipping, AdamW with fp32 master weights).

    python bench/gpu_train.py [--presets 370M 1.3B] [--batch 8] [--seq-len 2048] [--steps 20] [--json] [--record]

Needs a CUDA GPU (exits with a message otherwise); ``--tiny`` (alias ``--smoke``) runs a tiny model on the
CPU through the Triton interpreter, to check the script itself (tests/pymodel/test_bench_gpu_train.py).

``--saved-bytes`` runs anywhere (on a CPU through the Triton interpreter): it counts the bytes autograd keeps
for the backward pass in one forward of a 2-layer model of each preset's shape (per token, for one layer and
for the rest: embedding, head, loss), for each configuration, and projects the training memory of the full
preset at ``--batch`` x ``--seq-len`` tokens as 16 bytes per parameter (fp32 weights, grads, AdamW moments)
plus those activations. A projection of activation memory, not a measured GPU peak.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = [("naive fp32", "naive", "float32", False), ("naive bf16", "naive", "bfloat16", False),
           ("triton bf16", "triton", "bfloat16", False), ("triton bf16 ckpt", "triton", "bfloat16", True),
           ("hardware fp32", "auto", "hardware", False), ("released bf16", "released", "bfloat16", False)]
#: what runs without --configs (the naive rows take ~6 s per step: a Python loop over the sequence)
DEFAULT_CONFIGS = ["released bf16", "triton bf16", "triton bf16 ckpt", "hardware fp32"]


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["370M", "1.3B"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--configs", nargs="+", default=None, help="default: " + ", ".join(DEFAULT_CONFIGS)
                    + " (--saved-bytes: every mmfree configuration); a subset of: " +
                    ", ".join(repr(c[0]) for c in CONFIGS))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--record", action="store_true", help="write the results into docs/training.md")
    ap.add_argument("--smoke", "--tiny", dest="smoke", action="store_true",
                    help="tiny model on the CPU interpreter (checks the script)")
    ap.add_argument("--profile", action="store_true",
                    help="a torch.profiler per-kernel table (top 15 by self device time) of one step per config")
    ap.add_argument("--saved-bytes", action="store_true",
                    help="count saved activations per token on any device and project the memory (see above)")
    ap.add_argument("--tokens", type=int, default=2, help="--saved-bytes: forwards of this many and 3x as many tokens")
    return ap.parse_args(argv)


def run_config(cfg, kernels: str, dtype: str, ckpt: bool, args, dev) -> dict:
    import torch

    from mmfree.pymodel.kernels import install
    from mmfree.pymodel.model import MMFreeForCausalLM
    from mmfree.pymodel.train import _enable_checkpointing
    from mmfree.pymodel.trainlog import mfu

    torch.manual_seed(0)
    if kernels == "released":
        from released_hgrn import BitLinear as ReleasedBitLinear
        from released_hgrn import ReleasedHGRNBitForCausalLM

        model = ReleasedHGRNBitForCausalLM(cfg, dev).to(dev).train()
        note = "released HGRNBitForCausalLM restated, " + model.ops["name"]
        gemm = sum(m.weight.numel() for m in model.modules() if isinstance(m, ReleasedBitLinear))
    else:
        model = MMFreeForCausalLM(cfg).to(dev).train()
        note = install(model, kernels, dev)
        gemm = None
    if dtype == "hardware":                      # hardware-exact QAT: the forward is the integer pipeline's
        model.numerics, dtype, note = "hardware", "float32", note + ", numerics hardware"
    if ckpt:
        _enable_checkpointing(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1), generator=g).to(dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()

    def step():
        with autocast:
            logits = model(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    try:
        for _ in range(2):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        sec = (time.perf_counter() - t0) / args.steps
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        tps = args.batch * args.seq_len / sec
        return {"tokens_per_s": tps, "step_s": sec, "peak_gib": peak, "loss": loss, "kernels": note,
                "mfu": mfu(tps, model, dev) if gemm is None else _mfu(tps, gemm, dev),
                "profile": profile_table(step, dev) if args.profile else None}
    except torch.cuda.OutOfMemoryError:
        return {"tokens_per_s": None, "step_s": None, "peak_gib": None, "error": "out of memory", "kernels": note}
    except Exception as exc:                          # recorded, not fatal: the other configurations still run
        traceback.print_exc()
        err = " ".join(f"{type(exc).__name__}: {str(exc)[:160]}".split()).replace("|", "/")
        return {"tokens_per_s": None, "step_s": None, "peak_gib": None, "error": "failed: " + err, "kernels": note}
    finally:
        model = opt = None          # drop the references before the cache is emptied
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def _mfu(tokens_per_s: float, gemm_weights: int, dev):
    from mmfree.pymodel.trainlog import peak_flops

    peak = peak_flops(dev)
    return "n/a" if peak is None else tokens_per_s * 6 * gemm_weights / peak


def profile_table(step, dev, rows: int = 15) -> str:
    """torch.profiler's per-kernel table of one ``step()``: the top ``rows`` by self CUDA time (CPU time on CPU)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def saved_activation_bytes(cfg, kernels: str, dtype: str, tokens: int, dev) -> dict:
    """Bytes autograd saves for backward in one forward + loss over ``tokens`` tokens: {"layer": layer 1's,
    "rest": everything outside the layers (embedding, head, loss)}. Parameters themselves are not counted."""
    import torch

    from mmfree.pymodel.kernels import install
    from mmfree.pymodel.model import MMFreeForCausalLM

    torch.manual_seed(0)
    model = MMFreeForCausalLM(cfg).to(dev).train()
    install(model, kernels, dev)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    where = ["rest"]
    seen: dict[int, tuple[str, int]] = {}
    for layer in model.model.layers:
        layer.register_forward_pre_hook(lambda m, a: where.__setitem__(0, f"layer{m.idx}"))
        layer.register_forward_hook(lambda m, a, o: where.__setitem__(0, "rest"))

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params and st.data_ptr() not in seen:
            seen[st.data_ptr()] = (where[0], st.nbytes())
        return t

    ids = torch.randint(0, cfg.vocab_size, (1, tokens + 1), generator=torch.Generator().manual_seed(0)).to(dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        logits = model(ids[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
    per = {"layer": 0, "rest": 0}
    for label, n in seen.values():
        key = {"layer1": "layer", "rest": "rest"}.get(label)      # layer 0 is counted as layer 1 is
        if key:
            per[key] += n
    return per


def main_saved_bytes(args) -> int:
    """Saved bytes at two token counts: the slope is the per-token part, the intercept the weight-sized part
    (quantized weight copies kept for the backward). Projection for the full preset:
    16 B/parameter + L * (layer fixed + tokens * layer per token) + rest fixed + tokens * rest per token."""
    import torch

    from mmfree.pymodel.config import MMFreeConfig
    from mmfree.pymodel.model import MMFreeForCausalLM

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokens = args.batch * args.seq_len
    t1, t2 = args.tokens, 3 * args.tokens
    lines = [f"Saved activations (forwards of {t1} and {t2} tokens through a 2-layer model of each shape; parameters "
             f"not counted) and the projected training memory at {args.batch} x {args.seq_len} tokens "
             "(16 B/parameter for fp32 weights, grads and AdamW moments, plus the saved activations):", "",
             "| preset | configuration | layer B/token | layer fixed MiB | rest B/token | rest fixed MiB | "
             "projected GiB | saved vs naive fp32 |", "|---|---|---|---|---|---|---|---|"]
    out = {}
    for preset in args.presets:
        full = MMFreeConfig.preset(preset)
        cfg = MMFreeConfig.preset(preset, num_hidden_layers=2)
        with torch.device("meta"):
            n_params = MMFreeForCausalLM(full).num_parameters()
        L = full.num_hidden_layers
        base = None
        for name, kernels, dtype, ckpt in CONFIGS:
            if kernels == "released" or (args.configs is not None and name not in args.configs):
                continue
            print(f"{preset} {name} ...", file=sys.stderr)
            a = saved_activation_bytes(cfg, kernels, dtype, t1, dev)
            b = saved_activation_bytes(cfg, kernels, dtype, t2, dev)
            r = {}
            for part in ("layer", "rest"):
                r[f"{part}_per_token"] = (b[part] - a[part]) / (t2 - t1)
                r[f"{part}_fixed"] = a[part] - t1 * r[f"{part}_per_token"]
            layer = r["layer_fixed"] + tokens * r["layer_per_token"]
            rest = r["rest_fixed"] + tokens * r["rest_per_token"]
            if ckpt:      # keeps each layer's fp32 input; one layer's activations live again during its backward
                act = L * tokens * 4 * full.hidden_size + layer + rest
            else:
                act = L * layer + rest
            gib = (16 * n_params + act) / 2**30
            base = gib if name == "naive fp32" else base
            r.update(projected_gib=gib, parameters=n_params)
            out[f"{preset} {name}"] = r
            lines.append(f"| {preset} | {name} | {r['layer_per_token']:.0f} | {r['layer_fixed'] / 2**20:.1f} | "
                         f"{r['rest_per_token']:.0f} | {r['rest_fixed'] / 2**20:.1f} | {gib:.1f} | "
                         f"{'-' if base is None else f'{1 - gib / base:.0%}'} |")
    text = "\n".join(lines)
    print(json.dumps(out, indent=2) if args.json else text)
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    if args.saved_bytes:
        return main_saved_bytes(args)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.batch, args.seq_len, args.steps = 2, 16, 1
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("bench/gpu_train.py needs a CUDA GPU and none is visible (torch.cuda.is_available() is False). "
              "Run it on a GPU host: pip install -e '.[dev,gpu]', then\n  python bench/gpu_train.py --record",
              file=sys.stderr)
        return 2
    from mmfree.pymodel.config import MMFreeConfig

    dev = torch.device("cpu" if args.smoke else "cuda")
    device_name = "CPU (Triton interpreter, smoke)" if args.smoke else torch.cuda.get_device_name(dev)
    chosen = [c for c in CONFIGS if c[0] in (args.configs or DEFAULT_CONFIGS)]
    results = {"device": device_name, "batch": args.batch, "seq_len": args.seq_len, "presets": {}}
    for preset in (["tiny"] if args.smoke else args.presets):
        cfg = (MMFreeConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1, intermediate_size=64) if args.smoke
               else MMFreeConfig.preset(preset))
        res = {}
        for name, kernels, dtype, ckpt in chosen:
            print(f"{preset} {name} ...", file=sys.stderr)
            res[name] = r = run_config(cfg, kernels, dtype, ckpt, args, dev)
            print("  " + (r.get("error") or f"{r['tokens_per_s']:.0f} tok/s, peak "       # progress: a run cut
                  + ("-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB")), file=sys.stderr)  # short shows it
        results["presets"][preset] = res
    text = report(results)
    print(json.dumps(results, indent=2) if args.json else text)
    if args.record and not args.smoke:
        from _common import command_line, write_section

        write_section("training.md", "gpu-train", f"Measured with `{command_line()}` on {device_name}:\n\n{text}")
    failed = [f"{preset} {name}" for preset, res in results["presets"].items() for name, r in res.items()
              if r.get("error", "out of memory") != "out of memory"]
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def report(results: dict) -> str:
    lines = [f"{results['batch']} x {results['seq_len']} tokens per step", "",
             "| preset | configuration | tokens/s | MFU | peak GiB | speed vs naive fp32 | memory saved vs naive fp32 |",
             "|---|---|---|---|---|---|---|"]
    verdicts = []
    for preset, res in results["presets"].items():
        base = res.get("naive fp32", {})
        for name, r in res.items():
            tps, peak = r.get("tokens_per_s"), r.get("peak_gib")
            sp = tps / base["tokens_per_s"] if tps and base.get("tokens_per_s") else None
            saved = 1 - peak / base["peak_gib"] if peak and base.get("peak_gib") else None
            util = r.get("mfu")
            util = "-" if util is None else util if isinstance(util, str) else f"{util:.1%}"
            lines.append(f"| {preset} | {name} | {'-' if tps is None else f'{tps:.0f}'} | {util} | "
                         f"{r.get('error') or ('-' if peak is None else f'{peak:.2f}')} | "
                         f"{'-' if sp is None else f'{sp:.2f}'} | {'-' if saved is None else f'{saved:.0%}'} |")
            if preset == "1.3B" and name.startswith("triton") and saved is not None:
                verdicts.append(f"1.3B {name}: {saved:.0%} less memory than naive fp32 -> "
                                f"{'meets' if saved >= 0.61 else 'misses'} the target (>= 61 %)")
    if verdicts:
        lines += [""] + verdicts
    for preset, res in results["presets"].items():
        ours, rel = res.get("triton bf16", {}), res.get("released bf16", {})
        if ours.get("tokens_per_s") and rel.get("tokens_per_s"):
            sp = ours["tokens_per_s"] / rel["tokens_per_s"]
            mem = (ours["peak_gib"] / rel["peak_gib"]) if ours.get("peak_gib") and rel.get("peak_gib") else None
            ok = sp >= 1.3 and mem is not None and mem <= 1.0
            lines.append(f"{preset}: triton bf16 {sp:.2f}x the released model's tokens/s at "
                         f"{'-' if mem is None else f'{mem:.2f}x'} its peak memory -> "
                         f"{'meets' if ok else 'misses'} the target (>= 1.3x, <= 1.0x)")
        hw, fake = res.get("hardware fp32", {}), res.get("triton bf16") or res.get("naive fp32") or {}
        if hw.get("step_s") and fake.get("step_s"):
            lines.append(f"{preset}: hardware-exact step {hw['step_s'] / fake['step_s']:.2f}x the fake-quant step "
                         "(target <= 2x)")
        for name, r in res.items():
            if r.get("profile"):
                lines += ["", f"{preset} {name}: torch.profiler, one step", "", "```", r["profile"], "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

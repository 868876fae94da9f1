"""Fused BitLinear and MLGRU scan on one GPU: ours (Triton) vs the naive torch path vs fla-core, side by side.

For the BitLinear shapes of the 370M and 1.3B presets (d->d for i/f/g/o, d->2I for gate_proj, I->d for
down_proj) at ``--tokens`` tokens (default 8 x 2048), measures forward+backward time (median of CUDA
events) and the peak memory one forward+backward allocates on top of its inputs, under bf16 autocast with
fp32 master weights and an fp32 input (the residual stream), for:

* ``naive``        the float model's BitLinear (rms_norm + TernaryLinearSTE, plain torch)
* ``ours``         mmfree.pymodel.kernels.bitlinear (int8 forward GEMM, Triton backward GEMMs)
* ``ours-cublas``  the same with the two backward products on cuBLAS (``bwd_gemm="torch"``)
* ``fla``          fla-core's ``fla.modules.fused_bitlinear.FusedBitLinear`` (when installed)

then the MLGRU gates + scan at ``[tokens / 2048, 2048, d]``: the model's torch path, our sequential and
chunked scans, the gate-fused scans, and fla-core's ``chunk_hgrn`` / ``fused_recurrent_hgrn`` (when installed).
Prints ratios measured in the same run (speed vs fla and naive,
memory vs fla); the target is ``ours`` >= 1.2x fla's speed at no more memory.

    python bench/gpu_bitlinear.py [--presets 370M 1.3B] [--tokens 16384] [--iters 10] [--json] [--record]

Needs a CUDA GPU (exits with a message otherwise). ``--smoke`` runs tiny shapes on the CPU through the
Triton interpreter, to check the script itself (timings meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["370M", "1.3B"])
    ap.add_argument("--tokens", type=int, default=8 * 2048, help="tokens per forward (batch x sequence)")
    ap.add_argument("--seq-len", type=int, default=2048, help="sequence length of the scan benchmark")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--record", action="store_true", help="write the results into docs/training.md")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU interpreter (checks the script)")
    return ap.parse_args(argv)


def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure(fn, dev, warmup: int, iters: int) -> dict:
    """Median milliseconds of ``fn()`` and the peak bytes one call allocates above what was allocated before."""
    import torch

    for _ in range(warmup):
        fn()
    _sync(dev)
    peak = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        fn()
        _sync(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
    times = []
    for _ in range(iters):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            _sync(dev)
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "peak_mib": None if peak is None else peak / 2**20}


def bitlinear_cases(preset: str, smoke: bool):
    from mmfree.pymodel.config import MMFreeConfig

    if smoke:
        return [("tiny d->d", 60, 60), ("tiny d->2I", 60, 168)]
    cfg = MMFreeConfig.preset(preset)
    d, I = cfg.hidden_size, cfg.intermediate
    return [(f"{preset} d->d ({d}x{d})", d, d), (f"{preset} gate ({d}->{2 * I})", d, 2 * I),
            (f"{preset} down ({I}->{d})", I, d)]


def bench_bitlinear(K: int, N: int, tokens: int, dev, args) -> dict:
    import torch

    from mmfree.pymodel.kernels.bitlinear import bitlinear, bitlinear_torch_bwd
    from mmfree.pymodel.model import BitLinear

    torch.manual_seed(0)
    mod = BitLinear(K, N, 1e-8).to(dev)
    torch.nn.init.normal_(mod.weight, 0, 0.02)
    x = torch.randn(tokens, K, device=dev, requires_grad=True)
    impls = {"naive": (mod, None), "ours": (mod, bitlinear), "ours-cublas": (mod, bitlinear_torch_bwd)}
    try:
        from fla.modules.fused_bitlinear import FusedBitLinear

        fla = FusedBitLinear(K, N).to(dev)
        with torch.no_grad():
            fla.weight.copy_(mod.weight)
            fla.norm.weight.copy_(mod.norm.weight)
        impls["fla"] = (fla, None)
    except Exception as exc:                         # not installed, or no GPU build
        print(f"  (fla-core FusedBitLinear unavailable: {type(exc).__name__}: {exc})", file=sys.stderr)
    res = {}
    for name, (m, kernel) in impls.items():
        if isinstance(m, BitLinear):
            m.kernel = kernel
        grad = {}

        def step(m=m, grad=grad):
            x.grad = None
            for p in m.parameters():
                p.grad = None
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                out = m(x)
            if "g" not in grad:
                grad["g"] = torch.randn_like(out)
            out.backward(grad["g"])

        try:
            res[name] = measure(step, dev, args.warmup, args.iters)
        except torch.cuda.OutOfMemoryError:
            res[name] = {"ms": None, "peak_mib": None, "error": "out of memory"}
        except Exception as exc:                     # recorded, not fatal: the other rows still run
            traceback.print_exc()
            res[name] = {"ms": None, "peak_mib": None, "error": f"{type(exc).__name__}: {str(exc)[:160]}"}
        r = res[name]                                # progress: a run cut short still shows what it measured
        print(f"  {name}: " + (r.get("error") or f"{r['ms']:.3f} ms, peak {_fmt(r['peak_mib'], '.0f')} MiB"),
              file=sys.stderr)
        grad.clear()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    mod.kernel = None
    return res


def bench_scan(B: int, T: int, D: int, dev, args) -> dict:
    import torch

    from mmfree.pymodel.kernels.hgrn import gates_naive, hgrn, hgrn_gated
    from mmfree.pymodel.model import hgrn_recurrence

    g = torch.Generator(device="cpu").manual_seed(0)
    i_pre = torch.randn(B, T, D, generator=g).to(dev, torch.bfloat16).requires_grad_()
    f_pre = torch.randn(B, T, D, generator=g).to(dev, torch.bfloat16).requires_grad_()
    lb = torch.rand(D, generator=g).to(dev).requires_grad_()
    dout = torch.randn(B, T, D, generator=g).to(dev, torch.bfloat16)

    def run(fn):
        def step():
            for t in (i_pre, f_pre, lb):
                t.grad = None
            h = fn()
            h.backward(dout.to(h.dtype))
        return step

    def torch_path():
        f, c = gates_naive(i_pre, f_pre, lb)
        return hgrn_recurrence(f, c)[0]

    impls = {
        "naive (torch gates + model scan)": torch_path,
        "ours seq (torch gates)": lambda: hgrn(*gates_naive(i_pre, f_pre, lb), mode="seq")[0],
        "ours chunk (torch gates)": lambda: hgrn(*gates_naive(i_pre, f_pre, lb), mode="chunk")[0],
        "ours gated seq": lambda: hgrn_gated(i_pre, f_pre, lb, mode="seq")[0],
        "ours gated chunk": lambda: hgrn_gated(i_pre, f_pre, lb, mode="chunk")[0],
    }
    try:                                             # fla-core's HGRN scans (gates in torch, g = log f)
        from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn

        def fla_scan(fn):
            def run_fla():
                f, c = gates_naive(i_pre, f_pre, lb)
                return fn(c, f.float().log().to(c.dtype))[0]
            return run_fla

        impls["fla chunk_hgrn (torch gates)"] = fla_scan(chunk_hgrn)
        impls["fla fused_recurrent_hgrn (torch gates)"] = fla_scan(fused_recurrent_hgrn)
    except Exception as exc:                         # not installed, or no GPU build
        print(f"  (fla-core HGRN scans unavailable: {type(exc).__name__}: {exc})", file=sys.stderr)
    out = {}
    for name, fn in impls.items():
        iters = max(1, args.iters // 5) if name.startswith("naive") else args.iters
        out[name] = measure(run(fn), dev, 1, iters)
        print(f"  {name}: {out[name]['ms']:.3f} ms", file=sys.stderr)
    return out


def main(argv=None) -> int:
    args = parse(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.tokens, args.seq_len, args.warmup, args.iters = 126, 63, 1, 1
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("bench/gpu_bitlinear.py needs a CUDA GPU and none is visible (torch.cuda.is_available() is False). "
              "Run it on a GPU host: pip install -e '.[dev,gpu]' (and fla-core for the comparison), then\n"
              "  python bench/gpu_bitlinear.py --record", file=sys.stderr)
        return 2
    dev = torch.device("cpu" if args.smoke else "cuda")
    device_name = "CPU (Triton interpreter, smoke)" if args.smoke else torch.cuda.get_device_name(dev)
    results = {"device": device_name, "tokens": args.tokens, "bitlinear": {}, "scan": {}, "shapes": {}}
    for preset in (["tiny"] if args.smoke else args.presets):
        for label, K, N in bitlinear_cases(preset, args.smoke):
            print(f"BitLinear {label}, {args.tokens} tokens ...", file=sys.stderr)
            results["bitlinear"][label] = bench_bitlinear(K, N, args.tokens, dev, args)
            results["shapes"][label] = [N, K]
        from mmfree.pymodel.config import MMFreeConfig

        D = 60 if args.smoke else MMFreeConfig.preset(preset).hidden_size
        B = max(1, args.tokens // args.seq_len)
        label = f"{preset} scan [{B}, {args.seq_len}, {D}]"
        print(f"MLGRU {label} ...", file=sys.stderr)
        results["scan"][label] = bench_scan(B, args.seq_len, D, dev, args)
    text = report(results)
    print(json.dumps(results, indent=2) if args.json else text)
    if args.record and not args.smoke:
        from _common import command_line, write_section

        write_section("training.md", "gpu-bitlinear", f"Measured with `{command_line()}` on {device_name}:\n\n{text}")
    failed = [f"{label} {name}" for label, res in results["bitlinear"].items() for name, r in res.items()
              if r.get("error") and name != "fla" and r["error"] != "out of memory"]
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _cell(text: str) -> str:
    """One line of text that a Markdown table cell can hold."""
    return " ".join(text.split()).replace("|", "/")


def report(results: dict) -> str:
    lines = ["| BitLinear fwd+bwd | impl | ms | peak MiB | speed vs fla | speed vs naive | memory vs fla |",
             "|---|---|---|---|---|---|---|"]
    verdicts = []
    for label, res in results["bitlinear"].items():
        fla, naive = res.get("fla"), res.get("naive")
        for name, r in res.items():
            sp_fla = fla["ms"] / r["ms"] if fla and fla.get("ms") and r.get("ms") else None
            sp_nv = naive["ms"] / r["ms"] if naive and naive.get("ms") and r.get("ms") else None
            mem = r["peak_mib"] / fla["peak_mib"] if fla and fla.get("peak_mib") and r.get("peak_mib") else None
            ms = _fmt(r.get("ms"), ".3f") if not r.get("error") else "failed: " + _cell(r["error"])
            lines.append(f"| {label} | {name} | {ms} | {_fmt(r.get('peak_mib'), '.0f')} | "
                         f"{_fmt(sp_fla, '.2f')} | {_fmt(sp_nv, '.2f')} | {_fmt(mem, '.2f')} |")
        ours = res.get("ours")
        if fla and fla.get("ms") and ours and ours.get("ms"):
            ok = fla["ms"] / ours["ms"] >= 1.2 and (ours["peak_mib"] or 0) <= (fla["peak_mib"] or 0)
            verdicts.append(f"{label}: ours {fla['ms'] / ours['ms']:.2f}x fla's speed at "
                            f"{(ours['peak_mib'] or 0) / max(fla['peak_mib'] or 1, 1e-9):.2f}x its memory -> "
                            f"{'meets' if ok else 'misses'} the target (>= 1.2x, <= 1.0x)")
    lines += ["", "| MLGRU gates + scan fwd+bwd | impl | ms | speed vs naive |", "|---|---|---|---|"]
    for label, res in results["scan"].items():
        base = next(iter(res.values()))["ms"]
        for name, r in res.items():
            sp = base / r["ms"] if r["ms"] else None
            lines.append(f"| {label} | {name} | {_fmt(r['ms'], '.3f')} | {_fmt(sp, '.2f')} |")
    if verdicts:
        lines += [""] + verdicts
    table = bwd_gemm_table(results)
    if table:
        lines += ["", "bwd_gemm table (paste into mmfree.pymodel.kernels.bitlinear.BWD_GEMM_TABLE):", "```", *table, "```"]
    return "\n".join(lines)


def bwd_gemm_table(results: dict) -> list[str]:
    """The backward-GEMM backend per shape class from the ``ours`` (Triton) and ``ours-cublas`` rows: cuBLAS
    unless Triton was faster on every measured shape of the class; one line per class, with the timings."""
    from mmfree.pymodel.kernels.bitlinear import shape_class

    won: dict[tuple, list] = {}
    for label, res in results["bitlinear"].items():
        tri, cub = (res.get(k, {}).get("ms") for k in ("ours", "ours-cublas"))
        if tri and cub and label in results.get("shapes", {}):
            won.setdefault(shape_class(*results["shapes"][label]), []).append((label, tri, cub))
    lines = []
    for cls, rows in sorted(won.items()):
        backend = "triton" if all(t < c for _, t, c in rows) else "torch"
        why = "; ".join(f"{label}: Triton {t:.3f}, cuBLAS {c:.3f}" for label, t, c in rows)
        lines.append(f"    {cls!r}: {backend!r},   # {why}")
    return lines


if __name__ == "__main__":
    sys.exit(main())

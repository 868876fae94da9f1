"""`mmfree hls csim` and `mmfree hls synth` (the HLS area's commands; see ``mmfree.cli``)."""

from __future__ import annotations

import sys

from mmfree import MmfreeError
from mmfree.cli import add_subcommand, print_json
from mmfree.cli_args import add_board, add_json, add_model

_BOARDS = ("pynq-z2", "kv260", "zcu104")          # mmfree.hls.synth.BOARDS (kept import-free here)
_TOPS = ("mmfree_ternary_matvec", "mmfree_rmsnorm_quantize", "mmfree_dequantize", "mmfree_mlgru",
         "mmfree_bitlinear", "mmfree_layer")
_STEPS = ("csim", "csynth", "cosim", "export")


def register(sub) -> None:
    """Add this area's subcommands to the ``mmfree`` parser."""
    p = add_subcommand(
        sub, "hls", _hls_help, "C++ HLS kernels: C-simulation against the integer reference, Vitis HLS projects",
        "The ternary kernels as Vitis HLS C++ (docs/hls.md). `mmfree hls csim` compiles them with g++ and\n"
        "checks them bit for bit against the integer reference; `mmfree hls synth` writes Vitis HLS\n"
        "scripts for a board and runs them when vitis_hls is installed.",
    )
    hs = p.add_subparsers(dest="hls_command", metavar="HLS_COMMAND")

    c = add_subcommand(
        hs, "csim", _csim, "compile the kernels with g++ and compare them exactly with the integer reference",
        "Builds the kernels into a shared library (cached by content hash under the mmfree cache) and\n"
        "runs (1) every kernel on random vectors, with saturation extremes and odd sizes, against\n"
        "mmfree.pymodel.numerics, and (2) --tokens tokens of --model through the layer kernel of every\n"
        "layer and the lm_head BitLinear kernel, compared tap by tap with IntModel.forward. Every\n"
        "comparison is exact. Exit status 1 when anything differs.",
    )
    add_model(c, note="or 'none' (kernels only)")
    c.add_argument("--tokens", type=int, default=3, help="tokens (a chain) to run through the model")
    c.add_argument("--seed", type=int, default=0, help="seed of the random kernel vectors and of the token ids")
    c.add_argument("--vectors", type=int, default=20000, help="values per elementwise kernel check")
    add_json(c, "one JSON object {ok, library, checks: [...]}")

    s = add_subcommand(
        hs, "synth", _synth,
        "write Vitis HLS scripts (csim, csynth, cosim, IP export) for a board; run them if possible",
        "Writes OUT/src (kernels, test bench, generated spec header), OUT/vectors (inputs and expected\n"
        "outputs from the integer reference for --model) and one OUT/<top>.tcl per top-level kernel for\n"
        "the board's FPGA part. Runs each script with vitis_hls when it is on PATH (unless --no-run);\n"
        "otherwise prints the exact commands to run on a machine that has it.",
    )
    add_board(s)
    s.add_argument("--out", required=True, help="output directory: new or empty (an earlier `mmfree hls synth` output "
                                                "is replaced atomically with --force)")
    s.add_argument("--force", action="store_true", help="replace an earlier `mmfree hls synth` output at --out")
    add_model(s, note="sizes the buffers, gives the vectors")
    s.add_argument("--top", action="append", choices=_TOPS, default=None,
                   help="top-level kernel(s) to write (repeat the option; default: all)")
    s.add_argument("--steps", default=",".join(_STEPS), help="comma-separated subset of " + ",".join(_STEPS))
    s.add_argument("--clock-ns", type=float, default=None, help="target clock period (default: the board's clock)")
    s.add_argument("--no-run", action="store_true", help="only write the scripts, even when vitis_hls is present")
    add_json(s)


def _hls_help(args) -> int:
    raise MmfreeError("choose a subcommand: `mmfree hls csim` or `mmfree hls synth` (see `mmfree hls --help`)")


def _open_model(name: str):
    from mmfree.pymodel.intmodel import open_int_model

    model, _ = open_int_model(name)
    return model


def _csim(args) -> int:
    import time

    import numpy as np

    from mmfree.hls import checks
    from mmfree.hls.csim import CSim

    if args.tokens <= 0:
        raise MmfreeError("--tokens must be positive")
    if args.vectors < 100:
        raise MmfreeError("--vectors must be at least 100 (the extremes alone take ~60)")
    t0 = time.perf_counter()
    sim = CSim()
    t_build = time.perf_counter() - t0
    report = {"library": str(sim.path), "compiled": sim.built, "compile_s": round(t_build, 3),
              "buffers": {"max_d": sim.max_d, "max_i": sim.max_i}, "seed": args.seed, "model": None}
    all_checks = checks.kernel_checks(sim, seed=args.seed, n=args.vectors)
    if args.model.lower() != "none":
        model = _open_model(args.model)
        rng = np.random.default_rng(args.seed)
        tokens = [int(t) for t in rng.integers(0, model.vocab_size, size=args.tokens)]
        report["model"] = {"name": args.model, "path": str(model.path) if model.path else None, "tokens": tokens,
                           "dims": {"d": model.dims.d, "inter": model.dims.inter, "layers": model.dims.layers,
                                    "vocab": model.dims.vocab}, "act_frac": model.act_frac}
        all_checks += checks.model_checks(sim, model, tokens)
    bad = [c for c in all_checks if not c.ok]
    report.update(ok=not bad, failed=len(bad), seconds=round(time.perf_counter() - t0, 3),
                  checks=[c.as_dict() for c in all_checks])
    if args.json:
        print_json(report)
    else:
        print(f"library  {sim.path} ({'compiled' if sim.built else 'cached'}, {t_build:.1f} s)")
        if report["model"]:
            m = report["model"]
            print(f"model    {m['name']}: d={m['dims']['d']} inter={m['dims']['inter']} layers={m['dims']['layers']} "
                  f"vocab={m['dims']['vocab']}, tokens {m['tokens']}")
        width = max(len(c.name) for c in all_checks)
        for c in all_checks:
            line = f"{'ok  ' if c.ok else 'FAIL'} {c.kind:<6} {c.name:<{width}} {c.elements:>7} values"
            if not c.ok:
                line += f", {c.mismatches} differ, first {c.first_mismatch}"
            print(line)
        print(f"{len(all_checks) - len(bad)}/{len(all_checks)} checks bit-identical to the reference "
              f"({report['seconds']:.1f} s)")
    if bad:
        print(f"mmfree hls csim: {len(bad)} check(s) differ from the reference: "
              + ", ".join(c.name for c in bad[:8]), file=sys.stderr)
        return 1
    return 0


def _synth(args) -> int:
    from mmfree.hls import synth as SY

    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    board = SY.board_part(args.board)          # refuse a bad board before loading the model
    SY.check_out(args.out, force=args.force)   # and a bad --out
    model = _open_model(args.model)
    summary = SY.write_project(args.out, board.name, model, tops=args.top, steps=steps, clock_ns=args.clock_ns,
                               model_name=args.model, force=args.force)
    tool = SY.vitis_tool()
    results = None
    if tool is not None and not args.no_run:
        results = SY.run_vitis(summary["out"], summary["tops"],
                               log=(lambda m: print(m, file=sys.stderr)) if args.json else print)
    summary["vitis"] = {"found": tool is not None, "ran": results is not None, "results": results}
    if args.json:
        print_json(summary)
    else:
        print(f"wrote Vitis HLS projects for {board.name} ({board.part}, {summary['clock_ns']:g} ns) "
              f"to {summary['out']}: " + ", ".join(summary["tops"]))
        if results is None:
            why = "vitis_hls is not on PATH" if tool is None else "--no-run"
            print(f"not run ({why}); on a machine with Vitis HLS run:")
            for cmd in summary["commands"]:
                print(f"  {cmd}")
            print("(Vitis 2024.2 and later: vitis-run --mode hls --tcl <top>.tcl)")
    if results and any(r["returncode"] != 0 for r in results):
        failed = [r["top"] for r in results if r["returncode"] != 0]
        print(f"mmfree hls synth: Vitis HLS failed for {', '.join(failed)} (logs in {summary['out']}/logs)",
              file=sys.stderr)
        return 1
    return 0

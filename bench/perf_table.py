"""Modeled decode speed of the MatMul-free LMs (370M, 1.3B, 2.7B) on every shipped board, next to the published
anchors and the physical limit, from the performance model (mmfree.sim.perf.predict).

    python bench/perf_table.py [--k 1] [--accept-len A] [--json] [--record]

--record with --k > 1 writes the section "projections-k<k>" instead (no plot).
    python bench/perf_table.py --streams [--record]   # multi-stream passes (modeled forest build), section
                                                      # "projections-streams"
    python bench/perf_table.py --units        # re-run Yosys on the units the resource estimate composes
    python bench/perf_table.py --units --only pipelined   # re-run only those commands, merged into the file

--record writes the table into docs/performance.md (section "projections") and the plot docs/img/perf.png
(tokens/s vs model size per board, with each board's DDR roofline and physical limit).
--units runs ``mmfree rtl estimate`` (Yosys synth_xilinx; minutes) for the matvec engines the boards use and
the vector units (and, by --pipelined-unit, the pipelined variants the datapath instantiates with
``HwConfig.pipelined_units``), and writes boards/data/unit_resources.json with the commands that produced it.
--only NAME[,NAME] (with --units) re-runs only the :data:`UNIT_COMMANDS` entries of those names and merges their
units into the existing file (the other entries and their commands kept).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, write_section  # noqa: E402

MODELS = ("370M", "1.3B", "2.7B")
BOARDS = ("pynq-z2", "kv260", "zcu104")
#: Published reference points (../shared/official-model.md), each labeled with how it was obtained.
ANCHORS = [
    {"what": "BitNet-2B port on KV260 (fabric ternary mat-vec, 250 MHz)", "board": "kv260", "params_b": 2.0,
     "tokens_per_s": 16.8, "label": "measured (published)"},
    {"what": "TeLLMe ternary LLM on KV260 (upper figure)", "board": "kv260", "params_b": None,
     "tokens_per_s": 25.0, "label": "measured (published)"},
    {"what": "MatMul-free paper FPGA figure, 1.3B at 13 W", "board": None, "params_b": 1.3,
     "tokens_per_s": 24.0, "label": "projected (published, from one 60 MHz core on a Stratix 10)"},
]
UNIT_FILE = ROOT / "boards" / "data" / "unit_resources.json"
#: The Yosys runs behind boards/data/unit_resources.json (the accelerator's matvec engines have 3 code banks
#: and max_k = max_width 4096).
UNIT_COMMANDS = {
    "matvec_l80_k1": ["mmfree", "rtl", "estimate", "--lanes", "80", "--tokens", "1", "--banks", "3", "--units",
                      "matvec_l80_k1", "--family", "xcup", "--json"],
    "matvec_l80_k4": ["mmfree", "rtl", "estimate", "--lanes", "80", "--tokens", "4", "--banks", "3", "--units",
                      "matvec_l80_k4", "--family", "xcup", "--json"],
    "matvec_l40_k1": ["mmfree", "rtl", "estimate", "--lanes", "40", "--tokens", "1", "--banks", "3", "--units",
                      "matvec_l40_k1", "--family", "xc7", "--json"],
    "vector": ["mmfree", "rtl", "estimate", "--units", "max_abs,quant_stats,codes_from_p,reciprocal,codes,"
               "output_multiplier,dequantize,mlgru_update,gated_product,residual_add,argmax", "--json"],
    # the pipelined variants the datapath instantiates with HwConfig.pipelined_units (rtl/catalog.py PIPELINED)
    "pipelined": ["python", "bench/perf_table.py", "--pipelined-unit"],
    # the on-chip draft-verify loop (builds with a draft engine): GenLoop(DEFAULT_HW), the DraftEngine included
    "genloop": ["python", "bench/perf_table.py", "--genloop-unit"],
}
#: The pipelined variants (rtl/catalog.py names) the datapath swaps in with ``HwConfig.pipelined_units``
#: (rtl/vector_engine.py, rtl/matvec_engine.py): what :func:`mmfree.sim.perf.estimate_resources` counts instead of
#: the plain unit of the same base name.
PIPELINED_ESTIMATED = ("reciprocal_p", "codes_p", "output_multiplier_p", "dequantize_p", "mlgru_update_p",
                       "gated_product_p", "quant_stats_p")


def genloop_unit() -> int:
    """Print ``{"yosys", "units": {"genloop": {family: counts}}}``: Yosys synth_xilinx (xc7 and xcup) of
    GenLoop(DEFAULT_HW) (V = 4096, k = 4, the draft engine included; xc7 as recorded in docs/speculative.md)."""
    from mmfree.rtl.estimate import FAMILIES, estimate_units, find_yosys, yosys_version
    from mmfree.rtl.genloop import GenLoop
    from mmfree.sim.accel import DEFAULT_HW

    yosys = find_yosys()
    res = estimate_units({"genloop": lambda: GenLoop(DEFAULT_HW)}, FAMILIES, yosys,
                         lambda what: print(f"  synth_xilinx {what} ...", file=sys.stderr, flush=True))
    print(json.dumps({"yosys": yosys_version(yosys), "units": res}))
    return 0


def pipelined_unit() -> int:
    """Print ``{"yosys", "families", "units": {name: {family: counts}}}``: Yosys synth_xilinx (xc7 and xcup) of
    the :data:`PIPELINED_ESTIMATED` variants (``mmfree rtl estimate`` lists the plain units only)."""
    from mmfree.rtl.catalog import PIPELINED_VARIANTS
    from mmfree.rtl.estimate import FAMILIES, estimate_units, find_yosys, yosys_version

    yosys = find_yosys()
    res = estimate_units({n: PIPELINED_VARIANTS[n] for n in PIPELINED_ESTIMATED}, FAMILIES, yosys,
                         lambda what: print(f"  synth_xilinx {what} ...", file=sys.stderr, flush=True))
    print(json.dumps({"yosys": yosys_version(yosys), "families": list(FAMILIES), "units": res}))
    return 0


def run_units(only: str | None = None) -> int:
    """Run :data:`UNIT_COMMANDS` (or only the comma-separated names in ``only``, merged into the existing file) and
    write boards/data/unit_resources.json. Exit status 1 with the tool's stderr when one fails, 2 on an unknown
    name."""
    from mmfree.atomic import write_text

    names = list(UNIT_COMMANDS) if only is None else [n.strip() for n in only.split(",") if n.strip()]
    bad = [n for n in names if n not in UNIT_COMMANDS]
    if bad or not names:
        print(f"perf_table.py: error: --only: unknown command name(s) {', '.join(bad) or '(none given)'}; "
              f"names: {', '.join(UNIT_COMMANDS)}", file=sys.stderr)
        return 2
    merged = {"source": "Yosys synth_xilinx -flatten per unit (mmfree rtl estimate); see 'commands'",
              "commands": [], "units": {}}
    if only is not None:        # keep what the other commands recorded
        try:
            merged = json.loads(UNIT_FILE.read_text())
        except (OSError, ValueError) as exc:
            print(f"perf_table.py: error: --only merges into {UNIT_FILE}, which is missing or unreadable ({exc}); "
                  "run --units without --only", file=sys.stderr)
            return 1
        redo = {" ".join(UNIT_COMMANDS[n]) for n in names}
        merged["commands"] = [c for c in merged.get("commands", []) if c not in redo]
    for cmd in (UNIT_COMMANDS[n] for n in names):
        print("running: " + " ".join(cmd), file=sys.stderr, flush=True)
        run = [sys.executable, str(ROOT / cmd[1]), *cmd[2:]] if cmd[0] == "python" else cmd
        out = subprocess.run(run, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        res = json.loads(out.stdout)
        if merged.get("yosys") not in (None, res.get("yosys")):
            print(f"note: {' '.join(cmd)} ran Yosys {res.get('yosys')}, the other entries {merged['yosys']}",
                  file=sys.stderr)
        merged["yosys"] = res.get("yosys")
        merged["commands"].append(" ".join(cmd))
        for unit, fams in res["units"].items():
            merged["units"].setdefault(unit, {}).update(fams)
    write_text(UNIT_FILE, json.dumps(merged, indent=1) + "\n")
    print(f"wrote {UNIT_FILE}", file=sys.stderr)
    return 0


def rows(k: int = 1, accept_len: float | None = None) -> list[dict]:
    from mmfree.boardfile import load_board
    from mmfree.sim.perf import predict

    out = []
    for b in BOARDS:
        board = load_board(b)
        for m in MODELS:
            r = predict(m, board, k=k, accept_len=accept_len)
            out.append({"model": m, "board": b, "clock_mhz": r["clock_mhz"], "bus_bits": 8 * r["hw"]["bus_bytes"],
                        "weight_ports": r["hw"]["weight_ports"],
                        "k": k, "accept_len": r["accept_len"], "tokens_per_s": r["tokens_per_s"],
                        "bytes_per_token": r["bytes_per_token"], "ternary_weights": r["model"]["ternary_weights"],
                        "ddr_gbps": r["ddr_bytes_per_s"] / 1e9, "peak_gbps": r["ddr_peak_bytes_per_s"] / 1e9,
                        "roofline_tokens_per_s": r["roofline_tokens_per_s"],
                        "physical_limit_tokens_per_s": r["physical_limit_tokens_per_s"],
                        "fraction_of_roofline": r["fraction_of_roofline"],
                        "port_roofline_tokens_per_s": r["port_roofline_tokens_per_s"],
                        "fits": r["fits"], "problems": r["problems"], "phases": r["phases"],
                        "bus_limited_by": r["bus_limited_by"]})
    return out


#: Multi-stream rows: (model, board, streams B, tokens per stream per pass k, tokens emitted per stream per pass).
#: 1.74 and 2.67: the trigram acceptance measured at k = 2 and k = 4 (docs/performance.md "Speculative passes").
STREAM_CASES = [(m, b, B, 1, None) for b in ("kv260", "zcu104") for m in ("370M", "1.3B") for B in (1, 2, 3, 4, 8)] + \
    [("1.3B", b, B, k, a) for b in ("kv260", "zcu104") for B, k, a in ((2, 2, 1.74), (4, 2, 1.74), (2, 4, 2.67),
                                                                     (4, 4, 2.67))]


def stream_rows() -> list[dict]:
    """One row per :data:`STREAM_CASES` entry: :func:`mmfree.sim.perf_streams.predict_streams` (modeled)."""
    from mmfree.boardfile import load_board
    from mmfree.sim.perf_streams import predict_streams

    out = []
    for m, b, B, k, a in STREAM_CASES:
        r = predict_streams(m, load_board(b), B, k, a)
        out.append({"model": m, "board": b, "streams": B, "k": k, "accept_len": r["accept_len"],
                    "max_tokens": r["hw"]["max_tokens"], "weight_ports": r["hw"]["weight_ports"],
                    "max_width": r["hw"]["max_width"], "cycles_per_pass": r["cycles_per_pass"],
                    "aggregate_tokens_per_s": r["aggregate_tokens_per_s"],
                    "per_stream_tokens_per_s": r["per_stream_tokens_per_s"],
                    "single_stream_tokens_per_s": r["single_stream_tokens_per_s"],
                    "speedup_vs_single_stream": r["speedup_vs_single_stream"], "lut": r["resources"]["lut"],
                    "bram36": r["resources"]["bram36"], "fits": r["fits"], "problems": r["problems"]})
    return out


def stream_table(rs: list[dict]) -> str:
    out = ["| model | board | streams B | k per stream (accept) | build `--max-tokens` | cycles/pass (modeled) | "
           "aggregate tok/s (modeled) | per stream | x single stream | LUT / BRAM36 | fits |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
        fits = "yes" if r["fits"] else "no: " + "; ".join(p.replace("the design's estimated resources exceed the part: ",
                                                                     "") for p in r["problems"])
        out.append(f"| {r['model']} | {r['board']} | {r['streams']} | {r['k']} ({r['accept_len']:g}) | "
                   f"{r['max_tokens']} | {r['cycles_per_pass']:,.0f} | {r['aggregate_tokens_per_s']:.1f} | "
                   f"{r['per_stream_tokens_per_s']:.1f} | {r['speedup_vs_single_stream']:.2f} | "
                   f"{r['lut'] / 1000:.0f} k / {r['bram36']} | {fits} |")
    return "\n".join(out)


def table(rs: list[dict]) -> str:
    out = ["| model | board | clock | weight ports x bus | tokens/s (modeled) | DDR MB/token (modeled) | DDR GB/s used / peak | "
           "DDR roofline tok/s (1.6 bit) | physical limit tok/s (log2 3 bit) | of roofline | fits |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
        fits = "yes" if r["fits"] else "no: " + "; ".join(r["problems"])
        out.append(f"| {r['model']} | {r['board']} | {r['clock_mhz']:g} MHz | {r['weight_ports']} x {r['bus_bits']}-bit | "
                   f"{r['tokens_per_s']:.2f} | {r['bytes_per_token'] / 1e6:.0f} | {r['ddr_gbps']:.2f} / "
                   f"{r['peak_gbps']:.1f} | {r['roofline_tokens_per_s']:.1f} | {r['physical_limit_tokens_per_s']:.1f} | "
                   f"{100 * r['fraction_of_roofline']:.0f} % | {fits} |")
    out += ["", "| published anchor | board | tokens/s | label |", "|---|---|---|---|"]
    for a in ANCHORS:
        out.append(f"| {a['what']} | {a['board'] or '-'} | {a['tokens_per_s']:g} | {a['label']} |")
    return "\n".join(out)


def plot(rs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmfree.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = {"pynq-z2": "tab:green", "kv260": "tab:blue", "zcu104": "tab:orange"}
    for b in BOARDS:
        br = [r for r in rs if r["board"] == b]
        x = [r["ternary_weights"] / 1e9 for r in br]
        ax.plot(x, [r["tokens_per_s"] for r in br], "o-", color=colors[b], label=f"{b}: modeled (this design)")
        ax.plot(x, [r["roofline_tokens_per_s"] for r in br], "--", color=colors[b], alpha=0.7,
                label=f"{b}: DDR roofline (1.6 bit/weight)")
        ax.plot(x, [r["physical_limit_tokens_per_s"] for r in br], ":", color=colors[b], alpha=0.7)
        for r, xx in zip(br, x):
            if not r["fits"]:
                ax.plot([xx], [r["tokens_per_s"]], "x", color="red", markersize=10)
    for a in ANCHORS:
        if a["params_b"]:
            ax.plot([a["params_b"]], [a["tokens_per_s"]], "*", markersize=12,
                    label=f"{a['what']} ({a['label'].split(' ')[0]})")
    ax.set_xlabel("ternary weights (billions)")
    ax.set_ylabel("decode tokens/s (k = 1)")
    ax.set_yscale("log")
    ax.set_title("mmfree accelerator, modeled (dotted: physical limit at log2(3) bit; x: does not fit)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--accept-len", type=float, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--record", action="store_true", help="write docs/performance.md and docs/img/perf.png")
    ap.add_argument("--units", action="store_true", help="re-run Yosys for boards/data/unit_resources.json")
    ap.add_argument("--streams", action="store_true", help="multi-stream rows (section projections-streams)")
    ap.add_argument("--only", default=None,
                    help="with --units: comma-separated UNIT_COMMANDS names to re-run (" + ", ".join(UNIT_COMMANDS) +
                    "), merged into the existing file")
    ap.add_argument("--genloop-unit", action="store_true", help="print the Yosys estimate of GenLoop (run by --units)")
    ap.add_argument("--pipelined-unit", action="store_true",
                    help="print the Yosys estimates of the pipelined vector units (run by --units)")
    args = ap.parse_args()
    if args.only is not None and not args.units:
        ap.error("--only needs --units")
    if args.units:
        return run_units(args.only)
    if args.genloop_unit:
        return genloop_unit()
    if args.pipelined_unit:
        return pipelined_unit()
    if args.streams:
        srs = stream_rows()
        print(json.dumps(srs, indent=1) if args.json else stream_table(srs))
        if args.record:
            body = (f"Modeled with `{command_line()}` (mmfree.sim.perf_streams.predict_streams: the forest program "
                    "of ISA version 2, below, on a build of max_tokens = B x k; each board's clock, bus and weight "
                    "ports, greedy decode without "
                    "logits written; the single-stream column is plain decoding, k = 1, on the same build with "
                    "max_tokens 1):\n\n" + stream_table(srs))
            write_section("performance.md", "projections-streams", body)
        return 0
    rs = rows(args.k, args.accept_len)
    text = table(rs)
    if args.json:
        print(json.dumps(rs, indent=1))
    else:
        print(text)
    if args.record and args.k == 1:
        plot(rs, ROOT / "docs" / "img" / "perf.png")
        body = (f"Modeled with `{command_line()}` (mmfree.sim.perf.predict: each board's default clock, HP-port "
                f"width and weight ports (board file build.weight_ports), k = {args.k}, greedy decode without logits "
                f"written, the assumptions listed below):\n\n"
                + text + "\n\n![tokens/s vs model size](img/perf.png)")
        write_section("performance.md", "projections", body)
    elif args.record:
        body = (f"Modeled with `{command_line()}`: a build of k = {args.k} tokens per pass (speculative verification of "
                f"k - 1 drafted tokens), {args.accept_len or 1:g} tokens emitted per pass, otherwise as above. "
                "tokens/s counts emitted tokens; the roofline columns are the one-token-per-weight-read limits.\n\n"
                + text)
        write_section("performance.md", f"projections-k{args.k}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

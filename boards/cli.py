"""Command-line glue for this area (see ``mmfree.cli``): ``mmfree build``, ``mmfree flash``, ``mmfree run``.

Nothing heavy is imported at module level (Amaranth, pynq and the simulator load only when a command runs).
"""

from __future__ import annotations

import argparse
import sys

from mmfree import MmfreeError
from mmfree.cli import add_subcommand, print_json
from mmfree.cli_args import DEFAULT_PROMPT, add_board, add_json, add_model, add_prompt, board_defaults, parse_ids
from mmfree.rtl import params as PARAMS

RUN_BOARDS = ("sim", "pynq-sim", "pynq-z2", "kv260", "zcu104")


def register(sub) -> None:
    """Add this area's subcommands to the ``mmfree`` parser."""
    b = add_subcommand(
        sub, "build", _build, "write (and with Vivado, run) the bitstream build for a PYNQ board",
        "Generates the accelerator's Verilog (Amaranth), packages it as Vivado IP (VLNV\n"
        "mmfree.org:mmfree:mmfree_accel:1.0), writes the block design (Zynq PS, each AXI master of the\n"
        "accelerator on its own HP port through a SmartConnect (--weight-ports: m_axi and m_axi_w1..),\n"
        "AXI4-Lite control and an AXI interrupt controller on the GP port, the PS fabric clock) and a batch\n"
        "TCL that synthesises, implements, writes the bitstream and copies mmfree_<board>.bit with its .hwh\n"
        "(PYNQ naming). Runs Vivado when it is on PATH; otherwise stops after writing the project and prints\n"
        "the command to run where Vivado is. --estimate adds a Yosys synth_xilinx estimate for the board's\n"
        "family (cached; long the first time) and refuses a design that does not fit. docs/boards.md.",
    )
    add_board(b)
    b.add_argument("--out", required=True, help="output folder: new or empty (an earlier build folder is replaced "
                                              "atomically with --force)")
    b.add_argument("--force", action="store_true", help="replace an earlier `mmfree build` folder at --out")
    b.add_argument("--clock-mhz", type=float, default=None, help="fabric clock (default: the board file's)")
    b.add_argument("--max-width", type=int, default=None,
                   help="widest vector (d and I) the build holds: 4096 for 370M (I = 2816), 8192 for 1.3B (I = 5632) and "
                        "2.7B (I = 6912); default: the board file's build.max_width, else 4096 "
                        f"({board_defaults('max_width', PARAMS.BOARD_MAX_WIDTH)})")
    b.add_argument("--weight-ports", type=int, default=None, metavar="N",
                   help="AXI masters streaming weights, one HP port each: 1, 2, 4 or 6 (6: HP0-HP3 and HPC0-HPC1 of a ZynqMP), "
                        "at most the board's HP ports; "
                        f"default: the board file's build.weight_ports, else {PARAMS.BOARD_WEIGHT_PORTS} "
                        f"({board_defaults('weight_ports', PARAMS.BOARD_WEIGHT_PORTS)})")
    b.add_argument("--engines", type=int, default=None, metavar="E",
                   help="ternary engines (ways of the lock-step matvec engine) per weight port: 1 or 2; two consume "
                        "weights twice as fast as a port delivers them, one halves the engine logic "
                        "(six ports get less than a beat per cycle each from the DDR, which one engine outruns); "
                        "default: the board file's build.matvec_engines, "
                        f"else {PARAMS.BOARD_MATVEC_ENGINES} "
                        f"({board_defaults('matvec_engines', PARAMS.BOARD_MATVEC_ENGINES)})")
    b.add_argument("--max-tokens", type=int, default=None, metavar="K",
                   help="tokens per pass the build verifies (speculative decoding: k - 1 drafted tokens), 1..16; "
                        "each token adds a copy of the vector buffers, code memories and per-token vector units; "
                        f"default: the board file's build.max_tokens, else {PARAMS.BOARD_MAX_TOKENS} "
                        f"({board_defaults('max_tokens', PARAMS.BOARD_MAX_TOKENS)})")
    b.add_argument("--draft-engine", action=argparse.BooleanOptionalAction, default=None,
                   help="include the trigram draft engine and the on-chip draft-verify loop (GenLoop: `mmfree run "
                        "--draft trigram --onchip`; needs --max-tokens >= 2); its bigram memory goes to URAM on "
                        "UltraScale+. Default: the board file's build.draft_vocab (0 or absent: none; "
                        f"{board_defaults('draft_vocab', 0)})")
    b.add_argument("--draft-vocab", type=int, default=None, metavar="V",
                   help="rows of the draft engine's bigram memory, at least the model's vocabulary (implies "
                        f"--draft-engine; default: the board file's build.draft_vocab, else {PARAMS.BOARD_DRAFT_VOCAB}, "
                        "the MMfreeLM checkpoints' vocabulary)")
    b.add_argument("--pipelined-units", action=argparse.BooleanOptionalAction, default=None,
                   help="build the datapath from the pipelined variants of its vector units (shorter paths for a "
                        "faster clock, a few more cycles per pass; HW_CONFIG bit 28; docs/rtl.md Timing). Default: "
                        "the board file's build.pipelined_units, else off")
    b.add_argument("--vector-lanes", type=int, default=None, metavar="V",
                   help="elements per cycle of the vector engine's QSTATS / QCODES passes: 1, 2, 4 or 8 (the vector "
                        "buffers banked by V; V copies of the quantizer statistics and code units); default: the "
                        "board file's build.vector_lanes, else 1")
    b.add_argument("--estimate", action="store_true", help="Yosys resource estimate and fit check (slow, cached)")
    b.add_argument("--no-vivado", action="store_true", help="only write the project, even when Vivado is on PATH")
    add_json(b)

    f = add_subcommand(
        sub, "flash", _flash, "check a bitstream's .hwh and download it to the PYNQ board (pynq.Overlay)",
        "Before touching the hardware: the .hwh must sit next to the .bit (same name), describe the\n"
        "mmfree accelerator (its VLNV) and declare this driver's register-map major version; then\n"
        "pynq.Overlay(X.bit) downloads it and the accelerator's ID/VERSION registers are read back.\n"
        "Needs pynq on a PYNQ board image.",
    )
    add_board(f)
    f.add_argument("--bitstream", required=True, help="X.bit with X.hwh beside it")
    f.add_argument("--check-only", action="store_true", help="check the files, do not download")
    add_json(f)

    r = add_subcommand(
        sub, "run", _run, "generate text with the accelerator on a board or on the simulated board",
        "Runs the driver (mmfree.boards.accelerator.Accelerator) on --board: a PYNQ board (the overlay given by\n"
        "--bitstream, or the one already loaded) or 'sim', the accelerator RTL under Verilator + cocotb with\n"
        "the very same driver code. Greedy decoding; --draft trigram (or lookup) verifies drafts --k tokens\n"
        "per pass and still produces the plain greedy tokens. --temperature T (--top-p, --seed): the host samples\n"
        "from each pass's logits exactly as `mmfree generate --backend int` (same seed, same tokens; not with\n"
        "--onchip). With --board sim every pass is compared with\n"
        "the integer reference (bit_exact). --json keys: tokens, text, cycles (prefill_cycles +\n"
        "decode_cycles), rd_bytes, stalls, passes, verify_steps, mean_accepted (and bit_exact for sim).\n"
        "--draft trigram --onchip: the accelerator runs the whole draft-verify loop itself (CONTROL.GENERATE,\n"
        "a bitstream with the draft engine; docs/speculative.md): the host prefills, uploads the table and\n"
        "waits for one interrupt. Extra keys: onchip, gen_count, gen_passes (verification passes), gen_nodes\n"
        "(tree nodes fed), gen_cycles, mean_draft_nodes, partial_counters (rd_bytes, wr_bytes and stalls then\n"
        "count only the loop's last pass). With --board sim the loop's passes are not read back: bit_exact\n"
        "compares the prefill passes with IntModel, and the tokens, gen_passes and the adapted table with\n"
        "pymodel's speculative_generate (reference_verify_steps).\n"
        "--board pynq-sim: the PYNQ path on a simulated pynq.Device whose logic is the ISA emulator\n"
        "(mmfree.sim.pynq_device; no clock: cycle counters read 0): pynq.Overlay loads the generated .hwh of a\n"
        "simulated build (--bitstream sim/mmfree_<board>.bit from `mmfree build`, default: the simulator's\n"
        "build), binds MmfreeAccelIP (DefaultIP), allocates with pynq.allocate and waits on pynq's Interrupt;\n"
        "bit_exact compares the tokens with IntModel greedy decoding. Extra keys: overlay, ip, wait,\n"
        "interrupts (interrupts delivered through pynq's UioController).",
    )
    add_board(r, sim=True, note="pynq-sim: the PYNQ path on a simulated pynq.Device")
    add_model(r)
    add_prompt(r)
    r.add_argument("--tokens", type=int, default=16,
                   help="tokens to generate, >= 1; at most what the board's memory holds (--board sim: prompt + "
                        "tokens <= 2048 simulated positions)")
    r.add_argument("--draft", choices=["none", "lookup", "trigram"], default="none", help="drafter")
    r.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (the accelerator's argmax); > 0: the host samples from each pass's logits exactly "
                        "as `mmfree generate --backend int` does (same --seed, same tokens; with --draft trigram the "
                        "multi-candidate rule at drafted nodes); not with --onchip")
    r.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold in (0, 1] (with --temperature)")
    r.add_argument("--seed", type=int, default=0, help="sampling seed (with --temperature)")
    r.add_argument("--k", type=int, default=None, help="tokens per pass (default: the build's max with drafts, else 1)")
    r.add_argument("--tree-rule", choices=["count-guided", "template"], default=None,   # trigram.TREE_RULES
                   help="with --draft trigram: the draft tree shape, count-guided (the k - 1 most likely nodes by the "
                        "table's counts) or template (fixed rank paths); default: docs/speculative.md (on chip: the "
                        "engine's)")
    r.add_argument("--onchip", action="store_true",
                   help="with --draft trigram: draft, verify and adapt the table on the accelerator (CONTROL.GENERATE; "
                        "needs a bitstream with the draft engine), one interrupt for the whole generation")
    r.add_argument("--bitstream", default=None,
                   help="X.bit to load (default: the loaded overlay); pynq-sim: a simulated build's "
                        "sim/mmfree_<board>.bit (default: one for the simulator's build)")
    r.add_argument("--timeout", type=float, default=60.0,
                   help="seconds one pass may take: finite, > 0 and at most a day (default 60)")
    r.add_argument("--streams", type=int, default=None, metavar="B",
                   help="B independent streams decoded together, every pass one forest (1..the build's max tokens; "
                        "the program is compiled for B streams): stream s's prompt is one of --prompt-ids 'a,b;c,d' "
                        "(';' between streams) or the prompt without its last s tokens; each stream gets the tokens "
                        "of decoding it alone (sim and pynq-sim check them and the pass count against the integer "
                        "reference); not with --draft, --k, --onchip")
    r.add_argument("--decode-first", action="store_true",
                   help="with --streams: decoding streams advance in every pass and prompt chunks fill the room left "
                        "(the schedule `mmfree serve --max-streams` uses); default: prompts first, then decode passes. "
                        "The tokens are the same; the pass count may differ (checked against the reference's loop "
                        "with the same schedule)")
    r.add_argument("--no-logits", action="store_true",
                   help="do not write each token's logits to DDR (greedy decoding reads only the on-chip argmax; "
                        "with --board sim the states and argmax are still compared)")
    add_json(r)


# ---- build -------------------------------------------------------------------------------------------------------
def _build(args) -> int:
    from mmfree.boards.build import build

    def say(m):
        print(f"[mmfree build] {m}", file=sys.stderr, flush=True)

    res = build(args.board, args.out, clock_mhz=args.clock_mhz, do_estimate=args.estimate,
                run_vivado=False if args.no_vivado else None, max_width=args.max_width,
                max_tokens=args.max_tokens, weight_ports=args.weight_ports, progress=say, force=args.force,
                draft_engine=args.draft_engine, draft_vocab=args.draft_vocab, pipelined_units=args.pipelined_units,
                matvec_engines=args.engines, vector_lanes=args.vector_lanes)
    if args.json:
        print_json(res)
        return 0
    cfg = res["config"]
    print(f"board:     {cfg['board']} ({cfg['part']}), accelerator at {cfg['clock_mhz']:g} MHz, "
          f"{cfg['weight_ports']} x {8 * cfg['bus_bytes']}-bit AXI master ({', '.join(cfg['hp_ports'])}), CSRs on "
          f"{cfg['gp_port']}")
    print(f"datapath:  {cfg['matvec_engines']} ternary engine(s) per weight port, {cfg['max_tokens']} token(s) per pass, "
          f"vectors up to {cfg['max_width']} wide")
    fab = res["fabric_clock"]
    print(f"clock:     {fab['actual_mhz']:.6f} MHz from the PS ({fab['pll']['name']} {fab['pll']['mhz']:g} MHz / "
          f"{fab['divisors'][0]} / {fab['divisors'][1]}), FREQ_HZ {fab['freq_hz']}")
    print("draft:     " + (f"trigram draft engine, bigram memory of {res['draft_vocab']} tokens"
                           if res["draft_vocab"] else "no draft engine (--draft-engine to add one)"))
    mod = res["modeled_resources"]
    print("modeled:   " + ", ".join(f"{k.upper()} {mod['used'][k]:,} of {mod['available'][k]:,}"
                                    for k in mod["used"]) + ": fits")
    print(f"project:   {args.out} ({', '.join(res['files'])}, build.json)")
    est = res.get("estimate")
    if est:
        c = est["counts"]
        print(f"estimate:  Yosys {est['yosys']} synth_xilinx -family {est['family']}: LUT {c['LUT']} (+{c['LUTRAM']} "
              f"LUTRAM), FF {c['FF']}, DSP {c['DSP']}, BRAM36 {c['BRAM']:g}, URAM {c.get('URAM', 0)}")
        for k, v in est["fit"].items():
            print(f"           {k:<5} {100 * v['fraction']:5.1f}% of {v['available']}")
        for w in est.get("warnings", []):
            print(f"warning:   {w}", file=sys.stderr)
    if res["vivado"] == "ran":
        print(f"bitstream: {res['bitstream_path']}\nhwh:       {res['hwh_path']}")
    else:
        print(res["message"])
    return 0


# ---- flash ----------------------------------------------------------------------------------------------------------
def _flash(args) -> int:
    from mmfree.boardfile import load_board
    from mmfree.boards.pynq import check_hwh, load_overlay
    from mmfree.rtl import regmap as RM

    board = load_board(args.board)
    info = check_hwh(args.bitstream, board)
    out = {"bitstream": args.bitstream, "hwh": str(info.hwh), "instance": info.instance,
           "regmap_version": f"{info.regmap_version >> 16}.{info.regmap_version & 0xFFFF}", "part": info.part,
           "downloaded": False}
    if not args.check_only:
        ov, ip, _ = load_overlay(args.bitstream, board)
        ident, version = ip.read(RM.OFFSET["ID"]), ip.read(RM.OFFSET["VERSION"])
        if ident != RM.ID_MAGIC:
            raise MmfreeError(f"the overlay loaded but {info.instance} does not answer (ID {ident:#x}, expected "
                              f"{RM.ID_MAGIC:#x}): the fabric clock or reset is not running")
        out.update(downloaded=True, hw_version=f"{version >> 16}.{version & 0xFFFF}",
                   hw_config=RM.decode_hw_config(ip.read(RM.OFFSET["HW_CONFIG"])))
    if args.json:
        print_json(out)
    else:
        for k, v in out.items():
            print(f"{k + ':':<16}{v}")
    return 0


# ---- run -------------------------------------------------------------------------------------------------------------
def _prompt(args):
    if args.prompt_ids is not None:
        return parse_ids(args.prompt_ids)
    return args.prompt if args.prompt is not None else DEFAULT_PROMPT


def _print_run(res: dict, args) -> None:
    if args.json:
        print_json(res)
        return
    if "bit_exact" in res:
        print(f"bit_exact: {res['bit_exact']}")
    print(f"tokens:    {res['tokens']}")
    if res.get("text") is not None:
        print(f"text:      {res['text']!r}")
    print(f"passes:    {res['passes']} ({res['decode_passes']} decode, {res['verify_steps']} verifying drafts, "
          f"{res['mean_accepted']:.2f} tokens per decode pass)")
    split = (f" ({res['prefill_cycles']} prefill + {res['decode_cycles']} decode)"
             if "decode_cycles" in res else "")
    print(f"counters:  {res['cycles']} cycles{split}, {res['rd_bytes']} bytes read, {res['stalls']} stall cycles")
    if res.get("onchip") and "gen_passes" in res:
        print(f"on chip:   {res['gen_count']} tokens in {res['gen_passes']} passes ({res['gen_nodes']} tree nodes, "
              f"{res['mean_draft_nodes']:.2f} drafts per pass), {res['gen_cycles']} cycles; bytes and stalls count "
              "the loop's last pass only")
    for p in res.get("problems", []):
        print(f"MISMATCH:  {p}", file=sys.stderr)


def _run(args) -> int:
    from mmfree.host.errors import check_timeout
    from mmfree.host.layout import check_n_tokens

    check_n_tokens(args.tokens, name="--tokens")
    check_timeout(args.timeout, "--timeout")
    draft = None if args.draft == "none" else args.draft
    if args.onchip and draft != "trigram":
        raise MmfreeError("--onchip runs the accelerator's trigram draft engine: give --draft trigram")
    if args.tree_rule is not None and draft != "trigram":
        raise MmfreeError("--tree-rule chooses the shape of trigram draft trees: add --draft trigram")
    from mmfree.host.generate import ONCHIP_SAMPLING, check_sampling

    args.temperature = check_sampling(args.temperature, args.top_p, args.seed)
    if args.onchip and args.temperature:
        raise MmfreeError(ONCHIP_SAMPLING)
    if args.streams is not None:
        return _run_streams(args, draft)
    if args.decode_first:
        raise MmfreeError("--decode-first schedules multi-stream passes: it goes with --streams B")
    prompt = _prompt(args)
    if args.board == "sim":
        from mmfree.sim.run import run_sim

        say = None if args.json else (lambda m: print(f"[mmfree run] {m}", file=sys.stderr, flush=True))
        res = run_sim(args.model, prompt, args.tokens, draft=draft, k=args.k, timeout_s=args.timeout, progress=say,
                      write_logits=not args.no_logits or bool(args.temperature), onchip=args.onchip,
                      tree_rule=args.tree_rule, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
        _print_run(res, args)
        return 0 if res["bit_exact"] else 1
    if args.board == "pynq-sim":
        return _run_pynq_sim(args, prompt, draft)
    if args.board not in RUN_BOARDS and not args.board.startswith("custom:") and not args.board.endswith(".json"):
        raise MmfreeError(f"unknown board {args.board!r}: choose one of {', '.join(RUN_BOARDS)}")
    return _run_board(args, prompt, draft)


# ---- run --streams ------------------------------------------------------------------------------------------------
def _check_streams_args(args, draft) -> int:
    """``--streams B`` and the options it excludes; returns B."""
    from mmfree.rtl.isa import MAX_STREAMS

    B = args.streams
    if not 1 <= B <= MAX_STREAMS:
        raise MmfreeError(f"--streams must be 1..{MAX_STREAMS} (and at most the build's tokens per pass), got {B}")
    for flag, bad in (("--draft", draft is not None), ("--onchip", args.onchip), ("--k", args.k not in (None, 1)),
                      ("--tree-rule", args.tree_rule is not None)):
        if bad:
            raise MmfreeError(f"{flag} does not apply with --streams (every decode pass carries one token per "
                              "stream); leave it out")
    if args.board == "sim" and args.temperature:
        raise MmfreeError("--temperature with --streams runs on --board pynq-sim and PYNQ boards; the simulated "
                          "board's multi-stream run (Verilator) is greedy")
    return B


def _stream_ids(args, B: int, tok_dir) -> list[list[int]]:
    """The B prompts as token ids (:func:`mmfree.cli_args.stream_prompts`; text through the model's tokenizer)."""
    from mmfree.cli_args import stream_prompts

    def one():
        p = _prompt(args)
        if not isinstance(p, str):
            return p
        if tok_dir is None:
            raise MmfreeError("the model has no tokenizer: give --prompt-ids")
        from mmfree.pymodel.tokenizer import load_tokenizer

        return list(load_tokenizer(tok_dir).encode_prompt(p))

    return stream_prompts(args.prompt_ids, B, one)


def _run_streams(args, draft) -> int:
    """``mmfree run --streams B``: --board sim (Verilator: :func:`mmfree.sim.accel.simulate_streams`), pynq-sim
    (pynq's stack on the simulated device) or a PYNQ board, through :meth:`Accelerator.generate_streams`."""
    B = _check_streams_args(args, draft)
    if args.board == "sim":
        from mmfree.pymodel.intmodel import open_int_model
        from mmfree.sim.accel import simulate_streams

        prompts = _stream_ids(args, B, open_int_model(args.model)[1])
        say = None if args.json else (lambda m: print(f"[mmfree run] {m}", file=sys.stderr, flush=True))
        res = dict(simulate_streams(args.model, prompts, args.tokens, progress=say or False,
                                    write_logits=not args.no_logits, decode_first=args.decode_first), board="sim")
        _print_streams(res, args)
        return 0 if res["bit_exact"] else 1
    if args.board != "pynq-sim" and args.board not in RUN_BOARDS and not args.board.startswith("custom:") \
            and not args.board.endswith(".json"):
        raise MmfreeError(f"unknown board {args.board!r}: choose one of {', '.join(RUN_BOARDS)}")
    from mmfree.host.session import open_model

    model = open_model(args.model, streams=B)
    prompts = _stream_ids(args, B, model[2])
    if args.board == "pynq-sim":
        return _run_streams_pynq_sim(args, model, prompts)
    acc = _open_board(args, model)
    acc.write_logits = not args.no_logits
    with acc:
        _check_fits_streams(acc, B)
        g = acc.generate_streams(prompts, args.tokens, args.temperature, args.top_p, [args.seed] * B,
                                 decode_first=args.decode_first)
    _print_streams(dict(g.as_dict(), board=acc.board.name, clock_mhz=acc.board.clock_mhz), args)
    return 0


def _run_streams_pynq_sim(args, model, prompts) -> int:
    """``--board pynq-sim --streams B``: the streams through pynq's Overlay / MMIO / allocate / Interrupt on the
    simulated device, checked against the integer reference (:func:`mmfree.sim.run.check_streams`)."""
    from mmfree.boards.accelerator import Accelerator
    from mmfree.boards.pynq import sim_overlay
    from mmfree.sim.run import check_streams

    compiled, im, tok_dir = model
    B = len(prompts)
    with sim_overlay(args.bitstream) as (ov, ip, dev):
        with Accelerator.on_ip(ip, model, timeout_s=args.timeout, tokenizer=tok_dir) as acc:
            acc.write_logits = not args.no_logits
            K = _check_fits_streams(acc, B)
            g = acc.generate_streams(prompts, args.tokens, args.temperature, args.top_p, [args.seed] * B,
                                     decode_first=args.decode_first)
            interrupts = dev.uio.count if dev.uio is not None else 0
    res = dict(g.as_dict(), board="pynq-sim", overlay=str(ov.bitfile_name), ip=type(ip).__name__,
               interrupts=interrupts, max_tokens=K)
    if im is not None:
        res.update(check_streams(im, g.prompts, args.tokens, K, g.tokens, len(g.passes), args.temperature,
                                 args.top_p, [args.seed] * B, decode_first=args.decode_first))
    _print_streams(res, args)
    return 0 if res.get("bit_exact", True) else 1


def _check_fits_streams(acc, B: int) -> int:
    """The bitstream's tokens per pass K; MmfreeError naming --streams when B > K (a decode pass feeds one token
    per stream)."""
    K = acc.hw.max_tokens
    if B > K:
        raise MmfreeError(f"--streams {B}: this bitstream verifies {K} tokens per pass, so a pass carries at most {K} "
                          f"streams: give --streams 1..{K} (or a build with --max-tokens >= {B})")
    return K


def _print_streams(res: dict, args) -> None:
    if args.json:
        print_json(res)
        return
    if "bit_exact" in res:
        print(f"bit_exact: {res['bit_exact']}")
    texts = res.get("texts") or [None] * len(res["tokens"])
    for s, (p, toks) in enumerate(zip(res["prompt_ids"], res["tokens"])):
        print(f"stream {s}:  prompt {p} -> {toks}" + (f" {texts[s]!r}" if texts[s] is not None else ""))
    ref = f" (reference: {res['reference_passes']})" if "reference_passes" in res else ""
    print(f"passes:    {res['passes']}{ref}, {res['decode_passes']} decode passes of up to {len(res['tokens'])} "
          f"streams, {sum(map(len, res['tokens']))} tokens")
    if "cycles" in res:
        print(f"counters:  {res['cycles']} cycles" + (" (the pynq-sim device has no clock)"
                                                      if res.get("board") == "pynq-sim" else ""))
    for p in res.get("problems", []):
        print(f"MISMATCH:  {p}", file=sys.stderr)


def _open_board(args, model):
    """The :class:`Accelerator` on a PYNQ board (``--bitstream``, else the overlay already loaded) with ``model``
    (:func:`open_model`'s tuple), after checking it fits the board's DDR."""
    from mmfree.boardfile import load_board
    from mmfree.boards.accelerator import Accelerator
    from mmfree.host.layout import check_fits, check_n_tokens

    board = load_board(args.board)
    compiled, im, tok_dir = model
    check_fits(compiled, board)                       # before touching the hardware
    check_n_tokens(args.tokens, compiled, board, name="--tokens")
    if args.bitstream:
        return Accelerator.from_bitstream(args.bitstream, model, board=board, timeout_s=args.timeout,
                                          tokenizer=tok_dir)
    return _attach_loaded_overlay(model, board, args.timeout, tok_dir)


def _run_board(args, prompt, draft) -> int:
    from mmfree.host.session import open_model

    acc = _open_board(args, open_model(args.model))
    board = acc.board
    acc.write_logits = not args.no_logits
    with acc:
        g = acc.generate(prompt, args.tokens, draft=draft, k=args.k, onchip=args.onchip, tree_rule=args.tree_rule,
                         temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    res = dict(g.as_dict(), board=board.name, clock_mhz=board.clock_mhz)
    _print_run(res, args)
    return 0


def _run_pynq_sim(args, prompt, draft) -> int:
    """``--board pynq-sim``: ``pynq.Overlay`` of a simulated build (``--bitstream``, or the simulator's default
    build) on the simulated pynq device (:func:`mmfree.boards.pynq.sim_overlay`), then pynq's own DefaultIP / MMIO
    / allocate / Interrupt; the tokens checked against IntModel greedy decoding, or with ``--temperature`` against
    the reference's seeded sampling (:func:`mmfree.sim.run.expected_tokens`; prompt-lookup drafts: not checked,
    as ``--board sim``)."""
    from mmfree.boards.accelerator import Accelerator
    from mmfree.boards.pynq import sim_overlay
    from mmfree.host.session import open_model
    from mmfree.pymodel.drafters import TrigramDrafter
    from mmfree.sim.run import expected_tokens

    model = open_model(args.model)
    compiled, im, tok_dir = model
    with sim_overlay(args.bitstream) as (ov, ip, dev):
        with Accelerator.on_ip(ip, model, timeout_s=args.timeout, tokenizer=tok_dir) as acc:
            acc.write_logits = not args.no_logits
            g = acc.generate(prompt, args.tokens, draft=draft, k=args.k, onchip=args.onchip, tree_rule=args.tree_rule,
                             temperature=args.temperature, top_p=args.top_p, seed=args.seed)
            interrupts = dev.uio.count if dev.uio is not None else 0
            waits = "interrupt" if acc.transport.irq is not None else "polling STATUS"
    res = dict(g.as_dict(), board="pynq-sim", overlay=str(ov.bitfile_name), ip=type(ip).__name__, wait=waits,
               interrupts=interrupts)
    ref = None
    if im is not None:
        table = (TrigramDrafter.for_model(im, None, tok_dir, log=lambda m: None).table
                 if args.temperature and draft == "trigram" else None)
        ref, what = expected_tokens(im, g.prompt, args.tokens, args.temperature, args.top_p, args.seed, draft, table,
                                    g.k, g.tree_rule)
    if ref is not None:
        res.update(bit_exact=g.tokens == ref, reference_tokens=ref,
                   problems=[] if g.tokens == ref else [f"tokens {g.tokens} differ from {what} {ref}"])
    _print_run(res, args)
    return 0 if res.get("bit_exact", True) else 1


def _attach_loaded_overlay(model, board, timeout, tok_dir):
    """The accelerator of the overlay PYNQ reports as loaded (``pynq.PL.bitfile_name``)."""
    from pathlib import Path

    from mmfree.boards.accelerator import Accelerator
    from mmfree.boards.pynq import _pynq, pynq_device

    pynq = _pynq()
    pynq_device()
    try:
        bitfile = pynq.PL.bitfile_name
    except Exception as exc:
        raise MmfreeError(f"pynq cannot tell which overlay is loaded ({exc}): give --bitstream X.bit") from None
    if not bitfile or not Path(bitfile).exists():
        raise MmfreeError("no overlay is loaded: give --bitstream X.bit (or run `mmfree flash` first)")
    return Accelerator.from_bitstream(bitfile, model, board=board, download=False, timeout_s=timeout,
                                      tokenizer=tok_dir)

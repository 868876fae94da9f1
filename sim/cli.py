"""Command-line glue for this area (see ``mmfree.cli``): ``mmfree sim``."""

from __future__ import annotations

import sys

from mmfree import MmfreeError
from mmfree.cli import add_subcommand, print_json
from mmfree.cli_args import DEFAULT_PROMPT, add_json, add_model, add_prompt, parse_ids, stream_prompts
from mmfree.rtl import regmap as RM


def register(sub) -> None:
    """Add this area's subcommands to the ``mmfree`` parser."""
    p = add_subcommand(
        sub, "sim", _sim, "generate on the accelerator RTL (Verilator) and check it bit for bit",
        "Compiles the model into an accelerator program and DDR image, builds the accelerator RTL with\n"
        "Verilator (cached), and generates --tokens tokens greedily: the prompt goes through the\n"
        "accelerator k tokens per pass, then one pass per token (or, with --k > 1, the last token plus\n"
        "k-1 drafted ones, of which the agreeing prefix is kept). Every pass is replayed on the integer\n"
        "reference and every logit, argmax and state compared exactly.\n\n"
        "DDR is a Verilog model with a fixed bandwidth of one bus beat per cycle (16 bytes) and\n"
        "--latency cycles per read burst. Reports bit_exact, the tokens and text, cycles (total and per\n"
        "generated token), bytes read from DDR, stall cycles and the roofline fraction: bytes that must\n"
        "move per token / 16 bytes per cycle / cycles per token (docs/sim.md defines both).\n"
        "--json prints one object (keys in docs/sim.md); --waves writes a waveform (FST; VCD where the lz4\n"
        "headers Verilator's FST writer needs are missing; slow).",
    )
    add_model(p)
    add_prompt(p)
    p.add_argument("--tokens", type=int, default=16, help="tokens to generate")
    p.add_argument("--k", type=int, default=1, help="tokens per pass (1..4 in the simulated build)")
    p.add_argument("--streams", type=int, default=None,
                   help="B independent streams (1..4 in the simulated build) decoded together, every decode pass "
                        "one forest of B roots (multi-stream passes, docs/accelerator.md); stream s's prompt is "
                        "--prompt-ids 'a,b;c,d' (one list per stream, ';' between) or the prompt without its "
                        "last s tokens. Each stream is checked against plain greedy decoding of its prompt"),
    p.add_argument("--latency", type=int, default=24, help="simulated DDR read latency in cycles")
    p.add_argument("--no-logits", action="store_true",
                   help="do not write logits to DDR (argmax and states are still compared)")
    p.add_argument("--memory", choices=["hdl", "python"], default="hdl",
                   help="hdl: Verilog DDR model (fast); python: cocotbext-axi AxiRam (protocol checks, slow)")
    p.add_argument("--weight-ports", type=int, choices=RM.WEIGHT_PORT_CHOICES, default=1,
                   help="AXI masters streaming weights in the simulated build (4: the KV260/ZCU104 build; 6: every "
                        "HP and HPC port of a ZynqMP; each value is its own Verilator build, minutes the first time)")
    p.add_argument("--waves", action="store_true",
                   help="write a waveform (FST, or VCD without the lz4 headers) and print its path")
    add_json(p)


def _sim(args) -> int:
    from mmfree.sim.accel import simulate_generation

    if args.streams is not None:
        return _sim_streams(args)
    if args.tokens < 1:
        raise MmfreeError("--tokens must be >= 1")
    from mmfree.sim.accel import DEFAULT_HW, MAX_RD_LATENCY, MAX_SIM_POSITIONS

    if not 1 <= args.latency <= MAX_RD_LATENCY:
        raise MmfreeError(f"--latency must be 1..{MAX_RD_LATENCY} cycles, got {args.latency}")
    if not 1 <= args.k <= DEFAULT_HW.max_tokens:
        raise MmfreeError(f"--k must be 1..{DEFAULT_HW.max_tokens} (tokens per pass of the simulated build), "
                          f"got {args.k}")
    if args.tokens > MAX_SIM_POSITIONS:
        raise MmfreeError(f"--tokens {args.tokens}: a simulation runs at most {MAX_SIM_POSITIONS} positions")
    prompt = _prompt(args)
    if len(prompt) + args.tokens > MAX_SIM_POSITIONS:
        raise MmfreeError(f"the prompt is {len(prompt)} tokens; with --tokens {args.tokens} that is "
                          f"{len(prompt) + args.tokens} positions, a simulation runs at most {MAX_SIM_POSITIONS} "
                          f"(shorten the prompt or --tokens)")
    import dataclasses

    hw = dataclasses.replace(DEFAULT_HW, weight_ports=args.weight_ports)
    if args.weight_ports > 1 and args.memory == "python":
        raise MmfreeError("--memory python serves one AXI master; use --memory hdl with --weight-ports "
                          f"{args.weight_ports}")
    res = simulate_generation(args.model, prompt, args.tokens, progress=(not args.json) or sys.stderr.isatty(),
                              k=args.k, waves=args.waves, hw=hw,
                              memory=args.memory, rd_latency=args.latency, write_logits=not args.no_logits)
    if args.json:
        print_json(res)
    else:
        _print(res)
    return 0 if res["bit_exact"] else 1


def _prompt(args) -> list[int]:
    """The prompt's token ids: --prompt-ids, or --prompt (default DEFAULT_PROMPT) through the model's tokenizer."""
    if args.prompt_ids is not None:
        prompt = parse_ids(args.prompt_ids)
    else:
        from mmfree.pymodel.intmodel import open_int_model
        from mmfree.pymodel.tokenizer import load_tokenizer

        _, tok_dir = open_int_model(args.model)
        try:
            tok = load_tokenizer(tok_dir)
        except Exception as exc:
            raise MmfreeError(f"the model has no usable tokenizer ({exc}); give --prompt-ids") from None
        prompt = tok.encode_prompt(args.prompt if args.prompt is not None else DEFAULT_PROMPT)
    if not prompt:
        raise MmfreeError("the prompt encodes to no tokens; give --prompt TEXT or --prompt-ids")
    return prompt


def _sim_streams(args) -> int:
    """``mmfree sim --streams B``: :func:`mmfree.sim.accel.simulate_streams`."""
    import dataclasses

    from mmfree.sim.accel import DEFAULT_HW, simulate_streams

    B = args.streams
    if not 1 <= B <= DEFAULT_HW.max_tokens:
        raise MmfreeError(f"--streams must be 1..{DEFAULT_HW.max_tokens} (tokens per pass of the simulated build), "
                          f"got {B}")
    for flag, bad in (("--k", args.k != 1), ("--waves", args.waves), ("--memory python", args.memory != "hdl")):
        if bad:
            raise MmfreeError(f"{flag} does not apply with --streams (one token per stream per decode pass, the HDL "
                              "memory model); leave it out")
    if args.tokens < 1:
        raise MmfreeError("--tokens must be >= 1")
    prompts = stream_prompts(args.prompt_ids, B, lambda: _prompt(args))
    hw = dataclasses.replace(DEFAULT_HW, weight_ports=args.weight_ports)
    res = simulate_streams(args.model, prompts, args.tokens, progress=(not args.json) or sys.stderr.isatty(), hw=hw,
                           rd_latency=args.latency, write_logits=not args.no_logits)
    if args.json:
        print_json(res)
    else:
        print(f"bit_exact: {res['bit_exact']}")
        for s, toks in enumerate(res["tokens"]):
            print(f"stream {s}:  prompt {res['prompt_ids'][s]} -> {toks}")
        cpp = res["cycles_per_decode_pass"]
        print(f"cycles:    {res['cycles']} total (simulated), "
              + (f"{cpp:.0f} per decode pass of {B} streams" if cpp is not None else "no decode pass")
              + f" ({res['passes']} passes)")
        for p in res.get("problems", []):
            print(f"MISMATCH:  {p}", file=sys.stderr)
    return 0 if res["bit_exact"] else 1


def _print(res: dict) -> None:
    """The text report of a :func:`mmfree.sim.accel.simulate_generation` result."""
    text = res.get("text")
    print(f"bit_exact: {res['bit_exact']}")
    print(f"tokens:    {res['tokens']}")
    if text is not None:
        print(f"text:      {text!r}")
    cpt = res["cycles_per_token"]
    per = f"{cpt:.0f} per generated token" if cpt is not None else "no decode pass"
    print(f"cycles:    {res['cycles']} total (simulated), {per} ({res['passes']} passes, k={res['k']})")
    print(f"DDR:       {res['ddr_bytes']} bytes read, {res['ddr_write_bytes']} written, "
          f"{res['stall_cycles']} weight-stall cycles")
    if res["roofline_fraction"] is not None:
        print(f"roofline:  {res['roofline_fraction']:.3f} of {res['bus_bytes_per_cycle']} bytes/cycle (simulated)")
    if res.get("waves"):
        print(f"waves:     {res['waves']}")
    for p in res.get("problems", []):
        print(f"MISMATCH:  {p}", file=sys.stderr)

"""`mmfree info` and `mmfree demo`."""

from __future__ import annotations

import sys

from mmfree.cli import add_subcommand, print_json
from mmfree.cli_args import DEFAULT_PROMPT, add_json


def register(sub) -> None:
    p = add_subcommand(
        sub, "info", _info, "versions of every tool mmfree uses, and how to get the missing ones",
        "Lists Python packages (torch, triton, amaranth, cocotb, pynq ...), external tools (Verilator,\n"
        "Yosys, g++, Vivado, Vitis HLS) and GPUs, with versions. Missing tools are reported as\n"
        "'not found' with the way to get them; this command never fails because a tool is missing.",
    )
    add_json(p, "a JSON list of {name, found, version, detail, hint}")
    p = add_subcommand(
        sub, "demo", _demo, "the main job on the embedded default model: float, integer reference, RTL",
        "Generates text with the embedded default model three ways and checks they agree:\n"
        "the PyTorch float model, the bit-exact integer reference (numpy), and the accelerator RTL\n"
        "simulated cycle by cycle in Verilator. Prints the text, the agreement and the simulated cycles.",
    )
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt text")
    p.add_argument("--tokens", type=int, default=16, help="tokens to generate on each backend")
    p.add_argument("--no-sim", action="store_true", help="skip the RTL simulation step")
    add_json(p, "one JSON object instead of text")


def _info(args) -> int:
    from mmfree.toolchain import probe_all

    tools = probe_all()
    if args.json:
        print_json([t.as_dict() for t in tools])
        return 0
    width = max(len(t.name) for t in tools)
    for t in tools:
        if t.found:
            line = f"{t.name:<{width}}  {t.version or 'found'}"
            if t.detail:
                line += f"  ({t.detail})"
        else:
            line = f"{t.name:<{width}}  not found: {t.hint}"
        print(line)
    return 0


def _demo(args) -> int:
    from mmfree import MmfreeError
    from mmfree.demo import run_demo
    from mmfree.sim.accel import MAX_SIM_POSITIONS

    if not 1 <= args.tokens <= MAX_SIM_POSITIONS // 2:
        raise MmfreeError(f"--tokens must be in 1..{MAX_SIM_POSITIONS // 2} (the demo simulates every token "
                          f"cycle by cycle), got {args.tokens}")

    return run_demo(args, out=sys.stdout)

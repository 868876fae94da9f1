"""The one ``mmfree`` command. Each area registers its own subcommands.

Subcommands are registered by ``register(subparsers)`` functions in the area packages
(``mmfree.pymodel.cli``, ``mmfree.rtl.cli``, ...), so each area owns its command-line glue.
Those modules must import nothing heavy at module level: ``mmfree --help`` stays instant.

Exit codes: 0 success, 1 a reported error (:class:`mmfree.MmfreeError`), 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys

from mmfree import MmfreeError, __version__

#: Modules whose ``register(subparsers)`` adds subcommands, in ``--help`` order.
AREAS = [
    "mmfree.cli_core",
    "mmfree.pymodel.cli",
    "mmfree.pymodel.cli_trigram",
    "mmfree.rtl.cli",
    "mmfree.sim.cli",
    "mmfree.sim.cli_perf",
    "mmfree.boards.cli",
    "mmfree.boards.cli_energy",
    "mmfree.boards.cli_doctor",
    "mmfree.hls.cli",
    "mmfree.serve.cli",
]


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmfree",
        formatter_class=_Formatter,
        description=(
            "Ternary MatMul-free language models from training to FPGA.\n\n"
            "Typical flow: `mmfree generate` (float model) -> `mmfree export` (hardware image) ->\n"
            "`mmfree generate --backend int` (bit-exact integer reference) -> `mmfree sim` (RTL under\n"
            "Verilator) -> `mmfree build` / `mmfree flash` / `mmfree run` (PYNQ board).\n"
            "`--model default` is the small model embedded in the package."
        ),
    )
    parser.add_argument("--version", action="version", version=f"mmfree {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in AREAS:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def add_subcommand(sub, name: str, func, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add one subcommand whose handler is ``func(args) -> int | None``."""
    p = sub.add_parser(name, help=help, description=description or help, formatter_class=_Formatter)
    p.set_defaults(func=func)
    return p


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def check_finite(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage error (exit 2) for a NaN or infinite value of any float option: no command has a use for one
    (argparse's ``float`` accepts "nan", "inf"), and a NaN compares false with every range check."""
    for dest, v in vars(args).items():
        if isinstance(v, float) and not math.isfinite(v):
            parser.error(f"argument --{dest.replace('_', '-')}: must be a finite number, got {v}")


def main(argv: list[str] | None = None) -> int:
    """Run one command. Its temporary files live in one private folder removed at the end (a killed run's
    folder is removed by the next run); SIGTERM/SIGHUP/Ctrl-C kill its child processes first
    (:mod:`mmfree.procs`)."""
    from mmfree import procs
    from mmfree.atomic import process_tempdir

    parser = build_parser()
    args = parser.parse_args(argv)
    check_finite(parser, args)
    try:
        with procs.terminate_on_signals(), process_tempdir():
            rc = args.func(args)
    except MmfreeError as exc:
        print(f"mmfree {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        procs.kill_all()
        print(f"mmfree {args.command}: interrupted", file=sys.stderr)
        return 130
    except procs.Terminated as exc:
        print(f"mmfree {args.command}: terminated", file=sys.stderr)
        return exc.status
    except BrokenPipeError:
        # whoever read our output stopped reading (`mmfree perf | head`): end quietly, as a Unix tool killed by
        # SIGPIPE would, with stdout pointed at /dev/null so the interpreter's last flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    return int(rc or 0)


if __name__ == "__main__":  # `python -m mmfree.cli` (torchrun uses this form)
    sys.exit(main())

"""``mmfree doctor``: check a board (or the simulated ones) before running anything (:mod:`mmfree.boards.doctor`).

Nothing heavy is imported at module level."""

from __future__ import annotations

import sys

from mmfree.cli import add_subcommand, print_json
from mmfree.cli_args import add_json, add_model


def register(sub) -> None:
    p = add_subcommand(
        sub, "doctor", _doctor, "check a PYNQ board (or sim / pynq-sim): pynq, bitstream, memory, clock, a "
        "known-answer run, speed, power",
        "The first command a board owner runs. Each check prints PASS or FAIL with the fix: pynq (>= 3),\n"
        "bitstream (.hwh beside the .bit: the mmfree IP, register-map version, the board's exact part; the\n"
        "overlay loads), accelerator (ID/VERSION/HW_CONFIG answer), interrupt, cma (contiguous memory for the\n"
        "model; the kernel parameter cma=), ddr (model vs board DDR), clock (PL clock vs what the build asked),\n"
        "known_answer (a few greedy tokens equal to IntModel), speed (measured tokens/s), power (pynq.get_rails(),\n"
        "or 'no rails'). Exit 0 only when every check passes, 1 otherwise. --json: {\"ok\", \"board\", \"checks\":\n"
        "[{\"name\", \"ok\", \"detail\", \"fix\"}...]}. --board sim: the ISA emulator (no pynq); pynq-sim: pynq's\n"
        "whole stack on the simulated device (--bit: a simulated build's sim/mmfree_<board>.bit). docs/boards.md.",
    )
    p.add_argument("--board", required=True,
                   help="sim, pynq-sim, pynq-z2, kv260, zcu104 or custom:PATH.json")
    p.add_argument("--bit", default=None, help="X.bit with X.hwh beside it (default: the overlay pynq reports as "
                                               "loaded; pynq-sim: the simulator's build)")
    add_model(p)
    p.add_argument("--tokens", type=int, default=8, help="tokens of the known-answer run, 1..256")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one pass may take (finite, > 0)")
    add_json(p)


def _doctor(args) -> int:
    from mmfree.boards.doctor import doctor
    from mmfree.host.errors import check_timeout

    check_timeout(args.timeout, "--timeout")
    rep = doctor(args.board, bit=args.bit, model=args.model, n_tokens=args.tokens, timeout_s=args.timeout)
    if args.json:
        print_json(rep)
    else:
        for c in rep["checks"]:
            print(f"{'PASS' if c['ok'] else 'FAIL'}  {c['name']:<13} {c['detail']}")
            if not c["ok"] and c["fix"]:
                print(f"      {'':<13} fix: {c['fix']}")
        print(f"{'all checks passed' if rep['ok'] else 'some checks FAILED'} ({args.board})",
              file=sys.stdout if rep["ok"] else sys.stderr)
    return 0 if rep["ok"] else 1

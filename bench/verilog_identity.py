"""SHA-256 of the accelerator Verilog that the existing builds generate, to check that an RTL change leaves them
byte-identical (the shared Verilator cache and every recorded cycle count are keyed on that Verilog).

    python bench/verilog_identity.py OUT.json                      # hash every build below, write OUT.json
    python bench/verilog_identity.py OUT.json --against BEFORE.json  # ... and compare: exit 1 if any differs

Builds: the simulation builds (``sim.accel.DEFAULT_HW``, ``PORTS4_HW``, a 64-bit two-port one-engine build shaped
like the PYNQ-Z2's, a two-port k = 2 build; ``runner.verilog_text``, as ``mmfree sim`` generates them) and the board
builds of ``mmfree build`` (``boards.build.config_for``: kv260, kv260 --weight-ports 1, pynq-z2, zcu104; converted
with the build's memory-style platform). Each conversion takes one to a few minutes: run it through
``/work/wt/heavy`` or nice on a shared machine. Run it once on the old code (a checkout of the base commit) and once
on the new.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path


def sim_builds() -> dict:
    from mmfree.rtl.compiler import HwConfig
    from mmfree.sim.accel import DEFAULT_HW, PORTS4_HW

    return {"DEFAULT_HW": DEFAULT_HW, "PORTS4_HW": PORTS4_HW,
            "z2like_p2_e1": HwConfig(bus_bytes=8, max_tokens=2, max_width=1024, weight_ports=2, matvec_engines=1),
            "p2_k2": HwConfig(bus_bytes=16, max_tokens=2, max_width=4096, weight_ports=2)}


#: (board, --weight-ports) of the board builds hashed
BOARD_BUILDS = (("kv260", None), ("kv260", 1), ("pynq-z2", None), ("zcu104", None))


def hashes(progress=print) -> dict[str, str]:
    """``{build name: sha256 of its Verilog}`` for every build above."""
    from amaranth.back import verilog

    from mmfree.boards import build as B
    from mmfree.rtl import regmap as RM
    from mmfree.rtl.memstyle import StylePlatform
    from mmfree.rtl.top import MmfreeAccel
    from mmfree.sim import runner
    from mmfree.sim.accel import ADDR_WIDTH

    out = {}
    for name, hw in sim_builds().items():
        t = time.time()
        text = runner.verilog_text(MmfreeAccel(hw, addr_width=ADDR_WIDTH), "mmfree_accel")
        out[f"sim:{name}"] = hashlib.sha256(text.encode()).hexdigest()
        progress(f"sim:{name} {out[f'sim:{name}'][:16]} ({time.time() - t:.0f} s)")
    for board, ports in BOARD_BUILDS:
        cfg = B.config_for(board, weight_ports=ports)
        t = time.time()
        text = verilog.convert(MmfreeAccel(cfg.hw, addr_width=cfg.addr_width), name=RM.TOP_NAME, emit_src=False,
                               platform=StylePlatform(cfg.family))
        key = f"board:{board}:{ports}"
        out[key] = hashlib.sha256(text.encode()).hexdigest()
        progress(f"{key} {out[key][:16]} ({time.time() - t:.0f} s)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="JSON file to write the hashes to")
    ap.add_argument("--against", type=Path, default=None, help="hashes of the old code to compare with")
    args = ap.parse_args()
    from mmfree.atomic import write_text

    now = hashes(lambda s: print(s, flush=True))
    write_text(args.out, json.dumps(now, indent=1) + "\n")
    if args.against is None:
        return 0
    old = json.loads(args.against.read_text())
    diff = [k for k in old if now.get(k) != old[k]]
    for k in old:
        print(f"{k}: {'same' if k not in diff else 'DIFFERENT'}")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())

"""The performance model (mmfree.sim.perf) against the accelerator RTL: cycles of one pass, k = 1 and 4.

For each configuration a random model is exported (cached), compiled, and scripted passes of k tokens run
on the RTL in Verilator (``mmfree.sim.accel.run_job``, the HDL DDR model: 16 bytes/cycle, read latency 24
cycles, logits written); the CYCLES register of each pass is compared with
``mmfree.sim.perf.pass_cycles(dims, hw, k, rate=1.0, rd_latency=24, write_logits=True)``.

    python bench/perf_validate.py [--configs d64,d96,...] [--k 1,4] [--json] [--record]

--record writes the table into docs/performance.md (section "validation") and the measured cycles into
boards/data/perf_validation.json (read by tests/sim/test_perf.py's fast check of the recorded numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, export_random_model, write_section  # noqa: E402

#: name -> (d, intermediate, layers, vocab): small shapes that simulate in seconds, plus wider ones
#: where the weight stream dominates as in full-size models.
CONFIGS = {
    "d64": (64, 172, 1, 97),
    "d96": (96, 256, 2, 101),
    "d200": (200, 84, 3, 333),
    "d240-default-shape": (240, 640, 4, 4096),
    "d512": (512, 1408, 1, 256),
    "d1024-370M-width": (1024, 2816, 1, 512),
}
RD_LATENCY = 24
DATA_FILE = ROOT / "boards" / "data" / "perf_validation.json"


def export_config(name: str) -> Path:
    """A random model of shape CONFIGS[name], exported once per numerics/export source (cached)."""
    d, inter, L, V = CONFIGS[name]
    return export_random_model(name, d, inter, L, V, "perf-exports")


def run_key(k: int, write_logits: bool) -> str:
    return f"{k}" if write_logits else f"{k}-nologits"


def parse_key(key: str) -> tuple[int, bool]:
    return int(key.split("-")[0]), not key.endswith("-nologits")


def rtl_cycles(name: str, ks=(1, 4)) -> dict:
    """{run_key(k, write_logits): counters of one pass of k tokens} measured on the RTL (a pass of each k,
    from the zero state, with and without logits written)."""
    from mmfree.pymodel.intmodel import IntModel
    from mmfree.rtl.compiler import compile_model
    from mmfree.sim.accel import run_job

    im = IntModel.load(export_config(name))
    runs = [(k, wl) for wl in (True, False) for k in ks]
    steps = [{"tokens": [(3 + 7 * j) % im.dims.vocab for j in range(k)], "h0": [[0] * im.dims.d] * im.dims.layers,
              "write_logits": wl} for k, wl in runs]
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        compile_model(im).save(td / "compiled")
        res = run_job({"kind": "script", "compiled": str(td / "compiled"), "steps": steps,
                       "max_wait_cycles": 20_000_000}, rd_latency=RD_LATENCY, workdir=td / "run")
    if res.get("error"):
        raise RuntimeError(f"{name}: the RTL run failed: {res['error']}")
    out = {}
    for (k, wl), p in zip(runs, res["passes"]):
        if "error" in p:
            raise RuntimeError(f"{name} k={k}: the accelerator reported error {p['error']}")
        out[run_key(k, wl)] = {"cycles": p["cycles"], "stalls": p["stalls"], "rd_bytes": p["rd_bytes"], "wr_bytes": p["wr_bytes"]}
    return out


def model_cycles(name: str, k: int, write_logits: bool = True) -> float:
    from mmfree.pymodel.layout import Dims
    from mmfree.sim.accel import DEFAULT_HW
    from mmfree.sim.perf import pass_cycles

    d, inter, L, V = CONFIGS[name]
    return pass_cycles(Dims(V, d, inter, L), DEFAULT_HW, k, rate=1.0, rd_latency=RD_LATENCY,
                       write_logits=write_logits).cycles


def table(rows: list[dict]) -> str:
    out = ["| config | d | I | L | V | k | logits written | RTL cycles (simulated) | model cycles (modeled) | error |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['config']} | {r['d']} | {r['inter']} | {r['layers']} | {r['vocab']} | {r['k']} | "
                   f"{'yes' if r['logits'] else 'no'} | "
                   f"{r['rtl_cycles']} | {r['model_cycles']:.0f} | {100 * r['error']:+.1f} % |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--k", default="1,4", help="tokens per pass")
    ap.add_argument("--from-record", action="store_true",
                    help="do not simulate: compare the model with the RTL cycles recorded in boards/data/perf_validation.json")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--record", action="store_true", help="write docs/performance.md and boards/data/perf_validation.json")
    args = ap.parse_args()
    ks = tuple(int(x) for x in args.k.split(","))
    recorded = json.loads(DATA_FILE.read_text()) if DATA_FILE.exists() else {"runs": {}}
    rows = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        if name not in CONFIGS:
            print(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        if args.from_record:
            meas = dict(recorded["runs"].get(name, {}))
        else:
            meas = rtl_cycles(name, ks)
            recorded["runs"][name] = meas
        d, inter, L, V = CONFIGS[name]
        for key in sorted(meas):
            k, wl = parse_key(key)
            if k not in ks:
                continue
            mc = model_cycles(name, k, wl)
            rc = meas[key]["cycles"]
            row = {"config": name, "d": d, "inter": inter, "layers": L, "vocab": V, "k": k, "logits": wl,
                   "rtl_cycles": rc,
                   "model_cycles": mc, "error": (mc - rc) / rc, "wall_s": time.perf_counter() - t0}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    text = table(rows)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(text)
    if args.record and args.from_record:
        body = (f"RTL cycles measured with `{recorded.get('command')}` (Verilator, 128-bit bus, simulated DDR: 16 bytes "
                f"per cycle, read latency {RD_LATENCY} cycles; one pass of k tokens from the zero state); model "
                f"cycles from `{command_line()}` (`mmfree.sim.perf.pass_cycles` with the same bus).\n\n" + text)
        write_section("performance.md", "validation", body)
    if args.record and not args.from_record:
        from mmfree.atomic import write_text

        recorded["command"] = command_line()
        recorded["rd_latency"] = RD_LATENCY
        recorded["configs"] = {n: dict(zip(("d", "inter", "layers", "vocab"), CONFIGS[n])) for n in recorded["runs"]}
        write_text(DATA_FILE, json.dumps(recorded, indent=1) + "\n")
        body = (f"RTL cycles measured with `{command_line()}` (Verilator, 128-bit bus, simulated DDR: 16 bytes per "
                f"cycle, read latency {RD_LATENCY} cycles; one pass of k tokens from the zero state, logits "
                "written); model: `mmfree.sim.perf.pass_cycles` with the same bus.\n\n" + text)
        write_section("performance.md", "validation", body)
    worst = max((abs(r["error"]) for r in rows), default=0.0)
    print(f"worst error {100 * worst:.1f} %", file=sys.stderr)
    return 0 if worst <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())

"""The performance model (mmfree.sim.perf) against the accelerator RTL: cycles of one pass, k = 1 and 4.

For each configuration a random model is exported (cached), compiled, and scripted passes of k tokens run
on the RTL in Verilator (``mmfree.sim.accel.run_job``, the HDL DDR model: 16 bytes/cycle, read latency 24
cycles, logits written); the CYCLES register of each pass is compared with
``mmfree.sim.perf.pass_cycles(dims, hw, k, rate=1.0, rd_latency=24, write_logits=True)``.

    python bench/perf_validate.py [--configs d64,d96,...] [--k 1,4] [--hw default|ports4|ports6|ports6e1] [--json] [--record]
    python bench/perf_validate.py --configs d64,d96 --hw default,ports4 --same-as-recorded

``--same-as-recorded``: a refactoring check: simulate and require every counter (cycles, stalls, bytes) of every
run to equal the one recorded in boards/data/perf_validation.json (exit 1 and the differences otherwise).

``--memory realistic``: the simulated DDR's realistic option (``mmfree.sim.ddr``: one shared controller with the
published aggregate read efficiency, each port at ``hp_port_efficiency``, refresh stalls, a seeded latency spread)
of the board each build is shaped for (default, ports4: KV260; pynqz2: PYNQ-Z2), against the model at the same
average bus rate and mean latency; recorded under ``realistic_runs[build]``.

``--hw ports4``: the four-weight-port build (``sim.accel.PORTS4_HW``: m_axi + m_axi_w1..3, each at 16 bytes
per cycle in the simulated DDR); recorded under ``runs_by_hw["ports4"]``. ``--hw ports6``: the six-port build
(``sim.accel.PORTS6_HW``: every HP and HPC port of a KV260/ZCU104, 12 engines), the same way; ``--hw ports6e1``: six
ports x one engine (``sim.accel.PORTS6E1_HW``, 6 engines: the KV260 k = 3 build of the acceptance section).
``--hw pipelined``: the default build with the pipelined vector units (``HwConfig.pipelined_units``); the model adds
their latencies (``mmfree.sim.perf.rtl_timing``); recorded under ``runs_by_hw["pipelined"]``. ``--hw lanes2`` /
``lanes4``: the default build with 2 / 4 vector lanes (``sim.accel.LANES2_HW`` / ``LANES4_HW``); ``runs_by_hw["lanes2"]`` ...

``--memory random --rate 0.5,0.75``: the simulated DDR's random back-pressure (``mmfree.sim.ddr.random_plusargs``:
each port's data bus moves a beat in a cycle with probability ``rate``, seeded) against the model at that bus rate
(``pass_cycles(..., rate=...)``); recorded under ``random_runs[build]``, run keys ending ``@R<rate>``. ``--seed N``
(not recorded) reruns with another random sequence, to see the spread. The sequence runs on across the passes of
one job, so a pass's cycles also depend on which passes (--k, --logits) run before it.

``--streams 2,4``: multi-stream passes (docs/accelerator.md "Multi-stream passes"): per config and B, ONE forest
pass of B streams x k tokens (random weights, each stream from its own nonzero start state, so every ``LOAD HROOT``
moves real data; the program compiled with ``streams=B``) on the RTL, its results required bit-exact against
IntModel (``mmfree.sim.accel.replay_forest``, ``IntModel.verify_forest``'s numbers) and its CYCLES compared with
``pass_cycles(dims, hw, B * k, prog=mmfree.sim.perf_streams.forest_program(dims, B))`` (what ``predict_streams``
prices); recorded under ``stream_runs[build]``, run keys ``<B>x<k>[-nologits]``. Ideal memory, default latency.

--record writes the table into docs/performance.md (section "validation") and the measured cycles into
boards/data/perf_validation.json (read by tests/sim/test_perf.py's fast check of the recorded numbers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, command_line, export_random_model, write_section  # noqa: E402

from mmfree.rtl import params as PARAMS  # noqa: E402

#: name -> (d, intermediate, layers, vocab): small shapes that simulate in seconds, plus wider ones
#: where the weight stream dominates as in full-size models.
CONFIGS = {
    "d64": (64, 172, 1, 97),
    "d96": (96, 256, 2, 101),
    "d200": (200, 84, 3, 333),
    "d240-default-shape": (240, 640, 4, 4096),
    "d512": (512, 1408, 1, 256),
    "d1024-370M-width": (1024, 2816, 1, 512),
    "d2048-1.3B-d": (2048, 4096, 1, 256),      # the 1.3B model's d; I capped at the 4096-wide builds
}
RD_LATENCY = PARAMS.SIM_RD_LATENCY                    # the simulated DDR's read latency (cycles)
#: Builds the bench can validate: name -> sim.accel constant.
HW_NAMES = ("default", "ports4", "ports6", "ports6e1", "pynqz2", "pipelined", "lanes2", "lanes4")
DATA_FILE = ROOT / "boards" / "data" / "perf_validation.json"


#: The board whose DDR a build's realistic-memory runs model (sim/ddr.py).
REALISTIC_BOARD = {"default": "kv260", "ports4": "kv260", "ports6": "kv260", "ports6e1": "kv260", "pynqz2": "pynq-z2",
                   "pipelined": "kv260", "lanes2": "kv260", "lanes4": "kv260"}
MEMORIES = ("ideal", "realistic", "random")
#: Seed of the random back-pressure memory's generators (``+MMFREE_DDR_SEED``).
RANDOM_SEED = 1


def realistic(hw_name: str, rd_latency: int) -> tuple[list[str], float, float, float]:
    """The realistic memory of a build at base read latency ``rd_latency``: (plusargs of the simulated DDR, the
    per-port beats per cycle they allow on average, their mean read latency in cycles, the beats per cycle of the
    main port's own transfers: ``perf.main_port_rate``), at the simulation's clock. The per-port rate is the
    simulated controller's fixed-order share (``sim.ddr.fixed_order_rate``): the equal share where the aggregate
    binds modeled the six-port d512 runs 16-21 % fast (its last ports wait for the first ones' credits)."""
    from mmfree.boardfile import load_board
    from mmfree.sim import ddr as D
    from mmfree.sim import perf as P

    hw = hw_for(hw_name)
    plus = D.sim_plusargs(D.ddr_model(load_board(REALISTIC_BOARD[hw_name])), PARAMS.SIM_CLOCK_HZ, hw.bus_bytes,
                          P.assumption("hp_port_efficiency"), rd_latency)
    v = {a.split("=")[0][8:]: int(a.split("=")[1]) for a in plus}          # "+MMFREE_DDR_NUM=5" -> DDR_NUM: 5
    between = D.fixed_order_rate(v["PORT_NUM"] / v["PORT_DEN"], v["DDR_NUM"] / v["DDR_DEN"], hw.weight_ports)
    up = 1 - v["REF_CYCLES"] / v["REF_PERIOD"]
    main = P.main_port_rate(v["PORT_NUM"] / v["PORT_DEN"], v["DDR_NUM"] / v["DDR_DEN"]) * up
    return plus, between * up, rd_latency + v["RD_JITTER"] / 2, main


def export_config(name: str) -> Path:
    """A random model of shape CONFIGS[name], exported once per numerics/export source (cached)."""
    d, inter, L, V = CONFIGS[name]
    return export_random_model(name, d, inter, L, V, "perf-exports")


def run_key(k: int, write_logits: bool, rd_latency: int = RD_LATENCY, rate: float | None = None) -> str:
    """``k``, ``k-nologits``; a run at another read latency than the simulated DDR's default ends ``@L<cycles>``; a
    run on the random back-pressure memory ends ``@R<rate>``."""
    key = f"{k}" if write_logits else f"{k}-nologits"
    key = key if rd_latency == RD_LATENCY else f"{key}@L{rd_latency}"
    return key if rate is None else f"{key}@R{rate:g}"


def parse_key(key: str) -> tuple[int, bool, int]:
    """(k, write_logits, rd_latency) of a :func:`run_key`."""
    base, _, lat = key.split("@R")[0].partition("@L")
    return int(base.split("-")[0]), not base.endswith("-nologits"), int(lat) if lat else RD_LATENCY


def parse_rate(key: str) -> float | None:
    """The random back-pressure memory's bus rate of a :func:`run_key` (None: not a random-memory run)."""
    _, sep, rate = key.partition("@R")
    return float(rate) if sep else None


def hw_for(hw_name: str):
    from mmfree.rtl.compiler import HwConfig
    from mmfree.sim.accel import DEFAULT_HW, LANES2_HW, LANES4_HW, PORTS4_HW, PORTS6_HW, PORTS6E1_HW

    # pynqz2: the 64-bit build shaped like the PYNQ-Z2's (tests/sim/test_accel_rtl.py test_rtl_64bit_bus_bit_exact)
    pynqz2 = HwConfig(bus_bytes=8, max_tokens=2, max_width=1024, weight_ports=2, matvec_engines=1)
    # pipelined: the default build with the pipelined vector units (HwConfig.pipelined_units, `--pipelined-units`)
    pipelined = dataclasses.replace(DEFAULT_HW, pipelined_units=True)
    return {"default": DEFAULT_HW, "ports4": PORTS4_HW, "ports6": PORTS6_HW, "ports6e1": PORTS6E1_HW,
            "pynqz2": pynqz2, "pipelined": pipelined, "lanes2": LANES2_HW, "lanes4": LANES4_HW}[hw_name]


def set_seed(seed: int) -> None:
    """Seed the random back-pressure memory of this process's runs (:data:`RANDOM_SEED` unless told)."""
    global _seed
    _seed = seed


_seed = RANDOM_SEED


def memory_plusargs(hw_name: str, rd_latency: int, memory: str, rate: float | None) -> list[str]:
    """The simulated DDR's plusargs of ``memory``: none (ideal), :func:`realistic`, or the random back-pressure at
    ``rate`` (:func:`mmfree.sim.ddr.random_plusargs`)."""
    from mmfree.sim import ddr as D

    if memory == "realistic":
        return realistic(hw_name, rd_latency)[0]
    if memory == "random":
        return D.random_plusargs(rate, _seed)
    return []


def rtl_cycles(name: str, ks=(1, 4), hw_name: str = "default", rd_latency: int = RD_LATENCY,
               logits=(True, False), memory: str = "ideal", rate: float | None = None) -> dict:
    """{run_key(k, write_logits, rd_latency[, rate]): counters of one pass of k tokens} measured on the RTL (a pass
    of each k, from the zero state, with and without logits written) with the simulated DDR's read latency
    ``rd_latency`` (cycles); ``memory``: "ideal" (the default simulated DDR), "realistic" (:func:`realistic`) or
    "random" (random back-pressure at bus rate ``rate``, beats per cycle per port)."""
    from mmfree.pymodel.intmodel import IntModel
    from mmfree.rtl.compiler import compile_model
    from mmfree.sim.accel import run_job

    im = IntModel.load(export_config(name))
    runs = [(k, wl) for wl in logits for k in ks]
    steps = [{"tokens": [(3 + 7 * j) % im.dims.vocab for j in range(k)], "h0": [[0] * im.dims.d] * im.dims.layers,
              "write_logits": wl} for k, wl in runs]
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        compile_model(im).save(td / "compiled")
        res = run_job({"kind": "script", "compiled": str(td / "compiled"), "steps": steps,
                       "max_wait_cycles": 20_000_000}, hw=hw_for(hw_name), rd_latency=rd_latency,
                      workdir=td / "run", ddr_plusargs=memory_plusargs(hw_name, rd_latency, memory, rate))
    if res.get("error"):
        raise RuntimeError(f"{name}: the RTL run failed: {res['error']}")
    out = {}
    for (k, wl), p in zip(runs, res["passes"]):
        if "error" in p:
            raise RuntimeError(f"{name} k={k}: the accelerator reported error {p['error']}")
        key = run_key(k, wl, rd_latency, rate if memory == "random" else None)
        out[key] = {"cycles": p["cycles"], "stalls": p["stalls"], "rd_bytes": p["rd_bytes"],
                    "wr_bytes": p["wr_bytes"]}
    return out


def model_cycles(name: str, k: int, write_logits: bool = True, hw_name: str = "default",
                 rd_latency: int = RD_LATENCY, memory: str = "ideal", rate: float | None = None) -> float:
    """Modeled cycles of the pass :func:`rtl_cycles` runs (the realistic memory: its average rate, mean latency;
    the random memory: its bus ``rate``)."""
    from mmfree.pymodel.layout import Dims
    from mmfree.sim import ddr as D
    from mmfree.sim.perf import pass_cycles

    d, inter, L, V = CONFIGS[name]
    main = None
    if memory == "realistic":
        rate, lat, main = realistic(hw_name, rd_latency)[1:]
    elif memory == "random":            # the fraction the simulated DDR draws against (random_plusargs)
        v = D.parse_plusargs(D.random_plusargs(rate))
        rate, lat = v["BUS_RATE_NUM"] / v["BUS_RATE_DEN"], rd_latency
    else:
        rate, lat = 1.0, rd_latency
    return pass_cycles(Dims(V, d, inter, L), hw_for(hw_name), k, rate=rate, rd_latency=lat,
                       write_logits=write_logits, main_rate=main).cycles


def stream_key(streams: int, k: int, write_logits: bool) -> str:
    """``<B>x<k>`` (B streams of k tokens each in one forest pass), ``-nologits`` appended without logits."""
    return f"{streams}x{k}" + ("" if write_logits else "-nologits")


def parse_stream_key(key: str) -> tuple[int, int, bool]:
    """(streams, k, write_logits) of a :func:`stream_key`."""
    base = key.removesuffix("-nologits")
    B, k = base.split("x")
    return int(B), int(k), not key.endswith("-nologits")


def forest_steps(im, streams: int, k: int, logits) -> tuple[list[dict], np.ndarray]:
    """Scripted forest passes (``run_script`` steps with ``starts``), one per entry of ``logits``: stream s a chain
    of k tokens from its own nonzero start state (the state IntModel reaches after ``s + 2`` tokens of its own).
    Returns (steps, the start states ``[B, L, d]``)."""
    from mmfree.pymodel.intmodel import forest_of

    V, L, d = im.dims.vocab, im.dims.layers, im.dims.d
    starts = np.stack([im.forward(np.zeros((L, d), dtype=np.int64), [(5 + 11 * s + j) % V for j in range(s + 2)])[0][-1]
                       for s in range(streams)])
    toks, parents, _ = forest_of([([(3 + 7 * (s * k + j)) % V for j in range(k)], None) for s in range(streams)])
    steps = [{"tokens": toks, "parents": parents, "starts": starts.tolist(), "write_logits": wl} for wl in logits]
    return steps, starts


def rtl_forest_cycles(name: str, streams: int, ks=(1,), hw_name: str = "default", logits=(True, False)) -> dict:
    """{stream_key(B, k, write_logits): counters of one forest pass of B = ``streams`` streams x k tokens} on the RTL
    (the ideal simulated DDR, default read latency), each pass checked bit-exact against IntModel
    (:func:`mmfree.sim.accel.replay_forest`); RuntimeError if it is not, if the accelerator reports an error, or
    if the compiled program is not timed as :func:`mmfree.sim.perf_streams.forest_program` (the model's)."""
    from mmfree.pymodel.intmodel import IntModel
    from mmfree.rtl import isa as I
    from mmfree.rtl.compiler import compile_model
    from mmfree.sim.accel import replay_forest, run_job
    from mmfree.sim.perf import pass_cycles
    from mmfree.sim.perf_streams import forest_program

    im, hw = IntModel.load(export_config(name)), hw_for(hw_name)
    c = compile_model(im, streams=streams)
    out = {}
    for k in ks:
        model = pass_cycles(im.dims, hw, streams * k, prog=forest_program(im.dims, streams)).cycles
        if pass_cycles(im.dims, hw, streams * k, prog=I.disassemble(c.program)[1]).cycles != model:
            raise RuntimeError(f"{name}: the compiled {streams}-stream program is timed unlike forest_program")
        steps, starts = forest_steps(im, streams, k, logits)
        with tempfile.TemporaryDirectory() as td:
            td = Path(td)
            c.save(td / "compiled")
            res = run_job({"kind": "script", "compiled": str(td / "compiled"), "steps": steps,
                           "max_wait_cycles": 20_000_000}, hw=hw, workdir=td / "run")
        if res.get("error"):
            raise RuntimeError(f"{name}: the RTL run failed: {res['error']}")
        arrays = res.get("arrays", {})
        for i, (p, wl) in enumerate(zip(res["passes"], logits)):
            if "error" in p:
                raise RuntimeError(f"{name} {streams} streams k={k}: the accelerator reported error {p['error']}")
            rec = dict(p, starts=starts, logits=arrays.get(f"logits{i}"), states=arrays[f"states{i}"],
                       argmax=arrays[f"argmax{i}"])
            ok, problems = replay_forest(im, [rec])
            if not ok:
                raise RuntimeError(f"{name} {streams} streams k={k}: not bit-exact against IntModel: {problems}")
            out[stream_key(streams, k, wl)] = {"cycles": p["cycles"], "stalls": p["stalls"], "rd_bytes": p["rd_bytes"],
                                               "wr_bytes": p["wr_bytes"], "bit_exact": True}
    return out


def model_forest_cycles(name: str, streams: int, k: int, write_logits: bool = True, hw_name: str = "default") -> float:
    """Modeled cycles of the forest pass :func:`rtl_forest_cycles` runs: ``pass_cycles`` of B x k tokens with
    :func:`mmfree.sim.perf_streams.forest_program` (what ``predict_streams`` prices), the ideal memory."""
    from mmfree.pymodel.layout import Dims
    from mmfree.sim.perf import pass_cycles
    from mmfree.sim.perf_streams import forest_program

    d, inter, L, V = CONFIGS[name]
    dims = Dims(V, d, inter, L)
    return pass_cycles(dims, hw_for(hw_name), streams * k, rate=1.0, rd_latency=RD_LATENCY,
                       write_logits=write_logits, prog=forest_program(dims, streams)).cycles


def compare_streams(hw_name: str, name: str, meas: dict) -> list[dict]:
    """Model against RTL for the recorded forest runs ``meas`` (:func:`stream_key` -> counters) of one config."""
    d, inter, L, V = CONFIGS[name]
    out = []
    for key in sorted(meas):
        B, k, wl = parse_stream_key(key)
        mc, rc = model_forest_cycles(name, B, k, wl, hw_name), meas[key]["cycles"]
        out.append({"hw": hw_name, "memory": "ideal", "streams": B, "config": name, "d": d, "inter": inter,
                    "layers": L, "vocab": V, "k": k, "logits": wl, "rd_latency": RD_LATENCY, "rtl_cycles": rc,
                    "model_cycles": mc, "error": (mc - rc) / rc})
    return out


def table(rows: list[dict]) -> str:
    out = ["| build | memory | config | d | I | L | V | k | logits written | read latency (cycles) | RTL cycles (simulated) "
           "| model cycles (modeled) | error |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = r.get("memory", "ideal")
        mem = {"ideal": mem, "realistic": f"realistic ({REALISTIC_BOARD[r['hw']]})",
               "random": f"random back-pressure, rate {r.get('rate')}"}[mem]
        build = f"{r['hw']}, {r['streams']} streams" if r.get("streams") else r["hw"]
        out.append(f"| {build} | {mem} | {r['config']} | {r['d']} | {r['inter']} | {r['layers']} | {r['vocab']} | {r['k']} | "
                   f"{'yes' if r['logits'] else 'no'} | {r['rd_latency']} | "
                   f"{r['rtl_cycles']} | {r['model_cycles']:.0f} | {100 * r['error']:+.1f} % |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--k", default=None, help="tokens per pass (per stream with --streams; default 1,4, with --streams 1)")
    ap.add_argument("--latency", default=str(RD_LATENCY),
                    help=f"comma-separated read latencies of the simulated DDR, cycles (default {RD_LATENCY})")
    ap.add_argument("--logits", default="yes,no", help="runs with logits written (yes), without (no), or both")
    ap.add_argument("--hw", default="default", help="comma-separated builds: default (one weight port), ports4, "
                                                     "ports6 (every HP and HPC port of a ZynqMP), "
                                                     "ports6e1 (six ports x 1 engine), "
                                                     "pynqz2 (64-bit bus, 2 ports x 1 engine, max_tokens 2), "
                                                     "pipelined (default with the pipelined vector units), lanes2, "
                                                     "lanes4 (the default build with 2 / 4 vector lanes)")
    ap.add_argument("--memory", default="ideal", help="comma-separated: ideal (the default simulated DDR), realistic "
                                                       "(its realistic option, the build's board DDR model), random "
                                                       "(its random back-pressure at each --rate)")
    ap.add_argument("--rate", default="0.5,0.75", help="comma-separated bus rates of --memory random, beats per cycle "
                                                        "per port in (0, 1] (default 0.5,0.75)")
    ap.add_argument("--seed", type=int, default=RANDOM_SEED,
                    help=f"seed of --memory random (default {RANDOM_SEED}; only the default is recorded: run keys carry no seed)")
    ap.add_argument("--from-record", action="store_true",
                    help="do not simulate: compare the model with the RTL cycles recorded in boards/data/perf_validation.json")
    ap.add_argument("--same-as-recorded", action="store_true",
                    help="simulate and require the counters of every run to equal the recorded ones (exit 1 if not)")
    ap.add_argument("--streams", default="",
                    help="comma-separated stream counts B: forest passes of B streams x k tokens (ideal memory, "
                         "default latency) instead of the single-stream runs")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--record", action="store_true", help="write docs/performance.md and boards/data/perf_validation.json")
    args = ap.parse_args()
    ks = tuple(int(x) for x in (args.k or ("1" if args.streams.strip() else "1,4")).split(","))
    lats = tuple(int(x) for x in args.latency.split(","))
    logits = tuple({"yes": True, "no": False}[x.strip()] for x in args.logits.split(","))
    recorded = json.loads(DATA_FILE.read_text()) if DATA_FILE.exists() else {"runs": {}}
    hws = [h.strip() for h in args.hw.split(",") if h.strip()]
    for h in hws:
        if h not in HW_NAMES:
            print(f"unknown build {h!r}; choose from {', '.join(HW_NAMES)}", file=sys.stderr)
            return 2
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    for name in names:
        if name not in CONFIGS:
            print(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}", file=sys.stderr)
            return 2
    mems = [m.strip() for m in args.memory.split(",") if m.strip()]
    if any(m not in MEMORIES for m in mems):
        print(f"unknown memory in {args.memory!r}; choose from {', '.join(MEMORIES)}", file=sys.stderr)
        return 2
    try:
        rates = tuple(float(x) for x in args.rate.split(",") if x.strip())
    except ValueError:
        rates = ()
    if not rates or any(not 0 < r <= 1 for r in rates):
        print(f"--rate must be comma-separated bus rates in (0, 1] beats per cycle, got {args.rate!r}", file=sys.stderr)
        return 2
    if args.seed != RANDOM_SEED and (args.record or args.from_record):
        print(f"--seed {args.seed}: only seed {RANDOM_SEED} is recorded (run keys carry no seed); leave out --record",
              file=sys.stderr)
        return 2
    set_seed(args.seed)
    streams, err = parse_streams(args, hws, ks, lats, mems)
    if err:
        print(err, file=sys.stderr)
        return 2
    if args.same_as_recorded:
        return same_as_recorded(recorded, hws, names, ks)
    rows = []
    for hw_name in hws if streams else ():
        for name in names:
            rows += measure_streams(recorded, args, hw_name, name, streams, ks, logits)
    for mem in mems if not streams else ():
        for hw_name in hws:
            for name in names:
                for rate in (rates if mem == "random" else (None,)):
                    rows += measure_config(recorded, args, hw_name, name, ks, lats, logits, mem, hws, rate)
    text = table(rows)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(text)
    if args.record:
        if not args.from_record and not streams:
            save_record(recorded, hws, lats, mems)
        # the docs table: every recorded run of every build, against the model as it is now
        all_rows = [r for mem in MEMORIES for h in HW_NAMES for n in CONFIGS
                    for r in compare(h, n, recorded_runs(recorded, h, mem).get(n, {}), (1, 2, 3, 4), memory=mem)]
        all_rows += [r for h in HW_NAMES for n in CONFIGS
                     for r in compare_streams(h, n, recorded.get("stream_runs", {}).get(h, {}).get(n, {}))]
        all_rows.sort(key=lambda r: (MEMORIES.index(r["memory"]), r["rd_latency"] != RD_LATENCY, r["rd_latency"],
                                     -(r.get("rate") or 1), r.get("streams", 0) > 0))
        cmds = {"default": recorded.get("command"), **recorded.get("commands", {})}
        body = ("RTL cycles (simulated: Verilator, 128-bit bus (64-bit for pynqz2), simulated DDR one beat per cycle per "
                f"port, read latency {RD_LATENCY} cycles unless the table says otherwise; one pass of k tokens from the "
                "zero state) measured with "
                + "; ".join(f"`{c}` ({h})" for h, c in cmds.items() if c)
                + "".join(f"; `{c}`" for c in recorded.get("latency_commands", []) + recorded.get("memory_commands", [])
                          + recorded.get("stream_commands", []))
                + "; model cycles (modeled) from `mmfree.sim.perf.pass_cycles` with the same bus, compared by "
                  "`python bench/perf_validate.py --from-record --hw default,ports4 --record`. Builds: `default` = one "
                  "weight port, 2 ternary engines; `ports4` = four weight ports (m_axi + m_axi_w1..3), 8 engines; `ports6` = "
                  "six weight ports (m_axi + m_axi_w1..5: HP0-HP3 and HPC0-HPC1), 12 engines; `ports6e1` = the same six "
                  "ports x one engine each, 6 engines; `pynqz2` = "
                  "64-bit bus, two weight ports x 1 engine, max_tokens 2, max_width 1024 (the PYNQ-Z2's shape); `pipelined` = "
                  "`default` with the pipelined vector units (`--pipelined-units`); `lanes2` / "
                  "`lanes4` = the default build with 2 / 4 vector lanes (QSTATS / QCODES on V elements per cycle). Memory "
                  "`ideal`: the default simulated DDR; `realistic (board)`: its realistic option with that board's DDR "
                  "model (sim/ddr.py: aggregate cap, port cap, refresh, latency spread; the read latency column is the "
                  "base, the model uses the mean), compared against the model at the same average rate; `random "
                  "back-pressure, rate r`: the simulated DDR's random back-pressure (`sim.ddr.random_plusargs`: each "
                  "port's data bus, R and W, moves a beat in a cycle with probability r, seeded), against the model at bus "
                  "rate r (`pass_cycles(..., rate=r)`). Build `default, B streams`: one multi-stream pass (a forest "
                  "of B streams x k tokens, each stream from its own nonzero start state, ISA 2 `LOAD HROOT`; the "
                  "program compiled with `streams=B`; results bit-exact against `IntModel.verify_forest`) against "
                  "`pass_cycles(dims, hw, B x k, prog=sim.perf_streams.forest_program(dims, B))`.\n\n"
                + table(all_rows))
        write_section("performance.md", "validation", body)
    worst = max((abs(r["error"]) for r in rows), default=0.0)
    print(f"worst error {100 * worst:.1f} %", file=sys.stderr)
    return 0 if worst <= 0.05 else 1


def parse_streams(args, hws, ks, lats, mems) -> tuple[tuple[int, ...], str | None]:
    """The ``--streams`` counts (empty: not given) and the one-line usage error, if any: B must be integers in
    1..MAX_STREAMS with B x k within every build's max_tokens; only the ideal memory at the default latency, and
    not with ``--same-as-recorded``."""
    from mmfree.sim.perf_streams import MAX_STREAMS

    if not args.streams.strip():
        return (), None
    try:
        streams = tuple(int(x) for x in args.streams.split(","))
    except ValueError:
        streams = ()
    if not streams or any(not 1 <= b <= MAX_STREAMS for b in streams):
        return (), f"--streams must be comma-separated stream counts in 1..{MAX_STREAMS}, got {args.streams!r}"
    for h in hws:
        top = hw_for(h).max_tokens
        if max(streams) * max(ks) > top:
            return (), (f"--streams {max(streams)} x --k {max(ks)} tokens per pass is more than build {h}'s max_tokens "
                        f"{top}: lower --streams or --k")
    if tuple(mems) != ("ideal",) or lats != (RD_LATENCY,) or args.same_as_recorded:
        return (), "--streams runs the ideal memory at the default --latency only, without --same-as-recorded"
    return streams, None


def measure_streams(recorded: dict, args, hw_name: str, name: str, streams, ks, logits) -> list[dict]:
    """Simulate (or, with ``--from-record``, read back) the forest passes of one build x config for every B in
    ``streams`` and k in ``ks``; recorded under ``stream_runs[hw_name][name]``; the rows."""
    from mmfree.atomic import write_text

    store = recorded.setdefault("stream_runs", {}).setdefault(hw_name, {}).setdefault(name, {})
    if args.from_record:
        keys = {stream_key(B, k, wl) for B in streams for k in ks for wl in logits}
        meas = {key: v for key, v in store.items() if key in keys}
    else:
        meas = {}
        for B in streams:
            meas.update(rtl_forest_cycles(name, B, ks, hw_name, logits))
            store.update(meas)
            if args.record:                  # a long sweep keeps what it finished
                cmds = recorded.setdefault("stream_commands", [])
                if command_line() not in cmds:
                    cmds.append(command_line())
                write_text(DATA_FILE, json.dumps(recorded, indent=1) + "\n")
    rows = compare_streams(hw_name, name, meas)
    for r in rows:
        print(json.dumps(r), file=sys.stderr, flush=True)
    return rows


def same_as_recorded(recorded: dict, hws, names, ks) -> int:
    """Simulate each (build, config) and compare every run's counters with the recorded ones; 0 if all equal."""
    n = bad = 0
    for hw_name in hws:
        store = recorded_runs(recorded, hw_name)
        for name in names:
            for key, meas in rtl_cycles(name, ks, hw_name).items():
                want = store.get(name, {}).get(key)
                n += 1
                bad += meas != want
                print(f"{hw_name} {name} {key}: RTL {meas} recorded {want} {'same' if meas == want else 'DIFFERENT'}",
                      flush=True)
    print(f"{n} runs, {bad} different", flush=True)
    return 1 if bad else 0


def save_record(recorded: dict, hws, lats, mems=("ideal",)) -> None:
    """Write ``recorded`` (with this command line) to :data:`DATA_FILE`: the command of a build's ideal-memory runs
    at the default latency replaces its last one; a command with other latencies or memories is added to a list."""
    from mmfree.atomic import write_text

    if tuple(mems) != ("ideal",):        # runs on another memory: keep every command that added some
        cmds = recorded.setdefault("memory_commands", [])
        if command_line() not in cmds:
            cmds.append(command_line())
    elif lats == (RD_LATENCY,):
        recorded.setdefault("commands", {})
        for h in hws:
            recorded["commands"][h] = command_line()
        if "default" in hws:
            recorded["command"] = command_line()
    else:                               # runs at other latencies: keep every command that added some
        cmds = recorded.setdefault("latency_commands", [])
        if command_line() not in cmds:
            cmds.append(command_line())
    recorded["rd_latency"] = RD_LATENCY
    recorded["configs"] = {n: dict(zip(("d", "inter", "layers", "vocab"), CONFIGS[n])) for n in CONFIGS}
    write_text(DATA_FILE, json.dumps(recorded, indent=1) + "\n")


def measure_config(recorded: dict, args, hw_name: str, name: str, ks, lats, logits, mem: str, hws,
                   rate: float | None = None) -> list[dict]:
    """Simulate (or, with ``--from-record``, read back) one build x config x memory (x bus rate of the random
    memory) at every latency; the rows."""
    t0 = time.perf_counter()
    store = recorded_runs(recorded, hw_name, mem)
    if args.from_record:
        meas = {key: v for key, v in store.get(name, {}).items() if parse_rate(key) == rate}
    else:
        meas = {}
        for lat in lats:                # recorded run by run: a long sweep keeps what it finished
            meas.update(rtl_cycles(name, ks, hw_name, lat, logits, mem, rate))
            store.setdefault(name, {}).update(meas)
            if args.record:
                save_record(recorded, hws, lats, (mem,))
    rows = compare(hw_name, name, meas, ks, lats, memory=mem)
    for r in rows:
        r["wall_s"] = time.perf_counter() - t0
        print(json.dumps(r), file=sys.stderr, flush=True)
    return rows


def recorded_runs(recorded: dict, hw_name: str, memory: str = "ideal") -> dict:
    """The recorded RTL runs of one build: ``runs`` (the default build) or ``runs_by_hw[hw_name]``; with the
    realistic memory ``realistic_runs[hw_name]``, with the random back-pressure memory ``random_runs[hw_name]``."""
    if memory in ("realistic", "random"):
        return recorded.setdefault(f"{memory}_runs", {}).setdefault(hw_name, {})
    if hw_name == "default":
        return recorded.setdefault("runs", {})
    return recorded.setdefault("runs_by_hw", {}).setdefault(hw_name, {})


def compare(hw_name: str, name: str, meas: dict, ks, lats=None, memory: str = "ideal") -> list[dict]:
    """Model against RTL for the recorded runs ``meas`` of one config with k in ``ks`` and read latency in
    ``lats`` (None: every latency); a random-memory run at its bus rate (:func:`parse_rate`)."""
    d, inter, L, V = CONFIGS[name]
    out = []
    for key in sorted(meas):
        k, wl, lat = parse_key(key)
        if k not in ks or (lats is not None and lat not in lats):
            continue
        rate = parse_rate(key)
        mc = model_cycles(name, k, wl, hw_name, lat, memory, rate)
        rc = meas[key]["cycles"]
        out.append({"hw": hw_name, "memory": memory, "config": name, "d": d, "inter": inter, "layers": L, "vocab": V, "k": k,
                    "logits": wl, "rd_latency": lat, "rtl_cycles": rc, "model_cycles": mc, "error": (mc - rc) / rc,
                    **({"rate": rate} if rate is not None else {})})
    return out


if __name__ == "__main__":
    sys.exit(main())

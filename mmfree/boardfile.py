"""Board descriptions: data in ``boards/<name>/board.json`` (package data of ``mmfree.boards``, read as a
resource), validated on load. This loader is in the base layer: rtl builds, the perf model (sim), hls and
boards all read board files without importing :mod:`mmfree.boards`' code.

A board file names the FPGA part and family, the PL resources, the DDR (type, size, bus width, rate,
peak bandwidth), the PS high-performance ports, the default clock and the power-measurement method.
``load_board("custom:PATH")`` (or a path to a JSON file) reads a user's own description; every field
is checked, and an inconsistent one (e.g. peak bandwidth that is not width x rate) is refused with
its name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mmfree import MmfreeError

BOARD_NAMES = ("pynq-z2", "kv260", "zcu104")

_REQUIRED = {
    "name": str, "part": str, "family": str, "ps": str, "pl": dict, "ddr": dict, "hp_ports": dict, "clock_mhz": (int, float),
}
_PL = ("lut", "ff", "dsp", "bram36", "uram")
_DDR = ("size_mb", "width_bits", "rate_mts", "peak_gbps")
#: power measurement methods (boards/power.py readers) and the power-model fields (boards/power_model.py)
_POWER_METHODS = ("hwmon", "pynq_rails", "none")
_POWER_WATTS = ("pl_static_w", "ps_w", "board_idle_w")


@dataclass(frozen=True)
class Board:
    name: str
    part: str
    family: str          # "xc7" or "xcup" (Yosys synth_xilinx -family)
    ps: str              # "zynq7" or "zynqmp"
    pl: dict             # lut, ff, dsp, bram36, uram
    ddr: dict            # size_mb, width_bits, rate_mts, peak_gbps, ...
    hp_ports: dict       # names, width_bits, protocol, max_burst_beats, used
    clock_mhz: float
    raw: dict

    @property
    def ddr_peak_bytes_per_s(self) -> float:
        return self.ddr["peak_gbps"] * 1e9

    @property
    def ddr_usable_bytes(self) -> int:
        return int((self.ddr["size_mb"] - self.ddr.get("os_reserved_mb", 0)) * 2**20)


def _number(v, integer: bool = False) -> bool:
    """A JSON number (an integer when ``integer``), never a bool."""
    return isinstance(v, int if integer else (int, float)) and not isinstance(v, bool)


def _optional_problems(d: dict) -> list[str]:
    """The optional fields other modules compute with: present means well-typed and in range."""
    problems = []
    ddr, hp = d["ddr"], d["hp_ports"]
    build = {} if d.get("build") is None else d["build"]
    size = ddr.get("size_mb") if _number(ddr.get("size_mb")) else float("inf")      # its own check names it
    if "os_reserved_mb" in ddr and not (_number(ddr["os_reserved_mb"]) and 0 <= ddr["os_reserved_mb"] < size):
        problems.append(f"field 'ddr.os_reserved_mb' must be a number in [0, ddr.size_mb), got {ddr['os_reserved_mb']!r}")
    if "max_burst_beats" in hp and not (_number(hp["max_burst_beats"], True) and hp["max_burst_beats"] >= 1):
        problems.append(f"field 'hp_ports.max_burst_beats' must be a positive integer, got {hp['max_burst_beats']!r}")
    for key in ("names", "used"):
        v = hp.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(n, str) for n in v)):
            problems.append(f"field 'hp_ports.{key}' must be a list of HP port names, got {v!r}")
    if "max_clock_mhz" in d and not (_number(d["max_clock_mhz"]) and d["max_clock_mhz"] > 0):
        problems.append(f"field 'max_clock_mhz' must be a positive number, got {d['max_clock_mhz']!r}")
    if not isinstance(build, dict):
        return problems + [f"field 'build' must be an object, got {build!r}"]
    wp = build.get("weight_ports")
    if wp is not None and not (_number(wp, True) and wp >= 1):
        # which counts a build takes (rtl.regmap.WEIGHT_PORT_CHOICES) is checked where the build is made (mmfree
        # build, mmfree perf): this base module does not import the register map
        problems.append(f"field 'build.weight_ports' must be a positive integer (AXI masters streaming weights, one "
                        f"HP port each), got {wp!r}")
    mt = build.get("max_tokens")
    if mt is not None and not (_number(mt, True) and 1 <= mt <= 16):
        problems.append(f"field 'build.max_tokens' must be an integer in 1..16, got {mt!r}")
    for key in ("max_width", "matvec_engines"):
        if build.get(key) is not None and not (_number(build[key], True) and build[key] >= 1):
            problems.append(f"field 'build.{key}' must be a positive integer, got {build[key]!r}")
    vl = build.get("vector_lanes")
    if vl is not None and not (_number(vl, True) and vl in (1, 2, 4, 8)):
        problems.append(f"field 'build.vector_lanes' must be 1, 2, 4 or 8 (elements per cycle of the vector engine's "
                        f"QSTATS / QCODES passes), got {vl!r}; set it to one of those")
    pu = build.get("pipelined_units")
    if pu is not None and type(pu) is not bool:
        problems.append(f"field 'build.pipelined_units' must be true or false (the datapath's vector units pipelined), "
                        f"got {pu!r}; set it or remove it (default false)")
    dv = build.get("draft_vocab")
    if dv is not None and not (_number(dv, True) and 0 <= dv <= 65535):
        problems.append(f"field 'build.draft_vocab' must be an integer in 0..65535 (rows of the draft engine's bigram "
                        f"memory; 0: no draft engine), got {dv!r}")
    pll = d.get("fabric_pll")
    if pll is not None:
        if not isinstance(pll, dict):
            problems.append(f"field 'fabric_pll' must be an object (name, ref_mhz, mult), got {pll!r}")
        else:
            for key in ("ref_mhz", "mult"):
                if key in pll and not (_number(pll[key]) and pll[key] > 0):
                    problems.append(f"field 'fabric_pll.{key}' must be a positive number (the PS PLL feeding the "
                                    f"fabric clock is ref_mhz x mult), got {pll[key]!r}")
    return problems


def _check(d: dict, where: str) -> Board:
    problems = []
    for key, typ in _REQUIRED.items():
        if key not in d:
            problems.append(f"missing field '{key}'")
        elif not isinstance(d[key], typ) or isinstance(d[key], bool):
            problems.append(f"field '{key}' must be {typ}, got {d[key]!r}")
    if problems:
        raise MmfreeError(f"board file {where}: " + "; ".join(problems))
    for k in _PL:
        v = d["pl"].get(k)
        if not _number(v, True) or v < 0:
            problems.append(f"field 'pl.{k}' must be a non-negative integer, got {v!r}")
    for k in _DDR:
        v = d["ddr"].get(k)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            problems.append(f"field 'ddr.{k}' must be a positive number, got {v!r}")
    hp = d["hp_ports"]
    if not isinstance(hp.get("width_bits"), int) or hp.get("width_bits") not in (32, 64, 128):
        problems.append(f"field 'hp_ports.width_bits' must be 32, 64 or 128, got {hp.get('width_bits')!r}")
    if d["family"] not in ("xc7", "xcup"):
        problems.append(f"field 'family' must be 'xc7' or 'xcup', got {d['family']!r}")
    if d["ps"] not in ("zynq7", "zynqmp"):
        problems.append(f"field 'ps' must be 'zynq7' or 'zynqmp', got {d['ps']!r}")
    if d["clock_mhz"] <= 0:
        problems.append(f"field 'clock_mhz' must be positive, got {d['clock_mhz']!r}")
    power = d.get("power")
    if "power" in d:
        if not isinstance(power, dict):
            problems.append(f"field 'power' must be an object, got {power!r}")
        else:
            if power.get("method") not in _POWER_METHODS:
                problems.append(f"field 'power.method' must be one of {', '.join(_POWER_METHODS)}, "
                                f"got {power.get('method')!r}")
            for key in _POWER_WATTS:
                v = power.get(key)
                if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
                    problems.append(f"field 'power.{key}' must be a non-negative number of watts, got {v!r}")
    psc = d.get("ps_config", {})
    if not isinstance(psc, dict) or any(not isinstance(k, str) or not isinstance(v, str) for k, v in psc.items()):
        problems.append("field 'ps_config' must map Vivado PS CONFIG names to string values")
    if problems:
        raise MmfreeError(f"board file {where}: " + "; ".join(problems))
    optional = _optional_problems(d)
    if optional:              # named by the board, as `mmfree build` names the build fields it checks
        raise MmfreeError(f"board file {d['name']}: " + "; ".join(optional))
    ddr = d["ddr"]
    expected = ddr["width_bits"] / 8 * ddr["rate_mts"] / 1000
    if abs(ddr["peak_gbps"] - expected) > 0.01 * expected:
        raise MmfreeError(f"board file {where}: field 'ddr.peak_gbps' is {ddr['peak_gbps']} GB/s but "
                          f"width x rate = {ddr['width_bits']} bits x {ddr['rate_mts']} MT/s = {expected:.3f} GB/s; "
                          "fix one of the three")
    return Board(d["name"], d["part"], d["family"], d["ps"], dict(d["pl"]), dict(d["ddr"]), dict(hp),
                 float(d["clock_mhz"]), d)


def load_board(name: str) -> Board:
    """A shipped board by name (pynq-z2, kv260, zcu104), or ``custom:PATH`` / a path to a board JSON file."""
    if name.startswith("custom:"):
        path = Path(name[len("custom:"):])
    elif name in BOARD_NAMES:
        path = resources.files("mmfree.boards").joinpath(name).joinpath("board.json")
    else:
        path = Path(name)
        if not path.suffix == ".json" or not path.exists():
            raise MmfreeError(f"unknown board {name!r}: choose one of {', '.join(BOARD_NAMES)} or custom:PATH.json")
    if not path.is_file():
        raise MmfreeError(f"board file {path} does not exist")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MmfreeError(f"board file {path} is not valid JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise MmfreeError(f"board file {path} must hold a JSON object")
    return _check(d, str(path))

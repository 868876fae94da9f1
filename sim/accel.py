"""The simulated board: the accelerator RTL under Verilator + cocotb, with DDR on the HDL side, and the
Python API of ``mmfree sim`` (:func:`simulate_generation`).

Pieces (docs/sim.md explains them):

* :func:`build_accel` turns :class:`mmfree.rtl.top.MmfreeAccel` into Verilog and a Verilator model (cached
  by content). ``memory="hdl"`` (default) wraps it with ``sim/hdl/mmfree_axi_mem.sv``, a Verilog DDR model
  with fixed bandwidth (one beat per cycle, shared by reads and writes) and configurable latency, so a
  run costs no Python per beat; ``memory="python"`` exposes the bare ``m_axi`` port for cocotbext-axi's
  ``AxiRam`` with random pauses (protocol checking, slow).
* :class:`SimSession` (inside a cocotb test) is the board: ``read32``/``write32`` on the AXI4-Lite CSRs
  (cocotbext-axi ``AxiLiteMaster``), ``write_mem``/``read_mem`` on DDR (a file backdoor into the HDL model,
  or ``AxiRam``'s memory), ``wait_irq`` with a cycle budget. :class:`SyncBoard` gives the same methods as
  blocking calls for code run through ``cocotb.bridge`` (the reference host :mod:`mmfree.host`, and a
  PYNQ-driver transport later).
* :func:`run_job` runs one job (a JSON description: which compiled model, which passes or which generation)
  in a fresh simulator process through the bench :mod:`mmfree.sim.benches.accel` and returns its results.
* :func:`simulate_generation` compiles a model, generates greedily on the RTL step by step, replays every
  pass on :class:`mmfree.pymodel.intmodel.IntModel` and compares logits, argmax and states exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np

from mmfree import MmfreeError
from mmfree.atomic import system_tempdir
from mmfree.rtl import params as PARAMS
from mmfree.rtl import regmap as RM
from mmfree.rtl.compiler import Compiled, HwConfig

#: The installed Verilog/SystemVerilog sources of the simulation top (package data of ``mmfree.sim``).
HDL_DIR = Path(str(resources.files("mmfree.sim") / "hdl"))
#: The simulated DDR window: base address and smallest size (64 MiB). A run sizes its DDR to the model
#: (:func:`sim_mem_bytes`); every model whose image and buffers fit 64 MiB shares one Verilator build.
SIM_MEM_BASE = 0x4000_0000
SIM_MEM_BYTES = 64 << 20
#: The default simulated build: 128-bit AXI, up to 4 tokens per pass, vectors up to 4096 wide.
DEFAULT_HW = HwConfig(bus_bytes=16, max_tokens=4, max_width=4096, draft_vocab=4096)
#: The same with four weight ports (``m_axi`` + ``m_axi_w1..3``, 8 ternary engines): the KV260/ZCU104 build.
PORTS4_HW = HwConfig(bus_bytes=16, max_tokens=4, max_width=4096, weight_ports=4)
#: Six weight ports (``m_axi`` + ``m_axi_w1..5``, 12 ternary engines): every HP and HPC port of a KV260/ZCU104.
PORTS6_HW = HwConfig(bus_bytes=16, max_tokens=4, max_width=4096, weight_ports=6)
#: Six weight ports with ONE ternary engine each (6 ways in all, row r is way r mod 6): the KV260 k = 3 build of
#: docs/performance.md's acceptance section (each way already consumes a beat per cycle, faster than its port's
#: share of the DDR, so a second way per port buys little).
PORTS6E1_HW = HwConfig(bus_bytes=16, max_tokens=4, max_width=4096, weight_ports=6, matvec_engines=1)
#: The default build with V = 2 / 4 vector lanes (QSTATS / QCODES on V elements per cycle, buffers banked by V).
LANES2_HW = HwConfig(bus_bytes=16, max_tokens=4, max_width=4096, draft_vocab=4096, vector_lanes=2)
LANES4_HW = HwConfig(bus_bytes=16, max_tokens=4, max_width=4096, draft_vocab=4096, vector_lanes=4)
#: Modelled clock for converting host time-outs into simulated cycles (KV260 fabric clock).
CLOCK_HZ = PARAMS.SIM_CLOCK_HZ
CLOCK_PERIOD_NS = PARAMS.SIM_CLOCK_PERIOD_NS
ADDR_WIDTH = 40
DEFAULT_RD_LATENCY = PARAMS.SIM_RD_LATENCY
DEFAULT_WR_LATENCY = PARAMS.SIM_WR_LATENCY
#: Longest DDR read latency a run accepts (cycles per burst).
MAX_RD_LATENCY = 4096
#: Most positions (prompt + generated tokens) one :func:`simulate_generation` runs: every pass is a
#: cycle-accurate run over all the weights, so this bounds a run to hours, not days, on the default model.
MAX_SIM_POSITIONS = 2048


# ======================================================================================================
# building
# ======================================================================================================
def sim_mem_bytes(need: int) -> int:
    """Simulated DDR size (bytes) for a run that needs ``need`` bytes (program, host buffers and image: see
    :func:`mmfree.host.layout.ddr_needed`): the next power of two, at least :data:`SIM_MEM_BYTES`."""
    return max(SIM_MEM_BYTES, 1 << max(0, int(need) - 1).bit_length())


def check_mem_bytes(mem_bytes: int) -> int:
    """Refuse a simulated DDR size that is not a power of two in 64 KiB..1 TiB (MmfreeError); returns it."""
    if isinstance(mem_bytes, bool) or not isinstance(mem_bytes, int) or not (1 << 16) <= mem_bytes <= (1 << 40) \
            or mem_bytes & (mem_bytes - 1):
        raise MmfreeError(f"the simulated DDR size (mem_bytes) must be a power of two in 64 KiB..1 TiB, "
                          f"got {mem_bytes!r}; leave it out to size it to the model")
    return mem_bytes


def tb_wrapper(hw: HwConfig, addr_width: int = ADDR_WIDTH, mem_bytes: int = SIM_MEM_BYTES) -> str:
    """SystemVerilog top ``mmfree_accel_tb``: the accelerator, the HDL DDR model (``mem_bytes``, a power of
    two, from :data:`SIM_MEM_BASE`) and the memory backdoor.

    With ``ext_mem`` high the accelerator's AXI master is routed to the top's own ``m_axi__*`` ports instead
    (for cocotbext-axi's AxiRam with random pauses): one build serves both kinds of run."""
    bb, P = hw.bus_bytes, hw.weight_ports
    words_log2 = (check_mem_bytes(mem_bytes) // bb).bit_length() - 1
    axil = ["awaddr:12:i", "awprot:3:i", "awvalid:1:i", "awready:1:o", "wdata:32:i", "wstrb:4:i", "wvalid:1:i",
            "wready:1:o", "bresp:2:o", "bvalid:1:o", "bready:1:i", "araddr:12:i", "arprot:3:i", "arvalid:1:i",
            "arready:1:o", "rdata:32:o", "rresp:2:o", "rvalid:1:o", "rready:1:i"]
    # AXI master signals: name -> (width, direction seen from the accelerator)
    axi = {"awid": (1, "o"), "awaddr": (addr_width, "o"), "awlen": (8, "o"), "awsize": (3, "o"), "awburst": (2, "o"),
           "awlock": (1, "o"), "awcache": (4, "o"), "awprot": (3, "o"), "awvalid": (1, "o"), "awready": (1, "i"),
           "wdata": (8 * bb, "o"), "wstrb": (bb, "o"), "wlast": (1, "o"), "wvalid": (1, "o"), "wready": (1, "i"),
           "bid": (1, "i"), "bresp": (2, "i"), "bvalid": (1, "i"), "bready": (1, "o"),
           "arid": (1, "o"), "araddr": (addr_width, "o"), "arlen": (8, "o"), "arsize": (3, "o"), "arburst": (2, "o"),
           "arlock": (1, "o"), "arcache": (4, "o"), "arprot": (3, "o"), "arvalid": (1, "o"), "arready": (1, "i"),
           "rid": (1, "i"), "rdata": (8 * bb, "i"), "rresp": (2, "i"), "rlast": (1, "i"), "rvalid": (1, "i"),
           "rready": (1, "o")}
    ports = ["input logic clk", "input logic rst", "output logic irq", "input logic ext_mem", "input logic bd_load",
             "input logic bd_dump", "input logic [63:0] bd_start", "input logic [63:0] bd_count"]
    for p in axil:
        n, w, d = p.split(":")
        ports.append(f"{'input' if d == 'i' else 'output'} logic [{int(w) - 1}:0] s_axil__{n}")
    for n, (w, d) in axi.items():
        ports.append(f"{'output' if d == 'o' else 'input'} logic [{w - 1}:0] m_axi__{n}")
    lines = []
    for n, (w, _) in axi.items():
        lines.append(f"    logic [{w - 1}:0] a_{n}, d_{n};")
    for n, (_, d) in axi.items():
        if d == "o":       # accelerator output: to the top port always, to the DDR model unless external
            lines.append(f"    assign m_axi__{n} = a_{n};")
            gate = f"a_{n} & ~ext_mem" if n.endswith("valid") or n.endswith("ready") else f"a_{n}"
            lines.append(f"    assign d_{n} = {gate};")
        else:              # accelerator input: from the DDR model or from the top port
            lines.append(f"    assign a_{n} = ext_mem ? m_axi__{n} : d_{n};")
    conn_accel = ",\n".join([f"        .{n}({n})" for n in ("clk", "rst", "irq")] +
                            [f"        .s_axil__{p.split(':')[0]}(s_axil__{p.split(':')[0]})" for p in axil] +
                            [f"        .m_axi__{n}(a_{n})" for n in axi] +
                            [f"        .{RM.weight_port(p)}__{n}({RM.weight_port(p)}_{n})"
                             for p in range(1, P) for n in axi])
    # extra weight ports (read-only masters): AR/R to the DDR model's x_* ports, the write side tied idle
    xr = {"araddr": addr_width, "arlen": 8, "arvalid": 1, "arready": 1, "rdata": 8 * bb, "rresp": 2, "rlast": 1,
          "rvalid": 1, "rready": 1}
    for n, w in xr.items():
        lines.append(f"    logic [{max(1, P - 1) * w - 1}:0] x_{n};")
    for p in range(1, P):
        wp = RM.weight_port(p)
        i = p - 1
        for n, (w, d) in axi.items():
            if n in xr:
                if d == "o":
                    lines.append(f"    logic [{w - 1}:0] {wp}_{n};")
                    lines.append(f"    assign x_{n}[{i * w + w - 1}:{i * w}] = {wp}_{n};")
                else:
                    lines.append(f"    logic [{w - 1}:0] {wp}_{n};")
                    lines.append(f"    assign {wp}_{n} = x_{n}[{i * w + w - 1}:{i * w}];")
            elif d == "o":
                lines.append(f"    logic [{w - 1}:0] {wp}_{n};      // unused (read-only port)")
            else:
                lines.append(f"    logic [{w - 1}:0] {wp}_{n};")
                lines.append(f"    assign {wp}_{n} = '0;")
    if P == 1:
        for n in xr:
            if n in ("arready", "rdata", "rresp", "rlast", "rvalid"):
                continue
            lines.append(f"    assign x_{n} = '0;")
    mem_ports = [n for n in axi if n not in ("awlock", "awcache", "awprot", "arlock", "arcache", "arprot")]
    conn_mem = ",\n".join([f"        .{n}({n})" for n in ("clk", "rst", "bd_load", "bd_dump", "bd_start", "bd_count")] +
                          [f"        .{n}(d_{n})" for n in mem_ports] +
                          [f"        .x_{n}(x_{n})" for n in xr])
    sep = ",\n    "
    nl = "\n"
    return f"""// generated by mmfree.sim.accel.tb_wrapper: the accelerator with the simulated DDR
module mmfree_accel_tb (
    {sep.join(ports)}
);
{nl.join(lines)}
    mmfree_accel accel (
{conn_accel}
    );
    mmfree_axi_mem #(.ADDR_W({addr_width}), .DATA_W({8 * bb}), .MEM_BASE(64'h{SIM_MEM_BASE:x}),
                     .MEM_WORDS_LOG2({words_log2}), .READ_LATENCY({DEFAULT_RD_LATENCY}),
                     .WRITE_LATENCY({DEFAULT_WR_LATENCY}), .XR({P - 1})) ddr (
{conn_mem}
    );
endmodule
"""


#: Only the simulation top's own signals (its ports: clock, reset, IRQ, CSR and AXI buses, the memory
#: backdoor) are visible to cocotb. cocotb's runner passes ``--public-flat-rw`` (every signal of the design
#: public), which makes Verilator keep and export all ~100k internal signals: a larger model that compiles
#: and runs slower. ``--no-public-flat-rw`` undoes it and this control file makes the top public again.
#: (Internal signals are still in ``--waves`` traces.)
TB_PUBLIC_VLT = '`verilator_config\npublic_flat_rw -module "mmfree_accel_tb" -var "*"\n'
TB_BUILD_ARGS = ["--no-public-flat-rw"]


def _rtl_source_key(hw: HwConfig) -> str:
    """A digest of everything the accelerator's Verilog depends on: the RTL and numerics sources as this process
    imported them (:func:`mmfree.rtl.source_key`) and the build parameters (so an unchanged design skips the
    Amaranth -> Verilog conversion, and an edit during a long run cannot file old Verilog under the new key)."""
    import amaranth

    from mmfree.rtl import source_key

    return source_key(repr((hw, ADDR_WIDTH, amaranth.__version__)))


def _accel_verilog(hw: HwConfig, progress=None) -> Path:
    from mmfree.atomic import write_text
    from mmfree.rtl.top import MmfreeAccel
    from mmfree.sim import runner

    index = runner.cache_dir() / "verilog" / f"mmfree_accel-src-{_rtl_source_key(hw)}.txt"
    if index.exists():
        v = Path(index.read_text().strip())
        if v.exists():
            return v
    if progress:
        progress("generating Verilog (once per RTL change)")
    v = runner.verilog_file(MmfreeAccel(hw, addr_width=ADDR_WIDTH), "mmfree_accel")
    write_text(index, str(v) + "\n")
    return v


def build_accel(hw: HwConfig = DEFAULT_HW, memory: str = "hdl", waves: bool = False, progress=None,
                toggle_coverage: bool = False, mem_bytes: int = SIM_MEM_BYTES):
    """Verilog + Verilator build of the accelerator with its simulation top ``mmfree_accel_tb`` (cached).
    The same build runs with the HDL DDR model (``memory="hdl"``, ``mem_bytes`` of it: each size is its own
    build) or cocotbext-axi's AxiRam ("python").
    ``toggle_coverage=True`` builds with Verilator's ``--coverage-toggle`` (a separate, slower build): every run
    then writes ``coverage.dat`` (toggle counts of every signal bit) into its work directory."""
    from mmfree.sim import runner

    if memory not in ("hdl", "python"):
        raise ValueError(f"memory must be 'hdl' or 'python', got {memory!r}")
    if memory == "python" and hw.weight_ports > 1:
        raise MmfreeError(f"memory='python' (cocotbext-axi AxiRam on m_axi) serves one AXI master; this build has "
                          f"{hw.weight_ports} weight ports: use memory='hdl'")
    v = _accel_verilog(hw, progress)
    wrapper = tb_wrapper(hw, mem_bytes=mem_bytes)
    wp = runner.cache_dir() / "verilog" / f"mmfree_accel_tb-{runner._digest(wrapper)}.sv"
    if not wp.exists():
        from mmfree.atomic import write_text

        write_text(wp, wrapper)
    vlt = runner.cache_dir() / "verilog" / f"mmfree_accel_tb-{runner._digest(TB_PUBLIC_VLT)}.vlt"
    if not vlt.exists():
        from mmfree.atomic import write_text

        write_text(vlt, TB_PUBLIC_VLT)
    sources, top = [v, HDL_DIR / "mmfree_axi_mem.sv", wp, vlt], "mmfree_accel_tb"
    if progress:
        progress("building with Verilator (cached after the first time)")
    extra = TB_BUILD_ARGS + (["--coverage-toggle"] if toggle_coverage else [])
    return runner.build(sources, top, waves=waves, extra_args=extra)


# ======================================================================================================
# the board inside a cocotb test
# ======================================================================================================
class SimSession:
    """The simulated board, driven from a cocotb test (all methods are coroutines).

    ``dut``: the cocotb handle of the top built by :func:`build_accel`; ``memory``: "hdl" or "python";
    ``workdir``: where the backdoor files go; ``max_wait_cycles``: the most cycles one :meth:`wait_irq`
    simulates before it reports a time-out; ``pause_seed``: with the Python memory, random AXI
    back-pressure and read latency (cocotbext-axi pause generators); ``None`` for none; ``mem_bytes``: the
    simulated DDR's size, as the top was built (:func:`build_accel`); ``ddr``: with the Python memory, the realistic
    DDR's settings (:func:`mmfree.sim.ddr.parse_plusargs`) as R/AR pause patterns (refresh, rate, latency spread);
    the HDL memory takes them as plusargs instead (:func:`run_job`).
    """

    def __init__(self, dut, memory: str = "hdl", workdir: str | os.PathLike = ".",
                 max_wait_cycles: int = PARAMS.SIM_MAX_WAIT_CYCLES, pause_seed: int | None = None, bus_bytes: int = 16,
                 mem_bytes: int = SIM_MEM_BYTES, ddr: dict | None = None):
        self.dut, self.memory, self.workdir = dut, memory, Path(workdir)
        self.max_wait_cycles, self.pause_seed, self.bus_bytes = max_wait_cycles, pause_seed, bus_bytes
        self.ddr = ddr
        self.mem_window = (SIM_MEM_BASE, SIM_MEM_BASE + mem_bytes)
        self.memfile = self.workdir / "mmfree_mem.hex"
        self.dumpfile = self.workdir / "mmfree_dump.hex"
        self.ram = None

    async def start(self) -> None:
        """Start the clock, attach the bus models, reset."""
        import cocotb
        from cocotb.clock import Clock
        from cocotb.triggers import ClockCycles
        from cocotbext.axi import AxiLiteBus, AxiLiteMaster

        from mmfree.sim.runner import axi_prefix_kwargs

        dut = self.dut
        cocotb.start_soon(Clock(dut.clk, CLOCK_PERIOD_NS, unit="ns", impl="gpi").start())
        dut.rst.value = 1
        dut.ext_mem.value = int(self.memory == "python")
        dut.bd_load.value = 0
        dut.bd_dump.value = 0
        dut.bd_start.value = 0
        dut.bd_count.value = 0
        self.csr = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil", **axi_prefix_kwargs()), dut.clk, dut.rst)
        if self.memory == "python":
            from cocotbext.axi import AxiBus, AxiRam

            self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi", **axi_prefix_kwargs()), dut.clk, dut.rst,
                              size=1 << ADDR_WIDTH)
            if self.pause_seed is not None:
                import itertools
                import random

                def gen(seed, p):
                    rng = random.Random(seed)
                    return itertools.cycle([rng.random() < p for _ in range(1009)])

                s = self.pause_seed
                self.ram.write_if.aw_channel.set_pause_generator(gen(s + 1, 0.2))
                self.ram.write_if.w_channel.set_pause_generator(gen(s + 2, 0.3))
                self.ram.write_if.b_channel.set_pause_generator(gen(s + 3, 0.3))
                self.ram.read_if.ar_channel.set_pause_generator(gen(s + 4, 0.3))
                self.ram.read_if.r_channel.set_pause_generator(gen(s + 5, 0.4))
            elif self.ddr:
                from mmfree.sim.ddr import ar_pauses, r_pauses

                self.ram.read_if.r_channel.set_pause_generator(r_pauses(self.ddr))
                self.ram.read_if.ar_channel.set_pause_generator(ar_pauses(self.ddr))
        await ClockCycles(dut.clk, 5)
        dut.rst.value = 0
        await ClockCycles(dut.clk, 2)

    # ---- CSRs --------------------------------------------------------------------------------------------
    #: cycles an AXI4-Lite access may take before it is reported as a hang
    CSR_TIMEOUT_CYCLES = PARAMS.SIM_CSR_TIMEOUT_CYCLES

    async def read32(self, offset: int) -> int:
        return await self._csr(self.csr.read_dword(offset), f"read of CSR {offset:#x}")

    async def write32(self, offset: int, value: int) -> None:
        await self._csr(self.csr.write_dword(offset, value & 0xFFFFFFFF), f"write of CSR {offset:#x}")

    async def _csr(self, coro, what: str):
        from cocotb.triggers import SimTimeoutError, with_timeout

        try:
            return await with_timeout(coro, self.CSR_TIMEOUT_CYCLES * CLOCK_PERIOD_NS, "ns")
        except SimTimeoutError:
            raise MmfreeError(f"AXI4-Lite {what} got no response in {self.CSR_TIMEOUT_CYCLES} cycles") from None

    # ---- DDR -----------------------------------------------------------------------------------------------
    def _check(self, addr: int, n: int) -> None:
        lo, hi = self.mem_window
        if addr < lo or addr + n > hi:
            raise MmfreeError(f"host DDR access [{addr:#x}, {addr + n:#x}) outside the simulated memory [{lo:#x}, {hi:#x})")

    async def write_mem(self, addr: int, data: bytes) -> None:
        data = bytes(data)
        self._check(addr, len(data))
        if self.ram is not None:
            self.ram.write(addr, data)
            return
        bb = self.bus_bytes
        first = (addr - SIM_MEM_BASE) // bb
        end = -(-(addr + len(data) - SIM_MEM_BASE) // bb)
        lead = (addr - SIM_MEM_BASE) % bb
        if lead or len(data) % bb:
            cur = bytearray(await self._dump(first, end - first))
            cur[lead:lead + len(data)] = data
            data = bytes(cur)
        beats = np.frombuffer(data, dtype=np.uint8).reshape(-1, bb)[:, ::-1]
        hexes = beats.tobytes().hex()
        w = 2 * bb
        lines = [f"@{first:x}"] + [hexes[i:i + w] for i in range(0, len(hexes), w)]
        self.memfile.write_text("\n".join(lines) + "\n")
        await self._pulse(self.dut.bd_load)

    async def read_mem(self, addr: int, n: int) -> bytes:
        self._check(addr, n)
        if self.ram is not None:
            return bytes(self.ram.read(addr, n))
        bb = self.bus_bytes
        first = (addr - SIM_MEM_BASE) // bb
        end = -(-(addr + n - SIM_MEM_BASE) // bb)
        raw = await self._dump(first, end - first)
        lead = (addr - SIM_MEM_BASE) % bb
        return raw[lead:lead + n]

    async def _dump(self, first: int, count: int) -> bytes:
        self.dut.bd_start.value = first
        self.dut.bd_count.value = count
        await self._pulse(self.dut.bd_dump)
        words = [ln.strip() for ln in self.dumpfile.read_text().splitlines()]
        words = [w for w in words if w and not w.startswith(("//", "@"))]
        if len(words) != count:
            raise MmfreeError(f"memory backdoor returned {len(words)} beats, expected {count}")
        return b"".join(int(w, 16).to_bytes(self.bus_bytes, "little") for w in words)

    async def _pulse(self, sig) -> None:
        from cocotb.triggers import FallingEdge, RisingEdge

        await FallingEdge(self.dut.clk)
        sig.value = 1
        await RisingEdge(self.dut.clk)
        await FallingEdge(self.dut.clk)
        sig.value = 0

    # ---- the interrupt ------------------------------------------------------------------------------------
    async def wait_irq(self, timeout_s: float = 10.0) -> bool:
        """Simulate until ``irq`` is high, at most ``min(timeout_s * CLOCK_HZ, max_wait_cycles)`` cycles."""
        from cocotb.triggers import First, RisingEdge, Timer

        if int(self.dut.irq.value):
            return True
        budget = int(min(timeout_s * CLOCK_HZ, self.max_wait_cycles))
        # a timer in the simulator, not a cycle count in Python: the wait costs no Python per cycle
        timer = Timer(budget * CLOCK_PERIOD_NS, unit="ns")
        edge = RisingEdge(self.dut.irq)
        res = await First(edge, timer)
        return res is edge or bool(int(self.dut.irq.value))


class SyncBoard:
    """:class:`SimSession` as blocking calls, for synchronous code started with ``cocotb.bridge``."""

    def __init__(self, session: SimSession):
        from cocotb.task import resume

        self.session = session
        self.mem_window = session.mem_window
        for name in ("read32", "write32", "write_mem", "read_mem", "wait_irq"):
            setattr(self, name, resume(getattr(session, name)))


# ======================================================================================================
# running jobs in a simulator process
# ======================================================================================================
def _run_sim(b, test_module: str, env: dict, plusargs: list[str], test_dir: Path, waves: bool) -> None:
    from cocotb_tools.runner import get_results

    from mmfree.sim.runner import verilator_runner
    from mmfree.toolchain import verilator_env

    verilator_env()
    extra = dict(env)
    extra["PYTHONPATH"] = os.pathsep.join(p for p in [os.environ.get("PYTHONPATH", "")] + sys.path if p)
    extra.setdefault("COCOTB_LOG_LEVEL", "WARNING")
    extra.setdefault("GPI_LOG_LEVEL", "WARNING")
    extra.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")   # cocotbext-axi's task.kill()
    results = test_dir / "results.xml"
    pytest_name = os.environ.pop("PYTEST_CURRENT_TEST", None)
    # the simulator process writes to our file descriptor 1 ("Verilog $finish", cocotb's log): point it at
    # stderr for the run, so stdout carries only our own output (`mmfree sim --json` prints one object)
    from mmfree.sim.runner import stdout_to_stderr

    try:
        with stdout_to_stderr():
            verilator_runner().test(test_module=test_module, hdl_toplevel=b.toplevel,
                                    hdl_toplevel_lang="verilog", build_dir=b.build_dir, test_dir=test_dir,
                                    extra_env=extra, waves=waves, plusargs=plusargs, seed=1,
                                    results_xml=str(results))
    except SystemExit as exc:
        raise MmfreeError(f"the simulation exited with {exc.code}") from exc
    finally:
        if pytest_name is not None:
            os.environ["PYTEST_CURRENT_TEST"] = pytest_name
    n_tests, n_failed = get_results(results)
    if n_tests == 0 or n_failed:
        out = test_dir / "job_result.json"
        detail = json.loads(out.read_text()).get("error") if out.exists() else None
        raise MmfreeError(f"the accelerator simulation failed: {detail or 'see the simulator log above'}")


def _run_with_bar(fn, progress_file: Path, total: int) -> None:
    """Run ``fn`` in a thread and show a tqdm bar fed by the token count the bench writes to ``progress_file``."""
    import threading

    from tqdm import tqdm

    err: list[BaseException] = []

    def target():
        try:
            fn()
        except BaseException as exc:          # re-raised in the caller's thread
            err.append(exc)

    th = threading.Thread(target=target, daemon=True)
    th.start()
    with tqdm(total=total, desc="mmfree sim", unit="tok", file=sys.stderr) as bar:
        while th.is_alive():
            th.join(0.5)
            try:
                n = int(progress_file.read_text() or 0)
            except (OSError, ValueError):
                continue
            bar.update(max(0, min(n, total) - bar.n))
    if err:
        raise err[0]


def run_job(job: dict, hw: HwConfig = DEFAULT_HW, memory: str = "hdl", waves: bool = False,
            rd_latency: int = DEFAULT_RD_LATENCY, workdir: str | os.PathLike | None = None, progress=None,
            toggle_coverage: bool = False, mem_bytes: int = SIM_MEM_BYTES, ddr_plusargs=()) -> dict:
    """Run one job (see :mod:`mmfree.sim.benches.accel`) on the RTL in a fresh simulator; returns its results.

    ``waves=True`` writes ``dump.fst`` into ``workdir`` (and builds a traced model); ``toggle_coverage=True``
    writes Verilator's ``coverage.dat`` there (give a ``workdir`` to keep it); ``mem_bytes``: simulated DDR size;
    ``ddr_plusargs``: the HDL DDR model's realistic option (:func:`mmfree.sim.ddr.sim_plusargs`) and/or its random
    back-pressure (:func:`mmfree.sim.ddr.random_plusargs`); none: the ideal memory."""
    b = build_accel(hw, memory=memory, waves=waves, progress=progress, toggle_coverage=toggle_coverage,
                    mem_bytes=mem_bytes)
    job = dict(job, mem_bytes=mem_bytes)
    own = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="mmfree-sim-", dir=system_tempdir() if waves else None)) if own else Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    try:
        return _run_job_in(wd, job, b, hw, memory, waves, rd_latency, progress, tuple(ddr_plusargs))
    finally:
        if own and not waves:
            shutil.rmtree(wd, ignore_errors=True)


def _run_job_in(wd: Path, job: dict, b, hw: HwConfig, memory: str, waves: bool, rd_latency: int, progress,
                ddr_plusargs: tuple = ()) -> dict:
    job = dict(job, memory=memory, workdir=str(wd), bus_bytes=hw.bus_bytes)
    if ddr_plusargs and memory == "python":        # the Python memory takes them as pause patterns
        from mmfree.sim.ddr import parse_plusargs

        job["ddr"] = parse_plusargs(ddr_plusargs)
    (wd / "job.json").write_text(json.dumps(job))
    plus = [f"+MMFREE_MEMFILE={wd / 'mmfree_mem.hex'}", f"+MMFREE_DUMPFILE={wd / 'mmfree_dump.hex'}",
            f"+MMFREE_RD_LATENCY={rd_latency}", f"+MMFREE_WR_LATENCY={DEFAULT_WR_LATENCY}", *ddr_plusargs]
    if progress:
        progress("simulating")
    t0 = time.perf_counter()
    env = {"MMFREE_ACCEL_JOB": str(wd / "job.json")}
    total = job.get("n_tokens") if job.get("kind") == "generate" else None
    if progress and total:
        _run_with_bar(lambda: _run_sim(b, "mmfree.sim.benches.accel", env, plus, wd, waves), wd / "progress.txt", total)
    else:
        _run_sim(b, "mmfree.sim.benches.accel", env, plus, wd, waves)
    res = load_job_result(wd)
    res["wall_s"] = time.perf_counter() - t0
    if waves:
        dumps = sorted(wd.rglob("*.fst")) + sorted(wd.rglob("*.vcd"))
        res["waves"] = str(dumps[0]) if dumps else None
    return res


def load_job_result(wd: Path) -> dict:
    """A job's ``job_result.json`` with the arrays of ``job_arrays.npz`` (when written) as ``arrays``."""
    res = json.loads((wd / "job_result.json").read_text())
    arrays = wd / "job_arrays.npz"
    if arrays.exists():
        with np.load(arrays) as z:
            res["arrays"] = {k: z[k] for k in z.files}
    return res


# ======================================================================================================
# generation with the oracle comparison
# ======================================================================================================
def check_prompt_ids(ids: list[int], vocab: int) -> None:
    """Refuse an empty prompt or token ids outside ``[0, vocab)`` (MmfreeError), before anything is built."""
    if not ids:
        raise MmfreeError("the prompt is empty (or encodes to no tokens); give at least one token")
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise MmfreeError(f"prompt token ids {bad[:8]} are outside the vocabulary [0, {vocab})")


def check_width(dims, hw: HwConfig) -> None:
    """Refuse a model wider (d or I) than the build's buffers (MmfreeError)."""
    width = max(dims.d, dims.inter)
    if width > hw.max_width:
        raise MmfreeError(f"the model is {width} wide; the simulated build holds {hw.max_width} (HW_LIMITS)")


def compile_to_dir(model, out: Path) -> Compiled:
    from mmfree.rtl.compiler import compile_model

    c = compile_model(model)
    c.save(out)
    return c


def replay_and_compare(im, passes: list[dict]) -> tuple[bool, list[str]]:
    """Replay the passes on IntModel (each from the state its predecessor committed) and compare every
    logit, argmax and state exactly. Returns (bit_exact, problems)."""
    problems = []
    h = im.initial_state().h
    bare = [i for i, p in enumerate(passes) if "states" not in p]
    if bare:
        raise MmfreeError(f"passes {bare[:8]} carry no states to compare: generate with keep_arrays=True")
    for i, p in enumerate(passes):
        if p.get("reset"):
            h = im.initial_state().h
        hs, logits = im.forward(h, p["tokens"], parents=p.get("parents"))
        for name, exp, got in (("logits", logits, p.get("logits")), ("argmax", np.argmax(logits, -1), p["argmax"]),
                               ("states", hs, p["states"])):
            if got is None:
                continue
            try:
                np.testing.assert_array_equal(np.asarray(got), exp)
            except AssertionError as exc:
                problems.append(f"pass {i} ({name}): " + str(exc).strip().splitlines()[0])
        h = hs[p["commit"]]
    return not problems, problems


def replay_forest(im, passes: list[dict]) -> tuple[bool, list[str]]:
    """Replay multi-stream passes (:func:`mmfree.host.streams.generate_streams` records with ``starts``) on
    IntModel, each from its own start states (``IntModel.forward`` with ``h0`` ``[B, L, d]`` and the pass's
    parents), comparing every logit, argmax and state exactly. Returns (bit_exact, problems)."""
    problems = []
    for i, p in enumerate(passes):
        if "starts" not in p:
            raise MmfreeError(f"pass {i} carries no start states to compare: generate with keep_arrays=True")
        hs, logits = im.forward(np.asarray(p["starts"], dtype=np.int64), p["tokens"], parents=p["parents"])
        for name, exp, got in (("logits", logits, p.get("logits")), ("argmax", np.argmax(logits, -1), p["argmax"]),
                               ("states", hs, p["states"])):
            if got is None:
                continue
            if not np.array_equal(np.asarray(got), exp):
                problems.append(f"pass {i} ({name}): {int(np.count_nonzero(np.asarray(got) != exp))} values differ")
    return not problems, problems


def simulate_generation(model="default", prompt_ids=(1,), n_tokens: int = 16, progress=True, k: int = 1,
                        waves: bool = False, hw: HwConfig = DEFAULT_HW, memory: str = "hdl",
                        rd_latency: int = DEFAULT_RD_LATENCY, write_logits: bool = True,
                        mem_bytes: int | None = None, ddr_plusargs=()) -> dict:
    """Generate ``n_tokens`` greedily on the simulated accelerator and check it against IntModel.

    ``mem_bytes``: the simulated DDR's size (a power of two); ``None`` sizes it to the model's program, host
    buffers and image (:func:`sim_mem_bytes`), so any model that fits the build's width runs. ``ddr_plusargs``:
    the simulated DDR's realistic option (:func:`mmfree.sim.ddr.sim_plusargs`) and/or random back-pressure
    (:func:`mmfree.sim.ddr.random_plusargs`); empty: the ideal memory.

    ``model``: "default", a checkpoint directory or an export directory. ``k`` > 1 feeds the prompt k
    tokens per pass and verifies k-1 drafted tokens per pass (prompt-lookup drafts; see
    :func:`mmfree.host.generate.generate`). Returns a dict with at least ``bit_exact``, ``tokens``, ``cycles``,
    ``cycles_per_token``, ``ddr_bytes``, ``stall_cycles``, ``roofline_fraction`` (docs/sim.md lists all keys).
    """
    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.rtl.compiler import must_move_bytes

    say = _progress_fn(progress)
    say("loading the model")
    im, tok_dir = open_int_model(str(model))
    prompt = [int(t) for t in prompt_ids]
    check_prompt_ids(prompt, im.vocab_size)
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise MmfreeError(f"the number of tokens to generate must be an integer >= 1, got {n_tokens!r}")
    if len(prompt) + n_tokens > MAX_SIM_POSITIONS:
        raise MmfreeError(f"prompt ({len(prompt)} tokens) + tokens to generate ({n_tokens}) = "
                          f"{len(prompt) + n_tokens} positions; a simulation runs at most {MAX_SIM_POSITIONS} "
                          f"(each pass is a full cycle-accurate run over all weights: shorten the prompt or --tokens)")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= hw.max_tokens:
        raise MmfreeError(f"k must be an integer in 1..{hw.max_tokens} (the simulated build's tokens per pass), "
                          f"got {k!r}")
    if not 1 <= rd_latency <= MAX_RD_LATENCY:
        raise MmfreeError(f"the DDR read latency must be 1..{MAX_RD_LATENCY} cycles, got {rd_latency}")
    if memory not in ("hdl", "python"):
        raise MmfreeError(f"memory must be 'hdl' or 'python', got {memory!r}")
    check_width(im.dims, hw)
    with tempfile.TemporaryDirectory(prefix="mmfree-gen-") as td:
        td = Path(td)
        say("compiling the model")
        c = compile_to_dir(im, td / "compiled")
        from mmfree.host.layout import ddr_needed, host_layout

        if mem_bytes is None:
            mem_bytes = sim_mem_bytes(ddr_needed(c, hw.max_tokens))
        host_layout(c, hw.max_tokens, (SIM_MEM_BASE, SIM_MEM_BASE + check_mem_bytes(mem_bytes)))   # fits?
        job = {"kind": "generate", "compiled": str(td / "compiled"), "prompt": prompt, "n_tokens": n_tokens, "k": k,
               "write_logits": write_logits, "progress": bool(progress)}
        res = run_job(job, hw=hw, memory=memory, waves=waves, rd_latency=rd_latency, mem_bytes=mem_bytes,
                      ddr_plusargs=ddr_plusargs,
                      workdir=td / "run" if not waves else Path(tempfile.mkdtemp(prefix="mmfree-waves-", dir=system_tempdir())),
                      progress=say if progress else None)
    passes = passes_from_result(res)
    say("comparing with the integer reference")
    ok, problems = replay_and_compare(im, passes)
    decode = [p for p in passes if not p["prefill"]]
    dec_cycles = sum(p["cycles"] for p in decode)
    dec_tokens = sum(p["emitted"] for p in decode)
    bpc = hw.bus_bytes * hw.weight_ports          # every weight port delivers a beat per cycle in the simulated DDR
    must = sum(must_move_bytes(im.dims, len(p["tokens"]), write_logits) for p in decode)
    total_cycles = sum(p["cycles"] for p in passes)
    out = {
        "bit_exact": ok, "problems": problems[:20],
        "tokens": res["tokens"], "text": None, "prompt_ids": prompt, "k": k,
        "cycles": total_cycles, "cycles_prefill": total_cycles - dec_cycles, "cycles_decode": dec_cycles,
        "cycles_per_token": dec_cycles / dec_tokens if dec_tokens else None,
        "passes": len(passes), "decode_passes": len(decode),
        "ddr_bytes": sum(p["rd_bytes"] for p in passes), "ddr_write_bytes": sum(p["wr_bytes"] for p in passes),
        "stall_cycles": sum(p["stalls"] for p in passes),
        "must_move_bytes_per_token": must / dec_tokens if dec_tokens else None,
        "bus_bytes_per_cycle": bpc,
        "roofline_fraction": (must / bpc) / dec_cycles if dec_cycles else None,
        "model": {"d": im.dims.d, "inter": im.dims.inter, "layers": im.dims.layers, "vocab": im.dims.vocab},
        "hw": {"bus_bytes": hw.bus_bytes, "max_tokens": hw.max_tokens, "max_width": hw.max_width,
               "weight_ports": hw.weight_ports, "matvec_engines": hw.matvec_engines,
               "rd_latency": rd_latency, "memory": memory, "mem_bytes": mem_bytes},
        "wall_s": res["wall_s"],
    }
    if waves:
        out["waves"] = res.get("waves")
    try:
        from mmfree.pymodel.tokenizer import load_tokenizer

        out["text"] = load_tokenizer(tok_dir).decode(res["tokens"])
    except Exception:       # a model without tokenizer.json: ids only
        out["text"] = None
    if not passes:
        raise MmfreeError("the simulation produced no passes")
    del c
    return out


def simulate_streams(model="default", prompts=((1,), (2,)), n_tokens: int = 8, progress=True,
                     hw: HwConfig = DEFAULT_HW, rd_latency: int = DEFAULT_RD_LATENCY, write_logits: bool = True,
                     decode_first: bool = False) -> dict:
    """B = ``len(prompts)`` independent streams on the simulated accelerator, every decode pass one forest
    (:func:`mmfree.host.streams.generate_streams`; the program compiled with ``streams=B``), checked against
    IntModel: every stream's tokens equal plain greedy decoding of its prompt alone, every pass equals
    ``IntModel.forward`` from its start states, and the number of passes equals the reference's multi-stream loop
    (:func:`mmfree.pymodel.multistream.generate_streams` with the build's max tokens per pass and the same
    ``decode_first``: decoding streams advance in every pass, prompt chunks fill the room left). Returns
    ``bit_exact``, ``problems``, ``streams``, ``tokens`` (per stream), ``reference_tokens``, ``passes``,
    ``reference_passes``, ``decode_passes``, ``cycles``, ``cycles_decode``,
    ``cycles_per_decode_pass``, ``ddr_bytes``, ``model``, ``hw``, ``wall_s``. MmfreeError for B outside
    1..max_tokens of the build, a prompt outside the vocabulary or too many positions."""
    from mmfree.pymodel.intmodel import open_int_model
    from mmfree.pymodel.multistream import generate_streams as reference_streams
    from mmfree.rtl.compiler import compile_model
    from mmfree.sim.run import greedy_reference

    say = _progress_fn(progress)
    im, _ = open_int_model(str(model))
    prompts = [[int(t) for t in p] for p in prompts]
    B = len(prompts)
    if not 1 <= B <= hw.max_tokens:
        raise MmfreeError(f"--streams must be 1..{hw.max_tokens} (tokens per pass of the simulated build), got {B}")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise MmfreeError(f"the number of tokens to generate must be an integer >= 1, got {n_tokens!r}")
    for s, p in enumerate(prompts):
        if not p:
            raise MmfreeError(f"stream {s}'s prompt is empty; give at least one token")
        check_prompt_ids(p, im.vocab_size)
        if len(p) + n_tokens > MAX_SIM_POSITIONS:
            raise MmfreeError(f"stream {s}: prompt ({len(p)} tokens) + --tokens {n_tokens} is more than the "
                              f"{MAX_SIM_POSITIONS} positions a simulation runs: shorten the prompt or --tokens")
    check_width(im.dims, hw)
    with tempfile.TemporaryDirectory(prefix="mmfree-streams-") as td:
        td = Path(td)
        say(f"compiling the model for {B} streams")
        compile_model(im, streams=B).save(td / "compiled")
        job = {"kind": "streams", "compiled": str(td / "compiled"), "prompts": prompts, "n_tokens": n_tokens,
               "write_logits": write_logits, "progress": False, "decode_first": decode_first}
        res = run_job(job, hw=hw, rd_latency=rd_latency, workdir=td / "run", progress=say if progress else None)
    arrays = res.get("arrays", {})
    passes = []
    for i, p in enumerate(res["passes"]):
        passes.append(dict(p, logits=arrays.get(f"logits{i}"), states=arrays[f"states{i}"],
                           argmax=arrays[f"argmax{i}"], starts=arrays[f"starts{i}"]))
    say("comparing with the integer reference")
    ok, problems = replay_forest(im, passes)
    ref = [greedy_reference(im, p, n_tokens) for p in prompts]
    for s, (got, exp) in enumerate(zip(res["tokens"], ref)):
        if got != exp:
            ok = False
            problems.insert(0, f"stream {s}: tokens {got} differ from IntModel greedy decoding {exp}")
    ref_passes = reference_streams(im, prompts, n_tokens, max_nodes=hw.max_tokens, decode_first=decode_first).passes
    if len(passes) != ref_passes:
        ok = False
        problems.insert(0, f"{len(passes)} passes; the reference's multi-stream loop (pymodel.multistream."
                           f"generate_streams, {hw.max_tokens} tokens per pass) runs {ref_passes}")
    decode = [p for p in passes if not p["prefill"]]
    dec_cycles = sum(p["cycles"] for p in decode)
    return {"bit_exact": ok, "problems": problems[:20], "streams": B, "tokens": res["tokens"],
            "reference_tokens": ref, "prompt_ids": prompts, "passes": len(passes), "reference_passes": ref_passes,
            "decode_passes": len(decode),
            "cycles": sum(p["cycles"] for p in passes), "cycles_decode": dec_cycles,
            "cycles_per_decode_pass": dec_cycles / len(decode) if decode else None,
            "ddr_bytes": sum(p["rd_bytes"] for p in passes),
            "model": {"d": im.dims.d, "inter": im.dims.inter, "layers": im.dims.layers, "vocab": im.dims.vocab},
            "hw": {"bus_bytes": hw.bus_bytes, "max_tokens": hw.max_tokens, "max_width": hw.max_width,
                   "weight_ports": hw.weight_ports, "rd_latency": rd_latency},
            "wall_s": res["wall_s"]}


def passes_from_result(res: dict) -> list[dict]:
    """The passes of a :func:`run_job` result with their arrays (logits or None, states, argmax) attached; an
    on-chip GENERATE's record (``onchip``) has none (nothing of its passes is read back) and stays as it is."""
    arrays = res.get("arrays", {})
    passes = []
    for i, p in enumerate(res["passes"]):
        q = dict(p)
        if q.get("onchip"):
            passes.append(q)
            continue
        q["logits"] = arrays.get(f"logits{i}")
        q["states"] = arrays[f"states{i}"]
        q["argmax"] = arrays[f"argmax{i}"]
        passes.append(q)
    return passes


def _progress_fn(progress):
    if not progress:
        return lambda msg: None
    if callable(progress):
        return progress
    return lambda msg: print(f"[mmfree sim] {msg}", file=sys.stderr, flush=True)

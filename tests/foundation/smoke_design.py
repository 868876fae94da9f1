"""A trivial gateware component used to prove the toolchain: Amaranth -> Verilog -> Verilator -> cocotb.

``AxisIncrement`` is an AXI-Stream pipe stage that adds a constant to every beat. Its ports are
named the Amaranth way (``s_axis__tdata``), which is what the bus-name mapping in
:mod:`mmfree.sim.runner` has to cope with.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


def axis_signature(width: int) -> wiring.Signature:
    """AXI4-Stream (tdata/tvalid/tready/tlast) as seen from the source."""
    return wiring.Signature({
        "tdata": Out(width),
        "tvalid": Out(1),
        "tready": In(1),
        "tlast": Out(1),
    })


class AxisIncrement(wiring.Component):
    """``m_axis.tdata = s_axis.tdata + increment`` with one register stage and full back-pressure."""

    def __init__(self, width: int = 32, increment: int = 1):
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        self.width = width
        self.increment = increment
        super().__init__({
            "s_axis": In(axis_signature(width)),
            "m_axis": Out(axis_signature(width)),
        })

    def elaborate(self, platform):
        m = Module()
        full = Signal()
        m.d.comb += [
            self.s_axis.tready.eq(~full | self.m_axis.tready),
            self.m_axis.tvalid.eq(full),
        ]
        with m.If(self.m_axis.tready & full):
            m.d.sync += full.eq(0)
        with m.If(self.s_axis.tvalid & self.s_axis.tready):
            m.d.sync += [
                full.eq(1),
                self.m_axis.tdata.eq(self.s_axis.tdata + self.increment),
                self.m_axis.tlast.eq(self.s_axis.tlast),
            ]
        return m

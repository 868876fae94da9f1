"""Several units side by side in one top level, each with its own ports: one Verilog file and one
Verilator build serve the tests of all of them (builds are the slow part of a cocotb run).

Ports of unit ``name`` are prefixed: its stream ``i`` becomes ``name_i`` (Verilog ``name_i__valid``,
``name_i__ready``, ``name_i__payload``), a plain port ``busy`` becomes ``name_busy``.
"""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class UnitsHarness(wiring.Component):
    """Wraps ``units`` (name -> component); the units run independently of each other."""

    def __init__(self, units: dict):
        if not units:
            self._MustUse__silence = True
            raise ValueError("units must name at least one component")
        self.units = dict(units)
        members = {}
        for name, unit in self.units.items():
            for mname, member in unit.signature.members.items():
                members[f"{name}_{mname}"] = member
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for name, unit in self.units.items():
            m.submodules[name] = unit
            for mname, member in unit.signature.members.items():
                outer, inner = getattr(self, f"{name}_{mname}"), getattr(unit, mname)
                if member.is_port:
                    m.d.comb += (outer.eq(inner) if member.flow == Out else inner.eq(outer))
                elif member.flow == In:
                    wiring.connect(m, wiring.flipped(outer), inner)
                else:
                    wiring.connect(m, inner, wiring.flipped(outer))
        return m


def units_harness(matvecs=((80, 4, 1024), (40, 1, 1024), (5, 2, 128))) -> UnitsHarness:
    """Every vector unit plus the given matvec configurations ``(lanes, tokens, max_k)``, named
    ``<unit>`` and ``mv_l<lanes>_k<tokens>``."""
    from mmfree.rtl.catalog import VECTOR_UNITS
    from mmfree.rtl.matvec import TernaryMatVec

    units = {f"mv_l{lanes}_k{k}": TernaryMatVec(lanes=lanes, tokens=k, max_k=max_k, banks=2)
             for lanes, k, max_k in matvecs}
    units.update({name: f() for name, (f, _) in VECTOR_UNITS.items()})
    return UnitsHarness(units)




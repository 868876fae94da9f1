"""The AXI4-Lite register block of the accelerator, generated from :data:`mmfree.rtl.regmap.REGISTERS`.

* ``rw`` registers are stored here and exported to the core (64-bit address registers as one value).
* ``ro`` registers read the core's status inputs (``ID``/``VERSION``/``HW_*`` are constants).
* ``CONTROL`` (write-only) produces one-cycle ``start`` / ``soft_reset`` / ``generate`` pulses; its IRQ_ENABLE
  bit is sticky.
* Registers with bit fields (:attr:`mmfree.rtl.regmap.Reg.fields`) are read and written through their
  :func:`layout` (a ``data.StructLayout`` derived from the field table): ``STATUS``, ``CONTROL``, ``IRQ_STATUS``
  here, ``GEN_CONTEXT`` / ``GEN_EOS`` / ``GEN_DRAFT`` exported to the loop as views.
* ``IRQ_STATUS`` (write 1 to clear) is set by the core's ``finished`` pulse (a run ended, DONE or ERROR);
  the ``irq`` output is ``IRQ_STATUS & IRQ_ENABLE``, level high.

The bus side accepts AW and W in any order, answers every write with OKAY (writes to read-only or
unknown offsets are ignored) and every read in the next cycle (unknown offsets read 0).
"""

from __future__ import annotations

from functools import cache

from amaranth import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from mmfree.rtl import regmap as RM
from mmfree.rtl.axi import axil_signature

#: Registers the core provides (read-only values); 64-bit counters are split into _LO/_HI here.
STATUS_INPUTS = {"STATUS": 32, "ERROR_CODE": 32, "ARGMAX": 32, "PC": 32,
                 "CYCLES": 64, "STALLS": 64, "RD_BYTES": 64, "WR_BYTES": 64,
                 "GEN_COUNT": 32, "GEN_PASSES": 32, "GEN_NODES": 32, "GEN_CYCLES": 64, "GEN_STATE": 64}
#: 32-bit rw registers of the draft-verify loop exported to the core (lower-case names)
GEN_VALUE_REGS = ("GEN_N", "GEN_CONTEXT", "GEN_EOS", "STATE_STRIDE", "GEN_DRAFT")


@cache
def layout(name: str) -> data.StructLayout:
    """The 32-bit ``data.StructLayout`` of register ``name``'s bit fields (:func:`mmfree.rtl.regmap.fields_of`),
    reserved bits as ``_rsvd<lo>`` padding members; RegisterFieldError for a register without fields."""
    fields = RM.fields_of(name)
    if not fields:
        raise RM.RegisterFieldError(f"register {name} has no bit fields")
    members, at = {}, 0
    for f in sorted(fields, key=lambda f: f.lo):
        if f.lo > at:
            members[f"_rsvd{at}"] = f.lo - at
        members[f.name] = f.width
        at = f.lo + f.width
    if at < 32:
        members[f"_rsvd{at}"] = 32 - at
    return data.StructLayout(members)


class CsrBlock(wiring.Component):
    """AXI4-Lite slave over the register map. ``hw_config``/``hw_limits``: the constant HW_* values;
    ``draft_regs``: the constant DRAFT_* values (:attr:`mmfree.rtl.compiler.HwConfig.draft_regs`; all 0 if
    not given)."""

    def __init__(self, hw_config: int, hw_limits: int, addr_width: int = RM.CSR_ADDR_BITS,
                 draft_regs: dict[str, int] | None = None):
        self.hw_config, self.hw_limits, self.addr_width = hw_config, hw_limits, addr_width
        self.draft_regs = dict(draft_regs or {"DRAFT_CONFIG": 0, "DRAFT_VOCAB": 0, "DRAFT_COUNTERS": 0})
        members = {
            "s_axil": In(axil_signature(addr_width)),
            "start": Out(1), "soft_reset": Out(1), "generate": Out(1), "irq_enable": Out(1), "irq": Out(1),
            "num_tokens": Out(32), "flags": Out(32), "finished": In(1),
        }
        for name in RM.ADDRESS_REGS + RM.GEN_ADDRESS_REGS:
            members["reg_" + name.lower()] = Out(64)
        for name in GEN_VALUE_REGS:
            members[name.lower()] = Out(layout(name) if RM.fields_of(name) else 32)
        for name, w in STATUS_INPUTS.items():
            members["in_" + name.lower()] = In(layout(name) if name == "STATUS" else w)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus = self.s_axil
        store: dict[str, Signal] = {}
        for r in RM.REGISTERS:
            if r.access == RM.Access.RW:
                store[r.name] = Signal(32, name="r_" + r.name.lower(), init=1 if r.name == "NUM_TOKENS" else 0)
        for name in RM.ADDRESS_REGS + RM.GEN_ADDRESS_REGS:
            m.d.comb += getattr(self, "reg_" + name.lower()).eq(store[name + "_LO"] | (store[name + "_HI"] << 32))
        for name in GEN_VALUE_REGS:
            m.d.comb += getattr(self, name.lower()).eq(store[name])
        m.d.comb += [self.num_tokens.eq(store["NUM_TOKENS"]), self.flags.eq(store["FLAGS"])]
        irq_en = Signal()
        pending = Signal()
        m.d.comb += [self.irq_enable.eq(irq_en), self.irq.eq(pending & irq_en)]
        status = Signal(layout("STATUS"))          # the core's STATUS with this block's IRQ_ENABLED
        m.d.comb += [status.eq(self.in_status), status.irq_enabled.eq(irq_en)]

        # ---- writes -------------------------------------------------------------------------------------------
        aw_ok, w_ok, b_pend = Signal(), Signal(), Signal()
        aw_addr = Signal(self.addr_width)
        w_data = Signal(32)
        m.d.comb += [bus.awready.eq(~aw_ok), bus.wready.eq(~w_ok), bus.bvalid.eq(b_pend), bus.bresp.eq(0)]
        with m.If(bus.awvalid & bus.awready):
            m.d.sync += [aw_ok.eq(1), aw_addr.eq(bus.awaddr)]
        with m.If(bus.wvalid & bus.wready):
            m.d.sync += [w_ok.eq(1), w_data.eq(bus.wdata)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += b_pend.eq(0)
        do_write = aw_ok & w_ok & ~b_pend
        start = Signal()
        soft = Signal()
        gen = Signal()
        m.d.comb += [self.start.eq(start), self.soft_reset.eq(soft), self.generate.eq(gen)]
        m.d.sync += [start.eq(0), soft.eq(0), gen.eq(0)]
        with m.If(self.finished):
            m.d.sync += pending.eq(1)
        with m.If(do_write):
            m.d.sync += [aw_ok.eq(0), w_ok.eq(0), b_pend.eq(1)]
            off = aw_addr[2:self.addr_width]
            with m.Switch(off):
                for r in RM.REGISTERS:
                    with m.Case(r.offset >> 2):
                        if r.access == RM.Access.RW:
                            m.d.sync += store[r.name].eq(w_data)
                        elif r.name == "CONTROL":
                            ctl = data.View(layout("CONTROL"), w_data)
                            m.d.sync += [start.eq(ctl.start), soft.eq(ctl.soft_reset), gen.eq(ctl.generate)]
                            with m.If(ctl.irq_enable):
                                m.d.sync += irq_en.eq(1)
                        elif r.name == "IRQ_STATUS":
                            with m.If(data.View(layout("IRQ_STATUS"), w_data).pending & ~self.finished):
                                m.d.sync += pending.eq(0)

        # ---- reads ----------------------------------------------------------------------------------------------
        r_pend = Signal()
        r_data = Signal(32)
        m.d.comb += [bus.arready.eq(~r_pend), bus.rvalid.eq(r_pend), bus.rdata.eq(r_data), bus.rresp.eq(0)]
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += r_pend.eq(0)
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += [r_pend.eq(1), r_data.eq(0)]
            with m.Switch(bus.araddr[2:self.addr_width]):
                for r in RM.REGISTERS:
                    with m.Case(r.offset >> 2):
                        m.d.sync += r_data.eq(self._read_value(r.name, store, status, pending))
        return m

    def _read_value(self, name: str, store, status, pending):
        consts = {"ID": RM.ID_MAGIC, "VERSION": RM.REGMAP_VERSION, "HW_CONFIG": self.hw_config,
                  "HW_LIMITS": self.hw_limits, **self.draft_regs}
        if name in consts:
            return consts[name]
        if name in store:
            return store[name]
        if name == "STATUS":
            return status
        if name == "IRQ_STATUS":
            return pending
        if name == "CONTROL":
            return 0
        base = name[:-3] if name.endswith(("_LO", "_HI")) else name
        value = getattr(self, "in_" + base.lower())
        if name.endswith("_HI"):
            return value[32:64]
        if name.endswith("_LO"):
            return value[0:32]
        return value

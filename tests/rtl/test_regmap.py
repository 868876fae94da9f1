"""The typed register map: field tables, encode / decode, the host accessor, and the CSR block built from them.

The CSR block runs under amaranth.sim with an AXI4-Lite master written here; the accessor is checked against
that block and against the emulated board (both real implementations of the register map)."""

from __future__ import annotations

import pytest
from amaranth.sim import Simulator

from mmfree import MmfreeError
from mmfree.rtl import regmap as RM
from mmfree.rtl.csr import CsrBlock, layout

FIELDED = [r for r in RM.REGISTERS if r.fields]


def test_every_register_has_a_typed_access_and_a_unique_offset():
    assert all(isinstance(r.access, RM.Access) for r in RM.REGISTERS)
    assert RM.Access.RW == "rw" and RM.REG["CONTROL"].access is RM.Access.WO
    offsets = [r.offset for r in RM.REGISTERS]
    assert len(set(offsets)) == len(offsets) and all(o % 4 == 0 for o in offsets)


@pytest.mark.parametrize("reg", FIELDED, ids=lambda r: r.name)
def test_fields_fit_and_do_not_overlap(reg):
    seen = 0
    for f in reg.fields:
        assert f.width > 0 and f.lo + f.width <= 32
        assert seen & f.mask == 0, f"{reg.name}.{f.name} overlaps"
        seen |= f.mask


def test_masks_are_the_documented_bits():
    """The contract in docs/accelerator.md: these bit positions are what hosts and bitstreams agree on."""
    assert (RM.CTRL_START, RM.CTRL_SOFT_RESET, RM.CTRL_IRQ_ENABLE, RM.CTRL_GENERATE) == (1, 2, 4, 8)
    assert (RM.STAT_BUSY, RM.STAT_DONE, RM.STAT_ERROR, RM.STAT_IRQ_ENABLED) == (1, 2, 4, 8)
    assert (RM.FLAG_WRITE_LOGITS, RM.FLAG_TREE) == (1, 2)
    assert RM.encode("GEN_CONTEXT", root=0x1234, prev=0x5678) == 0x5678_1234
    assert RM.encode("GEN_EOS", enable=1, token=7) == (1 << 31) | 7
    assert RM.encode("HW_CONFIG", bus_bytes=16, lanes=64, max_tokens=4, weight_ports=2) == 0x0204_4010
    assert RM.encode("DRAFT_CONFIG", sets_log2=10, ways=4, slots=3, bigram_slots=8) == 0x0803_040A
    assert RM.encode("VERSION", major=RM.REGMAP_VERSION_MAJOR, minor=RM.REGMAP_VERSION_MINOR) == RM.REGMAP_VERSION
    assert RM.decode("ERROR_CODE", 3 | (5 << 8)) == {"code": 3, "detail": 5}


@pytest.mark.parametrize("reg", FIELDED, ids=lambda r: r.name)
def test_encode_decode_round_trip(reg):
    values = {f.name: (0x5A5A5A5A >> f.lo) & ((1 << f.width) - 1) if f.values is None else int(max(f.values))
              for f in reg.fields}
    assert RM.decode(reg.name, RM.encode(reg.name, **values)) == values
    assert RM.encode(reg.name) == 0
    for f in reg.fields:                       # an enumerated field takes exactly its enum's values
        if f.values is not None:
            bad = next(v for v in range(1 << f.width) if v not in set(f.values))
            with pytest.raises(RM.RegisterFieldError, match=f"{reg.name}.{f.name} must be one of"):
                RM.encode(reg.name, **{f.name: bad})


def test_hw_and_draft_config_helpers_use_the_tables():
    v = RM.encode_hw_config(16, 64, 4, 2)
    assert RM.decode_hw_config(v) == {"bus_bytes": 16, "lanes": 64, "max_tokens": 4, "weight_ports": 2,
                                      "pipelined_units": 0}
    assert v == RM.encode_hw_config(16, 64, 4, 2, pipelined_units=False)      # the default leaves bit 28 clear
    assert RM.decode_hw_config(RM.encode_hw_config(16, 64, 4, 2, pipelined_units=True))["pipelined_units"] == 1
    assert RM.decode_hw_config(v & 0x00FF_FFFF)["weight_ports"] == 1        # 0 reads as 1 (older bitstreams)
    six = RM.decode_hw_config(RM.encode_hw_config(16, 128, 2, 6))            # every HP and HPC port of a ZynqMP
    assert six["weight_ports"] == 6 == RM.MAX_WEIGHT_PORTS and RM.weight_port(5) == "m_axi_w5"
    with pytest.raises(ValueError, match=r"weight port must be in 1..5, got 6"):
        RM.weight_port(6)
    assert RM.decode_draft_config(RM.encode_draft_config(10, 4, 3, 8), (7 << 16) | 2) == \
        {"sets_log2": 10, "ways": 4, "slots": 3, "bigram_slots": 8, "inc": 2, "cmax": 7}
    assert RM.decode_draft_config(0, 0) is None


@pytest.mark.parametrize("call, match", [
    (lambda: RM.encode("NOPE", x=1), "unknown register 'NOPE'"),
    (lambda: RM.encode("CONTROL", begin=1), "CONTROL has no field 'begin'"),
    (lambda: RM.encode("GEN_CONTEXT", root=1 << 16), r"GEN_CONTEXT.root must be in 0..65535"),
    (lambda: RM.encode("FLAGS", tree=-1), r"FLAGS.tree must be in 0..1"),
    (lambda: RM.decode("NOPE", 0), "unknown register"),
    (lambda: RM.encode_hw_config(0, 64, 4), "bus_bytes must be in 1..255"),
    (lambda: RM.encode_hw_config(16, 64, 4, 5), "weight_ports must be one of 1, 2, 4, 6, got 5"),
    (lambda: RM.encode_hw_config(16, 64, 4, 7), "weight_ports must be one of 1, 2, 4, 6, got 7"),
    (lambda: layout("NUM_TOKENS"), "NUM_TOKENS has no bit fields"),
])
def test_bad_names_and_values_raise_one_clear_error(call, match):
    with pytest.raises(RM.RegisterFieldError, match=match) as e:
        call()
    assert isinstance(e.value, MmfreeError) and isinstance(e.value, ValueError)


class _Bus:
    """A 32-bit register file by offset: the accessor's two bus functions over a plain dict."""

    def __init__(self):
        self.mem: dict[int, int] = {}

    def read32(self, off):
        return self.mem.get(off, 0)

    def write32(self, off, v):
        self.mem[off] = v


def test_registers_accessor():
    bus = _Bus()
    regs = RM.Registers(bus.read32, bus.write32)
    regs.write64("PROG_BASE", 0x1_2345_6780)
    assert bus.mem[RM.OFFSET["PROG_BASE_LO"]] == 0x2345_6780 and bus.mem[RM.OFFSET["PROG_BASE_HI"]] == 1
    assert regs.read64("PROG_BASE") == 0x1_2345_6780
    regs.write("CONTROL", start=1, irq_enable=1)
    assert bus.mem[RM.OFFSET["CONTROL"]] == RM.CTRL_START | RM.CTRL_IRQ_ENABLE
    regs.write("NUM_TOKENS", 3)
    assert regs.read("NUM_TOKENS") == 3
    regs.write("GEN_CONTEXT", root=5, prev=9)
    assert regs.fields("GEN_CONTEXT") == {"root": 5, "prev": 9}
    for call, match in [(lambda: regs.write("FLAGS"), "either a value or its fields"),
                        (lambda: regs.write("FLAGS", 1, tree=1), "either a value or its fields"),
                        (lambda: regs.write("NUM_TOKENS", 1 << 32), "32-bit register"),
                        (lambda: regs.write64("MEM_HI", -1), "64-bit register"),
                        (lambda: regs.read("MEM_HI"), "unknown register 'MEM_HI'"),
                        (lambda: regs.write("NUM_TOKENS", tokens=1), "NUM_TOKENS has no field 'tokens'")]:
        with pytest.raises(RM.RegisterFieldError, match=match):
            call()


def test_registers_accessor_on_the_emulated_board():
    from mmfree.rtl.compiler import HwConfig
    from mmfree.sim.emulator import EmulatedBoard

    board = EmulatedBoard(HwConfig())
    regs = RM.Registers(board.read32, board.write32)
    assert regs.read("ID") == RM.ID_MAGIC and regs.fields("VERSION")["major"] == RM.REGMAP_VERSION_MAJOR
    regs.write("NUM_TOKENS", 0)
    regs.write("CONTROL", start=1, irq_enable=1)                   # k = 0: the run stops with ERR_NUM_TOKENS
    assert regs.fields("STATUS") == {"busy": 0, "done": 0, "error": 1, "irq_enabled": 1}
    assert regs.fields("ERROR_CODE") == {"code": RM.ERR_NUM_TOKENS, "detail": 0}
    assert regs.fields("IRQ_STATUS") == {"pending": 1}
    regs.write("IRQ_STATUS", pending=1)
    assert regs.read("IRQ_STATUS") == 0


def _csr_bench(script):
    """Run ``script(ctx, regs)`` against a CsrBlock; ``regs`` is an async accessor over its AXI4-Lite port."""
    dut = CsrBlock(hw_config=RM.encode_hw_config(16, 64, 4), hw_limits=RM.encode("HW_LIMITS", width_units=64))
    bus = dut.s_axil

    class AsyncRegs:
        def __init__(self, ctx):
            self.ctx = ctx

        async def write(self, name, value=None, **fields):
            ctx = self.ctx
            value = RM.encode(name, **fields) if value is None else value
            ctx.set(bus.awaddr, RM.OFFSET[name])
            ctx.set(bus.wdata, value)
            ctx.set(bus.awvalid, 1)
            ctx.set(bus.wvalid, 1)
            ctx.set(bus.bready, 1)
            pulses = {}
            for _ in range(10):
                await ctx.tick()
                pulses = {k: pulses.get(k, 0) | ctx.get(getattr(dut, k)) for k in ("start", "soft_reset", "generate")}
                if not ctx.get(bus.awready):
                    ctx.set(bus.awvalid, 0)
                if not ctx.get(bus.wready):
                    ctx.set(bus.wvalid, 0)
                if ctx.get(bus.bvalid):
                    await ctx.tick()
                    pulses = {k: pulses[k] | ctx.get(getattr(dut, k)) for k in pulses}
                    ctx.set(bus.bready, 0)
                    return pulses
            raise AssertionError("no write response")

        async def read(self, name):
            ctx = self.ctx
            ctx.set(bus.araddr, RM.OFFSET[name])
            ctx.set(bus.arvalid, 1)
            ctx.set(bus.rready, 1)
            await ctx.tick()
            ctx.set(bus.arvalid, 0)
            value = ctx.get(bus.rdata)
            assert ctx.get(bus.rvalid)
            await ctx.tick()
            ctx.set(bus.rready, 0)
            return value

    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def bench(ctx):
        await script(ctx, dut, AsyncRegs(ctx))

    sim.add_testbench(bench)
    sim.run()


def test_csr_block_fields_through_the_layouts():
    seen = {}

    async def script(ctx, dut, regs):
        seen["id"] = await regs.read("ID")
        seen["hw"] = RM.decode_hw_config(await regs.read("HW_CONFIG"))
        seen["ctl"] = await regs.write("CONTROL", start=1)
        seen["irq_en_after_start"] = ctx.get(dut.irq_enable)
        seen["ctl2"] = await regs.write("CONTROL", generate=1, irq_enable=1)
        seen["ctl3"] = await regs.write("CONTROL", soft_reset=1)
        ctx.set(dut.in_status.busy, 1)
        seen["status"] = RM.decode("STATUS", await regs.read("STATUS"))
        await regs.write("GEN_CONTEXT", root=513, prev=77)
        await regs.write("GEN_EOS", enable=1, token=12)
        seen["ctx"] = (ctx.get(dut.gen_context.root), ctx.get(dut.gen_context.prev))
        seen["eos"] = (ctx.get(dut.gen_eos.enable), ctx.get(dut.gen_eos.token))
        seen["ctx_read"] = RM.decode("GEN_CONTEXT", await regs.read("GEN_CONTEXT"))
        ctx.set(dut.finished, 1)
        await ctx.tick()
        ctx.set(dut.finished, 0)
        seen["irq"] = (ctx.get(dut.irq), await regs.read("IRQ_STATUS"))
        await regs.write("IRQ_STATUS", pending=1)
        seen["irq_cleared"] = (ctx.get(dut.irq), await regs.read("IRQ_STATUS"))
        await regs.write("FLAGS", tree=1)
        seen["flags"] = ctx.get(dut.flags)
        await regs.write("PROG_BASE_LO", 0x40)
        await regs.write("PROG_BASE_HI", 2)
        seen["prog"] = ctx.get(dut.reg_prog_base)

    _csr_bench(script)
    assert seen["id"] == RM.ID_MAGIC
    assert seen["hw"] == {"bus_bytes": 16, "lanes": 64, "max_tokens": 4, "weight_ports": 1,
                          "pipelined_units": 0}
    assert seen["ctl"] == {"start": 1, "soft_reset": 0, "generate": 0} and not seen["irq_en_after_start"]
    assert seen["ctl2"] == {"start": 0, "soft_reset": 0, "generate": 1}
    assert seen["ctl3"] == {"start": 0, "soft_reset": 1, "generate": 0}
    assert seen["status"] == {"busy": 1, "done": 0, "error": 0, "irq_enabled": 1}    # IRQ_ENABLE is sticky
    assert seen["ctx"] == (513, 77) and seen["eos"] == (1, 12)
    assert seen["ctx_read"] == {"root": 513, "prev": 77}
    assert seen["irq"] == (1, 1) and seen["irq_cleared"] == (0, 0)
    assert seen["flags"] == RM.FLAG_TREE
    assert seen["prog"] == (2 << 32) | 0x40


@pytest.mark.parametrize("reg", FIELDED, ids=lambda r: r.name)
def test_layout_is_the_field_table(reg):
    lay = layout(reg.name)
    assert lay.size == 32
    for f in reg.fields:
        assert lay[f.name].offset == f.lo and lay[f.name].width == f.width

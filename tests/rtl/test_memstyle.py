"""rtl/memstyle.py: the URAM rule, the ram_style attribute in the emitted Verilog, and Yosys honouring it."""

from __future__ import annotations

import re

import pytest
from amaranth import Module
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree import MmfreeError
from mmfree.rtl import memstyle as MS


def test_rule():
    big = MS.Mem("fifo", 2047, 128)                       # 8 RAMB36 or 2 URAM288: each URAM saves 4
    assert MS.ram_style(big, "xcup") == "ultra" and MS.ram_style(big, "xc7") is None
    assert MS.ram_style(MS.Mem("bigram", 32000, 128), "xcup") == "ultra"
    assert MS.ram_style(MS.Mem("codes", 192, 640), "xcup") is None          # 9 RAMB36 = 9 URAM: no saving
    assert MS.ram_style(MS.Mem("two_reads", 4096, 32, sync_reads=2), "xcup") is None   # three ports
    assert MS.ram_style(MS.Mem("rom", 4096, 31, sync_reads=2, writes=0, zero_init=False), "xcup") is None
    assert MS.ram_style(MS.Mem("lut", 4096, 32, sync_reads=0, comb_reads=1), "xcup") is None
    assert MS.ram_style(MS.Mem("init", 4096, 32, zero_init=False), "xcup") is None
    placed = MS.place([big, MS.Mem("two_reads", 4096, 32, sync_reads=2), MS.Mem("tiny", 16, 8)], "xcup")
    assert (placed["uram"], placed["bram36"]) == (2, 8)     # the 3-port memory: 2 copies x 4 RAMB36
    assert [m["kind"] for m in placed["memories"]] == ["uram", "bram", "lutram"]
    assert MS.place([big], "xc7")["bram36"] == 8 and MS.place([big], "xc7")["uram"] == 0
    assert MS.bram36_for(4096 * 4, 32) == 16 and MS.uram_for(4097, 73) == 4


class _Ram(wiring.Component):
    """One 1-write 1-read memory of ``depth`` x ``width`` bits (zero-initialised)."""

    def __init__(self, depth: int, width: int):
        self.depth, self.width = depth, width
        super().__init__({"wa": In(range(depth)), "ra": In(range(depth)), "d": In(width), "we": In(1),
                          "q": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=self.width, depth=self.depth, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        m.d.comb += [wp.addr.eq(self.wa), wp.data.eq(self.d), wp.en.eq(self.we), rp.addr.eq(self.ra),
                     self.q.eq(rp.data)]
        return m


def _convert(family: str, depth=4096, width=64) -> tuple[str, MS.StylePlatform]:
    plat = MS.StylePlatform(family)
    return verilog.convert(_Ram(depth, width), name="ram", platform=plat, emit_src=False), plat


def test_attribute_in_the_verilog():
    text, plat = _convert("xcup")
    assert re.search(r'\(\* ram_style = "ultra" \*\)\s*reg \[63:0\] \w+ \[4095:0\];', text)
    assert [(m.depth, m.width, m.sync_reads, m.writes, m.zero_init) for m in plat.memories] == [(4096, 64, 1, 1, True)]
    assert "ram_style" not in _convert("xc7")[0] and "ram_style" not in _convert("xcup", 64, 8)[0]


@pytest.mark.slow
def test_yosys_places_the_marked_memory_in_uram(tmp_path):
    """Yosys synth_xilinx -family xcup maps the marked memory to one URAM288, the unmarked one to block RAM
    (minutes on a loaded machine)."""
    from mmfree.rtl.estimate import estimate_verilog, find_yosys

    try:
        yosys = find_yosys()
    except MmfreeError:
        pytest.skip("no Yosys with synth_xilinx here")
    v = tmp_path / "ram.v"
    v.write_text(_convert("xcup")[0])
    counts = estimate_verilog(v, "ram", "xcup", yosys, timeout=600)
    assert (counts["URAM"], counts["BRAM"]) == (1, 0)
    v.write_text(_convert("xc7")[0])
    assert estimate_verilog(v, "ram", "xcup", yosys, timeout=600)["URAM"] == 0      # no attribute: block RAM


def test_draft_engine_bigram_memory_is_marked():
    """The draft engine's bigram memory (rtl/draft.py) gets the attribute on UltraScale+ without any edit there."""
    from mmfree.rtl.draft import DraftEngine

    plat = MS.StylePlatform("xcup")
    text = verilog.convert(DraftEngine(vocab_size=4096), name="draft", platform=plat, emit_src=False)
    big = [m for m in plat.memories if m.depth == 4096]
    assert len(big) == 1 and big[0].width == 128 and MS.ram_style(big[0], "xcup") == "ultra"
    assert re.search(r'\(\* ram_style = "ultra" \*\)\s*reg \[127:0\] \w+ \[4095:0\];', text)


def test_parse_stat_counts_uram():
    from mmfree.rtl.estimate import parse_stat

    c = parse_stat("   Number of cells:  10\n     URAM288                         3\n     RAMB36E2   2\n     LUT6 5\n")
    assert (c["URAM"], c["BRAM"], c["LUT"]) == (3, 2, 5)


def test_zero_init_of_plain_and_struct_memories():
    """Unset elements of a struct-shaped memory (None) count as zero; any set bit makes the init non-zero."""
    from amaranth.lib import data
    from amaranth.lib.memory import Memory

    lay = data.StructLayout({"a": 4, "b": 8})
    assert MS._init_is_zero(Memory(shape=lay, depth=4, init=[]))
    assert not MS._init_is_zero(Memory(shape=lay, depth=4, init=[{"a": 0, "b": 3}]))
    assert MS._init_is_zero(Memory(shape=8, depth=4, init=[0, 0]))
    assert not MS._init_is_zero(Memory(shape=8, depth=4, init=[0, 5]))


def test_uram_capacity_plan():
    """Within a URAM capacity the memories that save the most RAMB36 per URAM288 go first and the rest stay in block
    RAM; the plan counts shapes, so any order of the same memories places the same; with room for all, no plan."""
    quad = MS.Mem("x", 4096, 64)                        # 1 URAM288 or 8 RAMB36
    bigram = MS.Mem("bigram", 32000, 128)               # 16 URAM288 or 120 RAMB36 (7.5 per URAM)
    mems = [bigram] + [quad] * 10
    assert MS.uram_plan(mems, "xcup", None) is None and MS.uram_plan(mems, "xcup", 26) is None
    plan = MS.uram_plan(mems, "xcup", 20)
    assert plan == {(4096, 64, 1, 1): 10}               # the bigram (16) no longer fits after the ten
    for order in (mems, mems[::-1]):
        placed = MS.place(order, "xcup", 20)
        assert (placed["uram"], placed["bram36"]) == (10, 120)
    assert (MS.place(mems, "xcup", 0)["uram"], MS.place(mems, "xcup", 0)["bram36"]) == (0, 120 + 80)
    assert MS.place(mems, "xcup")["uram"] == 26


def test_style_platform_marks_only_the_plan():
    """With a plan the platform marks as many memories of a shape as the plan allows; the others keep Vivado's
    default (block RAM), and every memory is still recorded."""
    plan = MS.uram_plan([MS.Mem("a", 4096, 64)] * 2, "xcup", 1)
    plat = MS.StylePlatform("xcup", plan)

    class Two(wiring.Component):
        def __init__(self):
            super().__init__({"q": Out(64)})

        def elaborate(self, platform):
            m = Module()
            m.submodules.a, m.submodules.b = _Ram(4096, 64), _Ram(4096, 64)
            m.d.comb += self.q.eq(m.submodules.a.q ^ m.submodules.b.q)
            return m

    text = verilog.convert(Two(), name="two", platform=plat, emit_src=False)
    assert text.count('(* ram_style = "ultra" *)') == 1 and len(plat.memories) == 2

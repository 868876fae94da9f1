"""Where each on-chip memory of a build goes: URAM, block RAM or LUT RAM (one rule for the build and the model).

The build marks the memories the rule sends to UltraRAM with the Verilog attribute ``(* ram_style = "ultra" *)``
(an Amaranth memory attribute, set while the design elaborates through :class:`StylePlatform`, the hook
``amaranth.lib.memory.Memory.elaborate`` offers a platform); Vivado and Yosys ``synth_xilinx -family xcup`` place
those in URAM288 (checked for Yosys by ``tests/rtl/test_memstyle.py``). The resource model counts the same
placement (:func:`place`), so the modeled fit and the build agree.

The rule (:func:`ram_style`): on UltraScale+ (``family == "xcup"``) a memory goes to URAM when

* every read port is synchronous (a URAM288 has registered reads only);
* it has at most two ports, reads and writes together (a URAM288 has two; more would need copies, which we
  leave to block RAM, where Vivado replicates for extra read ports);
* its initial contents are all zero (a URAM288 cannot be initialised; it powers up zero);
* each URAM288 it takes replaces at least :data:`URAM_MIN_SAVING` RAMB36 (a URAM is 288 Kb, eight RAMB36;
  four or more means at least half of it replaces block RAM the memory would otherwise take).

With a URAM capacity (the part's URAM288 count) the rule also keeps within it (:func:`uram_plan`): when the
memories it admits need more URAM288 than the part has, those that save the most RAMB36 per URAM288 go first
(then the larger, then the deeper), while they fit; the rest stay in block RAM. The plan names how many memories
of each shape go to URAM, so the build (which marks memories as the design elaborates them) and the model (which
lists them) place the same.

Everything else keeps Vivado's default (``ram_style`` unset): memories with a combinational read port, and
those of at most :data:`LUTRAM_MAX_BITS` bits, are counted as LUT RAM; the rest as block RAM, one copy per
read port beyond what a true dual-port RAMB36 serves (:func:`bram_copies`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

#: RAMB36 aspect ratios (depth, width) of the 7-series and UltraScale+ block RAM.
BRAM_SHAPES = ((32768, 1), (16384, 2), (8192, 4), (4096, 9), (2048, 18), (1024, 36), (512, 72))
#: URAM288 geometry: 4096 words of 72 bits.
URAM_DEPTH, URAM_WIDTH = 4096, 72
#: a memory goes to URAM only if each URAM288 it takes saves at least this many RAMB36
URAM_MIN_SAVING = 4
#: memories of at most this many bits (or with a combinational read) are counted as LUT RAM (assumption: Vivado's
#: default for shallow memories; one RAMB18 is 18 Kb)
LUTRAM_MAX_BITS = 2048
#: families whose parts have URAM288
URAM_FAMILIES = ("xcup",)


def bram36_for(depth: int, width: int) -> int:
    """RAMB36 blocks for one copy of a ``depth`` x ``width``-bit memory (best aspect ratio)."""
    return min(math.ceil(depth / dd) * math.ceil(width / ww) for dd, ww in BRAM_SHAPES)


def uram_for(depth: int, width: int) -> int:
    """URAM288 blocks (4096 x 72) for one ``depth`` x ``width``-bit memory."""
    return math.ceil(depth / URAM_DEPTH) * math.ceil(width / URAM_WIDTH)


def bram_copies(reads: int, writes: int) -> int:
    """Copies of a memory block RAM needs: a RAMB36 has two ports, so a memory written through one port keeps one
    read port per copy; a ROM (no write port) serves two reads per copy."""
    if writes == 0:
        return max(1, math.ceil(reads / 2))
    return max(1, reads)


@dataclass(frozen=True)
class Mem:
    """One memory of a design: ``name`` (where it was made), ``depth`` words of ``width`` bits, ``sync_reads`` and
    ``comb_reads`` (read ports by kind), ``writes`` (write ports), ``zero_init`` (all initial words zero)."""

    name: str
    depth: int
    width: int
    sync_reads: int = 1
    comb_reads: int = 0
    writes: int = 1
    zero_init: bool = True

    @property
    def bits(self) -> int:
        return self.depth * self.width


def ram_style(mem: Mem, family: str) -> str | None:
    """``"ultra"`` when the rule of this module sends ``mem`` to URAM on ``family``, else None (Vivado's default)."""
    if family not in URAM_FAMILIES or mem.comb_reads or not mem.zero_init:
        return None
    if mem.sync_reads + mem.writes > 2 or mem.sync_reads == 0:
        return None
    if bram36_for(mem.depth, mem.width) < URAM_MIN_SAVING * uram_for(mem.depth, mem.width):
        return None
    return "ultra"


def _shape(mem: Mem) -> tuple:
    return (mem.depth, mem.width, mem.sync_reads, mem.writes)


def _saving(mem: Mem) -> float:
    """RAMB36 the memory would take in block RAM, per URAM288 it takes instead."""
    return bram36_for(mem.depth, mem.width) * bram_copies(mem.sync_reads, mem.writes) / uram_for(mem.depth, mem.width)


def uram_plan(mems, family: str, capacity: int | None = None) -> Counter | None:
    """How many memories of each shape (depth, width, sync reads, writes) go to URAM: None (every one
    :func:`ram_style` admits) when ``capacity`` is None or they all fit in it; else the admitted memories in the
    order "most RAMB36 saved per URAM288, then most URAM288, then deepest", each taken while it fits in
    ``capacity`` URAM288 (the rest stay in block RAM)."""
    ultra = [m for m in mems if ram_style(m, family)]
    if capacity is None or sum(uram_for(m.depth, m.width) for m in ultra) <= capacity:
        return None
    plan: Counter = Counter()
    left = capacity
    for m in sorted(ultra, key=lambda m: (-_saving(m), -uram_for(m.depth, m.width), -m.depth, -m.width)):
        if uram_for(m.depth, m.width) <= left:
            plan[_shape(m)] += 1
            left -= uram_for(m.depth, m.width)
    return plan


def _take(plan: Counter | None, mem: Mem) -> bool:
    """Whether the next memory of ``mem``'s shape goes to URAM under ``plan`` (None: yes), using up one place."""
    if plan is None:
        return True
    if plan[_shape(mem)] > 0:
        plan[_shape(mem)] -= 1
        return True
    return False


def _not_uram(mem: Mem) -> str:
    if mem.comb_reads or mem.bits <= LUTRAM_MAX_BITS:
        return "lutram"
    return "bram"


def place(mems, family: str, uram_capacity: int | None = None) -> dict:
    """URAM288 and RAMB36 blocks of ``mems`` (:class:`Mem`) under the rule, within ``uram_capacity`` URAM288 when
    given (:func:`uram_plan`): ``{"uram", "bram36", "lutram_bits", "memories": [{name, depth, width, kind, uram,
    bram36}...]}``."""
    mems = list(mems)
    plan = uram_plan(mems, family, uram_capacity)
    out = {"uram": 0, "bram36": 0, "lutram_bits": 0, "memories": []}
    for m in mems:
        k = "uram" if ram_style(m, family) and _take(plan, m) else _not_uram(m)
        u = uram_for(m.depth, m.width) if k == "uram" else 0
        b = bram36_for(m.depth, m.width) * bram_copies(m.sync_reads, m.writes) if k == "bram" else 0
        out["uram"] += u
        out["bram36"] += b
        out["lutram_bits"] += m.bits if k == "lutram" else 0
        out["memories"].append({"name": m.name, "depth": m.depth, "width": m.width, "kind": k, "uram": u, "bram36": b})
    return out


def _init_is_zero(memory) -> bool:
    """Whether every initial element of an ``amaranth.lib.memory.Memory`` is zero (plain integers, or the
    elements of a shape-castable ``shape`` such as a ``data.StructLayout``, whose unset elements are None)."""
    from amaranth.hdl import Const, ShapeCastable

    shape = memory.shape
    for v in memory.init:
        if isinstance(shape, ShapeCastable):
            if Const.cast(shape.const(v)).value != 0:
                return False
        elif v is not None and int(v) != 0:
            return False
    return True


class StylePlatform:
    """An Amaranth platform stand-in for ``verilog.convert(..., platform=StylePlatform(family))``: every
    ``amaranth.lib.memory.Memory`` of the design passes through :meth:`get_memory` (the hook Amaranth's
    ``Memory.elaborate`` calls), which sets ``ram_style`` per :func:`ram_style` (and, with a ``plan`` from
    :func:`uram_plan`, only while the plan has a URAM place for the memory's shape) and records the memory in
    ``memories`` (:class:`Mem`). It offers nothing else a platform would."""

    def __init__(self, family: str, plan: Counter | None = None):
        self.family = family
        self.plan = Counter(plan) if plan is not None else None
        self.memories: list[Mem] = []

    def get_memory(self, memory):
        from amaranth.hdl import Shape
        from amaranth.lib.memory import Memory

        zero = _init_is_zero(memory)
        sync = sum(1 for p in memory.read_ports if p.domain != "comb")
        where = memory.src_loc[0].rsplit("/", 1)[-1] + f":{memory.src_loc[1]}" if memory.src_loc else "?"
        mem = Mem(where, memory.depth, Shape.cast(memory.shape).width, sync_reads=sync,
                  comb_reads=len(memory.read_ports) - sync, writes=len(memory.write_ports), zero_init=zero)
        self.memories.append(mem)
        style = ram_style(mem, self.family)
        if style and "ram_style" not in memory.attrs and _take(self.plan, mem):
            memory.attrs["ram_style"] = style
        return Memory.elaborate(memory, None)

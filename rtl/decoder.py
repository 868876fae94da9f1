"""The instruction decoder, generated from the ISA table (:data:`mmfree.rtl.isa.OPS`, :data:`mmfree.rtl.isa.LEGAL`).

* :func:`op_layout` / :func:`instr_layout`: every opcode's 128-bit instruction as a ``data.StructLayout`` of its
  operands (at the word and bit :data:`isa.OPS` gives them, signed where marked), and the instruction register
  as a ``data.UnionLayout`` of all of them plus ``opcode`` and ``raw``: ``ir.matvec.rows``, ``ir.load.base``.
* :class:`Decoder`: the combinational decode of one instruction register, step by step as
  :meth:`mmfree.sim.emulator.Emulator.check` does: known opcode, operand legality (:data:`isa.LEGAL`, the same
  table the emulator evaluates on Python ints), widths, address and alignment, the DDR span, the engine and the
  scoreboard read/write sets (:func:`resource_table`, from :func:`isa.resources`).
"""

from __future__ import annotations

import itertools
from functools import cache, reduce

from amaranth import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from mmfree.pymodel import numerics as N
from mmfree.rtl import isa as I
from mmfree.rtl import regmap as RM
from mmfree.rtl.pipeline import ceil_div_table, div_const

#: Engines the sequencer dispatches to, in ``done_pulse`` / ``dispatch.engine`` order.
ENGINES = ("load", "store", "vector", "matvec")
ENGINE_ID = {name: i for i, name in enumerate(ENGINES)}
#: Internal width of DDR addresses (base register + offset, before the window check).
ADDR_INTERNAL = 64
#: Operands that are sizes or values, never a choice between resources (left out of the read/write-set table).
_VALUE_OPERANDS = ("offset", "count", "rows", "tstride", "c_m", "c_e", "vocab", "stride16", "act_frac")


@cache
def op_layout(op: str) -> data.StructLayout:
    """The 128-bit instruction ``op`` as a layout: ``opcode`` (bits 7:0) and its operands from :data:`isa.OPS`,
    gaps as ``_pad<bit>`` members."""
    fields = sorted(((32 * f.word + f.lsb, f) for f in I.OPS[op][1]), key=lambda t: t[0])
    members, at = {"opcode": unsigned(8)}, 8
    for lo, f in fields:
        if lo > at:
            members[f"_pad{at}"] = unsigned(lo - at)
        members[f.name] = signed(f.width) if f.signed else unsigned(f.width)
        at = lo + f.width
    if at < 8 * I.INSTR_BYTES:
        members[f"_pad{at}"] = unsigned(8 * I.INSTR_BYTES - at)
    return data.StructLayout(members)


@cache
def instr_layout() -> data.UnionLayout:
    """The instruction register: ``raw`` (128 bits), ``opcode``, and one view per opcode (lower-case name)."""
    return data.UnionLayout({"raw": unsigned(8 * I.INSTR_BYTES), "opcode": unsigned(8),
                             **{op.lower(): op_layout(op) for op in I.OPS}})


def field(ir, name: str, op: str):
    """Operand ``name`` of instruction ``op`` in a 128-bit value (a view of :func:`instr_layout` or raw bits)."""
    view = ir if isinstance(ir, data.View) else data.View(instr_layout(), ir)
    return getattr(getattr(view, op.lower()), name)


def ge_tree(x, y):
    """``x >= y`` of two unsigned values as a balanced tree of (greater, equal) pairs: ``log2(width)`` levels of
    two-input merges instead of a ripple (the decoder's one operand-against-operand comparison, EMBED's stride
    against its count, sits in front of the registered checks)."""
    x, y = Value.cast(x), Value.cast(y)
    assert not (x.shape().signed or y.shape().signed), "ge_tree compares unsigned values"
    n = max(len(x), len(y))
    x, y = Cat(x, Const(0, n - len(x))), Cat(y, Const(0, n - len(y)))
    pairs = [(x[i] & ~y[i], ~(x[i] ^ y[i])) for i in range(n)]     # (gt, eq) per bit, lowest first
    while len(pairs) > 1:
        nxt = []
        for k in range(0, len(pairs) - 1, 2):
            (gl, el), (gh, eh) = pairs[k], pairs[k + 1]
            nxt.append((gh | (eh & gl), eh & el))
        pairs = nxt + ([pairs[-1]] if len(pairs) % 2 else [])
    gt, eq = pairs[0]
    return gt | eq


class _Operand:
    """One operand for :data:`isa.LEGAL`: its value, shifted by constants, and ``>=`` / ``<=`` against another
    operand as :func:`ge_tree`; anything else is the Amaranth value's (comparisons with constants stay as
    they are)."""

    def __init__(self, value):
        self.value = Value.cast(value)

    def __lshift__(self, n):
        return _Operand(self.value << n)

    def __ge__(self, other):
        return ge_tree(self.value, other.value) if isinstance(other, _Operand) else self.value >= other

    def __le__(self, other):
        return ge_tree(other.value, self.value) if isinstance(other, _Operand) else self.value <= other

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.value, name)


def _plain(v):
    return v.value if isinstance(v, _Operand) else v


for _op in ("__lt__", "__gt__", "__eq__", "__ne__", "__and__", "__rand__", "__or__", "__ror__", "__invert__",
            "__rshift__", "__add__", "__sub__"):
    setattr(_Operand, _op, (lambda name: lambda self, *o: getattr(self.value, name)(*map(_plain, o)))(_op))
_Operand.__hash__ = None


class _HwOperands:
    """The operands of one opcode's view as attributes (:class:`_Operand`), for :data:`isa.LEGAL` on Amaranth
    values."""

    def __init__(self, view):
        self._view = view

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        v = getattr(self._view, name)
        return _Operand(v) if not v.shape().signed else v

    @staticmethod
    def select(cond, if_true, if_false):
        return Mux(_plain(cond), _plain(if_true), _plain(if_false))


def resource_table():
    """For every opcode, the operand fields its read/write sets depend on and the sets for each of their
    values: ``{op: (fields, {values: (read_mask, write_mask)})}`` computed with :func:`isa.resources`."""
    table = {}
    for op, (_, fields) in I.OPS.items():
        ranges = {f.name: range(min(1 << f.width, 8)) for f in fields if f.name not in _VALUE_OPERANDS}
        relevant = []
        for name, r in ranges.items():
            base = {n: 0 for n in ranges}
            outs = set()
            for v in r:
                try:
                    outs.add(tuple(map(frozenset, I.resources(I.Instr(op, dict(base, **{name: v}))))))
                except KeyError:
                    outs.add(None)
            if len(outs) > 1:
                relevant.append(name)
        cases = {}
        for values in itertools.product(*[ranges[n] for n in relevant]):
            try:
                rd, wr = I.resources(I.Instr(op, dict(zip(relevant, values))))
            except KeyError:
                continue
            cases[values] = (sum(1 << b for b in rd), sum(1 << b for b in wr))
        table[op] = (relevant, cases)
    return table


def _above(x, w: int):
    """``x > w`` for an unsigned ``x`` and a constant ``w``: for a power of two, bit logic only (any bit above
    ``w``'s, or ``w``'s bit and any below it), no carry chain; otherwise the comparison."""
    lg = w.bit_length() - 1
    if w < 1 or w & (w - 1) or len(x) <= lg:
        return x > w
    above = x[lg] & x[:lg].any()
    return above if len(x) == lg + 1 else x[lg + 1:].any() | above


def _ops_with(name: str) -> list[str]:
    return [op for op, (_, fields) in I.OPS.items() if any(f.name == name for f in fields)]


class Decoder(wiring.Component):
    """Combinational decode and checks of the instruction register ``ir`` (see the module docstring).

    Inputs: ``ir``, the base registers ``bases`` (:data:`regmap.ADDRESS_REGS` order), this run's ``k`` and
    ``write_logits``. Outputs, valid for every opcode: ``known``, ``legal``, ``too_wide``, ``has_addr``,
    ``misaligned``, the DDR operand ``addr`` / ``base`` / ``span`` (bytes), ``bpr`` (bus beats per weight row),
    ``count`` / ``rows``, ``skip_store`` (a STORE of logits while FLAGS.WRITE_LOGITS is clear), the target
    ``engine`` (``to_engine`` = 0: the sequencer runs it) and the scoreboard ``rmask`` / ``wmask``."""

    def __init__(self, max_width: int, max_tokens: int, bus_bytes: int):
        self.max_width, self.bus_bytes = max_width, bus_bytes
        super().__init__({
            "ir": In(instr_layout()), "bases": In(data.ArrayLayout(unsigned(64), len(RM.ADDRESS_REGS))),
            "k": In(range(max_tokens + 1)), "write_logits": In(1),
            "known": Out(1), "legal": Out(1), "too_wide": Out(1), "has_addr": Out(1), "misaligned": Out(1),
            "skip_store": Out(1), "addr": Out(ADDR_INTERNAL + 1), "base": Out(8), "span": Out(66), "bpr": Out(16),
            "count": Out(32), "rows": Out(32),
            "engine": Out(2), "to_engine": Out(1), "rmask": Out(I.N_RESOURCES), "wmask": Out(I.N_RESOURCES),
        })

    def elaborate(self, platform):
        m = Module()
        ir, op = self.ir, self.ir.opcode
        with m.Switch(op):
            for name in I.OPS:
                with m.Case(I.OPCODE[name]):
                    m.d.comb += self.known.eq(1)
                    m.d.comb += self.legal.eq(I.LEGAL[name](_HwOperands(getattr(ir, name.lower()))))
                    if I.engine_of(name) in ENGINE_ID:
                        m.d.comb += [self.engine.eq(ENGINE_ID[I.engine_of(name)]), self.to_engine.eq(1)]
        for operand in ("count", "rows", "base"):
            with m.Switch(op):
                for name in _ops_with(operand):
                    with m.Case(I.OPCODE[name]):
                        m.d.comb += getattr(self, operand).eq(field(ir, operand, name))
        self._resources(m)
        self._address(m)
        return m

    def _resources(self, m):
        """The scoreboard's read/write sets: a case per opcode and per value of the operands they depend on."""
        ir = self.ir
        with m.Switch(ir.opcode):
            for name, (relevant, cases) in resource_table().items():
                with m.Case(I.OPCODE[name]):
                    if not relevant:
                        r, w = cases[()]
                        m.d.comb += [self.rmask.eq(r), self.wmask.eq(w)]
                        continue
                    with m.Switch(Cat(*[field(ir, n, name)[:3] for n in relevant])):
                        for values, (r, w) in cases.items():
                            with m.Case(reduce(lambda acc, iv: acc | iv[1] << (3 * iv[0]), enumerate(values), 0)):
                                m.d.comb += [self.rmask.eq(r), self.wmask.eq(w)]

    def _address(self, m):
        """Widths (step 2), the DDR address and its alignment (step 3), the span (step 4)."""
        ir, op, W = self.ir, self.ir.opcode, self.max_width
        lg_bb = self.bus_bytes.bit_length() - 1
        is_ = {name: op == I.OPCODE[name] for name in I.OPS}
        is_mv = is_["MATVEC"] | is_["PREFETCH"]
        count, rows = self.count, self.rows
        m.d.comb += self.has_addr.eq(is_["LOAD"] | is_["STORE"] | is_["EMBED"] | is_mv)
        with m.Switch(op):                          # each opcode's own fields against W, then the opcode picks
            for name in _ops_with("count"):
                with m.Case(I.OPCODE[name]):
                    wide = _above(field(ir, "count", name), W)
                    if name in ("MATVEC", "PREFETCH"):
                        wide = wide | _above(field(ir, "rows", name), W)
                    m.d.comb += self.too_wide.eq(wide)
        offset = ir.load.offset                     # every DDR operand's offset is word 1
        assert all((op_layout(o)["offset"].offset, op_layout(o)["offset"].width) == (32, 32) for o in _ops_with("offset"))
        addr = self.addr
        m.d.comb += addr.eq(Array(self.bases)[self.base[:3]] + offset)
        row_align = (N.ROW_ALIGN_BYTES - 1).bit_length()
        m.d.comb += [self.misaligned.eq(Mux(is_mv, addr[:row_align] != 0, addr[:2] != 0)
                                        | (is_["STORE"] & (ir.store.tstride[:2] != 0))),
                     self.skip_store.eq(is_["STORE"] & ir.store.flags[0] & ~self.write_logits)]
        # span = mul_a * mul_b + mul_c
        tpb = N.TRITS_PER_BYTE
        packed = div_const(count[:16] + (tpb - 1), tpb)                # ceil(count / 5): a row's packed bytes
        row_bytes = ((packed + (N.ROW_ALIGN_BYTES - 1)) >> row_align) << row_align
        mul_a, mul_b, mul_c = Signal(32), Signal(32), Signal(34)
        with m.Switch(op):
            with m.Case(I.OPCODE["LOAD"]):
                m.d.comb += [mul_a.eq(count), mul_b.eq(ir.load.fields << 2), mul_c.eq(0)]
            with m.Case(I.OPCODE["STORE"]):
                m.d.comb += [mul_a.eq(self.k - 1), mul_b.eq(ir.store.tstride), mul_c.eq(count << 2)]
            with m.Case(I.OPCODE["EMBED"]):
                m.d.comb += [mul_a.eq(ir.embed.vocab), mul_b.eq(ir.embed.stride16 << 4), mul_c.eq(0)]
            with m.Case(I.OPCODE["MATVEC"], I.OPCODE["PREFETCH"]):
                m.d.comb += [mul_a.eq(rows), mul_b.eq(row_bytes), mul_c.eq(0)]
        m.d.comb += [self.span.eq(mul_a * mul_b + mul_c), self.bpr.eq(row_bytes >> lg_bb)]


class WindowCheck(wiring.Component):
    """The DDR operand of one instruction and its window check, pipelined over the sequencer's FETCH, DECODE
    and RANGE cycles (the same numbers as the combinational :class:`Decoder` ``addr`` / ``span`` / ``bpr``,
    with no path longer than one multiply or two carry chains).

    Inputs: ``w`` (the instruction being fetched, :func:`instr_layout`), ``load`` (the instruction register takes
    ``w`` this cycle), the base registers ``bases`` and this run's ``k`` (both steady during a run). Outputs:
    ``addr`` and ``bpr`` (MATVEC / PREFETCH: bus beats per weight row) from the cycle after ``load`` (DECODE),
    ``in_window`` (``MEM_LO <= addr`` and ``addr + span <= MEM_HI``) from two cycles after it (RANGE), both until
    the next ``load``. ``span`` is the operand's bytes as :class:`Decoder` computes them, valid with
    ``in_window`` (for tests; nothing in the sequencer reads it). Exact while ``count`` / ``rows`` are at most
    ``max_width`` (the DECODE width check fails any other instruction first) and ``max_width < 2**16``.
    ``ceil(count / 80)`` is a constant table over the bits of ``count`` up to ``max_width``
    (:func:`~mmfree.rtl.pipeline.ceil_div_table`, logic only: no multiplier, no carry chain).

    Stages: FETCH (from ``w``): ``addr = base + offset``, ``hi - c`` (``c``: STORE's ``4 * count``), the
    multiply's operands ``a`` (32 bits) x ``b`` (at most 17 bits) x 16 or not (``ceil(count / 80)`` for
    MATVEC / PREFETCH) and ``bpr``; DECODE: the two 17 x 17 partial products of ``a * b``, ``~L`` (``L``:
    ``lim = hi - c - addr``, divided by 16 under the x16 flag, rounded down, clamped to ``[-1, 2**50]``),
    ``addr >= lo``; RANGE: ``pp0 + (pp1 << 17) + ~L < 0``, carry-saved into one carry chain (:meth:`_fits`)."""

    def __init__(self, max_tokens: int, bus_bytes: int, max_width: int):
        self.bus_bytes, self.max_width = bus_bytes, max_width
        super().__init__({
            "w": In(instr_layout()), "load": In(1),
            "bases": In(data.ArrayLayout(unsigned(64), len(RM.ADDRESS_REGS))), "k": In(range(max_tokens + 1)),
            "addr": Out(ADDR_INTERNAL + 1), "bpr": Out(16), "in_window": Out(1), "span": Out(66),
        })

    def elaborate(self, platform):
        m = Module()
        w, opc = self.w, I.OPCODE
        is_ = {name: w.opcode == opc[name] for name in ("LOAD", "STORE", "EMBED", "MATVEC", "PREFETCH")}
        is_mv = is_["MATVEC"] | is_["PREFETCH"]
        lg_bb = self.bus_bytes.bit_length() - 1
        lg_align = (N.ROW_ALIGN_BYTES - 1).bit_length()
        d = N.TRITS_PER_BYTE * N.ROW_ALIGN_BYTES
        rows80 = ceil_div_table(w.matvec.count[:16], d, self.max_width)    # ceil(count / 80): row_bytes / 16
        hi, lo = self.bases[I.BASE["MEM_HI"]], self.bases[I.BASE["MEM_LO"]]
        # stage 1 (registered when the instruction register loads)
        assert lg_align == 4, "EMBED's stride and a packed row's alignment are both 16 bytes: one x16 flag"
        addr, a, b, x16 = Signal(ADDR_INTERNAL + 1), Signal(32), Signal(17), Signal()
        hic, bpr = Signal(signed(67)), Signal(16)
        c = Mux(is_["STORE"], w.store.count << 2, 0)
        with m.If(self.load):
            m.d.sync += [addr.eq(Array(self.bases)[w.load.base[:3]] + w.load.offset), hic.eq(hi - c),
                         bpr.eq((rows80 << lg_align) >> lg_bb)]
            with m.If(is_["LOAD"]):
                m.d.sync += [a.eq(w.load.count), b.eq(w.load.fields << 2), x16.eq(0)]
            with m.Elif(is_["STORE"]):
                m.d.sync += [a.eq(w.store.tstride), b.eq(self.k - 1), x16.eq(0)]
            with m.Elif(is_["EMBED"]):
                m.d.sync += [a.eq(w.embed.vocab), b.eq(w.embed.stride16), x16.eq(1)]
            with m.Elif(is_mv):
                m.d.sync += [a.eq(w.matvec.rows), b.eq(rows80), x16.eq(1)]
            with m.Else():
                m.d.sync += [a.eq(0), b.eq(0), x16.eq(0)]
        # stage 2 (every cycle: steady from RANGE on): the partial products as they leave the multipliers (a DSP's
        # own output register), ``~L`` and ``addr >= lo``
        pp0, pp1, nl, lo_ok = Signal(34), Signal(32), Signal(signed(52)), Signal()
        lim = hic - addr
        L = Mux(x16, lim >> 4, lim)
        big = ~L[-1] & L[50:].any()                  # L >= 2**50 > any span: as 2**50; L < 0: as -1
        m.d.sync += [pp0.eq(a[:17] * b), pp1.eq(a[17:] * b), lo_ok.eq(addr >= lo),
                     nl.eq(~Mux(L[-1], -1, Mux(big, 1 << 50, L[:51])))]
        x16_r = Signal()
        m.d.sync += x16_r.eq(x16)
        span = Mux(x16_r, (pp0 + (pp1 << 17)) << 4, pp0 + (pp1 << 17))   # for tests (the sequencer reads none)
        m.d.comb += [self.addr.eq(addr), self.bpr.eq(bpr), self.in_window.eq(lo_ok & self._fits(pp0, pp1, nl)),
                     self.span.eq(span + (hi - hic))]
        return m

    @staticmethod
    def _fits(pp0, pp1, nl):
        """RANGE's ``span <= lim``: ``span = a * b`` (times 16 under ``x16``) is at most ``lim`` iff ``p0 + (p1 << 17)
        <= L`` (``p0``, ``p1``: the 17 x 17 partial products; ``L = floor(lim / 16)`` under ``x16``, as ``16 n <=
        lim`` iff ``n <= floor(lim / 16)``), that is iff ``p0 + (p1 << 17) + ~L < 0`` (``~L = -L - 1``, DECODE's
        ``nl``, with ``L`` clamped to ``[-1, 2**50]``: every span is below ``2**50``). The three terms are
        carry-saved (one LUT per bit) into ``s + 2 c``, added in one carry chain (instead of an add and then a
        compare, two chains) and the sign read: in ``W = 53`` bits, as the sum lies in ``[-2**50 - 1, 2**50)``."""
        W = len(nl) + 1
        x, y = Cat(pp0, Const(0, W - len(pp0))), Cat(Const(0, 17), pp1, Const(0, W - 17 - len(pp1)))
        z = Cat(nl, *([nl[-1]] * (W - len(nl))))      # sign-extended
        s_, c_ = x ^ y ^ z, (x & y) | (x & z) | (y & z)
        return (s_ + Cat(Const(0, 1), c_[:W - 1]))[W - 1]

"""Building blocks shared by the compute units: a global-enable stream pipeline and integer helpers.

:class:`Pipeline` turns a chain of combinational steps into a pipelined stream unit that accepts one
element per cycle. Contract of every pipeline it builds:

* input ``i`` and output ``o`` are :class:`amaranth.lib.stream` interfaces (``valid``/``ready``/``payload``);
* all stage registers advance together when ``en = ~o.valid | o.ready`` (the output slot is free or is
  being emitted); ``i.ready = en``. So at steady state with ``o.ready`` high one element enters and one
  leaves every cycle; a stalled output freezes the whole pipeline (bubbles included) and nothing is lost;
* synchronous memory read ports are enabled with ``en``, so their data register is one more stage.

``i.ready`` depends combinationally on ``o.ready`` (a stream sink may do that); a unit that must break
the path puts a skid buffer after it.

The expression helpers (:func:`rshift_round`, :func:`saturate`, :func:`bitlen`, ...) build Amaranth
values whose integer semantics are the functions of the same name in :mod:`mmfree.pymodel.numerics`
for the operand widths they are given.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Mux, Signal, Value, signed

#: Attributes for table ROMs: ask synthesis for block RAM (Yosys otherwise builds the tables from LUTs).
ROM_ATTRS = {"rom_style": "block"}


#: Operand piece of a split multiply: 17-bit unsigned pieces (18 with the sign on top) fit an ECP5
#: MULT18X18D and the 18-bit port of a DSP48E1/E2.
MUL_CHUNK = 17


class Pipeline:
    """A global-enable pipeline between stream interfaces ``i`` and ``o`` inside module ``m``.

    Values of the current stage live in a dict-like namespace: ``p["x"] = expr`` names a value of the
    current stage, ``p["x"]`` reads it, :meth:`next` registers every named value into the next stage.
    Registers that nothing reads are removed by synthesis, so carrying everything costs nothing.
    ``i`` needs only ``valid`` and ``ready`` (a unit may gate its own front end and pass a stand-in).
    """

    def __init__(self, m, i, o, name: str = "p"):
        self.m = m
        self.i = i
        self.o = o
        self.name = name
        self.en = Signal(name=f"{name}_en")
        self.valid = i.valid          # valid bit of the current stage (stage 0: the input handshake)
        self.depth = 0
        self.valids: list[Value] = []     # valid bit of every stage register (for a unit's busy flag)
        self._values: dict[str, Value] = {}
        self._reads: dict[str, Value] = {}
        self._finished = False

    # ---- the namespace of the current stage ---------------------------------------------------------
    def __setitem__(self, name: str, value) -> None:
        self._values[name] = Value.cast(value)

    def __getitem__(self, name: str) -> Value:
        return self._values[name]

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def drop(self, *names: str) -> None:
        """Forget values of the current stage (temporaries that later stages need not carry)."""
        for name in names:
            del self._values[name]

    @property
    def fire(self) -> Value:
        """High when the element of the current stage moves on this cycle (valid and enabled)."""
        return self.valid & self.en

    def read(self, port, addr, name: str) -> None:
        """Look up ``addr`` in a synchronous memory read ``port``; the data is ``p[name]`` after :meth:`next`."""
        self.m.d.comb += [port.addr.eq(addr), port.en.eq(self.en)]
        self._reads[name] = port.data

    def next(self) -> None:
        """Register every value of the current stage (and its valid bit) into a new stage."""
        self.depth += 1
        m = self.m
        v = Signal(name=f"{self.name}{self.depth}_valid")
        with m.If(self.en):
            m.d.sync += v.eq(self.valid)
        regs = {}
        for key, val in self._values.items():
            r = Signal(val.shape(), name=f"{self.name}{self.depth}_{key}")
            with m.If(self.en):
                m.d.sync += r.eq(val)
            regs[key] = r
        self.valids.append(v)
        regs.update(self._reads)
        self._reads = {}
        self._values = regs
        self.valid = v

    def multiply(self, out: str, a, b, split: bool = False, chunk: int = MUL_CHUNK) -> None:
        """``p[out] = a * b`` (exact, Amaranth width and signedness rules).

        ``split=False``: one expression in the current stage (the synthesis tool builds the whole product).
        ``split=True``: each operand is cut into ``chunk``-bit unsigned pieces (the top piece keeps the sign)
        so that every partial product fits one DSP / MULT18 tile; the partial products are registered, then
        summed by a tree of registered two-input adds; ``p[out]`` is the final sum in the stage the call
        ends in. Adds ``ceil(log2(pieces))`` stages (0 when both operands fit one piece)."""
        self.multiply_all({out: (a, b)}, split, chunk)

    def multiply_all(self, products: dict, split: bool = False, chunk: int = MUL_CHUNK) -> None:
        """:meth:`multiply` of several independent products side by side (``products``: ``{out: (a, b)}``):
        their partial products and adder trees share stages, so the call adds the stages of the largest
        product only."""
        trees = {}
        for out, (a, b) in products.items():
            a, b = Value.cast(a), Value.cast(b)
            pa, pb = _pieces(a, chunk), _pieces(b, chunk)
            if not split or len(pa) * len(pb) == 1:
                self[out] = a * b
                continue
            terms = []
            for i, (va, sa) in enumerate(pa):
                for j, (vb, sb) in enumerate(pb):
                    name = f"{out}_pp{i}{j}"
                    self[name] = va * vb
                    terms.append((name, sa + sb))
            trees[out] = (terms, a * b)
        level = 0
        while any(len(terms) > 1 for terms, _ in trees.values()):
            self.next()
            level += 1
            for out, (terms, prod) in trees.items():
                nxt = []
                for k in range(0, len(terms), 2):
                    pair = terms[k:k + 2]
                    name = f"{out}_s{level}_{k // 2}"
                    lo = min(sh for _, sh in pair)
                    self[name] = _sum_shifted([(self[n], sh - lo) for n, sh in pair])
                    nxt.append((name, lo))
                trees[out] = (nxt, prod)
        for out, (terms, prod) in trees.items():
            name, sh = terms[0]
            self[out] = (self[name] << sh)[:len(prod)]
            if prod.shape().signed:
                self[out] = self[out].as_signed()

    def shift_round(self, out: str, x: str, s: str, max_s: int, split: bool = False) -> None:
        """``p[out] = rshift_round(p[x], p[s], max_s)``; ``split=True`` registers the rounding add before
        the shift (one more stage)."""
        if not split:
            self[out] = rshift_round(self[x], self[s], max_s)
            return
        half = (Const(1, max_s + 1) << self[s])[: max_s + 1] >> 1
        self[f"{out}_xh"] = self[x] + half
        self.next()
        self[out] = self[f"{out}_xh"] >> self[s]

    def bitlen(self, out: str, x: str, split: bool = False, group: int = 8, hit_stage: bool = False) -> None:
        """``p[out] = bitlen(p[x])`` (unsigned ``p[x]``); ``split=True`` takes two stages: per ``group``-bit
        group a nonzero flag and the group's own bitlen (plus its offset) are registered, then the highest
        nonzero group's is picked by a one-hot AND-OR (one more stage). ``hit_stage=True`` (with ``split``)
        also registers the one-hot "highest nonzero group" vector before the AND-OR (one more stage)."""
        v = self[x]
        w = len(v)
        if not split or w <= group:
            self[out] = bitlen(v)
            return
        nzv, gs = bitlen_groups(v, group)
        n = len(gs)
        self[f"{out}_nz"] = nzv
        for j, g in enumerate(gs):
            self[f"{out}_g{j}"] = g
        self.next()
        nz = self[f"{out}_nz"]
        hits = bitlen_hits(nz)
        if hit_stage:
            self[f"{out}_hit"] = Cat(*hits)
            self.next()
            hits = list(self[f"{out}_hit"])
        self[out] = bitlen_pick(hits, [self[f"{out}_g{j}"] for j in range(n)])

    def stage(self, split: bool) -> None:
        """:meth:`next` when ``split`` (a register a pipelined variant adds), nothing otherwise."""
        if split:
            self.next()

    def finish(self, when=None, **fields) -> None:
        """Drive the output payload fields from the current stage and close the handshake.

        ``when`` (optional): the output is valid only for elements where it is high; the others are
        dropped (reductions emit once per vector).
        """
        if self._finished:
            raise RuntimeError("pipeline finished twice")
        self._finished = True
        m = self.m
        for key, val in fields.items():
            m.d.comb += getattr(self.o.payload, key).eq(val)
        valid = self.valid if when is None else self.valid & when
        m.d.comb += [
            self.o.valid.eq(valid),
            self.en.eq(~self.o.valid | self.o.ready),
            self.i.ready.eq(self.en),
        ]


def _pieces(x: Value, chunk: int) -> list[tuple[Value, int]]:
    """``x`` as ``[(piece, shift)]`` with ``x == sum(piece << shift)``: low pieces unsigned ``chunk`` bits,
    the top piece carries the sign (signed ``x``) and up to ``chunk + 1`` bits."""
    w = x.shape().width
    signed_x = x.shape().signed
    limit = chunk + (1 if signed_x else 0)
    if w <= limit:
        return [(x, 0)]
    out, lo = [], 0
    while w - lo > limit:
        out.append((x[lo:lo + chunk], lo))          # a slice is unsigned
        lo += chunk
    top = x[lo:w]
    out.append((top.as_signed() if signed_x else top, lo))
    return out


def _sum_shifted(terms: list[tuple[Value, int]]) -> Value:
    """``sum(v << sh)`` of one or two terms (exact; widths grow as needed)."""
    total = None
    for v, sh in terms:
        t = v << sh if sh else v
        total = t if total is None else total + t
    return total


# ---- integer helpers: numerics semantics on Amaranth values ---------------------------------------------
def width_for(n: int) -> int:
    """Bits of an unsigned value holding 0..n."""
    return max(1, int(n).bit_length())


def div_const(x: Value, d: int) -> Value:
    """``x // d`` of an unsigned value ``x`` for a constant ``d >= 1``, exact for every ``x`` of its width, with no
    divider: the power-of-two factor of ``d`` is a shift; an odd factor ``o > 1`` is a multiply by the constant
    ``ceil(2**(w + l) / o)`` and a shift by ``w + l`` (``w``: bits left after the shift, ``l``: bits of ``o``),
    exact because ``m * o - 2**(w + l) < o <= 2**l`` (Granlund and Montgomery, 1994). The result has ``x``'s
    width. Raises ValueError for ``d < 1`` or a signed ``x``."""
    x = Value.cast(x)
    if not isinstance(d, int) or d < 1 or x.shape().signed:
        raise ValueError(f"div_const divides an unsigned value by an integer >= 1, got d = {d!r} for {x.shape()}")
    width = x.shape().width
    t = (d & -d).bit_length() - 1
    odd = d >> t
    q = x >> t if t else x
    if odd > 1:
        w, lo = max(1, width - t), odd.bit_length()
        q = (q * (-(-(1 << (w + lo)) // odd))) >> (w + lo)
    return q[:width]


def ceil_div_table(x: Value, d: int, max_x: int) -> Value:
    """``ceil(x / d)`` of an unsigned value ``x`` for a constant ``d >= 1``, exact for ``0 <= x <= max_x``, with no
    multiplier and no carry chain: a constant table (logic only). The power-of-two factor ``2**t`` of ``d`` is
    folded in first: ``n = x >> t`` and ``f`` (any of the ``t`` low bits set) index a table of
    ``ceil((n * 2**t + f) / d)``, equal to ``ceil(x / d)`` because only whether the low bits are zero matters to
    the quotient by ``2**t * odd``. The table has ``2 * 2**bits(max_x >> t)`` entries; the bits of ``x`` above
    those are ignored (so the result for ``x > max_x`` is unspecified). Raises ValueError for ``d < 1``,
    ``max_x < 0`` or a signed ``x``."""
    x = Value.cast(x)
    if not isinstance(d, int) or d < 1 or not isinstance(max_x, int) or max_x < 0 or x.shape().signed:
        raise ValueError(f"ceil_div_table divides an unsigned value by an integer >= 1 up to an integer max_x >= 0, "
                         f"got d = {d!r}, max_x = {max_x!r} for {x.shape()}")
    t = (d & -d).bit_length() - 1
    nb = max(1, (max_x >> t).bit_length())
    n = x[t:t + nb] if x.shape().width > t else Const(0, 1)
    f = x[:t].any() if t else Const(0, 1)
    entries = [-(-((i >> 1) * (1 << t) + (i & 1)) // d) for i in range(2 << nb)]
    return Array(Const(v, max(1, max(entries).bit_length())) for v in entries)[Cat(f, n)]


def absval(x: Value) -> Value:
    """|x| as an unsigned value of the same width (|INT_MIN| = 2**(w-1) fits)."""
    x = Value.cast(x)
    if not x.shape().signed:
        return x
    w = x.shape().width
    return Mux(x < 0, -x, x).as_unsigned()[:w]


def rshift_round(x: Value, s, max_s: int = 0) -> Value:
    """``floor((x + 2**(s-1)) / 2**s)`` (``x`` where ``s == 0``) for an unsigned shift ``s <= max_s``
    (a Value) or a constant ``s`` (an int).

    The sum is one bit wider than its operands, so it never overflows."""
    x = Value.cast(x)
    if isinstance(s, int):
        return x if s == 0 else (x + (1 << (s - 1))) >> s
    s = Value.cast(s)
    half = (Const(1, max_s + 1) << s)[: max_s + 1] >> 1     # 2**(s-1), or 0 for s == 0
    return (x + half) >> s


def to_signed(x: Value) -> Value:
    """An unsigned value as a signed one of the same numeric value (one bit wider)."""
    x = Value.cast(x)
    if x.shape().signed:
        return x
    return Cat(x, Const(0, 1)).as_signed()


def saturate(x: Value, bits: int = 32) -> Value:
    """Clamp a signed value to ``bits``-bit two's complement (numerics.saturate for bits = 32)."""
    x = Value.cast(x)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(x > hi, Const(hi, signed(bits)), Mux(x < lo, Const(lo, signed(bits)), x[:bits].as_signed()))


def bitlen(x: Value) -> Value:
    """numerics.bitlen of an unsigned value: index of the highest set bit + 1 (0 for 0).

    A balanced tree of ``log2(width)`` levels (a long priority chain is slow to simulate)."""
    x = Value.cast(x)
    w = x.shape().width
    out_w = width_for(w)
    if w == 1:
        return x[0:1]
    half = w // 2
    lo, hi = x[:half], x[half:]
    return Mux(hi != 0, (bitlen(hi) + half)[:out_w], bitlen(lo))


def bitlen_groups(x: Value, group: int = 8) -> tuple[Value, list[Value]]:
    """First half of a two-step bitlen of an unsigned ``x``: per ``group``-bit group (from the bottom) a
    nonzero flag (``nz``, one bit per group) and the group's bitlen plus its offset (0 for a zero group),
    each ``width_for(len(x))`` bits. :func:`bitlen_hits` then :func:`bitlen_pick` finish it."""
    x = Value.cast(x)
    w = len(x)
    groups = [x[lo:min(lo + group, w)] for lo in range(0, w, group)]
    gs = [Mux(g != 0, (bitlen(g) + j * group)[:width_for(w)], 0) for j, g in enumerate(groups)]
    return Cat(*[g != 0 for g in groups]), gs


def bitlen_hits(nz: Value) -> list[Value]:
    """One-hot "highest nonzero group" bits from :func:`bitlen_groups`'s ``nz``."""
    n = len(nz)
    return [nz[j] if j == n - 1 else nz[j] & (nz[j + 1:] == 0) for j in range(n)]


def bitlen_pick(hits, gs: list[Value], tree: bool = False) -> Value:
    """The bitlen: the group value of the one-hot ``hits`` (0 when none is set), an AND-OR; ``tree=True``
    writes the OR as a balanced tree (a chain, as :meth:`Pipeline.bitlen` writes it, may be mapped as one)."""
    w = max(len(g) for g in gs)
    terms = [Mux(h, g, 0) for h, g in zip(hits, gs)]
    if tree:
        while len(terms) > 1:
            terms = [terms[k] | terms[k + 1] if k + 1 < len(terms) else terms[k] for k in range(0, len(terms), 2)]
        return terms[0][:w]
    res = Const(0, w)
    for t in terms:
        res = res | t
    return res


def clamp_max(x: Value, hi: int) -> Value:
    """min(x, hi) for an unsigned ``x``, in ``width_for(hi)`` bits."""
    x = Value.cast(x)
    return Mux(x > hi, Const(hi, width_for(hi)), x[:width_for(hi)])


def check_int(*args) -> int:
    """``check_int([owner,] name, value, legal, ok)``: raise ``ValueError`` naming ``name`` and its
    ``legal`` values unless ``ok(value)`` (an int, not a bool).

    ``owner`` (optional) is the component being constructed: a rejected one is never elaborated, so
    its "created but never used" warning is silenced."""
    owner, (name, value, legal, ok) = (None, args) if isinstance(args[0], str) else (args[0], args[1:])
    if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
        if owner is not None:
            owner._MustUse__silence = True
        raise ValueError(f"{name} must be {legal}, got {value!r}")
    return value


__all__ = ["MUL_CHUNK", "ROM_ATTRS", "Pipeline", "absval", "bitlen", "bitlen_groups", "bitlen_hits", "bitlen_pick",
           "check_int", "clamp_max", "rshift_round", "saturate", "to_signed", "width_for"]

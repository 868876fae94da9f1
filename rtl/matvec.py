"""The ternary matrix-vector engine: packed weights in, k accumulators per row out, no multipliers.

Data layout (the export's, :func:`numerics.pack_ternary`): a matrix ``[N, K]`` is stored row-major,
five trits per byte (``byte = sum_i (t_i + 1) * 3**i``, ``t_0`` the lowest column), each row padded
with zero trits to a multiple of ``ROW_ALIGN_BYTES`` = 16 bytes. The engine reads it as a stream of
*beats* of ``lanes / 5`` bytes (byte ``b`` of a beat in bits ``8b .. 8b + 7``, little-endian as on an
AXI bus): with ``lanes = 80`` a beat is one 128-bit AXI beat, with ``lanes = 40`` one 64-bit beat.
A row of ``K`` columns is ``row_bytes(K) * 5 / lanes`` beats; the beats of one row are consecutive.

Activation codes (int8, -127..127) of ``tokens`` = k token vectors sit in on-chip memories (one per
token, one word of ``lanes`` codes per beat position, written whole, no byte enables), read together,
so one weight fetch serves k tokens (speculative verification). ``banks`` copies let a sequencer load
the next vector's codes while a matrix runs.

Pipeline (one beat per cycle at steady state, whatever ``lanes`` and ``tokens``)::

    beat accepted, codes word read -> trits decoded (numerics.trit_decode_table in a ROM per byte)
    -> per lane and token: +a, -a or 0 (add / subtract / skip) -> adder tree, 4 inputs per stage
    -> accumulators (numerics.ACC_BITS); at the row's last beat the k sums leave on ``out``

Only the emission of a row result can stall the weight stream (when ``out`` is not ready).

Interfaces (streams, ``amaranth.lib.stream``):

* ``act`` (in): ``{code: tokens x signed(8), en: tokens bits, bank, first}``: one column position per
  cycle, always accepted; token ``t``'s code ``code[t]`` is written where ``en[t]`` is set (all tokens of a
  position at once, or one token vector after another with one bit set); ``first`` marks column 0 (resets
  the write position). Positions past the vector's end in its last word hold stale codes; they meet the
  zero trits of the row padding. Writing a bank while a command reads it is the sequencer's error.
* ``cmd`` (in): ``{rows, beats, bank}``: multiply the matrix that follows on ``weights`` (``rows`` rows of
  ``beats`` beats each) by the codes in ``bank``. Accepted when idle or together with the last beat of
  the running command (back-to-back commands cost no cycle). ``rows == 0`` or ``beats == 0`` is a no-op.
* ``weights`` (in): packed weight beats, ``unsigned(8 * lanes / 5)``.
* ``out`` (out): ``{acc: k x signed(24), last}`` per row, ``last`` on the command's last row.
* ``busy`` (out): a command or a row result is in flight.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from mmfree.pymodel import numerics as N
from mmfree.rtl.pipeline import Pipeline, check_int, width_for

CODE = signed(8)
#: Legal ``lanes``: multiples of TRITS_PER_BYTE whose byte count divides ROW_ALIGN_BYTES.
LEGAL_LANES = tuple(N.TRITS_PER_BYTE * b for b in range(1, N.ROW_ALIGN_BYTES + 1) if N.ROW_ALIGN_BYTES % b == 0)
#: Adder-tree inputs summed per pipeline stage.
TREE_FANIN = 4


def decode_rom_words() -> list[int]:
    """The trit decode table as ROM words: bit ``i`` = trit ``i`` is +1, bit ``5 + i`` = trit ``i`` is -1."""
    t = N.trit_decode_table()
    words = []
    for b in range(t.shape[0]):
        w = 0
        for i in range(N.TRITS_PER_BYTE):
            if t[b, i] > 0:
                w |= 1 << i
            elif t[b, i] < 0:
                w |= 1 << (N.TRITS_PER_BYTE + i)
        words.append(w)
    return words


def beats_per_row(k: int, lanes: int) -> int:
    """Beats of one packed row of ``k`` columns at ``lanes`` weights per beat."""
    return N.row_bytes(k) * N.TRITS_PER_BYTE // lanes


def act_layout(tokens: int, banks: int, vlanes: int = 1) -> data.StructLayout:
    """The ``act`` stream's payload: ``{code: tokens x signed(8), en: tokens bits, bank, first}``; with
    ``vlanes`` V > 1 ``code`` is ``tokens x V x signed(8)``: V consecutive column positions per token."""
    code = CODE if vlanes == 1 else data.ArrayLayout(CODE, vlanes)
    return data.StructLayout({"code": data.ArrayLayout(code, tokens), "en": unsigned(tokens),
                              "bank": unsigned(width_for(banks - 1)), "first": 1})


class TernaryMatVec(wiring.Component):
    """Ternary matrix times k int8 code vectors, one weight beat per cycle (see the module docstring).

    Parameters
    ----------
    lanes : weights per beat, one of ``LEGAL_LANES`` = (5, 10, 20, 40, 80).
    tokens : k >= 1 token vectors served by each weight fetch.
    max_k : the longest row (input length) the code memory holds, 1 .. numerics.MAX_K.
    banks : code memory banks >= 1.
    max_rows : the most rows (row groups with ``ways > 1``) one command may have, >= 1.
    ways : rows computed side by side in lock step, >= 1: a ``weights`` beat carries one beat of each of
        ``ways`` rows (way ``w`` in bits ``8 * beat_bytes * w ...``), all at the same column position, so
        one read of the code memories serves every way (the memories are not replicated per way). A
        command's ``rows`` counts row groups; ``out.acc`` holds ``ways x tokens`` sums, way-major
        (``acc[w * tokens + t]``). ``ways = 1`` is the plain engine.
    vlanes : column positions per ``act`` transfer (V, dividing ``lanes``): ``act.code[t]`` holds V codes
        (:func:`act_layout`), written at positions ``V c .. V c + V - 1`` of the c-th transfer. 1: one code.
    """

    def __init__(self, lanes: int = 80, tokens: int = 1, max_k: int = 4096, banks: int = 2,
                 max_rows: int = (1 << 20) - 1, ways: int = 1, vlanes: int = 1):
        check_int(self, "lanes", lanes, f"one of {LEGAL_LANES} (a multiple of {N.TRITS_PER_BYTE} trits whose "
                  f"byte count divides the {N.ROW_ALIGN_BYTES}-byte row group)", lambda v: v in LEGAL_LANES)
        check_int(self, "tokens", tokens, "an integer >= 1", lambda v: v >= 1)
        check_int(self, "max_k", max_k, f"an integer in 1..{N.MAX_K}", lambda v: 1 <= v <= N.MAX_K)
        check_int(self, "banks", banks, "an integer >= 1", lambda v: v >= 1)
        check_int(self, "max_rows", max_rows, "an integer >= 1", lambda v: v >= 1)
        check_int(self, "ways", ways, "an integer >= 1", lambda v: v >= 1)
        check_int(self, "vlanes", vlanes, f"an integer >= 1 that divides lanes = {lanes}",
                  lambda v: v >= 1 and lanes % v == 0)
        self.lanes, self.tokens, self.max_k, self.banks, self.max_rows = lanes, tokens, max_k, banks, max_rows
        self.ways, self.vlanes = ways, vlanes
        self.beat_bytes = lanes // N.TRITS_PER_BYTE
        self.words = beats_per_row(max_k, lanes)          # beat positions per bank
        self.word_bits = max(1, ceil_log2(self.words))
        self.bank_bits = width_for(banks - 1)
        self.ACT = act_layout(tokens, banks, vlanes)
        self.CMD = data.StructLayout({"rows": unsigned(width_for(max_rows)), "beats": unsigned(width_for(self.words)),
                                      "bank": unsigned(self.bank_bits)})
        self.OUT = data.StructLayout({"acc": data.ArrayLayout(signed(N.ACC_BITS), tokens * ways), "last": 1})
        super().__init__({
            "act": In(stream.Signature(self.ACT)),
            "cmd": In(stream.Signature(self.CMD)),
            "weights": In(stream.Signature(unsigned(8 * self.beat_bytes * ways))),
            "out": Out(stream.Signature(self.OUT)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        L, k, V = self.lanes, self.tokens, self.vlanes
        depth = self.banks << self.word_bits
        mems = []
        for t in range(k):
            mem = Memory(shape=unsigned(L * 8), depth=depth, init=[])
            m.submodules[f"codes{t}"] = mem
            mems.append((mem.write_port(), mem.read_port()))

        # ---- code loading: one column position per cycle for every enabled token --------------------------
        # Each token has its own memory of `lanes` codes per word, written whole: a staging register per
        # token collects the word's codes so far and every accepted code writes the staging word with the
        # new code in its lane (V codes in V lanes). Lanes after the last code of a vector keep stale codes;
        # they face the zero trits of the row padding, so they never count.
        lane = Signal(range(L))
        word = Signal(self.word_bits)
        a = self.act.payload
        cur_lane = Mux(a.first, 0, lane)
        cur_word = Mux(a.first, 0, word)
        m.d.comb += self.act.ready.eq(1)
        for t, (wp, _) in enumerate(mems):
            stage = Signal(L * 8, name=f"stage{t}")
            code = (lambda j: a.code[t]) if V == 1 else (lambda j: a.code[t][j % V])
            new_word = Cat(*[Mux(cur_lane == j - j % V, code(j).as_unsigned(), stage[8 * j: 8 * j + 8])
                             for j in range(L)])
            m.d.comb += [wp.addr.eq(Cat(cur_word, a.bank)), wp.data.eq(new_word),
                         wp.en.eq(self.act.valid & a.en[t])]
            with m.If(self.act.valid & a.en[t]):
                m.d.sync += stage.eq(new_word)
        with m.If(self.act.valid):
            with m.If(cur_lane == L - V):
                m.d.sync += [lane.eq(0), word.eq(cur_word + 1)]
            with m.Else():
                m.d.sync += [lane.eq(cur_lane + V), word.eq(cur_word)]

        # ---- command sequencing ---------------------------------------------------------------------------
        active = Signal()
        rows = Signal.like(self.cmd.payload.rows)
        beats = Signal.like(self.cmd.payload.beats)
        bank = Signal(self.bank_bits)
        beat = Signal.like(self.cmd.payload.beats)
        row = Signal.like(self.cmd.payload.rows)
        front = SimpleNamespace(valid=Signal(), ready=Signal())
        w_fire = Signal()
        rowend = beat == beats - 1
        lastrow = row == rows - 1
        done = w_fire & rowend & lastrow
        m.d.comb += [
            front.valid.eq(self.weights.valid & active),
            self.weights.ready.eq(front.ready & active),
            w_fire.eq(self.weights.valid & self.weights.ready),
            self.cmd.ready.eq(~active | done),
        ]
        with m.If(w_fire):
            with m.If(rowend):
                m.d.sync += [beat.eq(0), row.eq(row + 1)]
            with m.Else():
                m.d.sync += beat.eq(beat + 1)
        with m.If(done):
            m.d.sync += active.eq(0)
        with m.If(self.cmd.valid & self.cmd.ready):
            c = self.cmd.payload
            m.d.sync += [rows.eq(c.rows), beats.eq(c.beats), bank.eq(c.bank), beat.eq(0), row.eq(0),
                         active.eq((c.rows != 0) & (c.beats != 0))]

        # ---- the datapath ---------------------------------------------------------------------------------
        p = Pipeline(m, front, self.out, name="mv")
        p["bytes"] = self.weights.payload
        p["first"] = beat == 0
        p["rowend"] = rowend
        p["lastrow"] = lastrow
        for t, (_, rp) in enumerate(mems):
            p.read(rp, Cat(beat[:self.word_bits], bank), f"codes{t}")
        p.next()
        rom_words = decode_rom_words()
        R, bb = self.ways, self.beat_bytes
        for w in range(R):
            for b in range(bb):
                rom = Memory(shape=unsigned(2 * N.TRITS_PER_BYTE), depth=len(rom_words), init=rom_words)
                m.submodules[f"trits{w}_{b}" if R > 1 else f"trits{b}"] = rom
                port = rom.read_port(domain="comb")
                m.d.comb += port.addr.eq(p["bytes"][8 * (w * bb + b): 8 * (w * bb + b) + 8])
                p[f"pn{w}_{b}"] = port.data
        p.next()
        keys = [(w, t) for w in range(R) for t in range(k)]
        terms = {key: [] for key in keys}
        for w in range(R):
            for j in range(L):
                b, i = divmod(j, N.TRITS_PER_BYTE)
                pos = p[f"pn{w}_{b}"][i]
                neg = p[f"pn{w}_{b}"][N.TRITS_PER_BYTE + i]
                for t in range(k):
                    code = p[f"codes{t}"][8 * j: 8 * j + 8].as_signed()
                    name = f"v{w}_{t}_{j}"
                    p[name] = Mux(pos, code, Mux(neg, -code, 0))[:9].as_signed()
                    terms[(w, t)].append(name)
        p.next()
        level = 0
        while len(terms[keys[0]]) > 1:
            level += 1
            for (w, t) in keys:
                new = []
                for g in range(0, len(terms[(w, t)]), TREE_FANIN):
                    group = terms[(w, t)][g:g + TREE_FANIN]
                    total = p[group[0]]
                    for nm in group[1:]:
                        total = total + p[nm]
                    name = f"s{level}_{w}_{t}_{g // TREE_FANIN}"
                    p[name] = total
                    new.append(name)
                terms[(w, t)] = new
            p.next()
        for n, (w, t) in enumerate(keys):
            acc = Signal(signed(N.ACC_BITS), name=f"acc{w}_{t}" if R > 1 else f"acc{t}")
            new = (Mux(p["first"], 0, acc) + p[terms[(w, t)][0]])[:N.ACC_BITS].as_signed()
            with m.If(p.fire):
                m.d.sync += acc.eq(new)
            m.d.comb += self.out.payload.acc[n].eq(new)
        p.finish(when=p["rowend"], last=p["lastrow"])
        busy = active
        for v in p.valids:
            busy = busy | v
        m.d.comb += self.busy.eq(busy)
        return m

"""The trigram draft engine: online table update and draft trees in hardware, bit for bit as
:mod:`mmfree.pymodel.trigram` (its module docstring and ``docs/speculative.md`` are the specification).

:class:`DraftEngine` holds the **bigram fallback** ``bigram[V][KB]`` on chip (one :class:`Memory` word
per row, ``32 * KB`` bits, slot ``k`` in bits ``32k .. 32k+31``) and reaches the **trigram table**
``trig[2**S][W][1 + K]`` in DDR through a line-granular memory port. Every geometry and counter constant
(``S``, ``W``, ``K``, ``KB``, ``inc``, ``cmax``) comes from :class:`~mmfree.pymodel.trigram.TableParams`,
the hash multiplier and the word formats from the reference module; nothing is retyped here.

Ports (all streams are :mod:`amaranth.lib.stream` interfaces)
-------------------------------------------------------------
``cmd`` (in) ``{op, a, b, c, has_prev, rule}``
    ``op = UPDATE`` (0): ``update(a if has_prev else None, b, c)``.
    ``op = DRAFT`` (1): ``rule = 0``: ``draft_tree(table, a if has_prev else None, root=b, template)``;
    ``rule = 1`` (a build with ``guided``): ``draft_tree_guided(table, a if has_prev else None, root=b,
    len(template))``, the count-guided tree of as many nodes as the template has; ``c`` unused.
    Commands run one at a time, in order; ``cmd.ready`` is high only when the engine is idle.
``draft`` (out) ``{token, parent, last}``
    The tree of one DRAFT command in tree order: node 0 is the root (``parent = -1``), then the surviving
    template nodes, or the chosen nodes in choice order (``parent < index``); ``last`` marks the final node.
    Exactly the ``(tokens, parents)`` of :func:`~mmfree.pymodel.trigram.draft_tree` /
    :func:`~mmfree.pymodel.trigram.draft_tree_guided`.
``bigram_wr`` (in) ``{row, data}``
    Loads one bigram row (the ``KB`` slot words of the table file, slot 0 in the low bits); taken only
    while idle, before any waiting command. The host/DMA loads the fallback with it after reset.
``busy`` (out): a command is being executed.
``dump``, ``dump_row`` (in), ``dump_data`` (out)
    Read the bigram memory back (the table write-back): while idle, ``dump`` high presents ``dump_row``;
    its row is on ``dump_data`` in the next cycle.

The DDR memory port (line granular)
-----------------------------------
A *line* is one way: ``1 + K`` little-endian words = ``LINE_BITS = 32 * (1 + K)`` bits (512 bits, one
64-byte burst for the default ``K = 15``), word 0 in the low bits. Lines are addressed by their *line
index* ``set * W + way`` in ``trig`` (the byte address is ``trigram_offset + 4 * (1 + K) * index``
within the table file image; ``trigram_offset`` is a multiple of 64).

``rd_req`` (out) ``{addr, count}``
    Read ``count`` consecutive lines starting at line ``addr`` (the engine always asks for one whole set:
    ``addr = set * W``, ``count = W``; one INCR burst of ``W * LINE_BYTES`` bytes, 256 bytes by default).
    At most one request is outstanding: the next one is issued only after all lines of this one arrived.
``rd_resp`` (in) ``LINE_BITS``
    The lines of the request, in address order, one per handshake.
``wr`` (out) ``{addr, data}``
    Write one whole line (all byte strobes set) at line index ``addr``. At most one write per UPDATE.

Ordering contract: a read requested after a ``wr`` handshake must return the written data. An AXI adapter
(:class:`mmfree.rtl.axi.AxiReader` client for ``rd_req``/``rd_resp`` with a ``LINE_BITS / bus`` word
gearbox, :class:`~mmfree.rtl.axi.AxiWriter` for ``wr``) meets it by holding ``rd_req`` while a write
response (B) is outstanding; the engine never issues a read in the cycle of a write handshake.

Schedule (one command at a time; measured cycles in ``docs/speculative.md``)
----------------------------------------------------------------------------
UPDATE: read bigram row ``b`` (2 cycles), bump and write it back; then, with a previous token, request
the set, take its ``W`` lines (way match on the key, victim = smallest slot-0 count, lowest way first),
and write back the bumped way (hit) or the fresh way ``key, (c, min(inc, cmax)), 0...`` (miss).
DRAFT: walk the template (held as constants: the ``(parent, rank)`` pairs of
:func:`~mmfree.pymodel.trigram.make_template`), one template node per cycle; a node whose parent tree
node's successor list is not the one in the list registers starts a lookup of that node (trigram set read
when it has a context, and its bigram row), then picks the ``rank``-th successor combinationally
(trigram slots in order, then bigram slots not already listed). The successor list of one node at a time
is kept: a breadth-first template visits the children of a node consecutively, and a re-lookup of the
same node (any other template order) returns the same list because the table does not change during a
draft. When the template is done the tree is streamed out, one node per cycle.

DRAFT, count-guided (``rule = 1``): the root, then each chosen node but the last, is *expanded*: its
successor list is looked up as above (LOOK, SCAN, ROW), G_SUM adds the merged counts of its first
``GUIDED_MAX_CHILDREN`` entries (one per cycle, the same :class:`PickRank` driven by a counter; a bigram
count after trigram successors ``>> BIGRAM_BACKOFF_SHIFT``), G_DIV divides ``2**32`` by the sum (a
restoring divider, one quotient bit per cycle, 33 cycles), then per child G_MUL (``count * r``), G_MUL2
(``(score * (count * r)) >> 32``, the same 17 x 33 multiplier) and G_INS (into the lowest free slot of the
``GUIDED_FRONTIER``-word candidate memory; full: G_MIN scans every slot for the worst, lowest score then
latest created, and G_REPL overwrites it when the child scores higher, else the child is dropped). G_SEL
scans the slots written so far for the best (highest score, earliest created; the creation number is
stored with each candidate), G_PICK appends it to the tree, frees its slot and, below the node budget,
starts its lookup. Cycles per draft: 1 + per expansion [lookup ``W + 2 + L`` (``2`` without a context) +
children + 1 + (with children) 33 + 3 per child (``F + 4`` per child while the frontier is full) + 1] +
per choice (slots in use + 1) + tree nodes (``tests/rtl/test_draft.py::guided_schedule_cycles``).

Bump (the compare-and-swap chain of the reference, as one combinational step on a row of ``n`` slots):
the first slot that is empty or holds ``c`` is the target (none: the last slot); its new count is
``min(cmax, count + inc)`` on a hit, ``min(inc, cmax)`` otherwise; it lands at position ``q`` = one below
the lowest-placed slot above the target whose count is ``>=`` the new count (0 if none), and the slots
``q .. target-1`` move down by one.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, MemoryData
from amaranth.lib.wiring import In, Out

from mmfree.pymodel import trigram as T
from mmfree.rtl.pipeline import check_int, width_for

#: ``cmd.op`` values.
UPDATE = 0
DRAFT = 1

TOKEN = unsigned(16)              # token ids are 16-bit (T.MAX_VOCAB)
# the count-guided rule's constants: the reference's (draft_tree_guided)
G_ROOT_SCORE = T.GUIDED_ROOT_SCORE     # the root's score
G_RECIP_BITS = 32                      # reciprocal = 2**32 // (sum of the kept counts); the score shift
G_CHILDREN = T.GUIDED_MAX_CHILDREN     # successors kept per expanded node
G_FRONTIER = T.GUIDED_FRONTIER         # candidates held at most
SCORE = unsigned(width_for(G_ROOT_SCORE))     # a child never scores above its parent
assert T.guided_child_scores(1, [1]) == [(1 * 1 * ((1 << G_RECIP_BITS) // 1)) >> G_RECIP_BITS]
COUNT_BITS = 16                   # slot = token << T.TOKEN_SHIFT | count (count in the low T.TOKEN_SHIFT bits)
assert T.TOKEN_SHIFT == COUNT_BITS and T.COUNT_MASK == (1 << COUNT_BITS) - 1


def _slot_count(w):
    return w[:COUNT_BITS]


def _slot_token(w):
    return w[COUNT_BITS:32]


class Bump(wiring.Component):
    """Combinational ``_bump(row, c, inc, cmax)`` of the reference on a row of ``n`` slot words: ``words``
    (slot ``j`` in bits ``32j .. 32j+31``) and the token ``c`` in, the bumped row ``out``.

    The first slot that is empty or holds ``c`` is the target (none: the last slot); its new count is
    ``min(cmax, count + inc)`` on a hit, ``min(inc, cmax)`` otherwise; the compare-and-swap chain ends
    with the new slot at ``q`` = one below the lowest-placed slot above the target whose count is
    ``>=`` the new count (0 if none), and the slots ``q .. target-1`` one further down."""

    def __init__(self, n: int, inc: int, cmax: int):
        self.n, self.inc, self.cmax = n, inc, cmax
        super().__init__({"words": In(32 * n), "c": In(TOKEN), "out": Out(32 * n)})

    def elaborate(self, platform):
        m = Module()
        n, c = self.n, self.c
        words = [self.words[32 * j:32 * (j + 1)] for j in range(n)]
        cnt = [_slot_count(w) for w in words]
        tok = [_slot_token(w) for w in words]
        stop = [(cnt[j] == 0) | (tok[j] == c) for j in range(n)]     # empty or c (an empty slot stops first)
        hit = Signal()
        pos = Signal(range(n))
        m.d.comb += pos.eq(n - 1)                                      # none stops: replace the last slot
        for j in reversed(range(n)):                                   # the first stop wins
            with m.If(stop[j]):
                m.d.comb += [pos.eq(j), hit.eq(cnt[j] != 0)]
        old = Signal(COUNT_BITS)
        m.d.comb += old.eq(Array(cnt)[pos])
        summed = old + self.inc
        newcnt = Signal(COUNT_BITS)
        m.d.comb += newcnt.eq(Mux(hit, Mux(summed > self.cmax, self.cmax, summed), min(self.inc, self.cmax)))
        new = Cat(newcnt, c)
        q = Signal(range(n))                                           # landing position after the move-up
        for k in range(n - 1):                                         # the highest blocker above pos wins
            with m.If((k < pos) & (cnt[k] >= newcnt)):
                m.d.comb += q.eq(k + 1)
        out = []
        for j in range(n):
            if j == 0:
                out.append(Mux(q == 0, new, words[0]))
            else:
                out.append(Mux(q == j, new, Mux((j > q) & (j <= pos), words[j - 1], words[j])))
        m.d.comb += self.out.eq(Cat(*out))
        return m


class SuccessorList(wiring.Component):
    """The successor list of one context, from its trigram slots ``line`` (``K`` words; used when ``hit``)
    and its bigram row ``row`` (``KB`` words): ``n_t`` trigram successors (the occupied prefix) and
    ``keep``, the bigram slots that extend the list (occupied and not already listed). The list is
    ``line[0 .. n_t)`` then the kept bigram slots in order."""

    def __init__(self, K: int, KB: int):
        self.K, self.KB = K, KB
        super().__init__({"line": In(32 * K), "hit": In(1), "row": In(32 * KB),
                          "n_t": Out(range(K + 1)), "keep": Out(KB)})

    def elaborate(self, platform):
        m = Module()
        K, KB = self.K, self.KB
        t_cnt = [self.line[32 * i:32 * i + COUNT_BITS] for i in range(K)]
        t_tok = [self.line[32 * i + COUNT_BITS:32 * (i + 1)] for i in range(K)]
        g_cnt = [self.row[32 * k:32 * k + COUNT_BITS] for k in range(KB)]
        g_tok = [self.row[32 * k + COUNT_BITS:32 * (k + 1)] for k in range(KB)]
        t_occ, acc = [], self.hit
        for i in range(K):
            acc = acc & (t_cnt[i] != 0)
            t_occ.append(acc)
        g_occ, acc = [], Const(1)
        for k in range(KB):
            acc = acc & (g_cnt[k] != 0)
            g_occ.append(acc)
        m.d.comb += self.n_t.eq(sum(t_occ))
        for k in range(KB):
            dup = Const(0)
            for i in range(K):
                dup = dup | (t_occ[i] & (t_tok[i] == g_tok[k]))
            for k2 in range(k):
                dup = dup | (g_occ[k2] & (g_tok[k2] == g_tok[k]))
            m.d.comb += self.keep[k].eq(g_occ[k] & ~dup)
        return m


class PickRank(wiring.Component):
    """The ``rank``-th entry of a :class:`SuccessorList`: its ``token`` and merged ``count``
    (:meth:`~mmfree.pymodel.trigram.TrigramTable.successor_counts`: a trigram slot's count; a bigram slot's count,
    ``>> BIGRAM_BACKOFF_SHIFT`` when trigram successors precede it); ``ok`` low when the list is shorter."""

    def __init__(self, K: int, KB: int, rank_width: int):
        self.K, self.KB = K, KB
        super().__init__({"line": In(32 * K), "row": In(32 * KB), "n_t": In(range(K + 1)), "keep": In(KB),
                          "rank": In(rank_width), "ok": Out(1), "token": Out(TOKEN), "count": Out(COUNT_BITS)})

    def elaborate(self, platform):
        m = Module()
        rank = self.rank
        for i in range(self.K):
            with m.If((i < self.n_t) & (rank == i)):
                m.d.comb += [self.ok.eq(1), self.token.eq(self.line[32 * i + COUNT_BITS:32 * (i + 1)]),
                             self.count.eq(self.line[32 * i:32 * i + COUNT_BITS])]
        before = Const(0, width_for(self.KB))
        for k in range(self.KB):
            with m.If(self.keep[k] & (rank == self.n_t + before)):
                cnt = self.row[32 * k:32 * k + COUNT_BITS]       # after trigram successors: the backoff discount
                m.d.comb += [self.ok.eq(1), self.token.eq(self.row[32 * k + COUNT_BITS:32 * (k + 1)]),
                             self.count.eq(Mux(self.n_t != 0, cnt >> T.BIGRAM_BACKOFF_SHIFT, cnt))]
            before = before + self.keep[k]
        return m


class DraftEngine(wiring.Component):
    """The trigram draft engine (see the module docstring for ports, memory contract and schedule).

    ``vocab_size``: rows of the on-chip bigram memory; ``params``: the table geometry and counter rules
    (:class:`~mmfree.pymodel.trigram.TableParams`); ``template``: the draft template, ``(parent, rank)``
    pairs (default ``make_template(4, DEFAULT_MAX_NODES)``, the software default). ``bigram_init``
    (optional, ``uint32 [V, KB]``): initial contents of the bigram memory (simulation, or a ROM-like
    preload); otherwise it starts empty and is loaded through ``bigram_wr``. ``guided`` (default True): build
    the count-guided rule (``cmd.rule = 1``; its node budget is ``len(template)``, at most
    ``GUIDED_MAX_NODES``, ValueError otherwise); without it ``cmd.rule`` is ignored.
    """

    def __init__(self, vocab_size: int = 4096, params: T.TableParams | None = None, template=None,
                 bigram_init=None, guided: bool = True):
        self.params = p = (params or T.TableParams()).check()
        check_int(self, "vocab_size", vocab_size, f"an integer in [1, {T.MAX_VOCAB}]",
                  lambda v: 1 <= v <= T.MAX_VOCAB)
        self.vocab_size = vocab_size
        if template is None:
            template = T.make_template(4, T.DEFAULT_MAX_NODES)
        template = tuple((int(a), int(r)) for a, r in template)
        for i, (par, rank) in enumerate(template, start=1):
            if not 0 <= par < i or rank < 0:
                self._MustUse__silence = True
                raise ValueError(f"template entry {i} = ({par}, {rank}): the parent must be in [0, {i}) and the "
                                 "rank >= 0")
        self.template = template
        self.n_nodes = len(template) + 1                      # tree nodes at most (root included)
        if guided and len(template) > T.GUIDED_MAX_NODES:
            self._MustUse__silence = True
            raise ValueError(f"the count-guided rule drafts at most {T.GUIDED_MAX_NODES} nodes (len(template)), "
                             f"got a template of {len(template)}")
        self.LINE_WORDS = 1 + p.slots
        self.LINE_BITS = 32 * self.LINE_WORDS
        self.ROW_BITS = 32 * p.bigram_slots
        self.n_lines = p.n_sets * p.ways
        self.ADDR = unsigned(width_for(self.n_lines - 1))
        self.NODE = unsigned(width_for(self.n_nodes - 1))
        self.PARENT = signed(width_for(self.n_nodes - 1) + 1)
        #: the count-guided rule is built in (``cmd.rule``); without it ``rule`` is ignored (template drafts)
        self.guided = bool(guided)
        self.CMD = data.StructLayout({"op": 1, "a": TOKEN, "b": TOKEN, "c": TOKEN, "has_prev": 1, "rule": 1})
        self.SEQ = unsigned(width_for(G_CHILDREN * self.n_nodes))
        #: one frontier candidate: its score, token, tree parent and creation number
        self.CAND = data.StructLayout({"score": SCORE, "token": TOKEN, "parent": self.NODE, "seq": self.SEQ})
        self.DRAFT = data.StructLayout({"token": TOKEN, "parent": self.PARENT, "last": 1})
        self.RDREQ = data.StructLayout({"addr": self.ADDR, "count": unsigned(width_for(p.ways))})
        self.WR = data.StructLayout({"addr": self.ADDR, "data": unsigned(self.LINE_BITS)})
        self.BIGRAM_WR = data.StructLayout({"row": unsigned(width_for(vocab_size - 1)),
                                            "data": unsigned(self.ROW_BITS)})
        init = [0] * vocab_size
        if bigram_init is not None:
            import numpy as np

            arr = np.asarray(bigram_init, dtype=np.uint64).reshape(vocab_size, p.bigram_slots)
            init = [sum(int(w) << (32 * k) for k, w in enumerate(row)) for row in arr]
        #: the on-chip bigram fallback (simulation: ``ctx.get(engine.bigram_data[row])``)
        self.bigram_data = MemoryData(shape=unsigned(self.ROW_BITS), depth=vocab_size, init=init)
        super().__init__({
            "cmd": In(stream.Signature(self.CMD)),
            "draft": Out(stream.Signature(self.DRAFT)),
            "bigram_wr": In(stream.Signature(self.BIGRAM_WR)),
            "rd_req": Out(stream.Signature(self.RDREQ)),
            "rd_resp": In(stream.Signature(unsigned(self.LINE_BITS))),
            "wr": Out(stream.Signature(self.WR)),
            "busy": Out(1),
            "dump": In(1), "dump_row": In(self.BIGRAM_WR.members["row"]), "dump_data": Out(self.ROW_BITS),
        })

    def _tree_arrays(self):
        """The draft tree (tokens, parents), the template node -> tree node map, the template's constants."""
        N = self.n_nodes
        tokens = Array(Signal(TOKEN, name=f"tok{i}") for i in range(N))
        parents = Array(Signal(self.NODE, name=f"par{i}") for i in range(N))
        map_ok = Array(Signal(name=f"mok{i}") for i in range(N))          # template node -> tree node
        map_idx = Array(Signal(self.NODE, name=f"mix{i}") for i in range(N))
        tpl_par = Array(Const(par, self.NODE) for par, _ in ((0, 0),) + self.template)
        tpl_rank = Array(Const(r, width_for(self._max_rank)) for _, r in ((0, 0),) + self.template)
        return tokens, parents, map_ok, map_idx, tpl_par, tpl_rank

    @property
    def _max_rank(self) -> int:
        """The largest rank the successor picker is asked for (a template rank, or a guided child index)."""
        return max([r for _, r in self.template] + ([G_CHILDREN] if self.guided else []), default=0)

    def _successor(self, m, s_line, s_hit, s_row, rank):
        """The rank-th successor of the kept list (trigram slots' occupied prefix, then new bigram slots):
        the :class:`PickRank` (``ok``, ``token``, ``count``)."""
        p = self.params
        m.submodules.succ = succ = SuccessorList(p.slots, p.bigram_slots)
        m.submodules.pick = pick = PickRank(p.slots, p.bigram_slots, width_for(self._max_rank))
        m.d.comb += [succ.line.eq(s_line), succ.hit.eq(s_hit), succ.row.eq(s_row),
                     pick.line.eq(s_line), pick.row.eq(s_row), pick.n_t.eq(succ.n_t), pick.keep.eq(succ.keep),
                     pick.rank.eq(rank)]
        return pick

    # ---- the count-guided rule ----------------------------------------------------------------------------------
    def _guided_signals(self, m, g):
        """The frontier (a ``G_FRONTIER``-word candidate memory with valid bits, scanned one slot per cycle),
        the expansion's registers (children sum, reciprocal divider, child score) and the scan's best/worst."""
        F = G_FRONTIER
        m.submodules.frontier = mem = Memory(shape=self.CAND, depth=F, init=[])
        g.rd, g.wr = mem.read_port(domain="comb"), mem.write_port()
        g.valid = Signal(F)                          # slot holds a candidate
        g.top = Signal(range(F + 1))                 # slots ever written this draft (the scans stop there)
        g.full = Signal()                            # every slot holds one
        g.si = Signal(range(F))                      # scan slot
        g.seq = Signal(self.SEQ)                     # next creation number
        g.score = Signal(SCORE)                      # the expanding node's score
        g.jx = Signal(self.NODE)                     # ... and its tree index
        g.tsum = Signal(COUNT_BITS + width_for(G_CHILDREN))
        g.rem = Signal(len(g.tsum) + 1)              # restoring division of 2**G_RECIP_BITS by tsum
        g.q = Signal(G_RECIP_BITS + 1)
        g.dbit = Signal(range(G_RECIP_BITS + 1))
        g.cr = Signal(G_RECIP_BITS + 1)              # count * reciprocal (<= 2**G_RECIP_BITS)
        g.new = Signal(self.CAND)                    # the child being inserted
        g.bok, g.bslot, g.best = Signal(), Signal(range(F)), Signal(self.CAND)    # selection scan
        g.wslot, g.worst = Signal(range(F)), Signal(self.CAND)                   # eviction scan
        free = Signal(range(F))                      # lowest free slot (when not full)
        for i in reversed(range(F)):
            with m.If(~g.valid[i]):
                m.d.comb += free.eq(i)
        g.free = free
        m.d.comb += g.full.eq(g.valid.all())
        # one multiplier for both products: count * reciprocal, then score * (count * reciprocal)
        g.mul_hi = Signal()
        ma = Mux(g.mul_hi, g.score, g.pick.count)
        mb = Mux(g.mul_hi, g.cr, g.q)
        g.prod = Signal(SCORE.width + G_RECIP_BITS + 1)
        m.d.comb += [g.prod.eq(ma * mb), g.rd.addr.eq(g.si)]

    def _guided_start(self, g):
        """The sync assignments that begin a count-guided draft (the root expands first)."""
        return [g.valid.eq(0), g.top.eq(0), g.seq.eq(0), g.score.eq(G_ROOT_SCORE), g.jx.eq(0), g.oi.eq(0)]

    def _guided_states(self, m, g):
        """G_SUM (the kept children's counts summed), G_DIV (the reciprocal), G_MUL/G_MUL2 (a child's score),
        G_INS (into a free slot, else G_MIN/G_REPL: evict the worst if the child beats it), G_SEL/G_PICK (the best
        candidate becomes the next tree node, whose successors are then looked up)."""
        F, pick, c = G_FRONTIER, g.pick, g.rd.data
        more = (g.gi != G_CHILDREN) & pick.ok
        with m.State("G_SUM"):
            with m.If(more):
                m.d.sync += [g.tsum.eq(g.tsum + pick.count), g.gi.eq(g.gi + 1)]
            with m.Elif(g.tsum == 0):
                self._guided_select(m, g)
            with m.Else():
                m.d.sync += [g.rem.eq(0), g.q.eq(0), g.dbit.eq(0)]
                m.next = "G_DIV"
        with m.State("G_DIV"):                        # one quotient bit per cycle, most significant first
            r2 = Cat(g.dbit == 0, g.rem)
            ge = r2 >= g.tsum
            m.d.sync += [g.rem.eq(Mux(ge, r2 - g.tsum, r2)), g.q.eq(Cat(ge, g.q)), g.dbit.eq(g.dbit + 1)]
            with m.If(g.dbit == G_RECIP_BITS):
                m.d.sync += g.gi.eq(0)
                m.next = "G_MUL"
        with m.State("G_MUL"):                        # child gi: count * reciprocal
            with m.If(more):
                m.d.sync += [g.cr.eq(g.prod), g.mul_hi.eq(1)]
                m.next = "G_MUL2"
            with m.Else():
                self._guided_select(m, g)
        with m.State("G_MUL2"):                       # ... times the parent's score, >> G_RECIP_BITS
            m.d.sync += [g.new.score.eq(g.prod[G_RECIP_BITS:]), g.new.token.eq(pick.token), g.new.parent.eq(g.jx),
                         g.new.seq.eq(g.seq), g.seq.eq(g.seq + 1), g.mul_hi.eq(0)]
            m.next = "G_INS"
        with m.State("G_INS"):
            with m.If(~g.full):
                m.d.comb += [g.wr.addr.eq(g.free), g.wr.data.eq(g.new), g.wr.en.eq(1)]
                m.d.sync += [g.valid.bit_select(g.free, 1).eq(1), g.gi.eq(g.gi + 1)]
                with m.If(g.free == g.top):
                    m.d.sync += g.top.eq(g.top + 1)
                m.next = "G_MUL"
            with m.Else():
                m.d.sync += g.si.eq(0)
                m.next = "G_MIN"
        with m.State("G_MIN"):                        # the worst candidate: lowest score, latest created
            worse = (g.si == 0) | (c.score < g.worst.score) | ((c.score == g.worst.score) & (c.seq > g.worst.seq))
            with m.If(worse):
                m.d.sync += [g.worst.eq(c), g.wslot.eq(g.si)]
            m.d.sync += g.si.eq(g.si + 1)
            with m.If(g.si == F - 1):
                m.next = "G_REPL"
        with m.State("G_REPL"):                       # the child is the latest: it replaces only a lower score
            with m.If(g.new.score > g.worst.score):
                m.d.comb += [g.wr.addr.eq(g.wslot), g.wr.data.eq(g.new), g.wr.en.eq(1)]
            m.d.sync += g.gi.eq(g.gi + 1)
            m.next = "G_MUL"
        with m.State("G_SEL"):                        # the best candidate: highest score, earliest created
            vi = g.valid.bit_select(g.si, 1)
            better = vi & (~g.bok | (c.score > g.best.score) | ((c.score == g.best.score) & (c.seq < g.best.seq)))
            with m.If(better):
                m.d.sync += [g.bok.eq(1), g.best.eq(c), g.bslot.eq(g.si)]
            m.d.sync += g.si.eq(g.si + 1)
            with m.If(g.si == g.top - 1):
                m.next = "G_PICK"
        with m.State("G_PICK"):
            b, nt = g.best, g.nt
            with m.If(~g.bok):
                m.d.sync += g.oi.eq(0)
                m.next = "D_OUT"
            with m.Else():
                m.d.sync += [g.tokens[nt].eq(b.token), g.parents[nt].eq(b.parent), g.valid.bit_select(g.bslot, 1).eq(0),
                             nt.eq(nt + 1), g.score.eq(b.score), g.jx.eq(nt)]
                with m.If(nt == self.n_nodes - 1):           # the budget: n_nodes - 1 drafted nodes
                    m.d.sync += g.oi.eq(0)
                    m.next = "D_OUT"
                with m.Else():                                # look up the new node's successors
                    m.d.sync += [g.lk_b.eq(b.token), g.lk_a.eq(g.tokens[b.parent]), g.lk_has.eq(1)]
                    m.next = "LOOK"

    @staticmethod
    def _guided_select(m, g):
        """Go on to the selection scan (none when no slot was ever written)."""
        m.d.sync += [g.si.eq(0), g.bok.eq(0)]
        with m.If(g.top == 0):
            m.next = "G_PICK"
        with m.Else():
            m.next = "G_SEL"

    def _lookup_datapath(self, m, rp, wp) -> SimpleNamespace:
        """The command registers, the lookup context and its set (the hash), the set scan's registers and the
        update datapath (bumped bigram row, bumped / fresh trigram way), for :meth:`elaborate`."""
        p = self.params
        W, K, KB = p.ways, p.slots, p.bigram_slots
        # ---- command registers and the lookup context -------------------------------------------
        op = Signal()
        c = Signal(TOKEN)
        prev, has_prev = Signal(TOKEN), Signal()
        lk_a, lk_b, lk_has = Signal(TOKEN), Signal(TOKEN), Signal()
        key = Cat(lk_b, lk_a)                                       # a << 16 | b
        prod = Signal(32)
        m.d.comb += prod.eq((key * T.HASH_MULT)[:32])                # Fibonacci hash: one 32x32 multiply
        set_idx = prod[32 - p.sets_log2:32]
        base = Signal(self.ADDR)
        m.d.comb += base.eq(set_idx * W)
        m.d.comb += [rp.addr.eq(lk_b), rp.en.eq(1)]

        # ---- set scan: way match and victim ---------------------------------------------------------
        way = Signal(range(W))
        hit, hit_way = Signal(), Signal(range(W))
        hit_line = Signal(self.LINE_BITS)
        vict, min_cnt = Signal(range(W)), Signal(COUNT_BITS)
        line_in = self.rd_resp.payload

        # ---- update datapath: bumped bigram row, bumped / fresh trigram way ----------------------
        m.submodules.row_bump = row_bump = Bump(KB, p.inc, p.cmax)
        m.submodules.line_bump = line_bump = Bump(K, p.inc, p.cmax)
        m.d.comb += [row_bump.words.eq(rp.data), row_bump.c.eq(c), line_bump.words.eq(hit_line[32:]),
                     line_bump.c.eq(c)]
        fresh = Cat(key, Const(min(p.inc, p.cmax), COUNT_BITS), c, Const(0, 32 * (K - 1)))
        m.d.comb += [wp.addr.eq(lk_b), wp.data.eq(row_bump.out)]
        return SimpleNamespace(op=op, c=c, prev=prev, has_prev=has_prev, lk_a=lk_a, lk_b=lk_b, lk_has=lk_has,
                               key=key, base=base, way=way, hit=hit, hit_way=hit_way, hit_line=hit_line, vict=vict,
                               min_cnt=min_cnt, line_in=line_in, line_bump=line_bump, fresh=fresh)

    def elaborate(self, platform):
        m = Module()
        p = self.params
        W, K, N = p.ways, p.slots, self.n_nodes
        m.submodules.bigram = mem = Memory(data=self.bigram_data)
        wp = mem.write_port()
        rp = mem.read_port(transparent_for=(wp,))

        x = self._lookup_datapath(m, rp, wp)
        op, c, prev, has_prev, lk_a, lk_b, lk_has = x.op, x.c, x.prev, x.has_prev, x.lk_a, x.lk_b, x.lk_has
        key, base, way, hit, hit_way, hit_line = x.key, x.base, x.way, x.hit, x.hit_way, x.hit_line
        vict, min_cnt, line_in, line_bump, fresh = x.vict, x.min_cnt, x.line_in, x.line_bump, x.fresh

        # ---- draft state: tree arrays, template constants, the successor list -------------------------
        tokens, parents, map_ok, map_idx, tpl_par, tpl_rank = self._tree_arrays()
        ti = Signal(range(N + 1))                                          # template node being placed
        nt = Signal(range(N + 1))                                          # tree nodes so far
        oi = Signal(self.NODE)                                             # output index
        cache_ok, cache_j = Signal(), Signal(self.NODE)
        s_hit = Signal()                                                   # the list's trigram part exists
        s_line = Signal(32 * K)                                            # its slots
        s_row = Signal(self.ROW_BITS)                                      # the bigram row

        tp = tpl_par[ti]
        j_ok, j = map_ok[tp], map_idx[tp]
        g = SimpleNamespace(on=Signal(), gi=Signal(range(G_CHILDREN + 1)), tokens=tokens, parents=parents, nt=nt,
                            oi=oi, lk_a=lk_a, lk_b=lk_b, lk_has=lk_has)
        pick = self._successor(m, s_line, s_hit, s_row, Mux(g.on, g.gi, tpl_rank[ti]))
        sel_ok, sel_tok = pick.ok, pick.token
        g.pick = pick
        if self.guided:
            self._guided_signals(m, g)

        # ---- streams ---------------------------------------------------------------------------------
        cmdp = self.cmd.payload
        m.d.comb += [
            self.rd_req.payload.addr.eq(base), self.rd_req.payload.count.eq(W),
            self.wr.payload.addr.eq(base + Mux(hit, hit_way, vict)),
            self.wr.payload.data.eq(Mux(hit, Cat(hit_line[:32], line_bump.out), fresh)),
            self.draft.payload.token.eq(tokens[oi]),
            self.draft.payload.parent.eq(Mux(oi == 0, -1, parents[oi])),
            self.draft.payload.last.eq(oi == nt - 1),
        ]

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += [self.bigram_wr.ready.eq(1), self.cmd.ready.eq(~self.bigram_wr.valid)]
                with m.If(self.dump):
                    m.d.comb += rp.addr.eq(self.dump_row)
                with m.If(self.bigram_wr.valid):
                    m.d.comb += [wp.addr.eq(self.bigram_wr.payload.row), wp.data.eq(self.bigram_wr.payload.data),
                                 wp.en.eq(1)]
                with m.Elif(self.cmd.valid):
                    m.d.sync += [op.eq(cmdp.op), c.eq(cmdp.c), prev.eq(cmdp.a), has_prev.eq(cmdp.has_prev),
                                 lk_a.eq(cmdp.a), lk_b.eq(cmdp.b), lk_has.eq(cmdp.has_prev)]
                    with m.If(cmdp.op == UPDATE):
                        m.next = "U_ROW"
                    if self.guided:                      # (a build without the rule drafts the template)
                        with m.Elif(cmdp.rule):
                            m.d.sync += [tokens[0].eq(cmdp.b), nt.eq(1), g.on.eq(1), *self._guided_start(g)]
                            m.next = "LOOK" if N > 1 else "D_OUT"
                    with m.Else():
                        m.d.sync += [tokens[0].eq(cmdp.b), map_ok[0].eq(1), map_idx[0].eq(0), nt.eq(1), ti.eq(1),
                                     cache_ok.eq(0), g.on.eq(0)]
                        m.next = "D_NODE"
            with m.State("U_ROW"):                      # bigram row b is being read
                m.next = "U_BUMP"
            with m.State("U_BUMP"):                     # ... and written back bumped
                m.d.comb += wp.en.eq(1)
                with m.If(lk_has):
                    m.next = "LOOK"
                with m.Else():
                    m.next = "IDLE"
            with m.State("LOOK"):                       # request the set of (lk_a, lk_b); or only the row
                with m.If(lk_has):
                    m.d.comb += self.rd_req.valid.eq(1)
                    with m.If(self.rd_req.ready):
                        m.d.sync += [way.eq(0), hit.eq(0)]
                        m.next = "SCAN"
                with m.Else():
                    m.d.sync += hit.eq(0)
                    m.next = "ROW"
            with m.State("SCAN"):                       # the W lines of the set
                m.d.comb += self.rd_resp.ready.eq(1)
                with m.If(self.rd_resp.valid):
                    with m.If(~hit & (line_in[:32] == key)):
                        m.d.sync += [hit.eq(1), hit_way.eq(way), hit_line.eq(line_in)]
                    cnt0 = line_in[32:32 + COUNT_BITS]
                    with m.If((way == 0) | (cnt0 < min_cnt)):
                        m.d.sync += [min_cnt.eq(cnt0), vict.eq(way)]
                    m.d.sync += way.eq(way + 1)
                    with m.If(way == W - 1):
                        with m.If(op == UPDATE):
                            m.next = "U_WRITE"
                        with m.Else():
                            m.next = "ROW"
            with m.State("U_WRITE"):
                m.d.comb += self.wr.valid.eq(1)
                with m.If(self.wr.ready):
                    m.next = "IDLE"
            with m.State("ROW"):                        # the list of tree node cache_j is complete
                m.d.sync += [s_hit.eq(hit), s_line.eq(hit_line[32:]), s_row.eq(rp.data), cache_ok.eq(1)]
                if self.guided:
                    with m.If(g.on):
                        m.d.sync += [g.gi.eq(0), g.tsum.eq(0)]
                        m.next = "G_SUM"
                    with m.Else():
                        m.next = "D_NODE"
                else:
                    m.next = "D_NODE"
            with m.State("D_NODE"):                     # place template node ti
                with m.If(ti == N):
                    m.d.sync += oi.eq(0)
                    m.next = "D_OUT"
                with m.Elif(~j_ok):
                    m.d.sync += [map_ok[ti].eq(0), ti.eq(ti + 1)]
                with m.Elif(cache_ok & (cache_j == j)):
                    with m.If(sel_ok):
                        m.d.sync += [tokens[nt].eq(sel_tok), parents[nt].eq(j), map_ok[ti].eq(1),
                                     map_idx[ti].eq(nt), nt.eq(nt + 1)]
                    with m.Else():
                        m.d.sync += map_ok[ti].eq(0)
                    m.d.sync += ti.eq(ti + 1)
                with m.Else():                           # look up the successors of tree node j
                    m.d.sync += [lk_b.eq(tokens[j]), lk_a.eq(Mux(j == 0, prev, tokens[parents[j]])),
                                 lk_has.eq((j != 0) | has_prev), cache_j.eq(j), cache_ok.eq(0)]
                    m.next = "LOOK"
            if self.guided:
                self._guided_states(m, g)
            with m.State("D_OUT"):
                m.d.comb += self.draft.valid.eq(1)
                with m.If(self.draft.ready):
                    m.d.sync += oi.eq(oi + 1)
                    with m.If(oi == nt - 1):
                        m.next = "IDLE"
        m.d.comb += [self.busy.eq(~fsm.ongoing("IDLE")), self.dump_data.eq(rp.data)]
        return m

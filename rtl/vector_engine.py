"""The vector engine: EMBED, QSTATS, QCODES and HGRN, element passes over the vector buffers, one element
per cycle, or V = ``hw.vector_lanes`` consecutive elements per cycle in QSTATS and QCODES (what each computes:
:class:`mmfree.sim.emulator.Emulator`).

QSTATS and QCODES handle every token of an element in the same cycle (the per-token buffers are one memory
per token): QSTATS feeds up to three :class:`~mmfree.rtl.quantize.QuantStats` per token in lock step and keeps
each token's ``P``, sum-of-squares shift ``sz`` and code reciprocal (a :class:`~mmfree.rtl.quantize.Reciprocal`
per slot and token); QCODES streams one slot's codes of every token into a bank of the ternary engine (one
column position per cycle) and, in the same pass, sums the squares and turns ``(P, S, sz)`` into
``(M, shift)`` (one :class:`~mmfree.rtl.quantize.OutputMultiplier`, the tokens in turn); HGRN runs
:class:`~mmfree.rtl.activation.MlgruUpdate` then :class:`~mmfree.rtl.activation.GatedProduct` token by token
and waits for each token's states before the next token (tree parents read them); EMBED copies one token's
embedding row after another through a DMA read client.

With V > 1 (the buffers banked by V, :mod:`mmfree.rtl.buffers`) QSTATS and QCODES run V QuantStats lanes per
slot and token on elements ``V g .. V g + V - 1`` of group g (lanes past ``count`` see u = 0, which adds 0
to every sum and maximum), combine the lanes' P and Z maxima and S sums at the vector's end (integers: the
order does not matter), and QCODES streams V codes per token and cycle (V Codes per token). HGRN and EMBED
stay at one element per cycle (HGRN reads its element's lane out of the group).
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from mmfree.rtl import activation as A
from mmfree.rtl import isa as I
from mmfree.rtl import quantize as Q
from mmfree.rtl import regmap as RM
from mmfree.rtl.axi import DmaReadClient, cmd_layout
from mmfree.rtl.buffers import (
    SHARED_BUFFERS,
    TOKEN_BUFFERS,
    lane_word,
    maxabs_feed,
    one_write,
    vector_read_port,
    write_port,
)
from mmfree.rtl.compiler import HwConfig
from mmfree.rtl.engines import FILL_BUFS, fill_layout, token_word
from mmfree.rtl.matvec import act_layout
from mmfree.rtl.pipeline import width_for
from mmfree.rtl.sequencer import dispatch_layout

#: The instructions of the vector engine.
VECTOR_OPS = ("QSTATS", "QCODES", "HGRN", "EMBED")


def slot_token(shape, tokens: int) -> data.ArrayLayout:
    """One value per quantizer slot and token: ``[slot][token]``."""
    return data.ArrayLayout(data.ArrayLayout(shape, tokens), I.SLOTS)


class VectorEngine(wiring.Component):
    """EMBED, QSTATS, QCODES and HGRN (see the module docstring).

    Ports: ``issue`` / ``dispatch`` (in): an instruction; ``done`` (out): a pulse when it finished;
    ``error`` / ``error_code`` (out, sticky until reset): ERR_NOT_LOADED (a LOAD-filled buffer it reads ran
    out with no LOAD running; detail the opcode) or ERR_TOKEN_RANGE (EMBED of a token >= vocab; detail the
    token index); ``k``, ``tokens[t]``, ``parents[t]`` (in): the pass (HGRN: a token whose parent is -1 starts
    from H0, one whose parent is ``-1 - s``, a root of stream s >= 1, from its own H, where LOAD HROOT put
    stream s's state); ``act_frac``, ``c_m[p]``, ``c_e[p]`` (in): constants; ``filled`` / ``loading`` (in):
    the load engine's fill counters; ``shx[t]`` / ``sha[t]``
    and ``x_done`` / ``a_done`` (in) with ``x_feed`` / ``a_feed`` (out): the :class:`~mmfree.rtl.buffers.NormTrack`
    of X and A; reads of every buffer (per token ``x[t]``, ..., ``t2[t]``; ``h0``, ``lb``, ``n``, ``nw[p]``;
    :func:`~mmfree.rtl.buffers.vector_read_port` of ``hw.vector_lanes``: V elements per read),
    writes of H (``h_w[t]``), X and A (``x_one`` / ``a_one``: one token's element, to the
    :class:`~mmfree.rtl.buffers.WriteArbiter`); ``codes`` (out): a column of every token's codes into the
    ternary engine's ``act`` (V columns per transfer); ``M[p][t]`` / ``S[p][t]`` (out): the output multiplier and shift of slot p,
    token t (registers); ``dma_cmd`` / ``dma_data``: EMBED's AXI read client.
    """

    def __init__(self, hw: HwConfig, addr_width: int = 40):
        self.hw, self.addr_width = hw, addr_width
        K, W, V = hw.max_tokens, hw.max_width, hw.vector_lanes
        self.kbits = width_for(K)
        super().__init__({
            "issue": In(1), "dispatch": In(dispatch_layout(addr_width)), "done": Out(1),
            "error": Out(1), "error_code": Out(32),
            "k": In(range(K + 1)), "tokens": In(data.ArrayLayout(unsigned(32), K)),
            "parents": In(data.ArrayLayout(signed(self.kbits + 1), K)),
            "act_frac": In(8), "c_m": In(data.ArrayLayout(unsigned(32), I.SLOTS)),
            "c_e": In(data.ArrayLayout(signed(32), I.SLOTS)),
            "filled": In(fill_layout(hw)), "loading": In(len(FILL_BUFS)),
            "shx": In(data.ArrayLayout(signed(Q.U_SHIFT_WIDTH), K)), "sha": In(data.ArrayLayout(signed(Q.U_SHIFT_WIDTH), K)),
            "x_done": In(range(K + 1)), "a_done": In(range(K + 1)),
            "x_feed": Out(maxabs_feed(K)), "a_feed": Out(maxabs_feed(K)),
            **{b: In(vector_read_port(shape, W, V)).array(K) for b, (shape, _) in TOKEN_BUFFERS.items()},
            **{b: In(vector_read_port(SHARED_BUFFERS[b], W, V)) for b in ("h0", "lb", "n")},
            "nw": In(vector_read_port(SHARED_BUFFERS["nw0"], W, V)).array(I.SLOTS),
            "h_w": In(write_port(TOKEN_BUFFERS["h"][0], W)).array(K),
            "x_one": Out(one_write(K, TOKEN_BUFFERS["x"][0], W)), "a_one": Out(one_write(K, TOKEN_BUFFERS["a"][0], W)),
            "codes": Out(stream.Signature(act_layout(K, I.BANKS, V))),
            "M": Out(slot_token(unsigned(Q.MULT_WIDTH), K)), "S": Out(slot_token(signed(Q.SHIFT_WIDTH), K)),
            "dma_cmd": Out(stream.Signature(cmd_layout(addr_width))),
            "dma_data": In(stream.Signature(unsigned(8 * hw.bus_bytes))),
        })

    def elaborate(self, platform):
        m = Module()
        W = self.hw.max_width
        d, ir = self.dispatch, self.dispatch.ir
        op, busy = Signal(8), Signal()
        v = SimpleNamespace(src=Signal(), nproj=Signal(2), slot=Signal(2), bank=Signal(2), count=Signal(range(W + 1)),
                  vocab=Signal(32), stride=Signal(20), eaddr=Signal(self.addr_width))
        with m.If(self.issue):
            m.d.sync += [op.eq(d.op), busy.eq(1)]
            with m.Switch(d.op):
                with m.Case(I.OPCODE["QSTATS"]):
                    m.d.sync += [v.src.eq(ir.qstats.src), v.nproj.eq(ir.qstats.nproj), v.count.eq(ir.qstats.count)]
                with m.Case(I.OPCODE["QCODES"]):
                    m.d.sync += [v.src.eq(ir.qcodes.src), v.slot.eq(ir.qcodes.slot), v.bank.eq(ir.qcodes.bank),
                                 v.count.eq(ir.qcodes.count)]
                with m.Case(I.OPCODE["HGRN"]):
                    m.d.sync += v.count.eq(ir.hgrn.count)
                with m.Case(I.OPCODE["EMBED"]):
                    m.d.sync += [v.count.eq(ir.embed.count), v.vocab.eq(ir.embed.vocab),
                                 v.stride.eq(ir.embed.stride16 << 4), v.eaddr.eq(d.addr)]
        v.is_ = {name: busy & (op == I.OPCODE[name]) for name in VECTOR_OPS}
        v.err = Signal()
        m.d.comb += self.error.eq(v.err)
        m.d.sync += self.done.eq(0)
        self._issue(m, v, op)
        stats_done, codes_done = self._quant(m, v)
        hgrn_done = self._hgrn(m, v)
        embed_done = self._embed(m, v)
        fin = Signal()
        m.d.comb += fin.eq(~v.start & ((v.is_["QSTATS"] & stats_done) | (v.is_["QCODES"] & codes_done)
                                       | (v.is_["HGRN"] & hgrn_done) | (v.is_["EMBED"] & embed_done)))
        with m.If(fin):
            m.d.sync += [busy.eq(0), self.done.eq(1)]
        return m

    def _raise(self, m, v, code, detail):
        """The first error sticks: ``error`` and ``error_code = code | detail << 8``."""
        with m.If(~v.err):
            m.d.sync += [v.err.eq(1), self.error_code.eq(code | (detail << 8))]

    def _issue(self, m, v, op):
        """Issue counters of QSTATS, QCODES and HGRN (element ``ji`` of token ``ti``), the fill check against
        the load engine, the buffer reads of the issued element, and stage 1 (its data are there)."""
        K = self.hw.max_tokens
        is_ = v.is_
        v.ti, v.ji = Signal(range(K + 1)), Signal(range(self.hw.max_width + 1))
        v.all_issued, v.start = Signal(), Signal()     # start: first cycle, counters are being cleared
        m.d.sync += v.start.eq(self.issue)
        with m.If(self.issue):
            m.d.sync += [v.ti.eq(0), v.ji.eq(0), v.all_issued.eq(0)]

        def need(b):
            """This instruction reads LOAD-filled buffer b."""
            if b == I.BUF_N:
                return is_["QSTATS"] | is_["QCODES"]
            if b in (I.BUF_NW0, I.BUF_NW1, I.BUF_NW2):
                p = b - I.BUF_NW0
                return (is_["QSTATS"] & (v.nproj > p)) | (is_["QCODES"] & (v.slot == p))
            return is_["HGRN"]                     # H0, LB

        V, lb = self.hw.vector_lanes, ceil_log2(self.hw.vector_lanes)
        # V > 1: QSTATS / QCODES take V elements (up to count) per cycle, HGRN one
        step = 1 if V == 1 else Mux(is_["HGRN"], 1, V)
        upto = Mux(is_["HGRN"], v.ji + 1, Mux(v.ji + V > v.count, v.count, v.ji + V))     # elements needed (V > 1)
        fill_ok, starving = Signal(), Signal()
        ok, starve = Const(1, 1), Const(0, 1)
        for i, b in enumerate(FILL_BUFS):
            short = need(b) & ((v.ji >= self.filled[i]) if V == 1 else (upto > self.filled[i]))
            ok, starve = ok & ~short, starve | (short & ~self.loading[i])
        m.d.comb += [fill_ok.eq(ok), starving.eq(starve)]
        v.hg_inflight = Signal(range(self.hw.max_width + 2))
        pass_ops = is_["QSTATS"] | is_["QCODES"] | is_["HGRN"]
        token_gate = ~is_["HGRN"] | (v.ji != 0) | (v.ti == 0) | (v.hg_inflight == 0)
        v.fire = Signal()
        m.d.comb += v.fire.eq(pass_ops & ~v.start & ~v.all_issued & fill_ok & token_gate)
        with m.If(pass_ops & ~v.start & ~v.all_issued & starving):
            self._raise(m, v, RM.ERR_NOT_LOADED, op)
        def last_element():      # the issued element (group) is its vector's last
            return (v.ji + 1 == v.count) if V == 1 else (v.ji + step >= v.count)

        with m.If(v.fire):
            with m.If(last_element()):
                m.d.sync += [v.ji.eq(0), v.ti.eq(v.ti + 1)]
                with m.If(is_["QSTATS"] | is_["QCODES"] | (v.ti + 1 == self.k)):   # QSTATS/QCODES: all tokens at once
                    m.d.sync += v.all_issued.eq(1)
            with m.Else():
                m.d.sync += v.ji.eq(v.ji + step)
        group = v.ji if V == 1 else v.ji[lb:]     # V > 1: the banks' word of element ji
        for b in TOKEN_BUFFERS:
            for port in getattr(self, b):
                m.d.comb += port.addr.eq(group)
        for port in (self.n, self.h0, self.lb, *self.nw):
            m.d.comb += port.addr.eq(group)
        par = Array(self.parents[t] for t in range(K))[v.ti]
        v.s1_v, v.s1_t, v.s1_last, v.s1_root = Signal(), Signal(range(K)), Signal(), Signal()
        v.s1_par = Signal(range(K))
        # a root of stream 0 (-1) reads H0; a root of stream s >= 1 (-1 - s) its own H (LOAD HROOT put it there)
        m.d.sync += [v.s1_v.eq(v.fire), v.s1_t.eq(v.ti), v.s1_last.eq(last_element()), v.s1_root.eq(par == -1),
                     v.s1_par.eq(Mux(par < -1, v.ti, par[:width_for(K - 1)].as_unsigned()))]
        # V > 1: HGRN's element within the group; QSTATS / QCODES: the group's lanes below count
        v.s1_lane, v.s1_mask = Signal(max(1, lb)), Signal(V)
        if V > 1:
            m.d.sync += [v.s1_lane.eq(v.ji[:lb]), v.s1_mask.eq(Cat(v.ji + j < v.count for j in range(V)))]

    def _quant(self, m, v):
        """QSTATS (all slots < nproj in lock step, all tokens < k side by side): P = max|u' nw_p| and the
        sum-of-squares shift sz of z = u' n per token, then the code reciprocal (R, k, sp) of P. QCODES (one
        slot): every token's codes into a bank, S = sum rshift_round(z, sz)**2, then (M, shift) per token.
        Returns (stats_done, codes_done)."""
        K = self.hw.max_tokens
        st = SimpleNamespace(**{name: Array(Array(Signal(shape, name=f"{name}{p}_{t}") for t in range(K))
                                  for p in range(I.SLOTS))
                      for name, shape in (("R", Q.R_WIDTH), ("KR", width_for(Q.K_MAX)), ("SP", Q.SP_WIDTH),
                                          ("P", Q.PMAX_WIDTH), ("SZ", Q.SZ_WIDTH), ("M", Q.MULT_WIDTH),
                                          ("S", signed(Q.SHIFT_WIDTH)))})
        for p in range(I.SLOTS):
            for t in range(K):
                m.d.comb += [self.M[p][t].eq(st.M[p][t]), self.S[p][t].eq(st.S[p][t])]
        qs, stats_done = self._stats(m, v, st)
        return stats_done, self._codes(m, v, st, qs)

    def _stats(self, m, v, st):
        """QuantStats (V lanes) and Reciprocal per slot and token (QSTATS; QCODES reuses the slot's QuantStats).
        Returns ``(qs, stats_done)``, ``qs[p][t]`` the V lanes of slot p, token t."""
        K, V, is_ = self.hw.max_tokens, self.hw.vector_lanes, v.is_
        piped = self.hw.pipelined_units
        qs = [[[Q.QuantStats(pipelined=piped) for _ in range(V)] for _ in range(K)] for _ in range(I.SLOTS)]
        stats_done = v.all_issued
        shx, sha = Array(self.shx[t] for t in range(K)), Array(self.sha[t] for t in range(K))
        for p in range(I.SLOTS):
            active = (is_["QSTATS"] & (v.nproj > p)) | (is_["QCODES"] & (v.slot == p))
            for t in range(K):
                r = Q.Reciprocal(pipelined=self.hw.pipelined_units)
                got_r, rc_req = Signal(name=f"got_r{p}_{t}"), Signal(name=f"rc_req{p}_{t}")
                for j, q in enumerate(qs[p][t]):
                    m.submodules[f"qstats{p}_{t}" if V == 1 else f"qstats{p}_{t}_l{j}"] = q
                    self._stats_lane(m, v, q, j, v.s1_v & active & (t < self.k), Mux(v.src, sha[t], shx[t]),
                                     st.SZ[p][t], p, t)
                m.submodules[f"recip{p}_{t}"] = r
                q = qs[p][t][0]        # the lanes run in lock step
                with m.If(q.o.valid & q.o.payload.last & is_["QSTATS"]):
                    P, sz = self._combined(qs[p][t])
                    m.d.sync += [st.P[p][t].eq(P), st.SZ[p][t].eq(sz), rc_req.eq(1)]
                m.d.comb += [r.i.valid.eq(rc_req), r.i.payload.P.eq(st.P[p][t]), r.o.ready.eq(1)]
                with m.If(r.i.valid & r.i.ready):
                    m.d.sync += rc_req.eq(0)
                with m.If(r.o.valid):
                    m.d.sync += [st.R[p][t].eq(r.o.payload.R), st.KR[p][t].eq(r.o.payload.k),
                                 st.SP[p][t].eq(r.o.payload.sp), got_r.eq(1)]
                with m.If(self.issue):
                    m.d.sync += got_r.eq(0)
                # the reciprocal is requested only at this instruction's P, so its result implies both
                stats_done = stats_done & ((v.nproj <= p) | (t >= self.k) | got_r)
        return qs, stats_done

    def _stats_lane(self, m, v, q, j, valid, shift, sz, p, t):
        """QuantStats lane ``j`` of slot p, token t: element ``V g + j`` of the issued group (u = 0 past count)."""
        pl = q.i.payload
        u = Mux(v.src, lane_word(self.a[t], j), lane_word(self.x[t], j))
        if self.hw.vector_lanes > 1:
            u = Mux(v.s1_mask[j], u, 0)
        m.d.comb += [q.i.valid.eq(valid), pl.u.eq(u), pl.n.eq(lane_word(self.n, j)),
                     pl.nw.eq(lane_word(self.nw[p], j)), pl.shift.eq(shift),
                     pl.sz.eq(sz), pl.last.eq(v.s1_last), q.o.ready.eq(1)]

    @staticmethod
    def _combined(lanes):
        """``(P, sz)`` of a vector from its QuantStats lanes' outputs on ``last``: P and Z the lanes' maxima,
        sz of Z (one lane: its own)."""
        if len(lanes) == 1:
            return lanes[0].o.payload.P, lanes[0].o.payload.sz
        return _tree(Q.maximum, [q.o.payload.P for q in lanes]), Q.sz_of(_tree(Q.maximum, [q.o.payload.Z for q in lanes]))

    def _codes(self, m, v, st, qs):
        """QCODES: the slot's p streams -> Codes per token and lane -> ``codes`` (every token of a column, or of
        V columns, at once); S (the lanes' sum) -> OutputMultiplier, one token per cycle. Returns codes_done."""
        K, W, V, k, slot = self.hw.max_tokens, self.hw.max_width, self.hw.vector_lanes, self.k, v.slot
        cds = [[Q.Codes(pipelined=self.hw.pipelined_units) for _ in range(V)] for _ in range(K)]
        m.submodules.outmul = om = Q.OutputMultiplier(pipelined=self.hw.pipelined_units)
        qos = [[Array(qs[p][t][j].o for p in range(I.SLOTS))[slot] for j in range(V)] for t in range(K)]
        S_lat = Array(Signal.like(qs[0][0][0].o.payload.S, name=f"S_lat{t}") for t in range(K))
        for t in range(K):
            for j, (cd, qo) in enumerate(zip(cds[t], qos[t])):
                m.submodules[f"codes{t}" if V == 1 else f"codes{t}_l{j}"] = cd
                m.d.comb += [cd.i.valid.eq(qo.valid & v.is_["QCODES"]), cd.i.payload.p.eq(qo.payload.p),
                             cd.i.payload.R.eq(st.R[slot][t]), cd.i.payload.k.eq(st.KR[slot][t]),
                             cd.i.payload.sp.eq(st.SP[slot][t]), cd.i.payload.last.eq(qo.payload.last),
                             cd.o.ready.eq(1)]
        vec_end = qos[0][0].valid & qos[0][0].payload.last & v.is_["QCODES"]
        om_t, om_go = Signal(range(K + 1)), Signal()       # next token into the OutputMultiplier (k: none left)
        with m.If(vec_end):           # S: the lanes' sums of squares (integers, any order)
            m.d.sync += [om_t.eq(0), *(S_lat[t].eq(_tree(lambda a, b: a + b, [qo.payload.S for qo in qos[t]]))
                                       for t in range(K))]
        with m.If(self.issue):
            m.d.sync += om_go.eq(0)
        with m.Elif(vec_end):
            m.d.sync += om_go.eq(1)
        m.d.comb += [om.i.valid.eq(om_go & (om_t < k)), om.i.payload.S.eq(S_lat[om_t]),
                     om.i.payload.P.eq(st.P[slot][om_t]), om.i.payload.sz.eq(st.SZ[slot][om_t]),
                     om.i.payload.c_m.eq(self.c_m[slot]), om.i.payload.c_e.eq(self.c_e[slot]), om.o.ready.eq(1)]
        with m.If(om.i.valid & om.i.ready):
            m.d.sync += om_t.eq(om_t + 1)
        om_cnt = Signal(range(K + 1))
        with m.If(self.issue):
            m.d.sync += om_cnt.eq(0)
        with m.If(om.o.valid):
            m.d.sync += [st.M[slot][om_cnt].eq(om.o.payload.M), st.S[slot][om_cnt].eq(om.o.payload.shift),
                         om_cnt.eq(om_cnt + 1)]
        jc, c_done = Signal(range(W + 1)), Signal()
        with m.If(self.issue):
            m.d.sync += [jc.eq(0), c_done.eq(0)]
        act = self.codes
        m.d.comb += [act.valid.eq(cds[0][0].o.valid), act.payload.bank.eq(v.bank), act.payload.first.eq(jc == 0)]
        for t in range(K):
            if V == 1:
                m.d.comb += [act.payload.code[t].eq(cds[t][0].o.payload.q), act.payload.en[t].eq(t < k)]
            else:
                m.d.comb += [*(act.payload.code[t][j].eq(cds[t][j].o.payload.q) for j in range(V)),
                             act.payload.en[t].eq(t < k)]
        with m.If(cds[0][0].o.valid):
            with m.If((jc + 1 == v.count) if V == 1 else (jc + V >= v.count)):
                m.d.sync += [jc.eq(0), c_done.eq(1)]
            with m.Else():
                m.d.sync += jc.eq(jc + V)
        return v.all_issued & c_done & (om_cnt == k)

    def _hgrn(self, m, v):
        """HGRN: the MLGRU update token by token (a token's parent state is its tree parent's), H and the gated A.
        Returns hgrn_done."""
        K, W, is_ = self.hw.max_tokens, self.hw.max_width, v.is_
        m.submodules.mlgru = mg = A.MlgruUpdate(pipelined=self.hw.pipelined_units)
        m.submodules.gp_h = gp = A.GatedProduct(pipelined=self.hw.pipelined_units)
        m.submodules.gq = gq = fifo.SyncFIFOBuffered(width=32, depth=64)
        hv = v.s1_v & is_["HGRN"]
        if self.hw.vector_lanes == 1:
            word, shared = token_word, (lambda port: port.data)
        else:                       # one element per cycle: its lane of the group read
            word = lambda ports, t: token_word([self._lane(v, p) for p in ports], t)      # noqa: E731
            shared = lambda port: self._lane(v, port).data                                  # noqa: E731
        m.d.comb += [mg.i.valid.eq(hv), mg.i.payload.h.eq(Mux(v.s1_root, shared(self.h0), word(self.h, v.s1_par))),
                     mg.i.payload.i.eq(word(self.t0, v.s1_t)), mg.i.payload.f.eq(word(self.t1, v.s1_t)),
                     mg.i.payload.one_minus_lb.eq(shared(self.lb)), mg.i.payload.frac.eq(self.act_frac),
                     mg.i.payload.last.eq(v.s1_last), mg.o.ready.eq(1),
                     gq.w_en.eq(hv), gq.w_data.eq(word(self.t2, v.s1_t))]
        th, jh = Signal(range(K + 1)), Signal(range(W + 1))
        ta, ja = Signal(range(K + 1)), Signal(range(W + 1))
        with m.If(self.issue):
            m.d.sync += [th.eq(0), jh.eq(0), ta.eq(0), ja.eq(0)]
        h_out = mg.o.valid & is_["HGRN"]
        for t in range(K):
            m.d.comb += [self.h_w[t].addr.eq(jh), self.h_w[t].data.eq(mg.o.payload.h), self.h_w[t].en.eq(h_out & (th == t))]
        m.d.comb += [gp.i.valid.eq(h_out), gp.i.payload.a.eq(gq.r_data.as_signed()), gp.i.payload.b.eq(mg.o.payload.h),
                     gp.i.payload.frac.eq(self.act_frac), gp.i.payload.last.eq(mg.o.payload.last),
                     gq.r_en.eq(h_out), gp.o.ready.eq(1)]
        _count_elements(m, h_out, jh, th, v.count)
        m.d.sync += v.hg_inflight.eq(v.hg_inflight + (v.fire & is_["HGRN"]) - h_out)
        with m.If(self.issue):
            m.d.sync += v.hg_inflight.eq(0)
        hg_a = gp.o.valid & is_["HGRN"]
        _count_elements(m, hg_a, ja, ta, v.count)
        _feed_one(m, self.a_feed, K, ta, gp.o.payload.u, ja + 1 == v.count, hg_a)
        m.d.comb += [self.a_one.en.eq(hg_a), self.a_one.t.eq(ta), self.a_one.addr.eq(ja),
                     self.a_one.data.eq(gp.o.payload.u)]
        mxa_cnt = Signal(range(K + 1))
        with m.If(self.issue):
            m.d.sync += mxa_cnt.eq(0)
        with m.Elif(is_["HGRN"]):
            m.d.sync += mxa_cnt.eq(mxa_cnt + self.a_done)
        return v.all_issued & (ta == self.k) & (mxa_cnt == self.k)

    def _lane(self, v, port):
        """Element ``s1_lane`` of a V-wide read (an object with its ``data``, for :func:`token_word`)."""
        return SimpleNamespace(data=Array(lane_word(port, j) for j in range(self.hw.vector_lanes))[v.s1_lane])

    def _embed(self, m, v):
        """EMBED: one DMA row per token into X (and its MaxAbs). Returns embed_done."""
        K, W, k, is_ = self.hw.max_tokens, self.hw.max_width, self.k, v.is_
        m.submodules.dma = dma = DmaReadClient(self.addr_width, self.hw.bus_bytes, max_fields=1)
        wiring.connect(m, dma.cmd, wiring.flipped(self.dma_cmd))
        wiring.connect(m, wiring.flipped(self.dma_data), dma.beat)
        te, je = Signal(range(K + 1)), Signal(range(W + 1))
        e_start, e_rows = Signal(), Signal()     # the DMA client restarts its unpacker / a row is being received
        m.d.sync += e_start.eq(0)
        mxx_cnt = Signal(range(K + 1))
        with m.If(self.issue):
            m.d.sync += [te.eq(0), je.eq(0), e_rows.eq(0), mxx_cnt.eq(0)]
        with m.Elif(is_["EMBED"]):
            m.d.sync += mxx_cnt.eq(mxx_cnt + self.x_done)
        tok = Array(self.tokens[t] for t in range(K))[te]
        row_addr = Signal(self.addr_width + 32)
        m.d.comb += row_addr.eq(v.eaddr + tok * v.stride)
        with m.If(is_["EMBED"] & ~v.start & ~e_rows & (te != k) & ~self.dma_cmd.valid):
            with m.If(tok >= v.vocab):
                self._raise(m, v, RM.ERR_TOKEN_RANGE, te)
            with m.Else():
                m.d.comb += [dma.req.eq(1), dma.addr.eq(row_addr[:self.addr_width]), dma.words.eq(v.count),
                             dma.fields.eq(1)]
                m.d.sync += [e_start.eq(1), e_rows.eq(1), je.eq(0)]
        m.d.comb += dma.rec.ready.eq(1)
        e_take = dma.rec.valid & is_["EMBED"] & e_rows & ~e_start
        word = dma.rec.payload.w[0].as_signed()
        with m.If(e_take):
            with m.If(je + 1 == v.count):
                m.d.sync += [je.eq(0), te.eq(te + 1), e_rows.eq(0)]
            with m.Else():
                m.d.sync += je.eq(je + 1)
        _feed_one(m, self.x_feed, K, te, word, je + 1 == v.count, e_take)
        m.d.comb += [self.x_one.en.eq(e_take), self.x_one.t.eq(te), self.x_one.addr.eq(je), self.x_one.data.eq(word)]
        return (te == k) & ~e_rows & (mxx_cnt == k)


def _tree(op, values):
    """``op`` over ``values`` as a balanced tree of two-input ``op``."""
    while len(values) > 1:
        values = [op(values[i], values[i + 1]) if i + 1 < len(values) else values[i] for i in range(0, len(values), 2)]
    return values[0]


def _count_elements(m, step, j, t, count):
    """Element ``j`` of token ``t``: on ``step``, the next element (the next token's first after ``count``)."""
    with m.If(step):
        with m.If(j + 1 == count):
            m.d.sync += [j.eq(0), t.eq(t + 1)]
        with m.Else():
            m.d.sync += j.eq(j + 1)


def _feed_one(m, feed, tokens: int, t, value, last, when):
    """One token's element ``value`` (token ``t``, ``last`` of its vector) into a MaxAbs feed when ``when``."""
    for tt in range(tokens):
        m.d.comb += [feed.valid[tt].eq(when & (t == tt)), feed.u[tt].eq(value), feed.last[tt].eq(last)]

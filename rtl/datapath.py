"""The accelerator's datapath: on-chip vector buffers, the four engines that execute dispatched instructions,
and the compute units of :mod:`mmfree.rtl.matvec`, :mod:`mmfree.rtl.quantize` and :mod:`mmfree.rtl.activation`
wired between them. What each instruction computes is defined by :class:`mmfree.sim.emulator.Emulator`.

Engines (each finishes its instructions in order and pulses ``done_pulse[engine]``):

* **load** (``LOAD``): DMA records of 1..4 int32 words into H0 / LB / N+NW0..2 through
  :class:`~mmfree.rtl.axi.WordUnpacker`; a fill counter per buffer lets readers start on the first element.
* **store** (``STORE``): per token, buffer words -> :class:`~mmfree.rtl.axi.WordPacker` -> AXI writes
  (any 4-byte aligned address); done when every write response is in.
* **vector** (``EMBED``, ``QSTATS``, ``QCODES``, ``HGRN``): element passes over the buffers, one element
  per cycle. QSTATS and QCODES handle every token of an element in the same cycle (the per-token buffers
  are one memory per token): QSTATS feeds up to three :class:`QuantStats` per token in lock step and keeps
  each token's ``P``, sum-of-squares shift ``sz`` and code reciprocal (a :class:`Reciprocal` per slot and
  token); QCODES streams one slot's codes of every token into a bank of the ternary engine (one column
  position per cycle) and, in the same pass, sums the squares and turns ``(P, S, sz)`` into ``(M, shift)``
  (one :class:`OutputMultiplier`, the tokens in turn); HGRN runs :class:`MlgruUpdate` then
  :class:`GatedProduct` token by token and waits for each token's states before the next token (tree
  parents read them); EMBED copies one token's row after another.
* **matvec** (``MATVEC``): the weight stream of the next command is requested while the current one runs
  (each weight port reads its rows ``p, p + P, ...`` into its weight queues); one lock-step
  :class:`TernaryMatVec` with ``hw.engines`` ways takes a beat of ``hw.engines`` rows side by side ->
  serialiser (the group's rows in order, one row per cycle with every token of it) -> a :class:`Dequantize`
  per token -> epilogue per token (STORE into T0-2, RESID ``X = sat(X + y)``, GLU ``A = silu(T0) * y``, HEAD
  logits into T0/T1 with a running :class:`Argmax` per token).

Writers of X and A keep each token's normalising shift up to date with a :class:`MaxAbs` per token.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.pymodel import numerics as N
from mmfree.rtl import activation as A
from mmfree.rtl import isa as I
from mmfree.rtl import quantize as Q
from mmfree.rtl import regmap as RM
from mmfree.rtl.axi import BEATS_WIDTH, DmaReadClient, WordPacker, cmd_layout, row_cmd_layout
from mmfree.rtl.compiler import HwConfig
from mmfree.rtl.decoder import ENGINE_ID, field
from mmfree.rtl.matvec import TernaryMatVec
from mmfree.rtl.pipeline import width_for
from mmfree.rtl.sequencer import dispatch_layout, fetch_layout

#: Argmax index width: vocabularies up to 2**24.
MAX_VOCAB = 1 << 24


def token_word(ports, t):
    """The word read by token ``t``'s port of a per-token buffer (one read port per token memory)."""
    return Array(port.data for port in ports)[t] if len(ports) > 1 else ports[0].data


def mv_cmd_fire(mv):
    return mv.cmd.valid & mv.cmd.ready


class SharedWrite(wiring.Component):
    """The write ports (one per token) of a per-token buffer that two engines write, never at the same time:
    ``one_*`` writes one token's element (the vector engine: EMBED into X, HGRN into A), ``row_*`` every
    token's element of a row (the matvec epilogue: ``row_en`` per token). ``one_en`` wins the address and data;
    ``port[t]`` goes to token t's memory write port."""

    def __init__(self, tokens: int, shape, depth: int):
        self.tokens = tokens
        port = data.StructLayout({"en": unsigned(1), "addr": unsigned(32), "data": shape})
        super().__init__({
            "one_en": In(1), "one_t": In(range(tokens + 1)), "one_addr": In(range(depth + 1)), "one_data": In(shape),
            "row_en": In(tokens), "row_addr": In(32), "row_data": In(data.ArrayLayout(shape, tokens)),
            "port": Out(port).array(tokens),
        })

    def elaborate(self, platform):
        m = Module()
        for t in range(self.tokens):
            m.d.comb += [self.port[t].en.eq((self.one_en & (self.one_t == t)) | self.row_en[t]),
                         self.port[t].addr.eq(Mux(self.one_en, self.one_addr, self.row_addr)),
                         self.port[t].data.eq(Mux(self.one_en, self.one_data, self.row_data[t]))]
        return m


class Datapath(wiring.Component):
    def __init__(self, hw: HwConfig, addr_width: int = 40, weight_fifo_beats: int = 2048):
        self.hw, self.addr_width, self.weight_fifo_beats = hw, addr_width, weight_fifo_beats
        K = hw.max_tokens
        self.kbits = width_for(K)
        bb = hw.bus_bytes
        super().__init__({
            "issue": In(1), "dispatch": In(dispatch_layout(addr_width)),
            "done_pulse": Out(4),
            "error": Out(1), "error_code": Out(32),
            "k": In(range(K + 1)), "write_logits": In(1),
            "tokens": In(data.ArrayLayout(unsigned(32), K)),
            "parents": In(data.ArrayLayout(signed(self.kbits + 1), K)),
            "act_frac": In(8),
            "c_m": In(data.ArrayLayout(unsigned(32), I.SLOTS)),
            "c_e": In(data.ArrayLayout(signed(32), I.SLOTS)),
            "vec_cmd": Out(stream.Signature(cmd_layout(addr_width))),
            "vec_data": In(stream.Signature(unsigned(8 * bb))),
            "load_cmd": Out(stream.Signature(cmd_layout(addr_width))),
            "load_data": In(stream.Signature(unsigned(8 * bb))),
            "fetch": In(stream.Signature(fetch_layout(addr_width))),
            **{f"w{p}_cmd": Out(stream.Signature(row_cmd_layout(addr_width))) for p in range(hw.weight_ports)},
            **{f"w{p}_data": In(stream.Signature(unsigned(8 * bb))) for p in range(hw.weight_ports)},
            "st_cmd": Out(stream.Signature(cmd_layout(addr_width))),
            "st_data": Out(stream.Signature(data.StructLayout({"data": unsigned(8 * bb), "strb": unsigned(bb)}))),
            "wr_quiet": In(1),
            "stall": Out(1),
            "arg_last": Out(32),
            "args": Out(data.ArrayLayout(unsigned(32), K)),       # every token's argmax (the draft-verify loop)
        })

    # ------------------------------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        K, W = hw.max_tokens, hw.max_width
        d = self.dispatch
        k = self.k

        # ---- buffers ----------------------------------------------------------------------------------------
        # Per-token vectors (X, A, H, T0-2) are K memories of W words, token t's vector in memory t, so the
        # QSTATS / QCODES passes and the matvec epilogue handle every token of an element in the same cycle;
        # shared vectors (H0, LB, N, NW0-2) are one memory each.
        def mem(name, shape):
            mm = Memory(shape=shape, depth=W, init=[])
            m.submodules["buf_" + name] = mm
            return mm

        def tmem(name, shape, reads):
            """Token t's memory of buffer ``name``: (write ports [t], read ports [r][t])."""
            mems = [mem(f"{name}_t{t}", shape) for t in range(K)]
            return [mm.write_port() for mm in mems], [[mm.read_port() for mm in mems] for _ in range(reads)]

        VEC = signed(Q.VEC_WIDTH)
        xw, (xr1, xr2) = tmem("x", signed(32), 2)
        aw, (ar1,) = tmem("a", signed(64), 1)
        # X and A: one writer at a time, the vector engine (one token) or the matvec epilogue (a row)
        m.submodules.x_write = xarb = SharedWrite(K, signed(32), W)
        m.submodules.a_write = aarb = SharedWrite(K, signed(64), W)
        for arb, ports in ((xarb, xw), (aarb, aw)):
            for t in range(K):
                m.d.comb += [ports[t].en.eq(arb.port[t].en), ports[t].addr.eq(arb.port[t].addr),
                             ports[t].data.eq(arb.port[t].data)]
        hw_, (hr1, hr2) = tmem("h", signed(32), 2)
        tw, tr = [], []
        for i, reads in enumerate((3, 2, 1)):
            w_, r_ = tmem(f"t{i}", signed(32), reads)
            tw.append(w_)
            tr.append(r_)
        (t0r1, t0r2, t0r3), (t1r1, t1r2), (t2r1,) = tr
        bH0, bLB = mem("h0", signed(32)), mem("lb", unsigned(32))
        bN = mem("n", VEC)
        bNW = [mem(f"nw{i}", VEC) for i in range(I.SLOTS)]
        h0w, lbw, nw_ = bH0.write_port(), bLB.write_port(), bN.write_port()
        nww = [b.write_port() for b in bNW]
        h0r, lbr, nr = bH0.read_port(), bLB.read_port(), bN.read_port()
        nwr = [b.read_port() for b in bNW]

        # ---- shared per-token state -------------------------------------------------------------------------
        SHW = Q.U_SHIFT_WIDTH
        shx = Array(Signal(signed(SHW), name=f"shx{t}") for t in range(K))
        sha = Array(Signal(signed(SHW), name=f"sha{t}") for t in range(K))
        Mr = Array(Array(Signal(Q.MULT_WIDTH, name=f"M{p}_{t}") for t in range(K)) for p in range(I.SLOTS))
        Sr = Array(Array(Signal(signed(Q.SHIFT_WIDTH), name=f"S{p}_{t}") for t in range(K)) for p in range(I.SLOTS))
        Rr = Array(Array(Signal(Q.R_WIDTH, name=f"R{p}_{t}") for t in range(K)) for p in range(I.SLOTS))
        KRr = Array(Array(Signal(width_for(Q.K_MAX), name=f"KR{p}_{t}") for t in range(K)) for p in range(I.SLOTS))
        SPr = Array(Array(Signal(Q.SP_WIDTH, name=f"SP{p}_{t}") for t in range(K)) for p in range(I.SLOTS))
        Pr = Array(Array(Signal(Q.PMAX_WIDTH, name=f"P{p}_{t}") for t in range(K)) for p in range(I.SLOTS))
        SZr = Array(Array(Signal(Q.SZ_WIDTH, name=f"SZ{p}_{t}") for t in range(K)) for p in range(I.SLOTS))
        arg = Array(Signal(32, name=f"arg{t}") for t in range(K))
        m.d.comb += self.arg_last.eq(arg[k - 1])
        for t in range(K):
            m.d.comb += self.args[t].eq(arg[t])
        tokens = Array(self.tokens[t] for t in range(K))
        parents = Array(self.parents[t] for t in range(K))

        done = Signal(4)
        m.d.comb += self.done_pulse.eq(done)
        m.d.sync += done.eq(0)
        err = Signal()
        err_code = Signal(32)
        m.d.comb += [self.error.eq(err), self.error_code.eq(err_code)]

        def raise_error(code, detail):
            with m.If(~err):
                m.d.sync += [err.eq(1), err_code.eq(code | (detail << 8))]

        def issued(engine):
            return self.issue & (d.engine == ENGINE_ID[engine])

        # MaxAbs per token for X and A (inputs OR-ed: their writers never run at the same time)
        mx_x = [Q.MaxAbs() for _ in range(K)]
        mx_a = [Q.MaxAbs() for _ in range(K)]
        for t in range(K):
            m.submodules[f"maxabs_x{t}"] = mx_x[t]
            m.submodules[f"maxabs_a{t}"] = mx_a[t]
            m.d.comb += [mx_x[t].o.ready.eq(1), mx_a[t].o.ready.eq(1)]
            with m.If(mx_x[t].o.valid):
                m.d.sync += shx[t].eq(mx_x[t].o.payload.shift)
            with m.If(mx_a[t].o.valid):
                m.d.sync += sha[t].eq(mx_a[t].o.payload.shift)
        mx_x_out = Signal(range(K + 1))
        mx_a_out = Signal(range(K + 1))
        m.d.comb += [mx_x_out.eq(sum(mx_x[t].o.valid for t in range(K))), mx_a_out.eq(sum(mx_a[t].o.valid for t in range(K)))]
        mx_x_in = [(Signal(name=f"mxx_v{t}"), Signal(signed(64), name=f"mxx_u{t}"), Signal(name=f"mxx_l{t}"))
                   for t in range(K)]
        mx_a_in = [(Signal(name=f"mxa_v{t}"), Signal(signed(64), name=f"mxa_u{t}"), Signal(name=f"mxa_l{t}"))
                   for t in range(K)]
        for t in range(K):
            for unit, (v, u, last) in ((mx_x[t], mx_x_in[t]), (mx_a[t], mx_a_in[t])):
                m.d.comb += [unit.i.valid.eq(v), unit.i.payload.u.eq(u), unit.i.payload.last.eq(last)]

        def feed_max(ins, t, value, last, when):
            for tt in range(K):
                v, u, lst = ins[tt]
                with m.If(when & (t == tt)):
                    m.d.comb += [v.eq(1), u.eq(value), lst.eq(last)]

        # ---- fill counters of LOAD destinations ---------------------------------------------------------------
        fill_bufs = [I.BUF_H0, I.BUF_LB, I.BUF_N, I.BUF_NW0, I.BUF_NW1, I.BUF_NW2]
        filled = {b: Signal(range(W + 1), name=f"filled_{I.BUFFERS[b]}") for b in fill_bufs}
        loading = {b: Signal(name=f"loading_{I.BUFFERS[b]}") for b in fill_bufs}

        # LOAD HROOT: a stream's start state into the H memories of its roots (written by the load engine, merged
        # with HGRN's writes in _vec_hgrn: the scoreboard never runs the two at once)
        hroot = SimpleNamespace(we=Signal(K, name="hroot_we"), addr=Signal(range(W), name="hroot_addr"),
                                data=Signal(signed(32), name="hroot_data"))
        self._load_engine(m, d, issued, done, filled, loading, h0w, lbw, nw_, nww, hroot, parents)
        self._store_engine(m, d, issued, done, k, hr2, t0r3, t1r2, arg)
        # one lock-step engine computing hw.engines rows side by side (one code memory read serves them all)
        m.submodules.matvec0 = mv = TernaryMatVec(lanes=hw.lanes, tokens=K, max_k=W, banks=I.BANKS, max_rows=W,
                                                  ways=hw.engines)
        self._vector_engine(m, d, issued, done, k, tokens, parents, filled, loading, raise_error,
                            shx, sha, Mr, Sr, Rr, KRr, SPr, Pr, SZr, xarb, aarb, hw_, xr1, ar1, hr1, h0r, lbr, nr, nwr,
                            t0r1, t1r1, t2r1, mx_x_in, mx_a_in, mx_x_out, mx_a_out, feed_max, mv, hroot)
        self._matvec_engine(m, d, issued, done, k, Mr, Sr, arg, xarb, aarb, tw, xr2, t0r2,
                            mx_x_in, mx_a_in, mx_x_out, mx_a_out, feed_max, mv)
        return m

    # ------------------------------------------------------------------------------------------------------
    def _load_engine(self, m, d, issued, done, filled, loading, h0w, lbw, nw_, nww, hroot, parents):
        hw = self.hw
        bb = hw.bus_bytes
        m.submodules.ld_dma = dma = DmaReadClient(self.addr_width, bb, max_fields=1 + I.SLOTS)
        wiring.connect(m, dma.cmd, wiring.flipped(self.load_cmd))
        wiring.connect(m, wiring.flipped(self.load_data), dma.beat)
        busy = Signal()
        dst = Signal(2)
        fields = Signal(3)
        stream = Signal(4)
        count = Signal(32)
        j = Signal(32)
        start = Signal()                       # the DMA client restarts its unpacker this cycle
        m.d.sync += start.eq(0)
        with m.If(issued("load")):
            fl = d.ir.load.fields
            cnt = d.ir.load.count
            dd = d.ir.load.dst
            m.d.comb += [dma.req.eq(1), dma.addr.eq(d.addr), dma.words.eq(cnt * fl), dma.fields.eq(fl)]
            m.d.sync += [busy.eq(1), dst.eq(dd), fields.eq(fl), count.eq(cnt), j.eq(0), start.eq(1),
                         stream.eq(d.ir.load.stream)]
            targets = {I.LD_H0: [I.BUF_H0], I.LD_LB: [I.BUF_LB]}
            for dv, bufs in targets.items():
                with m.If(dd == dv):
                    for b in bufs:
                        m.d.sync += [filled[b].eq(0), loading[b].eq(1)]
            with m.If(dd == I.LD_NORM):
                m.d.sync += [filled[I.BUF_N].eq(0), loading[I.BUF_N].eq(1)]
                for p in range(I.SLOTS):
                    with m.If(fl > p + 1):
                        m.d.sync += [filled[I.BUF_NW0 + p].eq(0), loading[I.BUF_NW0 + p].eq(1)]
        rec = dma.rec
        m.d.comb += rec.ready.eq(1)
        take = rec.valid & busy & ~start
        w = rec.payload.w
        m.d.comb += [hroot.addr.eq(j), hroot.data.eq(w[0].as_signed())]
        m.d.comb += [h0w.addr.eq(j), h0w.data.eq(w[0]), lbw.addr.eq(j), lbw.data.eq(w[0]),
                     nw_.addr.eq(j), nw_.data.eq(w[0])]
        for p in range(I.SLOTS):
            m.d.comb += [nww[p].addr.eq(j), nww[p].data.eq(w[1 + p])]
        with m.If(take):
            m.d.sync += j.eq(j + 1)
            with m.Switch(dst):
                with m.Case(I.LD_H0):
                    m.d.comb += h0w.en.eq(1)
                    m.d.sync += filled[I.BUF_H0].eq(j + 1)
                with m.Case(I.LD_LB):
                    m.d.comb += lbw.en.eq(1)
                    m.d.sync += filled[I.BUF_LB].eq(j + 1)
                with m.Case(I.LD_HROOT):
                    for t in range(len(hroot.we)):
                        m.d.comb += hroot.we[t].eq(parents[t] == -1 - stream)
                with m.Case(I.LD_NORM):
                    m.d.comb += nw_.en.eq(1)
                    m.d.sync += filled[I.BUF_N].eq(j + 1)
                    for p in range(I.SLOTS):
                        with m.If(fields > p + 1):
                            m.d.comb += nww[p].en.eq(1)
                            m.d.sync += filled[I.BUF_NW0 + p].eq(j + 1)
            with m.If(j + 1 == count):
                m.d.sync += [busy.eq(0), done[ENGINE_ID["load"]].eq(1)]
                for b in loading:
                    m.d.sync += loading[b].eq(0)

    # ------------------------------------------------------------------------------------------------------
    def _store_engine(self, m, d, issued, done, k, hr2, t0r3, t1r2, arg):
        hw = self.hw
        bb, lg_bb, bw = hw.bus_bytes, hw.bus_bytes.bit_length() - 1, hw.bus_bytes // 4
        K = hw.max_tokens
        m.submodules.st_pack = pk = WordPacker(bus_bytes=bb)
        wiring.connect(m, pk.beat, wiring.flipped(self.st_data))
        m.submodules.st_words = wq = fifo.SyncFIFOBuffered(width=32, depth=4)
        m.d.comb += [pk.word.payload.eq(wq.r_data), pk.word.valid.eq(wq.r_rdy), wq.r_en.eq(pk.word.ready)]
        src = Signal(2)
        count = Signal(32)
        tstride = Signal(32)
        addr = Signal(self.addr_width + 32)
        t = Signal(range(K + 1))
        j = Signal(32)
        pend = Signal()
        cmd_v = Signal()
        cmd_a = Signal(self.addr_width)
        cmd_n = Signal(BEATS_WIDTH)
        m.d.comb += [self.st_cmd.valid.eq(cmd_v), self.st_cmd.payload.addr.eq(cmd_a), self.st_cmd.payload.beats.eq(cmd_n)]
        with m.If(self.st_cmd.valid & self.st_cmd.ready):
            m.d.sync += cmd_v.eq(0)
        pstart = Signal()
        m.d.sync += pstart.eq(0)
        lead = Signal(range(bw))
        m.d.comb += [pk.start.eq(pstart), pk.lead.eq(lead), pk.count.eq(count)]
        ir = d.ir
        # word source: one buffer read per cycle while the word queue has room (every token's memory is
        # read at j; the word is token t's, t as it was at the read)
        rd = Signal()
        t_rd = Signal.like(t)
        for ports in (hr2, t0r3, t1r2):
            for port in ports:
                m.d.comb += port.addr.eq(j)
        m.d.sync += [pend.eq(rd), t_rd.eq(t)]
        word = Mux(src == I.ST_H, token_word(hr2, t_rd),
                   Mux(src == I.ST_T0, token_word(t0r3, t_rd), Mux(src == I.ST_T1, token_word(t1r2, t_rd), 0)))
        argw = Signal(32)
        m.d.sync += argw.eq(arg[t])
        m.d.comb += [wq.w_data.eq(Mux(src == I.ST_ARG, argw, word)), wq.w_en.eq(pend)]
        with m.FSM(name="store"):
            with m.State("IDLE"):
                with m.If(issued("store")):
                    m.d.sync += [src.eq(field(ir, "src", "STORE")), count.eq(field(ir, "count", "STORE")),
                                 tstride.eq(field(ir, "tstride", "STORE")), addr.eq(d.addr), t.eq(0)]
                    with m.If(d.skip_store):
                        m.d.sync += done[ENGINE_ID["store"]].eq(1)
                    with m.Else():
                        m.next = "TOKEN"
            with m.State("TOKEN"):
                with m.If(~pk.busy & ~cmd_v & ~wq.r_rdy & ~pend):
                    ld = addr[2:lg_bb]
                    nbe = (ld + count + (bw - 1)) >> (lg_bb - 2)
                    m.d.sync += [cmd_v.eq(1), cmd_a.eq(Cat(Const(0, lg_bb), addr[lg_bb:self.addr_width])),
                                 cmd_n.eq(nbe), pstart.eq(1), lead.eq(ld), j.eq(0)]
                    m.next = "WORDS"
            with m.State("WORDS"):
                with m.If(~pstart & (wq.level + pend < 3)):
                    m.d.comb += rd.eq(1)
                    m.d.sync += j.eq(j + 1)
                    with m.If(j + 1 == count):
                        m.d.sync += [t.eq(t + 1), addr.eq(addr + tstride)]
                        with m.If(t + 1 == k):
                            m.next = "FINISH"
                        with m.Else():
                            m.next = "TOKEN"
            with m.State("FINISH"):
                with m.If(~pk.busy & ~cmd_v & ~wq.r_rdy & ~pend & self.wr_quiet):
                    m.d.sync += done[ENGINE_ID["store"]].eq(1)
                    m.next = "IDLE"

    # ------------------------------------------------------------------------------------------------------
    def _vector_engine(self, m, d, issued, done, k, tokens, parents, filled, loading, raise_error,
                       shx, sha, Mr, Sr, Rr, KRr, SPr, Pr, SZr, xarb, aarb, hw_, xr1, ar1, hr1, h0r, lbr, nr, nwr,
                       t0r1, t1r1, t2r1, mx_x_in, mx_a_in, mx_x_out, mx_a_out, feed_max, mv, hroot):
        hw = self.hw
        K, W, bb = hw.max_tokens, hw.max_width, hw.bus_bytes
        ir = d.ir
        op = Signal(8)
        busy = Signal()
        src = Signal()
        nproj = Signal(2)
        slot = Signal(2)
        bank = Signal(2)
        count = Signal(range(W + 1))
        vocab = Signal(32)
        stride = Signal(20)
        eaddr = Signal(self.addr_width)
        OPC = I.OPCODE
        with m.If(issued("vector")):
            m.d.sync += [op.eq(d.op), busy.eq(1)]
            with m.Switch(d.op):
                with m.Case(OPC["QSTATS"]):
                    m.d.sync += [src.eq(field(ir, "src", "QSTATS")), nproj.eq(field(ir, "nproj", "QSTATS")),
                                 count.eq(field(ir, "count", "QSTATS"))]
                with m.Case(OPC["QCODES"]):
                    m.d.sync += [src.eq(field(ir, "src", "QCODES")), slot.eq(field(ir, "slot", "QCODES")),
                                 bank.eq(field(ir, "bank", "QCODES")), count.eq(field(ir, "count", "QCODES"))]
                with m.Case(OPC["HGRN"]):
                    m.d.sync += count.eq(field(ir, "count", "HGRN"))
                with m.Case(OPC["EMBED"]):
                    m.d.sync += [count.eq(field(ir, "count", "EMBED")), vocab.eq(field(ir, "vocab", "EMBED")),
                                 stride.eq(field(ir, "stride16", "EMBED") << 4), eaddr.eq(d.addr)]
        is_ = {name: busy & (op == OPC[name]) for name in ("QSTATS", "QCODES", "HGRN", "EMBED")}

        # ---- issue counters (QSTATS, QCODES, HGRN) ---------------------------------------------------------
        ti = Signal(range(K + 1))
        ji = Signal(range(W + 1))
        all_issued = Signal()
        start = Signal()        # first cycle of an instruction: counters are being cleared
        m.d.sync += start.eq(issued("vector"))
        with m.If(issued("vector")):
            m.d.sync += [ti.eq(0), ji.eq(0), all_issued.eq(0)]

        def need(b):
            """This instruction reads LOAD-filled buffer b."""
            c = Const(0, 1)
            if b == I.BUF_N:
                c = is_["QSTATS"] | is_["QCODES"]
            elif b in (I.BUF_NW0, I.BUF_NW1, I.BUF_NW2):
                p = b - I.BUF_NW0
                c = (is_["QSTATS"] & (nproj > p)) | (is_["QCODES"] & (slot == p))
            elif b in (I.BUF_H0, I.BUF_LB):
                c = is_["HGRN"]
            return c

        fill_ok = Signal()
        starving = Signal()
        ok = Const(1, 1)
        starve = Const(0, 1)
        for b in filled:
            short = need(b) & (ji >= filled[b])
            ok = ok & ~short
            starve = starve | (short & ~loading[b])
        m.d.comb += [fill_ok.eq(ok), starving.eq(starve)]
        hg_inflight = Signal(range(W + 2))
        pass_ops = is_["QSTATS"] | is_["QCODES"] | is_["HGRN"]
        token_gate = ~is_["HGRN"] | (ji != 0) | (ti == 0) | (hg_inflight == 0)
        fire = Signal()
        m.d.comb += fire.eq(pass_ops & ~start & ~all_issued & fill_ok & token_gate)
        with m.If(pass_ops & ~start & ~all_issued & starving):
            raise_error(RM.ERR_NOT_LOADED, op)
        par_ops = is_["QSTATS"] | is_["QCODES"]     # every token of an element at once
        with m.If(fire):
            with m.If(ji + 1 == count):
                m.d.sync += [ji.eq(0), ti.eq(ti + 1)]
                with m.If(par_ops | (ti + 1 == k)):
                    m.d.sync += all_issued.eq(1)
            with m.Else():
                m.d.sync += ji.eq(ji + 1)
        # reads for the element being issued (every token's memory at ji); its data is there in stage 1
        par = parents[ti]
        for ports in (xr1, ar1, hr1, t0r1, t1r1, t2r1):
            for port in ports:
                m.d.comb += port.addr.eq(ji)
        m.d.comb += [nr.addr.eq(ji), h0r.addr.eq(ji), lbr.addr.eq(ji)]
        for p in range(I.SLOTS):
            m.d.comb += nwr[p].addr.eq(ji)
        s1_v, s1_t, s1_last, s1_root = Signal(), Signal(range(K)), Signal(), Signal()
        s1_par = Signal(range(K))
        # a root of stream 0 (-1) reads H0; a root of stream s >= 1 (-1 - s) its own H (LOAD HROOT put it there)
        m.d.sync += [s1_v.eq(fire), s1_t.eq(ti), s1_last.eq(ji + 1 == count), s1_root.eq(par == -1),
                     s1_par.eq(Mux(par < -1, ti, par[:width_for(K - 1)].as_unsigned()))]

        # ---- QSTATS / QCODES: QuantStats per slot and token ----------------------------------------------------
        # QSTATS (all slots < nproj in lock step, all tokens < k side by side): P = max|u' nw_p| and the
        # sum-of-squares shift sz of z = u' n per token, then the code reciprocal (R, k, sp) of P.
        # QCODES (one slot): every token's codes into a bank, S = sum rshift_round(z, sz)**2, then (M, shift)
        # of the slot per token (one OutputMultiplier, tokens in turn).
        codes_done, fin, stats_done, t = self._vec_quant(SimpleNamespace(K=K, KRr=KRr, Mr=Mr, Pr=Pr, Rr=Rr, SPr=SPr,
            SZr=SZr, Sr=Sr, W=W, all_issued=all_issued, ar1=ar1, bank=bank, count=count, is_=is_, issued=issued,
            k=k, m=m, mv=mv, nproj=nproj, nr=nr, nwr=nwr, p=p, s1_last=s1_last, s1_v=s1_v, sha=sha, shx=shx,
            slot=slot, src=src, xr1=xr1))

        # ---- HGRN (token by token: a token's parent state is its tree parent's, computed just before) ----------
        gp, hg_a, hgrn_done, ja, ta = self._vec_hgrn(SimpleNamespace(K=K, W=W, all_issued=all_issued, count=count,
            feed_max=feed_max, fire=fire, h0r=h0r, hg_inflight=hg_inflight, hr1=hr1, hw_=hw_, is_=is_,
            issued=issued, k=k, lbr=lbr, m=m, mx_a_in=mx_a_in, mx_a_out=mx_a_out, s1_last=s1_last, s1_par=s1_par,
            hroot=hroot,
            s1_root=s1_root, s1_t=s1_t, s1_v=s1_v, t=t, t0r1=t0r1, t1r1=t1r1, t2r1=t2r1))

        # ---- EMBED ---------------------------------------------------------------------------------------------
        e_take, embed_done, erec, je, te = self._vec_embed(SimpleNamespace(K=K, W=W, bb=bb, count=count,
            eaddr=eaddr, feed_max=feed_max, is_=is_, issued=issued, k=k, m=m, mx_x_in=mx_x_in, mx_x_out=mx_x_out,
            raise_error=raise_error, start=start, stride=stride, tokens=tokens, vocab=vocab))

        # ---- buffer writes owned by this engine ------------------------------------------------------------------
        m.d.comb += [xarb.one_en.eq(e_take), xarb.one_t.eq(te), xarb.one_addr.eq(je),
                     xarb.one_data.eq(erec.payload.w[0].as_signed()),
                     aarb.one_en.eq(hg_a), aarb.one_t.eq(ta), aarb.one_addr.eq(ja), aarb.one_data.eq(gp.o.payload.u)]

        # ---- completion -----------------------------------------------------------------------------------------
        fin = Signal()
        m.d.comb += fin.eq(~start & ((is_["QSTATS"] & stats_done) | (is_["QCODES"] & codes_done)
                                     | (is_["HGRN"] & hgrn_done) | (is_["EMBED"] & embed_done)))
        with m.If(fin):
            m.d.sync += [busy.eq(0), done[ENGINE_ID["vector"]].eq(1)]

    def _vec_quant(self, v):
        """QSTATS / QCODES: QuantStats and Reciprocal per slot and token, Codes into the ternary engine's banks, (M,
        shift) per token."""
        (K, KRr, Mr, Pr, Rr, SPr, SZr, Sr, W, all_issued, ar1, bank, count, is_, issued, k, m, mv, nproj, nr,
         nwr, p, s1_last, s1_v, sha, shx, slot, src, xr1) = (
            v.K, v.KRr, v.Mr, v.Pr, v.Rr, v.SPr, v.SZr, v.Sr, v.W, v.all_issued, v.ar1, v.bank, v.count, v.is_,
            v.issued, v.k, v.m, v.mv, v.nproj, v.nr, v.nwr, v.p, v.s1_last, v.s1_v, v.sha, v.shx, v.slot, v.src,
            v.xr1)
        qs = [[Q.QuantStats() for _ in range(K)] for _ in range(I.SLOTS)]
        rc = [[Q.Reciprocal() for _ in range(K)] for _ in range(I.SLOTS)]
        got_r = [[Signal(name=f"got_r{p}_{t}") for t in range(K)] for p in range(I.SLOTS)]
        rc_req = [[Signal(name=f"rc_req{p}_{t}") for t in range(K)] for p in range(I.SLOTS)]
        stats_done = all_issued
        for p in range(I.SLOTS):
            active = (is_["QSTATS"] & (nproj > p)) | (is_["QCODES"] & (slot == p))
            for t in range(K):
                q, r = qs[p][t], rc[p][t]
                m.submodules[f"qstats{p}_{t}"] = q
                m.submodules[f"recip{p}_{t}"] = r
                pl = q.i.payload
                m.d.comb += [q.i.valid.eq(s1_v & active & (t < k)),
                             pl.u.eq(Mux(src, ar1[t].data, xr1[t].data)), pl.n.eq(nr.data), pl.nw.eq(nwr[p].data),
                             pl.shift.eq(Mux(src, sha[t], shx[t])), pl.sz.eq(SZr[p][t]), pl.last.eq(s1_last),
                             q.o.ready.eq(1)]
                fin = q.o.valid & q.o.payload.last & is_["QSTATS"]
                with m.If(fin):
                    m.d.sync += [Pr[p][t].eq(q.o.payload.P), SZr[p][t].eq(q.o.payload.sz), rc_req[p][t].eq(1)]
                m.d.comb += [r.i.valid.eq(rc_req[p][t]), r.i.payload.P.eq(Pr[p][t]), r.o.ready.eq(1)]
                with m.If(r.i.valid & r.i.ready):
                    m.d.sync += rc_req[p][t].eq(0)
                with m.If(r.o.valid):
                    m.d.sync += [Rr[p][t].eq(r.o.payload.R), KRr[p][t].eq(r.o.payload.k),
                                 SPr[p][t].eq(r.o.payload.sp), got_r[p][t].eq(1)]
                with m.If(issued("vector")):
                    m.d.sync += got_r[p][t].eq(0)
                # the reciprocal is requested only at this instruction's P, so its result implies both
                stats_done = stats_done & ((nproj <= p) | (t >= k) | got_r[p][t])

        # QCODES: the slot's p streams -> Codes per token -> the ternary engine's code banks (every token of a
        # column at once); S -> OutputMultiplier, one token per cycle
        cds = [Q.Codes() for _ in range(K)]
        m.submodules.outmul = om = Q.OutputMultiplier()
        qos = [Array(qs[p][t].o for p in range(I.SLOTS))[slot] for t in range(K)]
        S_lat = Array(Signal.like(qs[0][0].o.payload.S, name=f"S_lat{t}") for t in range(K))
        for t, (cd, qo) in enumerate(zip(cds, qos)):
            m.submodules[f"codes{t}"] = cd
            m.d.comb += [cd.i.valid.eq(qo.valid & is_["QCODES"]), cd.i.payload.p.eq(qo.payload.p),
                         cd.i.payload.R.eq(Rr[slot][t]), cd.i.payload.k.eq(KRr[slot][t]),
                         cd.i.payload.sp.eq(SPr[slot][t]), cd.i.payload.last.eq(qo.payload.last), cd.o.ready.eq(1)]
        vec_end = qos[0].valid & qos[0].payload.last & is_["QCODES"]
        om_t = Signal(range(K + 1))         # next token into the OutputMultiplier (k: none left)
        with m.If(vec_end):
            m.d.sync += om_t.eq(0)
            for t in range(K):
                m.d.sync += S_lat[t].eq(qos[t].payload.S)
        om_go = Signal()
        with m.If(issued("vector")):
            m.d.sync += om_go.eq(0)
        with m.Elif(vec_end):
            m.d.sync += om_go.eq(1)
        m.d.comb += [om.i.valid.eq(om_go & (om_t < k)), om.i.payload.S.eq(S_lat[om_t]),
                     om.i.payload.P.eq(Pr[slot][om_t]), om.i.payload.sz.eq(SZr[slot][om_t]),
                     om.i.payload.c_m.eq(self.c_m[slot]), om.i.payload.c_e.eq(self.c_e[slot]), om.o.ready.eq(1)]
        with m.If(om.i.valid & om.i.ready):
            m.d.sync += om_t.eq(om_t + 1)
        om_cnt = Signal(range(K + 1))
        with m.If(issued("vector")):
            m.d.sync += om_cnt.eq(0)
        with m.If(om.o.valid):
            m.d.sync += [Mr[slot][om_cnt].eq(om.o.payload.M), Sr[slot][om_cnt].eq(om.o.payload.shift),
                         om_cnt.eq(om_cnt + 1)]
        jc = Signal(range(W + 1))
        c_done = Signal()
        with m.If(issued("vector")):
            m.d.sync += [jc.eq(0), c_done.eq(0)]
        act = mv.act
        m.d.comb += [act.valid.eq(cds[0].o.valid), act.payload.bank.eq(bank), act.payload.first.eq(jc == 0)]
        for t in range(K):
            m.d.comb += [act.payload.code[t].eq(cds[t].o.payload.q), act.payload.en[t].eq(t < k)]
        with m.If(cds[0].o.valid):
            with m.If(jc + 1 == count):
                m.d.sync += [jc.eq(0), c_done.eq(1)]
            with m.Else():
                m.d.sync += jc.eq(jc + 1)
        codes_done = all_issued & c_done & (om_cnt == k)
        return codes_done, fin, stats_done, t

    def _vec_hgrn(self, v):
        """HGRN: the MLGRU update token by token (a token's parent state is its tree parent's), H and the gated A."""
        (K, W, all_issued, count, feed_max, fire, h0r, hg_inflight, hr1, hw_, is_, issued, k, lbr, m, mx_a_in,
         mx_a_out, s1_last, s1_par, s1_root, s1_t, s1_v, t, t0r1, t1r1, t2r1) = (
            v.K, v.W, v.all_issued, v.count, v.feed_max, v.fire, v.h0r, v.hg_inflight, v.hr1, v.hw_, v.is_,
            v.issued, v.k, v.lbr, v.m, v.mx_a_in, v.mx_a_out, v.s1_last, v.s1_par, v.s1_root, v.s1_t, v.s1_v,
            v.t, v.t0r1, v.t1r1, v.t2r1)
        m.submodules.mlgru = mg = A.MlgruUpdate()
        m.submodules.gp_h = gp = A.GatedProduct()
        m.submodules.gq = gq = fifo.SyncFIFOBuffered(width=32, depth=64)
        hv = s1_v & is_["HGRN"]
        m.d.comb += [mg.i.valid.eq(hv), mg.i.payload.h.eq(Mux(s1_root, h0r.data, token_word(hr1, s1_par))),
                     mg.i.payload.i.eq(token_word(t0r1, s1_t)), mg.i.payload.f.eq(token_word(t1r1, s1_t)),
                     mg.i.payload.one_minus_lb.eq(lbr.data), mg.i.payload.frac.eq(self.act_frac),
                     mg.i.payload.last.eq(s1_last), mg.o.ready.eq(1),
                     gq.w_en.eq(hv), gq.w_data.eq(token_word(t2r1, s1_t))]
        th, jh = Signal(range(K + 1)), Signal(range(W + 1))
        ta, ja = Signal(range(K + 1)), Signal(range(W + 1))
        with m.If(issued("vector")):
            m.d.sync += [th.eq(0), jh.eq(0), ta.eq(0), ja.eq(0)]
        hr = v.hroot
        for t in range(K):
            m.d.comb += [hw_[t].addr.eq(Mux(hr.we.any(), hr.addr, jh)), hw_[t].data.eq(Mux(hr.we.any(), hr.data,
                                                                                           mg.o.payload.h)),
                         hw_[t].en.eq((mg.o.valid & is_["HGRN"] & (th == t)) | hr.we[t])]
        m.d.comb += [gp.i.valid.eq(mg.o.valid & is_["HGRN"]), gp.i.payload.a.eq(gq.r_data.as_signed()),
                     gp.i.payload.b.eq(mg.o.payload.h), gp.i.payload.frac.eq(self.act_frac),
                     gp.i.payload.last.eq(mg.o.payload.last), gq.r_en.eq(mg.o.valid & is_["HGRN"]),
                     gp.o.ready.eq(1)]
        with m.If(mg.o.valid & is_["HGRN"]):
            with m.If(jh + 1 == count):
                m.d.sync += [jh.eq(0), th.eq(th + 1)]
            with m.Else():
                m.d.sync += jh.eq(jh + 1)
        m.d.sync += hg_inflight.eq(hg_inflight + (fire & is_["HGRN"]) - (mg.o.valid & is_["HGRN"]))
        with m.If(issued("vector")):
            m.d.sync += hg_inflight.eq(0)
        hg_a = gp.o.valid & is_["HGRN"]
        with m.If(hg_a):
            with m.If(ja + 1 == count):
                m.d.sync += [ja.eq(0), ta.eq(ta + 1)]
            with m.Else():
                m.d.sync += ja.eq(ja + 1)
        feed_max(mx_a_in, ta, gp.o.payload.u, ja + 1 == count, hg_a)
        v_aw_en = Signal()
        m.d.comb += v_aw_en.eq(hg_a)
        mxa_cnt = Signal(range(K + 1))
        with m.If(issued("vector")):
            m.d.sync += mxa_cnt.eq(0)
        with m.Elif(is_["HGRN"]):
            m.d.sync += mxa_cnt.eq(mxa_cnt + mx_a_out)
        hgrn_done = all_issued & (ta == k) & (mxa_cnt == k)
        return gp, hg_a, hgrn_done, ja, ta

    def _vec_embed(self, v):
        """EMBED: one DMA row per token into X (and its MaxAbs); the one-token writes of X and A."""
        (K, W, bb, count, eaddr, feed_max, is_, issued, k, m, mx_x_in, mx_x_out, raise_error, start, stride,
         tokens, vocab) = (
            v.K, v.W, v.bb, v.count, v.eaddr, v.feed_max, v.is_, v.issued, v.k, v.m, v.mx_x_in, v.mx_x_out,
            v.raise_error, v.start, v.stride, v.tokens, v.vocab)
        m.submodules.emb_dma = dma = DmaReadClient(self.addr_width, bb, max_fields=1)
        wiring.connect(m, dma.cmd, wiring.flipped(self.vec_cmd))
        wiring.connect(m, wiring.flipped(self.vec_data), dma.beat)
        te = Signal(range(K + 1))
        je = Signal(range(W + 1))
        e_start = Signal()                     # the DMA client restarts its unpacker this cycle
        m.d.sync += e_start.eq(0)
        e_rows = Signal()          # a row is being received
        mxx_cnt = Signal(range(K + 1))
        with m.If(issued("vector")):
            m.d.sync += [te.eq(0), je.eq(0), e_rows.eq(0), mxx_cnt.eq(0)]
        with m.Elif(is_["EMBED"]):
            m.d.sync += mxx_cnt.eq(mxx_cnt + mx_x_out)
        tok = tokens[te]
        row_addr = Signal(self.addr_width + 32)
        m.d.comb += row_addr.eq(eaddr + tok * stride)
        with m.If(is_["EMBED"] & ~start & ~e_rows & (te != k) & ~self.vec_cmd.valid):
            with m.If(tok >= vocab):
                raise_error(RM.ERR_TOKEN_RANGE, te)
            with m.Else():
                m.d.comb += [dma.req.eq(1), dma.addr.eq(row_addr[:self.addr_width]), dma.words.eq(count),
                             dma.fields.eq(1)]
                m.d.sync += [e_start.eq(1), e_rows.eq(1), je.eq(0)]
        erec = dma.rec
        m.d.comb += erec.ready.eq(1)
        e_take = erec.valid & is_["EMBED"] & e_rows & ~e_start
        with m.If(e_take):
            with m.If(je + 1 == count):
                m.d.sync += [je.eq(0), te.eq(te + 1), e_rows.eq(0)]
            with m.Else():
                m.d.sync += je.eq(je + 1)
        feed_max(mx_x_in, te, erec.payload.w[0].as_signed(), je + 1 == count, e_take)
        embed_done = (te == k) & ~e_rows & (mxx_cnt == k)
        return e_take, embed_done, erec, je, te

    # ------------------------------------------------------------------------------------------------------
    def _matvec_engine(self, m, d, issued, done, k, Mr, Sr, arg, xarb, aarb, tw, xr2, t0r2,
                       mx_x_in, mx_a_in, mx_x_out, mx_a_out, feed_max, mv):
        hw = self.hw
        K, E, P = hw.max_tokens, hw.engines, hw.weight_ports
        EPP = hw.matvec_engines
        ir = d.ir

        # ---- weight fetch: each fetch goes to every weight port's queue; port p reads rows p, p + P, ... of it
        # (one strided command: a burst group per row; with one port one contiguous command) into its route
        # queue -> row router -> its engines' queues (engine e takes rows e, e + E, ...; port p feeds engines
        # p, p + P, ..., alternating per row)
        wq, = self._mv_fetch(SimpleNamespace(E=E, EPP=EPP, P=P, hw=hw, m=m))

        # ---- compute queue: 2 entries, entry 0 the oldest ----------------------------------------------------
        EL = data.StructLayout({"rows": unsigned(32), "bpr": unsigned(16), "bank": unsigned(2), "slot": unsigned(2),
                                "epi": unsigned(2), "flags": unsigned(2), "dst": unsigned(2)})
        ent = [Signal(EL, name=f"mv_e{i}") for i in range(2)]
        val = [Signal(name=f"mv_v{i}") for i in range(2)]
        new = Signal(EL)
        m.d.comb += [new.rows.eq(field(ir, "rows", "MATVEC")), new.bpr.eq(d.bpr),
                     new.bank.eq(field(ir, "bank", "MATVEC")), new.slot.eq(field(ir, "slot", "MATVEC")),
                     new.epi.eq(field(ir, "epi", "MATVEC")), new.flags.eq(field(ir, "flags", "MATVEC")[:2]),
                     new.dst.eq(field(ir, "dst", "MATVEC"))]
        finish = Signal()
        push = issued("matvec")
        with m.If(finish):
            m.d.sync += [ent[0].eq(ent[1]), val[0].eq(val[1]), val[1].eq(0)]
        with m.If(push):
            with m.If(~val[0] | (finish & ~val[1])):
                m.d.sync += [ent[0].eq(new), val[0].eq(1)]
            with m.Else():
                m.d.sync += [ent[1].eq(new), val[1].eq(1)]

        # compute: one command at a time on the lock-step engine (way w of group g is row g * E + w, from queue
        # w); the epilogue is drained before the next command starts
        cur = ent[0]
        started = Signal()
        sh_e = E.bit_length() - 1
        m.d.comb += [mv.cmd.valid.eq(val[0] & ~started),
                     mv.cmd.payload.rows.eq((cur.rows + (E - 1)) >> sh_e if E > 1 else cur.rows),
                     mv.cmd.payload.beats.eq(cur.bpr), mv.cmd.payload.bank.eq(cur.bank)]
        with m.If(mv_cmd_fire(mv)):
            m.d.sync += started.eq(1)
        with m.If(finish):
            m.d.sync += started.eq(0)
        # feed: a group's beat goes in when every present way's queue has it (the last group of a matrix whose
        # rows are not a multiple of E has absent ways: zero weights, nothing popped, results dropped)
        feed_left = Signal(32)          # rows of the command not yet fed (group by group)
        feed_beat = Signal(16)
        present = [Signal(name=f"mv_present{w}") for w in range(E)]
        all_in = Const(1, 1)
        for w in range(E):
            m.d.comb += present[w].eq(feed_left > w)
            all_in = all_in & (~present[w] | wq[w].r_rdy)
        feeding = Signal()
        m.d.comb += feeding.eq(started & (feed_left != 0))
        m.d.comb += [mv.weights.valid.eq(feeding & all_in),
                     mv.weights.payload.eq(Cat(*[Mux(present[w], wq[w].r_data, 0) for w in range(E)]))]
        w_fire = mv.weights.valid & mv.weights.ready
        for w in range(E):
            m.d.comb += wq[w].r_en.eq(w_fire & present[w])
        with m.If(mv_cmd_fire(mv)):
            m.d.sync += [feed_left.eq(cur.rows), feed_beat.eq(0)]
        with m.Elif(w_fire):
            with m.If(feed_beat + 1 == cur.bpr):
                m.d.sync += [feed_beat.eq(0), feed_left.eq(Mux(feed_left > E, feed_left - E, 0))]
            with m.Else():
                m.d.sync += feed_beat.eq(feed_beat + 1)
        m.d.comb += self.stall.eq(feeding & ~all_in)

        # serialiser: a group of up to E rows -> one row per cycle (every token of it side by side), rows in order
        out = mv.out
        held = Signal()
        sw = Signal(range(E)) if E > 1 else Const(0, 1)
        n_in = Signal(range(E + 1))                 # rows present in the held group
        out_left = Signal(32)                       # rows of the command not yet taken from the engine
        accs = Array(Signal(signed(N.ACC_BITS), name=f"acc{n}") for n in range(E * K))
        last_el = (sw + 1 == n_in) if E > 1 else Const(1, 1)
        take = Signal()
        m.d.comb += [take.eq(~held | last_el), out.ready.eq(take)]
        o_fire = out.valid & take
        with m.If(held):
            if E > 1:
                m.d.sync += sw.eq(sw + 1)
            with m.If(last_el):
                m.d.sync += held.eq(0)
                if E > 1:
                    m.d.sync += sw.eq(0)
        with m.If(mv_cmd_fire(mv)):
            m.d.sync += out_left.eq(cur.rows)
        with m.If(o_fire):
            m.d.sync += [held.eq(1), n_in.eq(Mux(out_left > E, E, out_left)),
                         out_left.eq(Mux(out_left > E, out_left - E, 0))]
            if E > 1:
                m.d.sync += sw.eq(0)
            for n in range(E * K):
                m.d.sync += accs[n].eq(out.payload.acc[n])
        # per token: Dequantize -> epilogue (tokens >= k compute but write nothing)
        self._mv_epilogue(SimpleNamespace(E=E, K=K, Mr=Mr, Sr=Sr, aarb=aarb, accs=accs, arg=arg, cur=cur, done=done,
            feed_max=feed_max, finish=finish, held=held, k=k, m=m, mx_a_in=mx_a_in, mx_a_out=mx_a_out,
            mx_x_in=mx_x_in, mx_x_out=mx_x_out, started=started, sw=sw, t0r2=t0r2, tw=tw, xarb=xarb, xr2=xr2))

    def _mv_fetch(self, v):
        """Weight fetch: each fetch goes to every weight port's queue (port p reads rows p, p + P, ... of it) and
        its rows are routed to the lock-step engine's ways."""
        (E, EPP, P, hw, m) = (
            v.E, v.EPP, v.P, v.hw, v.m)
        FL = data.StructLayout({"addr": unsigned(self.addr_width), "rows": unsigned(32), "bpr": unsigned(16)})
        wq = [fifo.SyncFIFOBuffered(width=8 * hw.bus_bytes, depth=self.weight_fifo_beats) for _ in range(E)]
        for e in range(E):
            m.submodules[f"wq{e}"] = wq[e]
        fqs = [fifo.SyncFIFO(width=FL.size, depth=I.PREFETCH_DEPTH) for _ in range(P)]
        all_rdy = Const(1, 1)
        for p in range(P):
            m.submodules[f"fetchq{p}"] = fqs[p]
            all_rdy = all_rdy & fqs[p].w_rdy
        m.d.comb += self.fetch.ready.eq(all_rdy)
        sh_bus = hw.bus_bytes.bit_length() - 1
        sh_p = P.bit_length() - 1
        for p in range(P):
            fq = fqs[p]
            m.submodules[f"routeq{p}"] = rq = fifo.SyncFIFO(width=48, depth=I.PREFETCH_DEPTH + 1)
            m.d.comb += [fq.w_data.eq(self.fetch.payload), fq.w_en.eq(self.fetch.valid & all_rdy)]
            head = Signal(FL, name=f"fetch_head{p}")
            m.d.comb += head.eq(fq.r_data)
            cmd = getattr(self, f"w{p}_cmd")
            rows_p = Signal(32, name=f"rows_p{p}")
            if P == 1:
                m.d.comb += [rows_p.eq(head.rows), cmd.payload.addr.eq(head.addr),
                             cmd.payload.beats.eq(head.rows * head.bpr), cmd.payload.rows.eq(1),
                             cmd.payload.stride.eq(0)]
            else:
                rb = Signal(self.addr_width, name=f"row_bytes{p}")
                m.d.comb += [rb.eq(head.bpr << sh_bus), rows_p.eq((head.rows + (P - 1 - p)) >> sh_p),
                             cmd.payload.addr.eq(head.addr + rb * p), cmd.payload.beats.eq(head.bpr),
                             cmd.payload.rows.eq(rows_p), cmd.payload.stride.eq(rb << sh_p)]
            # a port with no rows of this matrix (rows < P) drops the fetch without a command
            empty = (rows_p == 0) | (head.bpr == 0)
            m.d.comb += cmd.valid.eq(fq.r_rdy & rq.w_rdy & ~empty)
            took = (cmd.valid & cmd.ready)
            m.d.comb += [fq.r_en.eq(took | (fq.r_rdy & empty)), rq.w_en.eq(took),
                         rq.w_data.eq(Cat(rows_p, head.bpr))]
            r_rows, r_bpr = rq.r_data[:32], rq.r_data[32:48]
            mine = [wq[p + j * P] for j in range(EPP)]
            r_beat, r_row = Signal(16, name=f"r_beat{p}"), Signal(32, name=f"r_row{p}")
            r_eng = Signal(range(EPP), name=f"r_eng{p}") if EPP > 1 else Const(0, 1)
            src = getattr(self, f"w{p}_data")
            sel_rdy = Array(q.w_rdy for q in mine)[r_eng] if EPP > 1 else mine[0].w_rdy
            move = src.valid & rq.r_rdy & sel_rdy
            m.d.comb += src.ready.eq(rq.r_rdy & sel_rdy)
            for j, q in enumerate(mine):
                m.d.comb += [q.w_data.eq(src.payload), q.w_en.eq(move & (r_eng == j))]
            row_end = r_beat + 1 == r_bpr
            with m.If(move):
                m.d.sync += r_beat.eq(r_beat + 1)
                with m.If(row_end):
                    m.d.sync += [r_beat.eq(0), r_row.eq(r_row + 1)]
                    if EPP > 1:
                        m.d.sync += r_eng.eq(r_eng + 1)
                    with m.If(r_row + 1 == r_rows):
                        m.d.sync += [r_row.eq(0)]
                        if EPP > 1:
                            m.d.sync += r_eng.eq(0)
            m.d.comb += rq.r_en.eq(move & row_end & (r_row + 1 == r_rows))
        return wq,

    def _mv_epilogue(self, v):
        """Per token: Dequantize, then the epilogue (store, head argmax, residual add, gated product) and
        completion."""
        (E, K, Mr, Sr, aarb, accs, arg, cur, done, feed_max, finish, held, k, m, mx_a_in, mx_a_out, mx_x_in,
         mx_x_out, started, sw, t0r2, tw, xarb, xr2) = (
            v.E, v.K, v.Mr, v.Sr, v.aarb, v.accs, v.arg, v.cur, v.done, v.feed_max, v.finish, v.held, v.k, v.m,
            v.mx_a_in, v.mx_a_out, v.mx_x_in, v.mx_x_out, v.started, v.sw, v.t0r2, v.tw, v.xarb, v.xr2)
        dqs = [Q.Dequantize() for _ in range(K)]
        for t, dq in enumerate(dqs):
            m.submodules[f"dequant{t}"] = dq
            acc_t = Array(accs[w * K + t] for w in range(E))[sw] if E > 1 else accs[t]
            m.d.comb += [dq.i.valid.eq(held), dq.i.payload.acc.eq(acc_t), dq.i.payload.M.eq(Mr[cur.slot][t]),
                         dq.i.payload.shift.eq(Sr[cur.slot][t]), dq.i.payload.last.eq(0), dq.o.ready.eq(1)]
        # E1: the dequantised row r1 (y[t] per token)
        r1 = Signal(32)
        ys = [dq.o.payload.y for dq in dqs]
        v1 = dqs[0].o.valid
        with m.If(v1):
            m.d.sync += r1.eq(r1 + 1)
        epi = cur.epi
        lastrow1 = r1 + 1 == cur.rows
        for i in range(3):
            for t in range(K):
                m.d.comb += [tw[i][t].addr.eq(r1), tw[i][t].data.eq(ys[t]),
                             tw[i][t].en.eq(v1 & (t < k) & ((epi == I.EPI_STORE) | (epi == I.EPI_HEAD))
                                            & (cur.dst == i))]
        argm = [A.Argmax(max_len=MAX_VOCAB) for _ in range(K)]
        arg_out = Signal(range(K + 1))
        m.d.comb += arg_out.eq(sum(a.o.valid for a in argm))
        for t in range(K):
            m.submodules[f"argmax{t}"] = argm[t]
            m.d.comb += [argm[t].i.valid.eq(v1 & (epi == I.EPI_HEAD) & (t < k)), argm[t].i.payload.x.eq(ys[t]),
                         argm[t].i.payload.last.eq(lastrow1 & cur.flags[1]), argm[t].o.ready.eq(1)]
            with m.If(argm[t].o.valid):
                m.d.sync += arg[t].eq(argm[t].o.payload.index)
            m.d.comb += [xr2[t].addr.eq(r1), t0r2[t].addr.eq(r1)]
        v2 = Signal()
        y2 = [Signal(signed(32), name=f"y2_{t}") for t in range(K)]
        m.d.sync += v2.eq(v1 & ((epi == I.EPI_RESID) | (epi == I.EPI_GLU)))
        m.d.sync += [y2[t].eq(ys[t]) for t in range(K)]
        # E2 -> residual add / gated product per token
        ras = [A.ResidualAdd() for _ in range(K)]
        ggs = [A.GatedProduct() for _ in range(K)]
        for t in range(K):
            ra, gg = ras[t], ggs[t]
            m.submodules[f"resadd{t}"] = ra
            m.submodules[f"gp_g{t}"] = gg
            m.d.comb += [ra.i.valid.eq(v2 & (epi == I.EPI_RESID)), ra.i.payload.x.eq(xr2[t].data),
                         ra.i.payload.y.eq(y2[t]), ra.i.payload.last.eq(0), ra.o.ready.eq(1),
                         gg.i.valid.eq(v2 & (epi == I.EPI_GLU)), gg.i.payload.a.eq(y2[t]),
                         gg.i.payload.b.eq(t0r2[t].data), gg.i.payload.frac.eq(self.act_frac),
                         gg.i.payload.last.eq(0), gg.o.ready.eq(1)]
        r3 = Signal(32)
        v3 = ras[0].o.valid | ggs[0].o.valid
        with m.If(v3):
            m.d.sync += r3.eq(r3 + 1)
        lastrow3 = r3 + 1 == cur.rows
        for t in range(K):
            feed_max(mx_x_in, t, ras[t].o.payload.z, lastrow3, ras[t].o.valid & (t < k))
            feed_max(mx_a_in, t, ggs[t].o.payload.u, lastrow3, ggs[t].o.valid & (t < k))
        # X and A rows of the epilogue (SharedWrite: the vector engine's one-token writes never overlap them)
        m.d.comb += [xarb.row_addr.eq(r3), aarb.row_addr.eq(r3)]
        for t in range(K):
            m.d.comb += [xarb.row_en[t].eq(ras[t].o.valid & (t < k)), xarb.row_data[t].eq(ras[t].o.payload.z),
                         aarb.row_en[t].eq(ggs[t].o.valid & (t < k)), aarb.row_data[t].eq(ggs[t].o.payload.u)]
        # completion: every row finalised, plus the per-token reductions
        fin_rows = Signal(32)
        red_cnt = Signal(range(K + 1))
        final_now = Mux((epi == I.EPI_RESID) | (epi == I.EPI_GLU), v3, v1)
        with m.If(started):
            m.d.sync += fin_rows.eq(fin_rows + final_now)
            with m.Switch(epi):
                with m.Case(I.EPI_RESID):
                    m.d.sync += red_cnt.eq(red_cnt + mx_x_out)
                with m.Case(I.EPI_GLU):
                    m.d.sync += red_cnt.eq(red_cnt + mx_a_out)
                with m.Case(I.EPI_HEAD):
                    m.d.sync += red_cnt.eq(red_cnt + arg_out)
        need_red = (epi == I.EPI_RESID) | (epi == I.EPI_GLU) | ((epi == I.EPI_HEAD) & cur.flags[1])
        m.d.comb += finish.eq(started & (fin_rows == cur.rows) & (~need_red | (red_cnt == k)))
        with m.If(finish):
            m.d.sync += [fin_rows.eq(0), red_cnt.eq(0), r1.eq(0), r3.eq(0), done[ENGINE_ID["matvec"]].eq(1)]

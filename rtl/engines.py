"""The datapath's DMA engines: :class:`LoadEngine` (LOAD) and :class:`StoreEngine` (STORE).

Each takes its instructions from the sequencer's dispatch (``issue`` with ``dispatch``, for this engine
only), finishes them in order and pulses ``done`` (a register, one cycle) per instruction. What an
instruction computes is defined by :class:`mmfree.sim.emulator.Emulator`.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.rtl import isa as I
from mmfree.rtl.axi import BEATS_WIDTH, DmaReadClient, WordPacker, cmd_layout
from mmfree.rtl.buffers import SHARED_BUFFERS, TOKEN_BUFFERS, read_port, root_write, write_port
from mmfree.rtl.compiler import HwConfig
from mmfree.rtl.pipeline import width_for
from mmfree.rtl.sequencer import dispatch_layout

#: The buffers LOAD fills, in the order of :class:`LoadEngine`'s ``filled`` / ``loading`` ports.
FILL_BUFS = (I.BUF_H0, I.BUF_LB, I.BUF_N, I.BUF_NW0, I.BUF_NW1, I.BUF_NW2)


def fill_layout(hw: HwConfig) -> data.ArrayLayout:
    """Words loaded so far into each buffer of :data:`FILL_BUFS` (0 .. ``hw.max_width``)."""
    return data.ArrayLayout(unsigned(Shape.cast(range(hw.max_width + 1)).width), len(FILL_BUFS))


def token_word(ports, t):
    """The word read by token ``t``'s port of a per-token buffer (one read port per token memory)."""
    return Array(port.data for port in ports)[t] if len(ports) > 1 else ports[0].data


class LoadEngine(wiring.Component):
    """LOAD: ``count`` DMA records of ``fields`` int32 words from ``dispatch.addr`` into H0, LB or N + NW0..2,
    or (HROOT, one field) into the H of every root of stream ``s = ir.load.stream`` (token t with
    ``parents[t] == -1 - s``).

    Ports: ``issue`` / ``dispatch`` (in): a LOAD; ``done`` (out): a pulse when its last record is written;
    ``dma_cmd`` / ``dma_data``: a client of the AXI reader; ``h0``, ``lb``, ``n``, ``nw[p]``: the buffers'
    write ports; ``parents[t]`` (in): the pass's tree parents; ``h_root`` (out,
    :func:`~mmfree.rtl.buffers.root_write`): HROOT's writes into H (to the :class:`~mmfree.rtl.buffers.HWrite`;
    no fill counter: HGRN reads H only after the LOAD finished, the scoreboard orders them); ``filled[i]``
    (out): words written so far into buffer ``FILL_BUFS[i]`` (a reader may start on the first one),
    ``loading[i]`` (out): a LOAD into it runs. A new LOAD clears the counters of its buffers.
    """

    def __init__(self, hw: HwConfig, addr_width: int = 40):
        self.hw, self.addr_width = hw, addr_width
        W = hw.max_width
        super().__init__({
            "issue": In(1), "dispatch": In(dispatch_layout(addr_width)), "done": Out(1),
            "dma_cmd": Out(stream.Signature(cmd_layout(addr_width))),
            "dma_data": In(stream.Signature(unsigned(8 * hw.bus_bytes))),
            "h0": In(write_port(SHARED_BUFFERS["h0"], W)), "lb": In(write_port(SHARED_BUFFERS["lb"], W)),
            "n": In(write_port(SHARED_BUFFERS["n"], W)),
            "nw": In(write_port(SHARED_BUFFERS["nw0"], W)).array(I.SLOTS),
            "parents": In(data.ArrayLayout(signed(width_for(hw.max_tokens) + 1), hw.max_tokens)),
            "h_root": Out(root_write(hw.max_tokens, TOKEN_BUFFERS["h"][0], W)),
            "filled": Out(fill_layout(hw)), "loading": Out(len(FILL_BUFS)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.dma = dma = DmaReadClient(self.addr_width, self.hw.bus_bytes, max_fields=1 + I.SLOTS)
        wiring.connect(m, dma.cmd, wiring.flipped(self.dma_cmd))
        wiring.connect(m, wiring.flipped(self.dma_data), dma.beat)
        filled = {b: self.filled[i] for i, b in enumerate(FILL_BUFS)}
        loading = {b: self.loading[i] for i, b in enumerate(FILL_BUFS)}
        busy, dst, fields, stream, count, j = Signal(), Signal(2), Signal(3), Signal(4), Signal(32), Signal(32)
        start = Signal()                       # the DMA client restarts its unpacker this cycle
        m.d.sync += [start.eq(0), self.done.eq(0)]
        with m.If(self.issue):
            fl, cnt, dd = self.dispatch.ir.load.fields, self.dispatch.ir.load.count, self.dispatch.ir.load.dst
            m.d.comb += [dma.req.eq(1), dma.addr.eq(self.dispatch.addr), dma.words.eq(cnt * fl), dma.fields.eq(fl)]
            m.d.sync += [busy.eq(1), dst.eq(dd), fields.eq(fl), count.eq(cnt), j.eq(0), start.eq(1),
                         stream.eq(self.dispatch.ir.load.stream)]
            for dv, b in ((I.LD_H0, I.BUF_H0), (I.LD_LB, I.BUF_LB), (I.LD_NORM, I.BUF_N)):
                with m.If(dd == dv):
                    m.d.sync += [filled[b].eq(0), loading[b].eq(1)]
            with m.If(dd == I.LD_NORM):
                for p in range(I.SLOTS):
                    with m.If(fl > p + 1):
                        m.d.sync += [filled[I.BUF_NW0 + p].eq(0), loading[I.BUF_NW0 + p].eq(1)]
        rec = dma.rec
        m.d.comb += rec.ready.eq(1)
        take = rec.valid & busy & ~start
        w = rec.payload.w
        for port in (self.h0, self.lb, self.n):
            m.d.comb += [port.addr.eq(j), port.data.eq(w[0])]
        for p in range(I.SLOTS):
            m.d.comb += [self.nw[p].addr.eq(j), self.nw[p].data.eq(w[1 + p])]
        m.d.comb += [self.h_root.addr.eq(j), self.h_root.data.eq(w[0].as_signed())]
        with m.If(take):
            m.d.sync += j.eq(j + 1)
            with m.Switch(dst):
                for dv, b, port in ((I.LD_H0, I.BUF_H0, self.h0), (I.LD_LB, I.BUF_LB, self.lb),
                                    (I.LD_NORM, I.BUF_N, self.n)):
                    with m.Case(dv):
                        m.d.comb += port.en.eq(1)
                        m.d.sync += filled[b].eq(j + 1)
                        if dv == I.LD_NORM:
                            for p in range(I.SLOTS):
                                with m.If(fields > p + 1):
                                    m.d.comb += self.nw[p].en.eq(1)
                                    m.d.sync += filled[I.BUF_NW0 + p].eq(j + 1)
                with m.Case(I.LD_HROOT):
                    for t in range(self.hw.max_tokens):
                        m.d.comb += self.h_root.en[t].eq(self.parents[t] == -1 - stream)
            with m.If(j + 1 == count):
                m.d.sync += [busy.eq(0), self.done.eq(1), self.loading.eq(0)]
        return m


class StoreEngine(wiring.Component):
    """STORE: per token ``t < k``, ``count`` words of H, T0, T1 (or token t's argmax) to ``addr + t * tstride``.

    Ports: ``issue`` / ``dispatch`` (in): a STORE (``dispatch.skip_store``: done at once, nothing written);
    ``done`` (out): a pulse when every write response is in (``wr_quiet``); ``k`` (in): tokens of the pass;
    ``args[t]`` (in): token t's argmax; ``h[t]``, ``t0[t]``, ``t1[t]``: the buffers' read ports; ``st_cmd`` /
    ``st_data``: the AXI writer's command and data streams (any 4-byte aligned address, byte strobes).
    """

    def __init__(self, hw: HwConfig, addr_width: int = 40):
        self.hw, self.addr_width = hw, addr_width
        K, W, bb = hw.max_tokens, hw.max_width, hw.bus_bytes
        super().__init__({
            "issue": In(1), "dispatch": In(dispatch_layout(addr_width)), "done": Out(1),
            "k": In(range(K + 1)), "args": In(data.ArrayLayout(unsigned(32), K)),
            **{b: In(read_port(TOKEN_BUFFERS[b][0], W)).array(K) for b in ("h", "t0", "t1")},
            "st_cmd": Out(stream.Signature(cmd_layout(addr_width))),
            "st_data": Out(stream.Signature(data.StructLayout({"data": unsigned(8 * bb), "strb": unsigned(bb)}))),
            "wr_quiet": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        K, bb = self.hw.max_tokens, self.hw.bus_bytes
        m.submodules.pack = pk = WordPacker(bus_bytes=bb)
        wiring.connect(m, pk.beat, wiring.flipped(self.st_data))
        m.submodules.words = wq = fifo.SyncFIFOBuffered(width=32, depth=4)
        m.d.comb += [pk.word.payload.eq(wq.r_data), pk.word.valid.eq(wq.r_rdy), wq.r_en.eq(pk.word.ready)]
        src, count, tstride = Signal(2), Signal(32), Signal(32)
        addr, t, j = Signal(self.addr_width + 32), Signal(range(K + 1)), Signal(32)
        cmd_v, cmd_a, cmd_n = Signal(), Signal(self.addr_width), Signal(BEATS_WIDTH)
        m.d.comb += [self.st_cmd.valid.eq(cmd_v), self.st_cmd.payload.addr.eq(cmd_a),
                     self.st_cmd.payload.beats.eq(cmd_n)]
        with m.If(self.st_cmd.valid & self.st_cmd.ready):
            m.d.sync += cmd_v.eq(0)
        pstart, lead = Signal(), Signal(range(bb // 4))
        m.d.sync += [pstart.eq(0), self.done.eq(0)]
        m.d.comb += [pk.start.eq(pstart), pk.lead.eq(lead), pk.count.eq(count)]
        # word source: one buffer read per cycle while the word queue has room (every token's memory is
        # read at j; the word is token t's, t as it was at the read)
        rd, pend, t_rd = Signal(), Signal(), Signal.like(t)
        for ports in (self.h, self.t0, self.t1):
            for port in ports:
                m.d.comb += port.addr.eq(j)
        m.d.sync += [pend.eq(rd), t_rd.eq(t)]
        word = Mux(src == I.ST_H, token_word(self.h, t_rd), Mux(src == I.ST_T0, token_word(self.t0, t_rd),
                                                                 Mux(src == I.ST_T1, token_word(self.t1, t_rd), 0)))
        argw = Signal(32)
        m.d.sync += argw.eq(Array(self.args[i] for i in range(K))[t])
        m.d.comb += [wq.w_data.eq(Mux(src == I.ST_ARG, argw, word)), wq.w_en.eq(pend)]
        idle = ~pk.busy & ~cmd_v & ~wq.r_rdy & ~pend
        ir = self.dispatch.ir.store
        lg_bb = bb.bit_length() - 1
        with m.FSM(name="store"):
            with m.State("IDLE"):
                with m.If(self.issue):
                    m.d.sync += [src.eq(ir.src), count.eq(ir.count), tstride.eq(ir.tstride),
                                 addr.eq(self.dispatch.addr), t.eq(0)]
                    with m.If(self.dispatch.skip_store):
                        m.d.sync += self.done.eq(1)
                    with m.Else():
                        m.next = "TOKEN"
            with m.State("TOKEN"):
                with m.If(idle):
                    ld = addr[2:lg_bb]
                    m.d.sync += [cmd_v.eq(1), cmd_a.eq(Cat(Const(0, lg_bb), addr[lg_bb:self.addr_width])),
                                 cmd_n.eq((ld + count + (bb // 4 - 1)) >> (lg_bb - 2)), pstart.eq(1),
                                 lead.eq(ld), j.eq(0)]
                    m.next = "WORDS"
            with m.State("WORDS"):
                with m.If(~pstart & (wq.level + pend < 3)):
                    m.d.comb += rd.eq(1)
                    m.d.sync += j.eq(j + 1)
                    with m.If(j + 1 == count):
                        m.d.sync += [t.eq(t + 1), addr.eq(addr + tstride)]
                        with m.If(t + 1 == self.k):
                            m.next = "FINISH"
                        with m.Else():
                            m.next = "TOKEN"
            with m.State("FINISH"):
                with m.If(idle & self.wr_quiet):
                    m.d.sync += self.done.eq(1)
                    m.next = "IDLE"
        return m

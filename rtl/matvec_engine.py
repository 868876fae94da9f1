"""The matvec engine (MATVEC) and its weight fetch.

:class:`WeightFetch`: each weight fetch of the sequencer goes to every weight port's queue; port p reads rows
``p, p + P, ...`` of the matrix (one strided reader command: a burst group per row; with one port one
contiguous command) into its route queue -> row router -> the queues of its ways (way e takes rows
``e, e + E, ...``; port p feeds ways ``p, p + P, ...``, alternating per row). P and E need not be powers of two
(6 ports: every HP and HPC port of a ZynqMP): the row counts are then constant divisions
(:func:`~mmfree.rtl.pipeline.div_const`), no divider.

:class:`MatvecEngine`: the weight stream of the next command is requested while the current one runs; one
lock-step :class:`~mmfree.rtl.matvec.TernaryMatVec` with ``hw.engines`` ways takes a beat of ``hw.engines``
rows side by side -> serialiser (the group's rows in order, one row per cycle with every token of it) -> a
:class:`~mmfree.rtl.quantize.Dequantize` per token -> epilogue per token (STORE into T0-2, RESID
``X = sat(X + y)``, GLU ``A = silu(T0) * y``, HEAD logits into T0-2 with a running
:class:`~mmfree.rtl.activation.Argmax` per token). What MATVEC computes: :class:`mmfree.sim.emulator.Emulator`.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.pymodel import numerics as N
from mmfree.rtl import activation as A
from mmfree.rtl import isa as I
from mmfree.rtl import quantize as Q
from mmfree.rtl.axi import BEATS_WIDTH, row_cmd_layout
from mmfree.rtl.buffers import TOKEN_BUFFERS, maxabs_feed, read_port, row_write, write_port
from mmfree.rtl.compiler import HwConfig
from mmfree.rtl.matvec import TernaryMatVec, act_layout
from mmfree.rtl.pipeline import div_const
from mmfree.rtl.sequencer import dispatch_layout, fetch_layout
from mmfree.rtl.vector_engine import slot_token

#: Argmax index width: vocabularies up to 2**24.
MAX_VOCAB = 1 << 24
#: A compute-queue entry: a MATVEC's operands.
ENTRY = data.StructLayout({"rows": unsigned(32), "bpr": unsigned(16), "bank": unsigned(2), "slot": unsigned(2),
                           "epi": unsigned(2), "flags": unsigned(2), "dst": unsigned(2)})


class WeightFetch(wiring.Component):
    """Weight fetches -> reader commands of the ``hw.weight_ports`` ports -> per-way weight queues (module docstring).

    Ports: ``fetch`` (in): ``{addr, rows, bpr}`` (accepted when every port's fetch queue has room); ``w_cmd[p]``
    / ``w_data[p]``: weight port p's strided reader client (a port with no row of a matrix issues no command);
    ``ways[e]`` (out): way e's weight beats, ``weight_fifo_beats`` deep, in row order.
    """

    def __init__(self, hw: HwConfig, addr_width: int = 40, weight_fifo_beats: int = 2048):
        self.hw, self.addr_width, self.weight_fifo_beats = hw, addr_width, weight_fifo_beats
        beat = unsigned(8 * hw.bus_bytes)
        super().__init__({
            "fetch": In(stream.Signature(fetch_layout(addr_width))),
            "w_cmd": Out(stream.Signature(row_cmd_layout(addr_width))).array(hw.weight_ports),
            "w_data": In(stream.Signature(beat)).array(hw.weight_ports),
            "ways": Out(stream.Signature(beat)).array(hw.engines),
        })

    def elaborate(self, platform):
        m = Module()
        hw, P = self.hw, self.hw.weight_ports
        wq = [fifo.SyncFIFOBuffered(width=8 * hw.bus_bytes, depth=self.weight_fifo_beats) for _ in range(hw.engines)]
        for e, q in enumerate(wq):
            m.submodules[f"wq{e}"] = q
            m.d.comb += [self.ways[e].valid.eq(q.r_rdy), self.ways[e].payload.eq(q.r_data), q.r_en.eq(self.ways[e].ready)]
        fqs = [fifo.SyncFIFO(width=self._entry_width(), depth=I.PREFETCH_DEPTH) for _ in range(P)]
        all_rdy = Const(1, 1)
        for p in range(P):
            m.submodules[f"fetchq{p}"] = fqs[p]
            all_rdy = all_rdy & fqs[p].w_rdy
        m.d.comb += self.fetch.ready.eq(all_rdy)
        port_fetch = self._port_fetches(m)
        for p in range(P):
            m.d.comb += [fqs[p].w_data.eq(port_fetch[p]), fqs[p].w_en.eq(self.fetch.valid & all_rdy)]
            m.submodules[f"routeq{p}"] = rq = fifo.SyncFIFO(width=48, depth=I.PREFETCH_DEPTH + 1)
            self._port_command(m, p, fqs[p], rq)
            self._route(m, p, rq, [wq[p + j * P] for j in range(hw.matvec_engines)])
        return m

    def _entry_width(self) -> int:
        """Bits of a fetch-queue entry: the fetch, and with one port the command's ``beats`` (:meth:`_port_fetches`)."""
        return fetch_layout(self.addr_width).size + (BEATS_WIDTH if self.hw.weight_ports == 1 else 0)

    def _port_fetches(self, m):
        """What each port's fetch queue stores of a fetch: with one port, the fetch and its command's ``beats`` =
        ``rows * bpr`` (multiplied on the way in, so the queue's head hands the reader a stored value, not a
        product); with another power-of-two P, the fetch itself (the port's rows are a shift of it at the queue's
        head); otherwise the fetch with ``rows`` replaced by the port's own row count ``q + (p < r)`` (``q, r =
        divmod(rows, P)``, one constant division, :func:`~mmfree.rtl.pipeline.div_const`, on the way in, so the
        queue's head needs no division)."""
        P, fetch = self.hw.weight_ports, self.fetch.payload
        if P == 1:
            beats = Signal(BEATS_WIDTH, name="fetch_beats")
            m.d.comb += beats.eq(fetch.rows * fetch.bpr)
            return [Cat(fetch.as_value(), beats)]
        if P & (P - 1) == 0:
            return [fetch] * P
        q, r = Signal(32, name="fetch_rows_q"), Signal(range(P), name="fetch_rows_r")
        m.d.comb += [q.eq(div_const(fetch.rows, P)), r.eq(fetch.rows - q * P)]
        out = []
        for p in range(P):
            f = Signal(fetch_layout(self.addr_width), name=f"fetch_in{p}")
            m.d.comb += [f.eq(fetch), f.rows.eq(q + (r > p))]
            out.append(f)
        return out

    def _port_command(self, m, p, fq, rq):
        """Port p's reader command for the fetch at the head of its queue (rows p, p + P, ...); its rows and
        beats per row into the route queue."""
        P, sh_bus = self.hw.weight_ports, self.hw.bus_bytes.bit_length() - 1
        head = Signal(fetch_layout(self.addr_width), name=f"fetch_head{p}")
        m.d.comb += head.eq(fq.r_data[:len(head.as_value())])
        cmd = self.w_cmd[p]
        rows_p = Signal(32, name=f"rows_p{p}")
        if P == 1:
            m.d.comb += [rows_p.eq(head.rows), cmd.payload.addr.eq(head.addr),
                         cmd.payload.beats.eq(fq.r_data[len(head.as_value()):]), cmd.payload.rows.eq(1),
                         cmd.payload.stride.eq(0)]
        elif P & (P - 1):               # the queue holds this port's own row count (_port_fetches)
            rb = Signal(self.addr_width, name=f"row_bytes{p}")
            m.d.comb += [rb.eq(head.bpr << sh_bus), rows_p.eq(head.rows),
                         cmd.payload.addr.eq(head.addr + rb * p), cmd.payload.beats.eq(head.bpr),
                         cmd.payload.rows.eq(rows_p), cmd.payload.stride.eq(rb * P)]
        else:
            rb = Signal(self.addr_width, name=f"row_bytes{p}")
            m.d.comb += [rb.eq(head.bpr << sh_bus), rows_p.eq((head.rows + (P - 1 - p)) >> (P.bit_length() - 1)),
                         cmd.payload.addr.eq(head.addr + rb * p), cmd.payload.beats.eq(head.bpr),
                         cmd.payload.rows.eq(rows_p), cmd.payload.stride.eq(rb << (P.bit_length() - 1))]
        # a port with no rows of this matrix (rows < P) drops the fetch without a command
        empty = (rows_p == 0) | (head.bpr == 0)
        m.d.comb += cmd.valid.eq(fq.r_rdy & rq.w_rdy & ~empty)
        took = cmd.valid & cmd.ready
        m.d.comb += [fq.r_en.eq(took | (fq.r_rdy & empty)), rq.w_en.eq(took), rq.w_data.eq(Cat(rows_p, head.bpr))]

    def _route(self, m, p, rq, mine):
        """Port p's beats -> the queues of its ways, a row at a time in turn."""
        EPP = self.hw.matvec_engines
        r_rows, r_bpr = rq.r_data[:32], rq.r_data[32:48]
        r_beat, r_row = Signal(16, name=f"r_beat{p}"), Signal(32, name=f"r_row{p}")
        r_eng = Signal(range(EPP), name=f"r_eng{p}") if EPP > 1 else Const(0, 1)
        src = self.w_data[p]
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
                    m.d.sync += r_row.eq(0)
                    if EPP > 1:
                        m.d.sync += r_eng.eq(0)
        m.d.comb += rq.r_en.eq(move & row_end & (r_row + 1 == r_rows))


class MatvecEngine(wiring.Component):
    """MATVEC: ternary weights x every token's codes, dequantised, then the epilogue (module docstring).

    Ports: ``issue`` / ``dispatch`` (in): a MATVEC (two may be queued); ``done`` (out): a pulse when one
    finished (every row written and the per-token reductions of its epilogue in); ``k`` (in): tokens of the
    pass (tokens >= k compute but write nothing); ``act_frac`` (in); ``act`` (in): the vector engine's codes
    into the ternary engine; ``M[p][t]`` / ``S[p][t]`` (in): slot p's output multiplier and shift per token;
    ``fetch``, ``w_cmd[p]``, ``w_data[p]``: as :class:`WeightFetch`; ``x`` / ``t0`` (token read ports: RESID
    and GLU operands), ``t_w[i][t]`` (writes of T0-2), ``x_row`` / ``a_row`` (row writes of X and A to their
    :class:`~mmfree.rtl.buffers.WriteArbiter`), ``x_feed`` / ``a_feed`` (out) and ``x_done`` / ``a_done``
    (in): the :class:`~mmfree.rtl.buffers.NormTrack`; ``args[t]`` (out): token t's last argmax (a register);
    ``stall`` (out): the ternary engine waits for weight data.
    """

    def __init__(self, hw: HwConfig, addr_width: int = 40, weight_fifo_beats: int = 2048):
        self.hw, self.addr_width, self.weight_fifo_beats = hw, addr_width, weight_fifo_beats
        K, W = hw.max_tokens, hw.max_width
        self._fetch = WeightFetch(hw, addr_width, weight_fifo_beats)
        fetch_members = self._fetch.signature.members
        super().__init__({
            "issue": In(1), "dispatch": In(dispatch_layout(addr_width)), "done": Out(1),
            "k": In(range(K + 1)), "act_frac": In(8),
            "act": In(stream.Signature(act_layout(K, I.BANKS, hw.vector_lanes))),
            "M": In(slot_token(unsigned(Q.MULT_WIDTH), K)), "S": In(slot_token(signed(Q.SHIFT_WIDTH), K)),
            "fetch": fetch_members["fetch"], "w_cmd": fetch_members["w_cmd"], "w_data": fetch_members["w_data"],
            "x": In(read_port(TOKEN_BUFFERS["x"][0], W)).array(K), "t0": In(read_port(TOKEN_BUFFERS["t0"][0], W)).array(K),
            "t_w": In(write_port(signed(32), W)).array(3, K),
            "x_row": Out(row_write(K, TOKEN_BUFFERS["x"][0])), "a_row": Out(row_write(K, TOKEN_BUFFERS["a"][0])),
            "x_feed": Out(maxabs_feed(K)), "a_feed": Out(maxabs_feed(K)),
            "x_done": In(range(K + 1)), "a_done": In(range(K + 1)),
            "args": Out(data.ArrayLayout(unsigned(32), K)), "stall": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        m.submodules.fetch = wf = self._fetch
        wiring.connect(m, wiring.flipped(self.fetch), wf.fetch)
        for p in range(hw.weight_ports):
            wiring.connect(m, wf.w_cmd[p], wiring.flipped(self.w_cmd[p]))
            wiring.connect(m, wiring.flipped(self.w_data[p]), wf.w_data[p])
        m.submodules.ternary = mv = TernaryMatVec(lanes=hw.lanes, tokens=hw.max_tokens, max_k=hw.max_width,
                                                  banks=I.BANKS, max_rows=hw.max_width, ways=hw.engines,
                                                  vlanes=hw.vector_lanes)
        wiring.connect(m, wiring.flipped(self.act), mv.act)
        s = SimpleNamespace(mv=mv, started=Signal(), finish=Signal())
        s.cur, valid0 = self._queue(m, s.finish)
        m.d.comb += mv.cmd.valid.eq(valid0 & ~s.started)
        s.cmd_fire = mv.cmd.valid & mv.cmd.ready
        self._feed(m, s, wf.ways)
        self._serialise(m, s)
        self._epilogue(m, s)
        return m

    def _queue(self, m, finish):
        """The compute queue: 2 entries, entry 0 the oldest (the running command; ``finish`` drops it).
        Returns (entry 0, entry 0 valid)."""
        mat = self.dispatch.ir.matvec
        ent = [Signal(ENTRY, name=f"mv_e{i}") for i in range(2)]
        val = [Signal(name=f"mv_v{i}") for i in range(2)]
        new = Signal(ENTRY)
        m.d.comb += [new.rows.eq(mat.rows), new.bpr.eq(self.dispatch.bpr), new.bank.eq(mat.bank),
                     new.slot.eq(mat.slot), new.epi.eq(mat.epi), new.flags.eq(mat.flags[:2]), new.dst.eq(mat.dst)]
        with m.If(finish):
            m.d.sync += [ent[0].eq(ent[1]), val[0].eq(val[1]), val[1].eq(0)]
        with m.If(self.issue):
            with m.If(~val[0] | (finish & ~val[1])):
                m.d.sync += [ent[0].eq(new), val[0].eq(1)]
            with m.Else():
                m.d.sync += [ent[1].eq(new), val[1].eq(1)]
        return ent[0], val[0]

    def _feed(self, m, s, ways):
        """One command at a time on the lock-step engine (way w of group g is row g * E + w, from queue w); the
        epilogue is drained before the next command starts. A group's beat goes in when every present way's
        queue has it (the last group of a matrix whose rows are not a multiple of E has absent ways: zero
        weights, nothing popped, results dropped)."""
        E, mv, cur = self.hw.engines, s.mv, s.cur
        if E & (E - 1):                 # groups of E rows: ceil(rows / E) by a constant division
            groups = div_const(cur.rows + (E - 1), E)
        else:
            groups = (cur.rows + (E - 1)) >> (E.bit_length() - 1) if E > 1 else cur.rows
        m.d.comb += [mv.cmd.payload.rows.eq(groups),
                     mv.cmd.payload.beats.eq(cur.bpr), mv.cmd.payload.bank.eq(cur.bank)]
        with m.If(s.cmd_fire):
            m.d.sync += s.started.eq(1)
        with m.If(s.finish):
            m.d.sync += s.started.eq(0)
        feed_left, feed_beat = Signal(32), Signal(16)       # rows of the command not yet fed (group by group)
        present = [Signal(name=f"mv_present{w}") for w in range(E)]
        all_in = Const(1, 1)
        for w in range(E):
            m.d.comb += present[w].eq(feed_left > w)
            all_in = all_in & (~present[w] | ways[w].valid)
        feeding = Signal()
        m.d.comb += [feeding.eq(s.started & (feed_left != 0)), mv.weights.valid.eq(feeding & all_in),
                     mv.weights.payload.eq(Cat(*[Mux(present[w], ways[w].payload, 0) for w in range(E)]))]
        w_fire = mv.weights.valid & mv.weights.ready
        for w in range(E):
            m.d.comb += ways[w].ready.eq(w_fire & present[w])
        with m.If(s.cmd_fire):
            m.d.sync += [feed_left.eq(cur.rows), feed_beat.eq(0)]
        with m.Elif(w_fire):
            with m.If(feed_beat + 1 == cur.bpr):
                m.d.sync += [feed_beat.eq(0), feed_left.eq(Mux(feed_left > E, feed_left - E, 0))]
            with m.Else():
                m.d.sync += feed_beat.eq(feed_beat + 1)
        m.d.comb += self.stall.eq(feeding & ~all_in)

    def _serialise(self, m, s):
        """A group of up to E rows -> one row per cycle (every token of it side by side), rows in order:
        ``s.held`` (a row is presented), ``s.sw`` (its way), ``s.accs`` (the group's sums)."""
        E, K, out = self.hw.engines, self.hw.max_tokens, s.mv.out
        s.held = held = Signal()
        s.sw = sw = Signal(range(E)) if E > 1 else Const(0, 1)
        n_in = Signal(range(E + 1))                 # rows present in the held group
        out_left = Signal(32)                       # rows of the command not yet taken from the engine
        s.accs = Array(Signal(signed(N.ACC_BITS), name=f"acc{n}") for n in range(E * K))
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
        with m.If(s.cmd_fire):
            m.d.sync += out_left.eq(s.cur.rows)
        with m.If(o_fire):
            m.d.sync += [held.eq(1), n_in.eq(Mux(out_left > E, E, out_left)),
                         out_left.eq(Mux(out_left > E, out_left - E, 0))]
            if E > 1:
                m.d.sync += sw.eq(0)
            for n in range(E * K):
                m.d.sync += s.accs[n].eq(out.payload.acc[n])

    def _epilogue(self, m, s):
        """Per token: Dequantize (stage E1: row r1), then STORE / HEAD (T writes, argmax) at E1, RESID / GLU at
        E2 -> E3 (row r3: X / A rows and their MaxAbs), and completion."""
        E, K, k, cur = self.hw.engines, self.hw.max_tokens, self.k, s.cur
        M = Array(Array(self.M[p][t] for t in range(K)) for p in range(I.SLOTS))
        S = Array(Array(self.S[p][t] for t in range(K)) for p in range(I.SLOTS))
        dqs = [Q.Dequantize(pipelined=self.hw.pipelined_units) for _ in range(K)]
        for t, dq in enumerate(dqs):
            m.submodules[f"dequant{t}"] = dq
            acc_t = Array(s.accs[w * K + t] for w in range(E))[s.sw] if E > 1 else s.accs[t]
            m.d.comb += [dq.i.valid.eq(s.held), dq.i.payload.acc.eq(acc_t), dq.i.payload.M.eq(M[cur.slot][t]),
                         dq.i.payload.shift.eq(S[cur.slot][t]), dq.i.payload.last.eq(0), dq.o.ready.eq(1)]
        r1 = Signal(32)
        ys = [dq.o.payload.y for dq in dqs]
        v1 = dqs[0].o.valid
        with m.If(v1):
            m.d.sync += r1.eq(r1 + 1)
        epi = cur.epi
        for i in range(3):
            for t in range(K):
                m.d.comb += [self.t_w[i][t].addr.eq(r1), self.t_w[i][t].data.eq(ys[t]),
                             self.t_w[i][t].en.eq(v1 & (t < k) & ((epi == I.EPI_STORE) | (epi == I.EPI_HEAD))
                                                  & (cur.dst == i))]
        arg_out = self._argmax(m, cur, v1, ys, r1 + 1 == cur.rows)
        for t in range(K):
            m.d.comb += [self.x[t].addr.eq(r1), self.t0[t].addr.eq(r1)]
        v2 = Signal()
        y2 = [Signal(signed(32), name=f"y2_{t}") for t in range(K)]
        m.d.sync += [v2.eq(v1 & ((epi == I.EPI_RESID) | (epi == I.EPI_GLU))), *(y2[t].eq(ys[t]) for t in range(K))]
        v3, r3 = self._resid_glu(m, cur, v2, y2)
        # completion: every row finalised, plus the per-token reductions
        fin_rows, red_cnt = Signal(32), Signal(range(K + 1))
        final_now = Mux((epi == I.EPI_RESID) | (epi == I.EPI_GLU), v3, v1)
        with m.If(s.started):
            m.d.sync += fin_rows.eq(fin_rows + final_now)
            with m.Switch(epi):
                for e, n in ((I.EPI_RESID, self.x_done), (I.EPI_GLU, self.a_done), (I.EPI_HEAD, arg_out)):
                    with m.Case(e):
                        m.d.sync += red_cnt.eq(red_cnt + n)
        need_red = (epi == I.EPI_RESID) | (epi == I.EPI_GLU) | ((epi == I.EPI_HEAD) & cur.flags[1])
        m.d.comb += s.finish.eq(s.started & (fin_rows == cur.rows) & (~need_red | (red_cnt == k)))
        m.d.sync += self.done.eq(0)
        with m.If(s.finish):
            m.d.sync += [fin_rows.eq(0), red_cnt.eq(0), r1.eq(0), r3.eq(0), self.done.eq(1)]

    def _argmax(self, m, cur, v1, ys, lastrow1):
        """HEAD: a running Argmax per token over the logits (finished at HEAD_LAST's last row) into ``args``.
        Returns how many tokens' argmax finished this cycle."""
        K, k = self.hw.max_tokens, self.k
        argm = [A.Argmax(max_len=MAX_VOCAB) for _ in range(K)]
        arg_out = Signal(range(K + 1))
        m.d.comb += arg_out.eq(sum(a.o.valid for a in argm))
        for t in range(K):
            m.submodules[f"argmax{t}"] = argm[t]
            m.d.comb += [argm[t].i.valid.eq(v1 & (cur.epi == I.EPI_HEAD) & (t < k)), argm[t].i.payload.x.eq(ys[t]),
                         argm[t].i.payload.last.eq(lastrow1 & cur.flags[1]), argm[t].o.ready.eq(1)]
            with m.If(argm[t].o.valid):
                m.d.sync += self.args[t].eq(argm[t].o.payload.index)
        return arg_out

    def _resid_glu(self, m, cur, v2, y2):
        """E2: residual add (RESID) / gated product with T0 (GLU) per token -> the X / A rows and their MaxAbs.
        Returns (v3: a row finished, r3: its row counter)."""
        K, k, epi = self.hw.max_tokens, self.k, cur.epi
        ras = [A.ResidualAdd() for _ in range(K)]
        ggs = [A.GatedProduct(pipelined=self.hw.pipelined_units) for _ in range(K)]
        for t in range(K):
            ra, gg = ras[t], ggs[t]
            m.submodules[f"resadd{t}"] = ra
            m.submodules[f"gp_g{t}"] = gg
            m.d.comb += [ra.i.valid.eq(v2 & (epi == I.EPI_RESID)), ra.i.payload.x.eq(self.x[t].data),
                         ra.i.payload.y.eq(y2[t]), ra.i.payload.last.eq(0), ra.o.ready.eq(1),
                         gg.i.valid.eq(v2 & (epi == I.EPI_GLU)), gg.i.payload.a.eq(y2[t]),
                         gg.i.payload.b.eq(self.t0[t].data), gg.i.payload.frac.eq(self.act_frac),
                         gg.i.payload.last.eq(0), gg.o.ready.eq(1)]
        r3 = Signal(32)
        v3 = ras[0].o.valid | ggs[0].o.valid
        with m.If(v3):
            m.d.sync += r3.eq(r3 + 1)
        lastrow3 = r3 + 1 == cur.rows
        m.d.comb += [self.x_row.addr.eq(r3), self.a_row.addr.eq(r3)]
        for t in range(K):
            x_en, a_en = ras[t].o.valid & (t < k), ggs[t].o.valid & (t < k)
            m.d.comb += [self.x_row.en[t].eq(x_en), self.x_row.data[t].eq(ras[t].o.payload.z),
                         self.a_row.en[t].eq(a_en), self.a_row.data[t].eq(ggs[t].o.payload.u),
                         self.x_feed.valid[t].eq(x_en), self.x_feed.u[t].eq(ras[t].o.payload.z),
                         self.x_feed.last[t].eq(lastrow3),
                         self.a_feed.valid[t].eq(a_en), self.a_feed.u[t].eq(ggs[t].o.payload.u),
                         self.a_feed.last[t].eq(lastrow3)]
        return v3, r3

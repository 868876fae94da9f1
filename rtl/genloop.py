"""The on-chip draft-verify loop (``CONTROL.GENERATE``): the trigram :class:`~mmfree.rtl.draft.DraftEngine`
drafts a tree, the sequencer verifies it in one pass, the loop walks the argmax along the tree, updates the
table and writes the emitted tokens, with no host in between. ``docs/speculative.md`` ("The on-chip
draft-verify loop") is the contract, :class:`mmfree.sim.emulator.EmulatedBoard` its executable statement.

:class:`GenLoop` sits beside the sequencer and owns the control read client and the write master while
no pass runs (``seq_busy`` low); a pass is started with ``pass_start`` and the draft on ``pass_tokens`` /
``pass_parents`` (the sequencer takes them instead of reading TOKENS / PARENTS). Between passes it resets
the AXI engines and the datapath (``core_rst``), so no leftover beat of the pass's program prefetch reaches
the line gearbox.

Memory paths (one AXI read client of ``bus_bytes`` beats, one write master):

* line reads: a command of whole lines (``LINE_BYTES = 4 (1 + K)``, a multiple of the bus width), its
  beats gathered into lines (first beat in the low bits); used by the engine's ``rd_req`` (a set: ``W``
  lines from ``TABLE_BASE + LINE_BYTES * index``) and by the bigram load (``BIGRAM_BASE``, ``LINE_BYTES /
  4 KB`` rows per line);
* writes: one unit writes either a line (all strobes) or one token word (its four strobes); the engine's
  reads are held while it is busy or a write response is outstanding, which is the engine's ordering
  contract (a read after a write returns the written line).

A build without a draft engine (``hw.draft_vocab == 0``) keeps the registers and answers GENERATE with
``ERR_NO_DRAFT``.
"""

from __future__ import annotations

from contextlib import contextmanager

from amaranth import Array, Cat, Const, Module, Mux, ResetInserter, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.pymodel import trigram as T
from mmfree.rtl import regmap as RM
from mmfree.rtl.axi import cmd_layout
from mmfree.rtl.compiler import HwConfig
from mmfree.rtl.csr import layout
from mmfree.rtl.draft import DRAFT, UPDATE, DraftEngine
from mmfree.rtl.pipeline import width_for


def gen_template(max_tokens: int):
    """The draft template of a build with ``max_tokens`` per pass: ``make_template(k - 1, k - 1)``."""
    return T.make_template(max_tokens - 1, max_tokens - 1)


class GenLoop(wiring.Component):
    """The draft-verify loop (see the module docstring). Register inputs are the CSR values; status outputs
    go to the CSR block while the last command was GENERATE."""

    def __init__(self, hw: HwConfig, addr_width: int = 40, params: T.TableParams | None = None):
        self.hw, self.addr_width = hw, addr_width
        #: the engine's table geometry: ``hw.draft_params`` (what the registers report) unless given (unit tests)
        self.params = params or hw.draft_params
        K = hw.max_tokens
        self.kbits = width_for(K)
        self.WDATA = data.StructLayout({"data": unsigned(8 * hw.bus_bytes), "strb": unsigned(hw.bus_bytes)})
        regs = {"reg_" + n.lower(): In(64) for n in RM.GEN_ADDRESS_REGS + ("STATE_IN", "STATE_OUT", "MEM_LO", "MEM_HI")}
        super().__init__({
            "go": In(1), "soft_reset": In(1),
            **regs,
            "gen_n": In(32), "gen_context": In(layout("GEN_CONTEXT")), "gen_eos": In(layout("GEN_EOS")), "state_stride": In(32),
            "busy": Out(1), "done": Out(1), "error": Out(1), "error_code": Out(32), "finished": Out(1),
            "count": Out(32), "passes": Out(32), "nodes": Out(32), "cycles": Out(64), "gen_state": Out(64),
            # the sequencer and the datapath
            "pass_start": Out(1), "pass_k": Out(range(K + 1)),
            "pass_tokens": Out(data.ArrayLayout(unsigned(32), K)),
            "pass_parents": Out(data.ArrayLayout(signed(self.kbits + 1), K)),
            "pass_state_in": Out(64), "pass_state_out": Out(64),
            "seq_busy": In(1), "seq_finished": In(1), "seq_error": In(1), "seq_error_code": In(32),
            "args": In(data.ArrayLayout(unsigned(32), K)),
            "core_rst": Out(1), "axi_abort": Out(1),
            # the AXI engines, while no pass runs
            "rd_cmd": Out(stream.Signature(cmd_layout(addr_width))),
            "rd_data": In(stream.Signature(unsigned(8 * hw.bus_bytes))),
            "wr_cmd": Out(stream.Signature(cmd_layout(addr_width))),
            "wr_data": Out(stream.Signature(self.WDATA)),
            "rd_quiet": In(1), "wr_quiet": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        K, bb = hw.max_tokens, hw.bus_bytes
        lg_bb = bb.bit_length() - 1

        busy, done, err, fin = Signal(), Signal(), Signal(), Signal()
        code = Signal(32)
        cycles = Signal(64)
        count, passes, nodes = Signal(32), Signal(32), Signal(32)
        cur = Signal(64)                       # the committed state (the next pass's STATE_IN)
        m.d.comb += [self.busy.eq(busy), self.done.eq(done), self.error.eq(err), self.error_code.eq(code),
                     self.finished.eq(fin), self.count.eq(count), self.passes.eq(passes), self.nodes.eq(nodes),
                     self.cycles.eq(cycles), self.gen_state.eq(cur)]
        m.d.sync += fin.eq(0)
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)
        core_rst, abort = Signal(), Signal()
        m.d.comb += [self.core_rst.eq(core_rst), self.axi_abort.eq(abort)]
        m.d.sync += core_rst.eq(0)

        if not hw.draft_vocab:                 # no engine: GENERATE answers ERR_NO_DRAFT
            with m.If(self.go):
                m.d.sync += [done.eq(0), err.eq(1), code.eq(RM.ERR_NO_DRAFT), fin.eq(1), count.eq(0),
                             passes.eq(0), nodes.eq(0), cycles.eq(0)]
            with m.Elif(self.soft_reset):
                m.d.sync += [done.eq(0), err.eq(0), code.eq(0)]
            return m

        p = self.params
        V = hw.draft_vocab
        LINE_BYTES = 4 * (1 + p.slots)
        if LINE_BYTES % bb or LINE_BYTES % (4 * p.bigram_slots):
            raise ValueError(f"a draft table line ({LINE_BYTES} bytes) must hold whole bus beats ({bb} bytes) and "
                             f"whole bigram rows ({4 * p.bigram_slots} bytes)")
        BPL = LINE_BYTES // bb                 # beats per line
        RPL = LINE_BYTES // (4 * p.bigram_slots)   # bigram rows per line
        ROW_BITS = 32 * p.bigram_slots
        n_bl = -(-V // RPL)                    # bigram lines
        table_bytes = p.n_sets * p.ways * LINE_BYTES

        eng_rst = Signal()
        eng = DraftEngine(V, p, gen_template(K))
        m.submodules.engine = ResetInserter(eng_rst)(eng)
        m.d.sync += eng_rst.eq(0)

        regs = [getattr(self, "reg_" + n.lower()) for n in RM.GEN_ADDRESS_REGS]
        table_base, bigram_base, out_base, state_alt = regs
        mem_lo, mem_hi = self.reg_mem_lo, self.reg_mem_hi
        stride = self.state_stride

        # ---- line gearbox (reads) ------------------------------------------------------------------
        gat = Signal(8 * LINE_BYTES)
        gcnt = Signal(range(BPL))
        gfull = Signal()
        g_take = Signal()                      # the consumer takes the gathered line
        m.d.comb += self.rd_data.ready.eq(~gfull)
        with m.If(self.rd_data.valid & ~gfull):
            m.d.sync += [gat.eq(Cat(gat[8 * bb:], self.rd_data.payload)), gcnt.eq(gcnt + 1)]
            with m.If(gcnt == BPL - 1):
                m.d.sync += [gfull.eq(1), gcnt.eq(0)]
        with m.If(g_take):
            m.d.sync += gfull.eq(0)
        with m.If(core_rst):                   # the read client is reset: so is the line being gathered
            m.d.sync += [gcnt.eq(0), gfull.eq(0)]

        # ---- write unit: one line (all strobes) or one token word --------------------------------------
        wl_busy, wl_cmd = Signal(), Signal()
        wl_addr = Signal(self.addr_width)
        wl_beats = Signal(range(BPL + 1))
        wl_left = Signal(range(BPL + 1))
        wl_data = Signal(8 * LINE_BYTES)
        wl_strb = Signal(bb)
        wl_start = Signal()
        wl_s_addr, wl_s_beats, wl_s_data, wl_s_strb = (Signal(64), Signal(range(BPL + 1)), Signal(8 * LINE_BYTES),
                                                       Signal(bb))
        with m.If(wl_start):
            m.d.sync += [wl_busy.eq(1), wl_cmd.eq(1), wl_addr.eq(wl_s_addr), wl_beats.eq(wl_s_beats),
                         wl_left.eq(wl_s_beats), wl_data.eq(wl_s_data), wl_strb.eq(wl_s_strb)]
        m.d.comb += [self.wr_cmd.valid.eq(wl_cmd), self.wr_cmd.payload.addr.eq(wl_addr),
                     self.wr_cmd.payload.beats.eq(wl_beats),
                     self.wr_data.valid.eq(wl_busy & (wl_left != 0)),
                     self.wr_data.payload.data.eq(wl_data[:8 * bb]), self.wr_data.payload.strb.eq(wl_strb)]
        with m.If(self.wr_cmd.valid & self.wr_cmd.ready):
            m.d.sync += wl_cmd.eq(0)
        with m.If(self.wr_data.valid & self.wr_data.ready):
            m.d.sync += [wl_left.eq(wl_left - 1), wl_data.eq(wl_data >> (8 * bb))]
        with m.If(wl_busy & ~wl_cmd & (wl_left == 0)):
            m.d.sync += wl_busy.eq(0)
        wl_free = ~wl_busy

        # ---- the engine's memory port ------------------------------------------------------------------
        eng_mem = Signal()                     # the engine owns the gearbox (every state but the bigram load)
        rd_cmd = self.rd_cmd
        m.d.comb += [
            eng.rd_resp.payload.eq(gat), eng.rd_resp.valid.eq(eng_mem & gfull),
            rd_cmd.payload.addr.eq(table_base + eng.rd_req.payload.addr * LINE_BYTES),
            rd_cmd.payload.beats.eq(eng.rd_req.payload.count * BPL),
        ]
        rd_hold = wl_busy | ~self.wr_quiet
        with m.If(eng_mem):
            m.d.comb += [rd_cmd.valid.eq(eng.rd_req.valid & ~rd_hold), eng.rd_req.ready.eq(rd_cmd.ready & ~rd_hold),
                         g_take.eq(eng.rd_resp.ready & gfull)]

        # ---- draft and pass registers -------------------------------------------------------------------
        tok = Array(Signal(16, name=f"dtok{i}") for i in range(K))
        par = Array(Signal(signed(self.kbits + 1), name=f"dpar{i}") for i in range(K))
        arg = Array(Signal(16, name=f"darg{i}") for i in range(K))
        n = Signal(range(K + 1))
        ni = Signal(range(K + 1))
        node = Signal(range(K))
        side = Signal()                        # 0: this pass writes STATE_OUT, 1: STATE_ALT
        prev, root = Signal(16), Signal(16)
        for t in range(K):
            m.d.comb += [self.pass_tokens[t].eq(tok[t]), self.pass_parents[t].eq(par[t])]
        out_addr = Mux(side, state_alt, self.reg_state_out)
        m.d.comb += [self.pass_k.eq(n), self.pass_state_in.eq(cur), self.pass_state_out.eq(out_addr)]
        t_now = arg[node]
        # the first child of `node` drafted with the emitted token
        child_ok, child = Signal(), Signal(range(K))
        for j in reversed(range(1, K)):
            with m.If((j < n) & (par[j] == node) & (tok[j] == t_now)):
                m.d.comb += [child_ok.eq(1), child.eq(j)]
        stop = ((count + 1) == self.gen_n) | (self.gen_eos.enable & (t_now == self.gen_eos.token))

        def fail(c, detail=0):
            m.d.sync += code.eq(c | (detail << 8))
            m.next = "FAIL"

        def in_window(a, nbytes):
            return (a >= mem_lo) & ((a + nbytes) <= mem_hi)

        spans = [Const(table_bytes, 64), Const(n_bl * LINE_BYTES, 64), self.gen_n << 2, stride * K]
        row = Signal(range(V + 1))
        sub = Signal(range(RPL))
        pack = Signal(8 * LINE_BYTES)
        line_i = Signal(range(n_bl + 1))
        ecmd = eng.cmd.payload
        m.d.comb += [ecmd.a.eq(prev), ecmd.b.eq(root), ecmd.c.eq(t_now), ecmd.has_prev.eq(busy)]   # always a prev

        @contextmanager
        def busy_state(name):
            """A state of a running GENERATE: SOFT_RESET leaves it for ABORT."""
            with m.State(name):
                yield
                with m.If(self.soft_reset):
                    m.next = "ABORT"

        with m.FSM(name="gen"):
            with m.State("IDLE"):
                m.d.comb += eng_mem.eq(1)
                with m.If(self.go):
                    m.d.sync += [busy.eq(1), done.eq(0), err.eq(0), code.eq(0), cycles.eq(0), count.eq(0),
                                 passes.eq(0), nodes.eq(0), cur.eq(self.reg_state_in), side.eq(0),
                                 root.eq(self.gen_context.root), prev.eq(self.gen_context.prev)]
                    m.next = "CHECK"
                with m.Elif(self.soft_reset):
                    m.d.sync += [done.eq(0), err.eq(0), code.eq(0)]
            with busy_state("CHECK"):
                bad_al = Signal(range(len(regs) + 1))
                bad_rg = Signal(range(len(regs) + 1))
                m.d.comb += [bad_al.eq(len(regs)), bad_rg.eq(len(regs))]
                for i in reversed(range(len(regs))):
                    with m.If(regs[i][:6] != 0):
                        m.d.comb += bad_al.eq(i)
                    with m.If(~in_window(regs[i], spans[i])):
                        m.d.comb += bad_rg.eq(i)
                with m.If(self.gen_n == 0):
                    fail(RM.ERR_GEN_CONFIG, 0)
                with m.Elif((stride == 0) | (stride[:6] != 0)):
                    fail(RM.ERR_GEN_CONFIG, 1)
                with m.Elif(bad_al != len(regs)):
                    fail(RM.ERR_UNALIGNED, bad_al + len(RM.ADDRESS_REGS))
                with m.Elif(bad_rg != len(regs)):
                    fail(RM.ERR_ADDRESS_RANGE, bad_rg + len(RM.ADDRESS_REGS))
                with m.Else():
                    m.d.sync += core_rst.eq(1)         # drop whatever an earlier run left in the read client
                    m.next = "BL_WAIT"
            with busy_state("BL_WAIT"):                   # (the AXI engines are in reset this cycle)
                m.next = "BL_REQ"
            # ---- the bigram fallback: DDR -> engine -------------------------------------------------------
            with busy_state("BL_REQ"):
                m.d.comb += [rd_cmd.valid.eq(1), rd_cmd.payload.addr.eq(bigram_base),
                             rd_cmd.payload.beats.eq(n_bl * BPL)]
                with m.If(rd_cmd.ready):
                    m.d.sync += [row.eq(0), sub.eq(0)]
                    m.next = "BL_ROWS"
            with busy_state("BL_ROWS"):
                bw = eng.bigram_wr
                m.d.comb += [bw.valid.eq(gfull), bw.payload.row.eq(row),
                             bw.payload.data.eq(gat.word_select(sub, ROW_BITS))]
                with m.If(bw.valid & bw.ready):
                    m.d.sync += [row.eq(row + 1), sub.eq(sub + 1)]
                    last_row = row == V - 1
                    with m.If((sub == RPL - 1) | last_row):
                        m.d.comb += g_take.eq(1)
                        m.d.sync += sub.eq(0)
                    with m.If(last_row):
                        m.next = "DRAFT"
            # ---- one step: draft, verify, walk, commit ----------------------------------------------------
            with busy_state("DRAFT"):
                m.d.comb += [eng_mem.eq(1), eng.cmd.valid.eq(1), ecmd.op.eq(DRAFT)]
                with m.If(eng.cmd.ready):
                    m.d.sync += ni.eq(0)
                    m.next = "COLLECT"
            with busy_state("COLLECT"):
                m.d.comb += [eng_mem.eq(1), eng.draft.ready.eq(1)]
                with m.If(eng.draft.valid):
                    m.d.sync += [tok[ni].eq(eng.draft.payload.token), par[ni].eq(eng.draft.payload.parent),
                                 ni.eq(ni + 1)]
                    with m.If(eng.draft.payload.last):
                        m.d.sync += n.eq(ni + 1)
                        m.next = "PASS"
            with busy_state("PASS"):
                with m.If(~wl_busy & self.wr_quiet & self.rd_quiet & ~self.seq_busy):
                    m.d.comb += self.pass_start.eq(1)
                    m.next = "PWAIT"
            with busy_state("PWAIT"):
                with m.If(self.seq_finished):
                    with m.If(self.seq_error):
                        m.d.sync += code.eq(self.seq_error_code)
                        m.next = "FAIL"
                    with m.Else():
                        for t in range(K):
                            m.d.sync += arg[t].eq(self.args[t][:16])
                        m.d.sync += [passes.eq(passes + 1), nodes.eq(nodes + n), node.eq(0), core_rst.eq(1)]
                        m.next = "WALK"
            with busy_state("WALK"):                          # emit arg[node]: table update ...
                m.d.comb += [eng_mem.eq(1), eng.cmd.valid.eq(1), ecmd.op.eq(UPDATE)]
                with m.If(eng.cmd.ready):
                    m.next = "EMIT"
            with busy_state("EMIT"):                          # ... and GEN_OUT[count]
                m.d.comb += eng_mem.eq(1)
                with m.If(wl_free & ~eng.wr.valid):
                    a = out_base + (count << 2)
                    m.d.comb += [wl_start.eq(1), wl_s_addr.eq(Cat(Const(0, lg_bb), a[lg_bb:64])), wl_s_beats.eq(1),
                                 wl_s_data.eq(Cat(*[t_now, Const(0, 16)] * (bb // 4))),
                                 wl_s_strb.eq(Const(0xF, bb) << (a[2:lg_bb] << 2))]
                    m.d.sync += [count.eq(count + 1), prev.eq(root), root.eq(t_now)]
                    with m.If(stop):
                        m.next = "COMMIT_LAST"
                    with m.Elif(child_ok):
                        m.d.sync += node.eq(child)
                        m.next = "WALK"
                    with m.Else():
                        m.next = "COMMIT"
            with busy_state("COMMIT"):
                m.d.comb += eng_mem.eq(1)
                m.d.sync += [cur.eq(out_addr + node * stride), side.eq(~side)]
                m.next = "DRAFT"
            with busy_state("COMMIT_LAST"):
                m.d.comb += eng_mem.eq(1)
                m.d.sync += cur.eq(out_addr + node * stride)
                m.next = "FINISH"
            with busy_state("FINISH"):                        # the last update done, then the bigram back to DDR
                m.d.comb += eng_mem.eq(1)
                with m.If(~eng.busy & ~eng.cmd.valid & wl_free & ~eng.wr.valid):
                    m.d.sync += [row.eq(0), sub.eq(0), line_i.eq(0)]
                    m.next = "BS_ADDR"
            with busy_state("BS_ADDR"):                       # present row `row` to the engine's read port
                m.d.comb += [eng.dump.eq(1), eng.dump_row.eq(row)]
                m.next = "BS_CAP"
            with busy_state("BS_CAP"):
                rd = Mux(row < V, eng.dump_data, 0)
                m.d.sync += [pack.eq(Cat(pack[ROW_BITS:], rd)), row.eq(row + 1), sub.eq(sub + 1)]
                with m.If(sub == RPL - 1):
                    m.d.sync += sub.eq(0)
                    m.next = "BS_WRITE"
                with m.Else():
                    m.next = "BS_ADDR"
            with busy_state("BS_WRITE"):
                with m.If(wl_free):
                    m.d.comb += [wl_start.eq(1), wl_s_addr.eq(bigram_base + line_i * LINE_BYTES), wl_s_beats.eq(BPL),
                                 wl_s_data.eq(pack), wl_s_strb.eq((1 << bb) - 1)]
                    m.d.sync += line_i.eq(line_i + 1)
                    with m.If(line_i == n_bl - 1):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "BS_ADDR"
            with busy_state("DRAIN"):
                with m.If(wl_free & self.wr_quiet):
                    m.d.sync += [busy.eq(0), done.eq(1), fin.eq(1)]
                    m.next = "IDLE"
            for name, is_error in (("FAIL", 1), ("ABORT", 0)):   # an error, or SOFT_RESET (no error, no interrupt)
                with m.State(name):                        # stop the AXI engines, drain the reads, then report
                    m.d.comb += [abort.eq(1), self.rd_data.ready.eq(1)]
                    with m.If(self.rd_quiet & self.wr_quiet & ~self.seq_busy):
                        m.d.sync += [busy.eq(0), err.eq(is_error), fin.eq(is_error), core_rst.eq(1), eng_rst.eq(1),
                                     wl_busy.eq(0), wl_cmd.eq(0), gfull.eq(0), gcnt.eq(0)]
                        if not is_error:
                            m.d.sync += code.eq(0)
                        m.next = "IDLE"
        # the engine's line writes go through the write unit whenever it is free (any state but the
        # bigram write-back, which never overlaps an engine command)
        with m.If(eng_mem & eng.wr.valid & wl_free):
            m.d.comb += [eng.wr.ready.eq(1), wl_start.eq(1),
                         wl_s_addr.eq(table_base + eng.wr.payload.addr * LINE_BYTES), wl_s_beats.eq(BPL),
                         wl_s_data.eq(eng.wr.payload.data), wl_s_strb.eq((1 << bb) - 1)]
        return m

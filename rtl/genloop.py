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

The tree rule of every draft is ``GEN_DRAFT.tree`` (:class:`~mmfree.rtl.regmap.TreeRule`, latched at
CONTROL.GENERATE): the build's template ``make_template(K - 1, K - 1)`` or the count-guided tree of K - 1 nodes
(the engine's ``cmd.rule``); a value no rule has fails the checks with ``ERR_GEN_CONFIG`` detail 2.

A build without a draft engine (``hw.draft_vocab == 0``) keeps the registers and answers GENERATE with
``ERR_NO_DRAFT``.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

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


class LineGearbox(wiring.Component):
    """Bus beats -> whole draft-table lines (``line_bytes``, a multiple of the bus width; first beat in the low
    bits). ``full`` holds a gathered line on ``line`` until ``take``; ``clear`` drops the line being gathered
    (the read client was reset); ``drain`` takes every beat (an abort empties the bus)."""

    def __init__(self, bus_bytes: int, line_bytes: int):
        self.bus_bytes, self.line_bytes = bus_bytes, line_bytes
        super().__init__({
            "beat": In(stream.Signature(unsigned(8 * bus_bytes))),
            "line": Out(8 * line_bytes), "full": Out(1), "take": In(1), "clear": In(1), "drain": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        bb, bpl = self.bus_bytes, self.line_bytes // self.bus_bytes
        gat = Signal(8 * self.line_bytes)
        gcnt = Signal(range(bpl))
        gfull = Signal()
        m.d.comb += [self.beat.ready.eq(~gfull | self.drain), self.line.eq(gat), self.full.eq(gfull)]
        with m.If(self.beat.valid & ~gfull):
            m.d.sync += [gat.eq(Cat(gat[8 * bb:], self.beat.payload)), gcnt.eq(gcnt + 1)]
            with m.If(gcnt == bpl - 1):
                m.d.sync += [gfull.eq(1), gcnt.eq(0)]
        with m.If(self.take):
            m.d.sync += gfull.eq(0)
        with m.If(self.clear):
            m.d.sync += [gcnt.eq(0), gfull.eq(0)]
        return m


class WriteUnit(wiring.Component):
    """One write of ``beats`` bus beats (1 .. a line) from ``addr`` (bus-aligned), the beats taken from ``data``
    low bits first, every beat with the strobes ``strb``: a whole line (all strobes) or one token word (its
    four). ``start`` (a pulse, while not ``busy``) begins it; ``busy`` until its last beat left; ``clear``
    forgets a write (an abort, with the AXI writer reset)."""

    def __init__(self, addr_width: int, bus_bytes: int, line_bytes: int):
        self.addr_width, self.bus_bytes, self.line_bytes = addr_width, bus_bytes, line_bytes
        bpl = line_bytes // bus_bytes
        self.WDATA = data.StructLayout({"data": unsigned(8 * bus_bytes), "strb": unsigned(bus_bytes)})
        super().__init__({
            "start": In(1), "addr": In(64), "beats": In(range(bpl + 1)), "data": In(8 * line_bytes),
            "strb": In(bus_bytes), "clear": In(1), "busy": Out(1),
            "cmd": Out(stream.Signature(cmd_layout(addr_width))),
            "wdata": Out(stream.Signature(self.WDATA)),
        })

    def elaborate(self, platform):
        m = Module()
        bb, bpl = self.bus_bytes, self.line_bytes // self.bus_bytes
        busy, cmd = Signal(), Signal()
        addr = Signal(self.addr_width)
        beats, left = Signal(range(bpl + 1)), Signal(range(bpl + 1))
        wdata = Signal(8 * self.line_bytes)
        strb = Signal(bb)
        with m.If(self.start):
            m.d.sync += [busy.eq(1), cmd.eq(1), addr.eq(self.addr), beats.eq(self.beats), left.eq(self.beats),
                         wdata.eq(self.data), strb.eq(self.strb)]
        m.d.comb += [self.cmd.valid.eq(cmd), self.cmd.payload.addr.eq(addr), self.cmd.payload.beats.eq(beats),
                     self.wdata.valid.eq(busy & (left != 0)),
                     self.wdata.payload.data.eq(wdata[:8 * bb]), self.wdata.payload.strb.eq(strb),
                     self.busy.eq(busy)]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += cmd.eq(0)
        with m.If(self.wdata.valid & self.wdata.ready):
            m.d.sync += [left.eq(left - 1), wdata.eq(wdata >> (8 * bb))]
        with m.If(busy & ~cmd & (left == 0)):
            m.d.sync += busy.eq(0)
        with m.If(self.clear):
            m.d.sync += [busy.eq(0), cmd.eq(0)]
        return m


class GenLoop(wiring.Component):
    """The draft-verify loop (see the module docstring). Register inputs are the CSR values; status outputs
    go to the CSR block while the last command was GENERATE."""

    def __init__(self, hw: HwConfig, addr_width: int = 40, params: T.TableParams | None = None):
        self.hw, self.addr_width = hw, addr_width
        #: the engine's table geometry: ``hw.draft_params`` (what the registers report) unless given (unit tests)
        self.params = params or hw.draft_params
        K = hw.max_tokens
        self.kbits = width_for(K)
        self.WDATA = data.StructLayout({"data": unsigned(8 * hw.bus_bytes), "strb": unsigned(hw.bus_bytes)})  # WriteUnit's
        regs = {"reg_" + n.lower(): In(64) for n in RM.GEN_ADDRESS_REGS + ("STATE_IN", "STATE_OUT", "MEM_LO", "MEM_HI")}
        super().__init__({
            "go": In(1), "soft_reset": In(1),
            **regs,
            "gen_n": In(32), "gen_context": In(layout("GEN_CONTEXT")), "gen_eos": In(layout("GEN_EOS")), "state_stride": In(32),
            "gen_draft": In(layout("GEN_DRAFT")),
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
        s = self._status(m)
        if not hw.draft_vocab:                 # no engine: GENERATE answers ERR_NO_DRAFT
            with m.If(self.go):
                m.d.sync += [s.done.eq(0), s.err.eq(1), s.code.eq(RM.ERR_NO_DRAFT), s.fin.eq(1), s.count.eq(0),
                             s.passes.eq(0), s.nodes.eq(0), s.cycles.eq(0)]
            with m.Elif(self.soft_reset):
                m.d.sync += [s.done.eq(0), s.err.eq(0), s.code.eq(0)]
            return m
        self._geometry(s)
        s.eng_rst = Signal()
        s.eng = eng = DraftEngine(hw.draft_vocab, self.params, gen_template(hw.max_tokens))   # both tree rules
        m.submodules.engine = ResetInserter(s.eng_rst)(eng)
        m.d.sync += s.eng_rst.eq(0)
        m.submodules.gearbox = gb = LineGearbox(hw.bus_bytes, s.LINE_BYTES)
        m.submodules.writer = wu = WriteUnit(self.addr_width, hw.bus_bytes, s.LINE_BYTES)
        wiring.connect(m, wiring.flipped(self.rd_data), gb.beat)
        wiring.connect(m, wu.cmd, wiring.flipped(self.wr_cmd))
        wiring.connect(m, wu.wdata, wiring.flipped(self.wr_data))
        s.gb, s.wu, s.stopped = gb, wu, Signal()   # stopped: FAIL / ABORT leave (the write unit and gearbox forget)
        m.d.comb += [gb.clear.eq(s.core_rst | s.stopped), wu.clear.eq(s.stopped)]
        self._engine_port(m, s)
        self._pass_registers(m, s)

        @contextmanager
        def busy_state(name):
            """A state of a running GENERATE: SOFT_RESET leaves it for ABORT."""
            with m.State(name):
                yield
                with m.If(self.soft_reset):
                    m.next = "ABORT"

        with m.FSM(name="gen"):
            self._start_states(m, s, busy_state)
            self._step_states(m, s, busy_state)
            self._finish_states(m, s, busy_state)
        # the engine's line writes go through the write unit whenever it is free (any state but the
        # bigram write-back, which never overlaps an engine command)
        with m.If(s.eng_mem & eng.wr.valid & ~wu.busy):
            m.d.comb += [eng.wr.ready.eq(1), wu.start.eq(1), wu.addr.eq(s.table_base + eng.wr.payload.addr * s.LINE_BYTES),
                         wu.beats.eq(s.BPL), wu.data.eq(eng.wr.payload.data), wu.strb.eq((1 << hw.bus_bytes) - 1)]
        return m

    def _status(self, m) -> SimpleNamespace:
        """The loop's status registers and counters, driven onto the outputs."""
        s = SimpleNamespace(busy=Signal(), done=Signal(), err=Signal(), fin=Signal(), code=Signal(32),
                            guided=Signal(),                   # this GENERATE's trees are count-guided (GEN_DRAFT)
                            cycles=Signal(64), count=Signal(32), passes=Signal(32), nodes=Signal(32),
                            cur=Signal(64),                    # the committed state (the next pass's STATE_IN)
                            core_rst=Signal(), abort=Signal())
        m.d.comb += [self.busy.eq(s.busy), self.done.eq(s.done), self.error.eq(s.err), self.error_code.eq(s.code),
                     self.finished.eq(s.fin), self.count.eq(s.count), self.passes.eq(s.passes),
                     self.nodes.eq(s.nodes), self.cycles.eq(s.cycles), self.gen_state.eq(s.cur),
                     self.core_rst.eq(s.core_rst), self.axi_abort.eq(s.abort)]
        m.d.sync += s.fin.eq(0)
        with m.If(s.busy):
            m.d.sync += s.cycles.eq(s.cycles + 1)
        m.d.sync += s.core_rst.eq(0)
        return s

    def _geometry(self, s):
        """Line and bigram-row sizes of the table (ValueError if a line does not hold whole beats and rows)."""
        p, bb, V = self.params, self.hw.bus_bytes, self.hw.draft_vocab
        s.LINE_BYTES = 4 * (1 + p.slots)
        if s.LINE_BYTES % bb or s.LINE_BYTES % (4 * p.bigram_slots):
            raise ValueError(f"a draft table line ({s.LINE_BYTES} bytes) must hold whole bus beats ({bb} bytes) and "
                             f"whole bigram rows ({4 * p.bigram_slots} bytes)")
        s.BPL = s.LINE_BYTES // bb                 # beats per line
        s.RPL = s.LINE_BYTES // (4 * p.bigram_slots)   # bigram rows per line
        s.ROW_BITS = 32 * p.bigram_slots
        s.n_bl = -(-V // s.RPL)                    # bigram lines
        s.table_bytes = p.n_sets * p.ways * s.LINE_BYTES
        s.regs = [getattr(self, "reg_" + n.lower()) for n in RM.GEN_ADDRESS_REGS]
        s.table_base, s.bigram_base, s.out_base, s.state_alt = s.regs

    def _engine_port(self, m, s):
        """The engine's memory port: its set reads through the read client and the gearbox while it owns them
        (``eng_mem``), held while a write is outstanding (the engine's read-after-write order)."""
        eng, gb, rd_cmd = s.eng, s.gb, self.rd_cmd
        s.eng_mem = Signal()                   # the engine owns the gearbox (every state but the bigram load)
        m.d.comb += [
            eng.rd_resp.payload.eq(gb.line), eng.rd_resp.valid.eq(s.eng_mem & gb.full),
            rd_cmd.payload.addr.eq(s.table_base + eng.rd_req.payload.addr * s.LINE_BYTES),
            rd_cmd.payload.beats.eq(eng.rd_req.payload.count * s.BPL),
        ]
        rd_hold = s.wu.busy | ~self.wr_quiet
        with m.If(s.eng_mem):
            m.d.comb += [rd_cmd.valid.eq(eng.rd_req.valid & ~rd_hold), eng.rd_req.ready.eq(rd_cmd.ready & ~rd_hold),
                         gb.take.eq(eng.rd_resp.ready & gb.full)]

    def _pass_registers(self, m, s):
        """The draft (tokens, parents), the pass's argmaxes, the walk's node and its first matching child."""
        K = self.hw.max_tokens
        s.tok = Array(Signal(16, name=f"dtok{i}") for i in range(K))
        s.par = Array(Signal(signed(self.kbits + 1), name=f"dpar{i}") for i in range(K))
        s.arg = Array(Signal(16, name=f"darg{i}") for i in range(K))
        s.n, s.ni, s.node = Signal(range(K + 1)), Signal(range(K + 1)), Signal(range(K))
        s.side = Signal()                      # 0: this pass writes STATE_OUT, 1: STATE_ALT
        s.prev, s.root = Signal(16), Signal(16)
        for t in range(K):
            m.d.comb += [self.pass_tokens[t].eq(s.tok[t]), self.pass_parents[t].eq(s.par[t])]
        s.out_addr = Mux(s.side, s.state_alt, self.reg_state_out)
        m.d.comb += [self.pass_k.eq(s.n), self.pass_state_in.eq(s.cur), self.pass_state_out.eq(s.out_addr)]
        s.t_now = s.arg[s.node]
        # the first child of `node` drafted with the emitted token
        s.child_ok, s.child = Signal(), Signal(range(K))
        for j in reversed(range(1, K)):
            with m.If((j < s.n) & (s.par[j] == s.node) & (s.tok[j] == s.t_now)):
                m.d.comb += [s.child_ok.eq(1), s.child.eq(j)]
        s.stop = ((s.count + 1) == self.gen_n) | (self.gen_eos.enable & (s.t_now == self.gen_eos.token))
        s.row, s.sub = Signal(range(self.hw.draft_vocab + 1)), Signal(range(s.RPL))
        s.pack, s.line_i = Signal(8 * s.LINE_BYTES), Signal(range(s.n_bl + 1))
        ecmd = s.eng.cmd.payload
        m.d.comb += [ecmd.a.eq(s.prev), ecmd.b.eq(s.root), ecmd.c.eq(s.t_now), ecmd.has_prev.eq(s.busy),
                     ecmd.rule.eq(s.guided)]

    def _fail(self, m, s, c, detail=0):
        m.d.sync += s.code.eq(c | (detail << 8))
        m.next = "FAIL"

    def _start_states(self, m, s, busy_state):
        """IDLE, the register checks, and the bigram fallback loaded from DDR into the engine."""
        eng, gb, rd_cmd, regs, stride = s.eng, s.gb, self.rd_cmd, s.regs, self.state_stride
        V, K = self.hw.draft_vocab, self.hw.max_tokens
        with m.State("IDLE"):
            m.d.comb += s.eng_mem.eq(1)
            with m.If(self.go):
                m.d.sync += [s.busy.eq(1), s.done.eq(0), s.err.eq(0), s.code.eq(0), s.cycles.eq(0), s.count.eq(0),
                             s.passes.eq(0), s.nodes.eq(0), s.cur.eq(self.reg_state_in), s.side.eq(0),
                             s.root.eq(self.gen_context.root), s.prev.eq(self.gen_context.prev),
                             s.guided.eq(self.gen_draft.tree == RM.TreeRule.COUNT_GUIDED)]
                m.next = "CHECK"
            with m.Elif(self.soft_reset):
                m.d.sync += [s.done.eq(0), s.err.eq(0), s.code.eq(0)]
        with busy_state("CHECK"):
            spans = [Const(s.table_bytes, 64), Const(s.n_bl * s.LINE_BYTES, 64), self.gen_n << 2, stride * K]
            bad_al = Signal(range(len(regs) + 1))
            bad_rg = Signal(range(len(regs) + 1))
            m.d.comb += [bad_al.eq(len(regs)), bad_rg.eq(len(regs))]
            for i in reversed(range(len(regs))):
                with m.If(regs[i][:6] != 0):
                    m.d.comb += bad_al.eq(i)
                with m.If(~((regs[i] >= self.reg_mem_lo) & ((regs[i] + spans[i]) <= self.reg_mem_hi))):
                    m.d.comb += bad_rg.eq(i)
            with m.If(self.gen_n == 0):
                self._fail(m, s, RM.ERR_GEN_CONFIG, 0)
            with m.Elif((stride == 0) | (stride[:6] != 0)):
                self._fail(m, s, RM.ERR_GEN_CONFIG, 1)
            with m.Elif(self.gen_draft.tree > max(RM.TreeRule)):
                self._fail(m, s, RM.ERR_GEN_CONFIG, 2)
            with m.Elif(bad_al != len(regs)):
                self._fail(m, s, RM.ERR_UNALIGNED, bad_al + len(RM.ADDRESS_REGS))
            with m.Elif(bad_rg != len(regs)):
                self._fail(m, s, RM.ERR_ADDRESS_RANGE, bad_rg + len(RM.ADDRESS_REGS))
            with m.Else():
                m.d.sync += s.core_rst.eq(1)         # drop whatever an earlier run left in the read client
                m.next = "BL_WAIT"
        with busy_state("BL_WAIT"):                   # (the AXI engines are in reset this cycle)
            m.next = "BL_REQ"
        with busy_state("BL_REQ"):
            m.d.comb += [rd_cmd.valid.eq(1), rd_cmd.payload.addr.eq(s.bigram_base),
                         rd_cmd.payload.beats.eq(s.n_bl * s.BPL)]
            with m.If(rd_cmd.ready):
                m.d.sync += [s.row.eq(0), s.sub.eq(0)]
                m.next = "BL_ROWS"
        with busy_state("BL_ROWS"):
            bw = eng.bigram_wr
            m.d.comb += [bw.valid.eq(gb.full), bw.payload.row.eq(s.row),
                         bw.payload.data.eq(gb.line.word_select(s.sub, s.ROW_BITS))]
            with m.If(bw.valid & bw.ready):
                m.d.sync += [s.row.eq(s.row + 1), s.sub.eq(s.sub + 1)]
                last_row = s.row == V - 1
                with m.If((s.sub == s.RPL - 1) | last_row):
                    m.d.comb += gb.take.eq(1)
                    m.d.sync += s.sub.eq(0)
                with m.If(last_row):
                    m.next = "DRAFT"

    def _step_states(self, m, s, busy_state):
        """One step: draft, verify (a pass of the sequencer), walk the argmax along the tree, commit."""
        eng, wu, ecmd, K = s.eng, s.wu, s.eng.cmd.payload, self.hw.max_tokens
        bb = self.hw.bus_bytes
        lg_bb = bb.bit_length() - 1
        with busy_state("DRAFT"):
            m.d.comb += [s.eng_mem.eq(1), eng.cmd.valid.eq(1), ecmd.op.eq(DRAFT)]
            with m.If(eng.cmd.ready):
                m.d.sync += s.ni.eq(0)
                m.next = "COLLECT"
        with busy_state("COLLECT"):
            m.d.comb += [s.eng_mem.eq(1), eng.draft.ready.eq(1)]
            with m.If(eng.draft.valid):
                m.d.sync += [s.tok[s.ni].eq(eng.draft.payload.token), s.par[s.ni].eq(eng.draft.payload.parent),
                             s.ni.eq(s.ni + 1)]
                with m.If(eng.draft.payload.last):
                    m.d.sync += s.n.eq(s.ni + 1)
                    m.next = "PASS"
        with busy_state("PASS"):
            with m.If(~wu.busy & self.wr_quiet & self.rd_quiet & ~self.seq_busy):
                m.d.comb += self.pass_start.eq(1)
                m.next = "PWAIT"
        with busy_state("PWAIT"):
            with m.If(self.seq_finished):
                with m.If(self.seq_error):
                    m.d.sync += s.code.eq(self.seq_error_code)
                    m.next = "FAIL"
                with m.Else():
                    for t in range(K):
                        m.d.sync += s.arg[t].eq(self.args[t][:16])
                    m.d.sync += [s.passes.eq(s.passes + 1), s.nodes.eq(s.nodes + s.n), s.node.eq(0),
                                 s.core_rst.eq(1)]
                    m.next = "WALK"
        with busy_state("WALK"):                          # emit arg[node]: table update ...
            m.d.comb += [s.eng_mem.eq(1), eng.cmd.valid.eq(1), ecmd.op.eq(UPDATE)]
            with m.If(eng.cmd.ready):
                m.next = "EMIT"
        with busy_state("EMIT"):                          # ... and GEN_OUT[count]
            m.d.comb += s.eng_mem.eq(1)
            with m.If(~wu.busy & ~eng.wr.valid):
                a = s.out_base + (s.count << 2)
                m.d.comb += [wu.start.eq(1), wu.addr.eq(Cat(Const(0, lg_bb), a[lg_bb:64])), wu.beats.eq(1),
                             wu.data.eq(Cat(*[s.t_now, Const(0, 16)] * (bb // 4))),
                             wu.strb.eq(Const(0xF, bb) << (a[2:lg_bb] << 2))]
                m.d.sync += [s.count.eq(s.count + 1), s.prev.eq(s.root), s.root.eq(s.t_now)]
                with m.If(s.stop):
                    m.next = "COMMIT_LAST"
                with m.Elif(s.child_ok):
                    m.d.sync += s.node.eq(s.child)
                    m.next = "WALK"
                with m.Else():
                    m.next = "COMMIT"
        with busy_state("COMMIT"):
            m.d.comb += s.eng_mem.eq(1)
            m.d.sync += [s.cur.eq(s.out_addr + s.node * self.state_stride), s.side.eq(~s.side)]
            m.next = "DRAFT"
        with busy_state("COMMIT_LAST"):
            m.d.comb += s.eng_mem.eq(1)
            m.d.sync += s.cur.eq(s.out_addr + s.node * self.state_stride)
            m.next = "FINISH"

    def _finish_states(self, m, s, busy_state):
        """The bigram rows back to DDR, the drain, and FAIL / ABORT."""
        eng, wu, V, bb = s.eng, s.wu, self.hw.draft_vocab, self.hw.bus_bytes
        with busy_state("FINISH"):                        # the last update done, then the bigram back to DDR
            m.d.comb += s.eng_mem.eq(1)
            with m.If(~eng.busy & ~eng.cmd.valid & ~wu.busy & ~eng.wr.valid):
                m.d.sync += [s.row.eq(0), s.sub.eq(0), s.line_i.eq(0)]
                m.next = "BS_ADDR"
        with busy_state("BS_ADDR"):                       # present row `row` to the engine's read port
            m.d.comb += [eng.dump.eq(1), eng.dump_row.eq(s.row)]
            m.next = "BS_CAP"
        with busy_state("BS_CAP"):
            rd = Mux(s.row < V, eng.dump_data, 0)
            m.d.sync += [s.pack.eq(Cat(s.pack[s.ROW_BITS:], rd)), s.row.eq(s.row + 1), s.sub.eq(s.sub + 1)]
            with m.If(s.sub == s.RPL - 1):
                m.d.sync += s.sub.eq(0)
                m.next = "BS_WRITE"
            with m.Else():
                m.next = "BS_ADDR"
        with busy_state("BS_WRITE"):
            with m.If(~wu.busy):
                m.d.comb += [wu.start.eq(1), wu.addr.eq(s.bigram_base + s.line_i * s.LINE_BYTES), wu.beats.eq(s.BPL),
                             wu.data.eq(s.pack), wu.strb.eq((1 << bb) - 1)]
                m.d.sync += s.line_i.eq(s.line_i + 1)
                with m.If(s.line_i == s.n_bl - 1):
                    m.next = "DRAIN"
                with m.Else():
                    m.next = "BS_ADDR"
        with busy_state("DRAIN"):
            with m.If(~wu.busy & self.wr_quiet):
                m.d.sync += [s.busy.eq(0), s.done.eq(1), s.fin.eq(1)]
                m.next = "IDLE"
        for name, is_error in (("FAIL", 1), ("ABORT", 0)):   # an error, or SOFT_RESET (no error, no interrupt)
            with m.State(name):                        # stop the AXI engines, drain the reads, then report
                m.d.comb += [s.abort.eq(1), s.gb.drain.eq(1)]
                with m.If(self.rd_quiet & self.wr_quiet & ~self.seq_busy):
                    m.d.comb += s.stopped.eq(1)
                    m.d.sync += [s.busy.eq(0), s.err.eq(is_error), s.fin.eq(is_error), s.core_rst.eq(1),
                                 s.eng_rst.eq(1)]
                    if not is_error:
                        m.d.sync += s.code.eq(0)
                    m.next = "IDLE"

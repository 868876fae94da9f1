"""``mmfree_accel``: the whole accelerator, one bitstream for every model size.

Ports (names from :mod:`mmfree.rtl.regmap`): ``clk``, ``rst`` (active-high synchronous), ``s_axil``
(AXI4-Lite slave, the CSRs), ``m_axi`` (AXI4 master to DDR, ``8 * bus_bytes`` data bits), ``irq``; with
``hw.weight_ports = P > 1`` also ``m_axi_w1`` .. ``m_axi_w{P-1}``: read-only AXI4 masters (same width; AW/W
idle) that stream rows ``p, p + P, ...`` of every weight matrix while ``m_axi`` streams rows ``0, P, ...``.

Inside::

    s_axil -> CsrBlock --start/regs--> Sequencer --dispatch--> Datapath (load | store | vector | matvec)
                                          |  ctl client            | vec, load, weight clients | store
                                          +--------> AxiReader <---+                           AxiWriter --> m_axi
                                                                   (priority ctl > vec > load > weights)

``GenLoop`` (:mod:`mmfree.rtl.genloop`, CONTROL.GENERATE) runs the on-chip draft-verify loop: it drives the
sequencer's passes (their tokens and parents on chip) and, while no pass runs, owns the control read client
and the write master; STATUS / ERROR_CODE show the loop's state after a GENERATE, the sequencer's after a START.

The sequencer resets the datapath and the AXI engines (``core_rst``) at every START and after an abort; the
loop does so between its passes.
Counters: CYCLES (START to DONE/ERROR), STALLS (the ternary engine waited for weight data), RD_BYTES /
WR_BYTES (AXI data beats x bus width).
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Module, Mux, ResetInserter, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mmfree.rtl import params as P
from mmfree.rtl import regmap as RM
from mmfree.rtl.axi import AxiReader, AxiWriter, axi4_signature, axil_signature
from mmfree.rtl.compiler import HwConfig
from mmfree.rtl.csr import CsrBlock
from mmfree.rtl.datapath import Datapath
from mmfree.rtl.genloop import GenLoop
from mmfree.rtl.pipeline import check_int
from mmfree.rtl.sequencer import Sequencer

CLIENT_CTL, CLIENT_VEC, CLIENT_LOAD, CLIENT_W = range(4)


class MmfreeAccel(wiring.Component):
    """The accelerator top. Parameters: ``hw`` (:class:`mmfree.rtl.compiler.HwConfig`: bus width, max tokens,
    max width), ``addr_width`` of the AXI master, ``max_burst`` beats (16: the Zynq HP-port safe choice),
    ``weight_fifo_beats`` (the weight queue of each ternary engine: how far prefetched rows run ahead),
    ``max_outstanding`` reads."""

    def __init__(self, hw: HwConfig | None = None, addr_width: int = 40, max_burst: int = P.MAX_BURST,
                 weight_fifo_beats: int = P.WEIGHT_FIFO_BEATS, max_outstanding: int = P.MAX_OUTSTANDING):
        hw = hw or HwConfig()
        check_int("addr_width", addr_width, "an integer in 32..64", lambda v: 32 <= v <= 64)
        check_int("weight_fifo_beats", weight_fifo_beats, f"an integer >= max_burst ({max_burst})",
                  lambda v: v >= max_burst)
        self.hw, self.addr_width, self.max_burst = hw, addr_width, max_burst
        self.weight_fifo_beats, self.max_outstanding = weight_fifo_beats, max_outstanding
        super().__init__({
            RM.PORT_AXI_LITE: In(axil_signature(RM.CSR_ADDR_BITS)),
            RM.PORT_AXI_MASTER: Out(axi4_signature(addr_width, 8 * hw.bus_bytes)),
            **{RM.weight_port(p): Out(axi4_signature(addr_width, 8 * hw.bus_bytes)) for p in range(1, hw.weight_ports)},
            RM.PORT_IRQ: Out(1),
        })

    @staticmethod
    def main_reader(bus_bytes: int, addr_width: int = 40, max_burst: int = P.MAX_BURST,
                    max_outstanding: int = P.MAX_OUTSTANDING) -> AxiReader:
        """The main port's read engine: the clients CLIENT_CTL, CLIENT_VEC, CLIENT_LOAD and (strided) CLIENT_W."""
        return AxiReader(addr_width, bus_bytes, fifo_depths=P.MAIN_READER_FIFO_DEPTHS, max_burst=max_burst,
                         max_outstanding=max_outstanding, row_clients=1,
                         latency_windows={CLIENT_W: (P.WEIGHT_WINDOW_BASE, P.READ_WINDOW_MARGIN)})

    def elaborate(self, platform):
        m = Module()
        hw = self.hw
        core_rst = Signal()
        m.submodules.csr = csr = CsrBlock(hw.hw_config_reg, hw.hw_limits_reg, draft_regs=hw.draft_regs)
        m.submodules.gen = gen = GenLoop(hw, self.addr_width)
        m.submodules.seq = seq = Sequencer(hw, self.addr_width)
        rd = self.main_reader(hw.bus_bytes, self.addr_width, self.max_burst, self.max_outstanding)
        # weight ports 1..P-1: a reader each, one strided client (the rows p, p + P, ... of every matrix)
        wrd = [AxiReader(self.addr_width, hw.bus_bytes, fifo_depths=(P.WEIGHT_CLIENT_FIFO,), max_burst=self.max_burst,
                         max_outstanding=self.max_outstanding, row_clients=1,
                         latency_windows={0: (P.WEIGHT_WINDOW_BASE, P.READ_WINDOW_MARGIN)})
               for _ in range(1, hw.weight_ports)]
        wr = AxiWriter(self.addr_width, hw.bus_bytes, max_burst=self.max_burst)
        dp = Datapath(hw, self.addr_width, weight_fifo_beats=self.weight_fifo_beats)
        m.submodules.reader = ResetInserter(core_rst)(rd)
        m.submodules.writer = ResetInserter(core_rst)(wr)
        m.submodules.datapath = ResetInserter(core_rst)(dp)
        for p, r in enumerate(wrd, start=1):
            m.submodules[f"reader_w{p}"] = ResetInserter(core_rst)(r)
        m.d.comb += core_rst.eq(seq.core_rst | gen.core_rst)

        # ---- buses ----------------------------------------------------------------------------------------
        self._buses(SimpleNamespace(csr=csr, hw=hw, m=m, rd=rd, wr=wr, wrd=wrd))
        # ---- CSR <-> sequencer and the draft-verify loop ---------------------------------------------------------
        self._control(SimpleNamespace(csr=csr, dp=dp, gen=gen, hw=hw, m=m, rd=rd, seq=seq, wr=wr, wrd=wrd))

        # ---- sequencer / loop <-> AXI engines: the control client is the sequencer's while it runs -----------------
        sel = seq.busy
        ctl_cmd, ctl_data = rd.cmd[CLIENT_CTL], rd.data[CLIENT_CTL]
        m.d.comb += [ctl_cmd.valid.eq(Mux(sel, seq.ctl_cmd.valid, gen.rd_cmd.valid)),
                     ctl_cmd.payload.eq(Mux(sel, seq.ctl_cmd.payload, gen.rd_cmd.payload)),
                     seq.ctl_cmd.ready.eq(sel & ctl_cmd.ready), gen.rd_cmd.ready.eq(~sel & ctl_cmd.ready),
                     seq.ctl_data.payload.eq(ctl_data.payload), gen.rd_data.payload.eq(ctl_data.payload),
                     seq.ctl_data.valid.eq(sel & ctl_data.valid), gen.rd_data.valid.eq(~sel & ctl_data.valid),
                     ctl_data.ready.eq(Mux(sel, seq.ctl_data.ready, gen.rd_data.ready))]
        abort = seq.axi_abort | gen.axi_abort
        rd_quiet, rd_error = rd.quiet, rd.error
        for r in wrd:
            m.d.comb += r.abort.eq(abort)
            rd_quiet, rd_error = rd_quiet & r.quiet, rd_error | r.error
        m.d.comb += [rd.abort.eq(abort), wr.abort.eq(abort), seq.rd_quiet.eq(rd_quiet), seq.wr_quiet.eq(wr.quiet),
                     seq.rd_error.eq(rd_error), seq.wr_error.eq(wr.error), gen.rd_quiet.eq(rd_quiet),
                     gen.wr_quiet.eq(wr.quiet)]

        # ---- sequencer <-> datapath -----------------------------------------------------------------------------
        self._datapath_wiring(SimpleNamespace(dp=dp, gen=gen, m=m, rd=rd, sel=sel, seq=seq, wr=wr, wrd=wrd))
        return m

    def _buses(self, v):
        """The outer buses: AXI4-Lite to the CSR block, the IRQ, m_axi to the reader (AR/R) and the writer
        (AW/W/B), each extra weight port to its reader (read-only: AW/W idle, B always accepted)."""
        csr, hw, m, rd, wr, wrd = v.csr, v.hw, v.m, v.rd, v.wr, v.wrd
        wiring.connect(m, wiring.flipped(getattr(self, RM.PORT_AXI_LITE)), csr.s_axil)
        m.d.comb += getattr(self, RM.PORT_IRQ).eq(csr.irq)
        maxi = getattr(self, RM.PORT_AXI_MASTER)
        for name, member in maxi.signature.members.items():
            src = rd.axi if name.startswith(("ar", "r")) else wr.axi     # AR/R: reader; AW/W/B: writer
            outer, inner = getattr(maxi, name), getattr(src, name)
            m.d.comb += (outer.eq(inner) if member.flow == Out else inner.eq(outer))
        for p, r in enumerate(wrd, start=1):           # read-only masters: AW/W idle, B always accepted
            port = getattr(self, RM.weight_port(p))
            for name, member in port.signature.members.items():
                outer = getattr(port, name)
                if name.startswith(("ar", "r")):
                    inner = getattr(r.axi, name)
                    m.d.comb += (outer.eq(inner) if member.flow == Out else inner.eq(outer))
                elif name == "bready":
                    m.d.comb += outer.eq(1)
                elif name in ("awsize",):
                    m.d.comb += outer.eq(hw.bus_bytes.bit_length() - 1)
                elif name == "awburst":
                    m.d.comb += outer.eq(1)

    def _control(self, ns):
        """CSR <-> sequencer and the draft-verify loop (a GENERATE feeds the passes), STATUS of the last command,
        the counters."""
        csr, dp, gen, hw, m, rd, seq, wr, wrd = ns.csr, ns.dp, ns.gen, ns.hw, ns.m, ns.rd, ns.seq, ns.wr, ns.wrd
        looping = gen.busy                 # a GENERATE runs: its passes take their inputs from the loop
        for name in RM.ADDRESS_REGS:
            v = getattr(csr, "reg_" + name.lower())
            if name == "STATE_IN":
                v = Mux(looping, gen.pass_state_in, v)
            elif name == "STATE_OUT":
                v = Mux(looping, gen.pass_state_out, v)
            m.d.comb += getattr(seq, "reg_" + name.lower()).eq(v)
        for name in RM.GEN_ADDRESS_REGS + ("STATE_IN", "STATE_OUT", "MEM_LO", "MEM_HI"):
            m.d.comb += getattr(gen, "reg_" + name.lower()).eq(getattr(csr, "reg_" + name.lower()))
        gen_mode = Signal()                # the last command was GENERATE: STATUS and ERROR_CODE are the loop's
        go = csr.generate & ~seq.busy & ~looping
        with m.If(go):
            m.d.sync += gen_mode.eq(1)
        with m.Elif(csr.start & ~looping):
            m.d.sync += gen_mode.eq(0)
        m.d.comb += [seq.start.eq((csr.start & ~looping) | gen.pass_start), seq.soft_reset.eq(csr.soft_reset),
                     seq.num_tokens.eq(Mux(looping, gen.pass_k, csr.num_tokens)),
                     seq.flags.eq(Mux(looping, (csr.flags & RM.FLAG_WRITE_LOGITS) | RM.FLAG_TREE, csr.flags)),
                     seq.ext.eq(looping), seq.ext_tokens.eq(gen.pass_tokens), seq.ext_parents.eq(gen.pass_parents),
                     gen.go.eq(go), gen.soft_reset.eq(csr.soft_reset), gen.gen_n.eq(csr.gen_n),
                     gen.gen_context.eq(csr.gen_context), gen.gen_eos.eq(csr.gen_eos),
                     gen.state_stride.eq(csr.state_stride), gen.gen_draft.eq(csr.gen_draft),
                     gen.seq_busy.eq(seq.busy), gen.seq_finished.eq(seq.finished), gen.seq_error.eq(seq.error),
                     gen.seq_error_code.eq(seq.error_code), gen.args.eq(dp.args),
                     csr.finished.eq(gen.finished | (seq.finished & ~looping)),
                     csr.in_status.busy.eq(Mux(gen_mode, gen.busy, seq.busy)),
                     csr.in_status.done.eq(Mux(gen_mode, gen.done, seq.done)),
                     csr.in_status.error.eq(Mux(gen_mode, gen.error, seq.error)),
                     csr.in_error_code.eq(Mux(gen_mode, gen.error_code, seq.error_code)),
                     csr.in_argmax.eq(seq.argmax), csr.in_pc.eq(seq.pc), csr.in_cycles.eq(seq.cycles),
                     csr.in_gen_count.eq(gen.count), csr.in_gen_passes.eq(gen.passes), csr.in_gen_nodes.eq(gen.nodes),
                     csr.in_gen_cycles.eq(gen.cycles), csr.in_gen_state.eq(gen.gen_state)]
        # The counters add what the cycle before saw (its busy, stall and beats, registered): the handshakes behind
        # the beats are long combinational paths, kept out of the 64-bit adders. A run's last cycle is counted in
        # the cycle after it, before DONE can be read (its last W beat waits for B and the quiet AXI engines).
        stalls, rd_bytes, wr_bytes = Signal(64), Signal(64), Signal(64)
        rd_beats = sum(r.beats for r in [rd, *wrd])
        busy_q, stall_q = Signal(), Signal()
        rd_beats_q, wr_beats_q = Signal.like(rd_beats), Signal.like(wr.beats)
        m.d.sync += [busy_q.eq(seq.busy), stall_q.eq(dp.stall), rd_beats_q.eq(rd_beats), wr_beats_q.eq(wr.beats)]
        with m.If(seq.start & ~seq.busy):
            m.d.sync += [stalls.eq(0), rd_bytes.eq(0), wr_bytes.eq(0)]
        with m.Elif(busy_q):
            m.d.sync += [stalls.eq(stalls + stall_q), rd_bytes.eq(rd_bytes + rd_beats_q * hw.bus_bytes),
                         wr_bytes.eq(wr_bytes + wr_beats_q * hw.bus_bytes)]
        m.d.comb += [csr.in_stalls.eq(stalls), csr.in_rd_bytes.eq(rd_bytes), csr.in_wr_bytes.eq(wr_bytes)]

    def _datapath_wiring(self, v):
        """Sequencer <-> datapath, the datapath's DMA clients to the readers, the write master shared by the stores
        and the loop."""
        dp, gen, m, rd, sel, seq, wr, wrd = v.dp, v.gen, v.m, v.rd, v.sel, v.seq, v.wr, v.wrd
        wiring.connect(m, seq.dp, dp.ctl)
        m.d.comb += dp.wr_quiet.eq(wr.quiet)
        wiring.connect(m, dp.vec_cmd, rd.cmd[CLIENT_VEC])
        wiring.connect(m, rd.data[CLIENT_VEC], dp.vec_data)
        wiring.connect(m, dp.load_cmd, rd.cmd[CLIENT_LOAD])
        wiring.connect(m, rd.data[CLIENT_LOAD], dp.load_data)
        wiring.connect(m, dp.w_cmd[0], rd.row_cmd[0])          # weight port 0: the main reader's CLIENT_W
        wiring.connect(m, rd.data[CLIENT_W], dp.w_data[0])
        for p, r in enumerate(wrd, start=1):                    # weight port p: reader_w<p>'s only client
            wiring.connect(m, dp.w_cmd[p], r.row_cmd[0])
            wiring.connect(m, r.data[0], dp.w_data[p])
        # the write master: the datapath's stores during a pass, the loop's writes between passes
        m.d.comb += [wr.cmd.valid.eq(Mux(sel, dp.st_cmd.valid, gen.wr_cmd.valid)),
                     wr.cmd.payload.eq(Mux(sel, dp.st_cmd.payload, gen.wr_cmd.payload)),
                     dp.st_cmd.ready.eq(sel & wr.cmd.ready), gen.wr_cmd.ready.eq(~sel & wr.cmd.ready),
                     wr.data.valid.eq(Mux(sel, dp.st_data.valid, gen.wr_data.valid)),
                     wr.data.payload.eq(Mux(sel, dp.st_data.payload, gen.wr_data.payload)),
                     dp.st_data.ready.eq(sel & wr.data.ready), gen.wr_data.ready.eq(~sel & wr.data.ready)]

"""The accelerator's datapath: the on-chip vector buffers and the four engines that execute dispatched
instructions, each a component with its own ports (what each instruction computes is defined by
:class:`mmfree.sim.emulator.Emulator`):

* :class:`~mmfree.rtl.engines.LoadEngine` (``LOAD``): DMA records of 1..4 int32 words into H0 / LB / N+NW0..2
  (a fill counter per buffer lets the vector engine start on the first element), or one word per element into
  the H of a stream's roots (HROOT).
* :class:`~mmfree.rtl.engines.StoreEngine` (``STORE``): per token, buffer words -> AXI writes (any 4-byte
  aligned address); done when every write response is in.
* :class:`~mmfree.rtl.vector_engine.VectorEngine` (``EMBED``, ``QSTATS``, ``QCODES``, ``HGRN``): element passes
  over the buffers, one element per cycle; QCODES writes the codes into the ternary engine's banks.
* :class:`~mmfree.rtl.matvec_engine.MatvecEngine` (``MATVEC``): the weight stream (prefetched, one strided
  reader client per weight port), a lock-step ternary engine with ``hw.engines`` ways, dequantisation and
  the epilogue per token.

Shared resources, each an explicit component with a documented priority (:mod:`mmfree.rtl.buffers`):
:class:`~mmfree.rtl.buffers.VectorBuffers` (every buffer; each reader engine has its own read ports),
:class:`~mmfree.rtl.buffers.WriteArbiter` for X and for A (the vector engine's one-token writes and the matvec
epilogue's rows), :class:`~mmfree.rtl.buffers.HWrite` for H (HGRN's writes and LOAD HROOT's),
:class:`~mmfree.rtl.buffers.NormTrack` (a MaxAbs per token for X and A, fed by both).
Engine ``e`` pulses ``done_pulse[e]`` (:data:`mmfree.rtl.decoder.ENGINE_ID` order) once per instruction.
"""

from __future__ import annotations

from amaranth import Array, Module, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.rtl import isa as I
from mmfree.rtl.axi import cmd_layout, row_cmd_layout
from mmfree.rtl.buffers import TOKEN_BUFFERS, HWrite, NormTrack, VectorBuffers, WriteArbiter
from mmfree.rtl.compiler import HwConfig
from mmfree.rtl.decoder import ENGINE_ID
from mmfree.rtl.engines import LoadEngine, StoreEngine
from mmfree.rtl.matvec_engine import MatvecEngine
from mmfree.rtl.sequencer import datapath_signature
from mmfree.rtl.vector_engine import VectorEngine


class Datapath(wiring.Component):
    """The datapath of a build ``hw`` (see the module docstring).

    Ports: ``ctl`` (:func:`~mmfree.rtl.sequencer.datapath_signature`, from the sequencer: instructions, weight
    fetches, the pass and its constants; back the done pulses, the vector engine's sticky error and token
    k-1's argmax; ``ctl.write_logits`` is unused: STORE's ``dispatch.skip_store`` carries it); ``vec_cmd`` /
    ``vec_data``, ``load_cmd`` / ``load_data`` (EMBED's and LOAD's AXI read clients), ``w_cmd[p]`` /
    ``w_data[p]`` (the weight stream), ``st_cmd`` / ``st_data`` and ``wr_quiet`` (STORE's AXI writes);
    ``stall`` (out): the ternary engine waits for weights; ``args[t]`` (out): every token's argmax."""

    def __init__(self, hw: HwConfig, addr_width: int = 40, weight_fifo_beats: int = 2048):
        self.hw, self.addr_width, self.weight_fifo_beats = hw, addr_width, weight_fifo_beats
        K = hw.max_tokens
        bb = hw.bus_bytes
        super().__init__({
            "ctl": In(datapath_signature(hw, addr_width)),
            "vec_cmd": Out(stream.Signature(cmd_layout(addr_width))),
            "vec_data": In(stream.Signature(unsigned(8 * bb))),
            "load_cmd": Out(stream.Signature(cmd_layout(addr_width))),
            "load_data": In(stream.Signature(unsigned(8 * bb))),
            "w_cmd": Out(stream.Signature(row_cmd_layout(addr_width))).array(hw.weight_ports),
            "w_data": In(stream.Signature(unsigned(8 * bb))).array(hw.weight_ports),
            "st_cmd": Out(stream.Signature(cmd_layout(addr_width))),
            "st_data": Out(stream.Signature(data.StructLayout({"data": unsigned(8 * bb), "strb": unsigned(bb)}))),
            "wr_quiet": In(1),
            "stall": Out(1),
            "args": Out(data.ArrayLayout(unsigned(32), K)),       # every token's argmax (the draft-verify loop)
        })

    def elaborate(self, platform):
        m = Module()
        hw, aw, K, W, ctl = self.hw, self.addr_width, self.hw.max_tokens, self.hw.max_width, self.ctl
        m.submodules.buffers = bufs = VectorBuffers(hw)
        m.submodules.x_write = xarb = WriteArbiter(K, TOKEN_BUFFERS["x"][0], W)
        m.submodules.a_write = aarb = WriteArbiter(K, TOKEN_BUFFERS["a"][0], W)
        m.submodules.h_write = harb = HWrite(K, TOKEN_BUFFERS["h"][0], W)
        m.submodules.norm = norm = NormTrack(K)
        m.submodules.load = ld = LoadEngine(hw, aw)
        m.submodules.store = st = StoreEngine(hw, aw)
        m.submodules.vector = vec = VectorEngine(hw, aw)
        m.submodules.matvec = mve = MatvecEngine(hw, aw, self.weight_fifo_beats)
        engines = {"load": ld, "store": st, "vector": vec, "matvec": mve}
        for name, e in engines.items():
            m.d.comb += [e.issue.eq(ctl.issue & (ctl.dispatch.engine == ENGINE_ID[name])),
                         e.dispatch.eq(ctl.dispatch), ctl.done_pulse[ENGINE_ID[name]].eq(e.done)]
        for e in (st, vec, mve):
            m.d.comb += e.k.eq(ctl.k)
        for e in (vec, mve):
            m.d.comb += e.act_frac.eq(ctl.act_frac)
        m.d.comb += [vec.tokens.eq(ctl.tokens), vec.parents.eq(ctl.parents), ld.parents.eq(ctl.parents),
                     vec.c_m.eq(ctl.c_m),
                     vec.c_e.eq(ctl.c_e), ctl.error.eq(vec.error), ctl.error_code.eq(vec.error_code),
                     st.wr_quiet.eq(self.wr_quiet), self.stall.eq(mve.stall), self.args.eq(mve.args),
                     ctl.arg_last.eq(Array(mve.args[t] for t in range(K))[ctl.k - 1])]
        # the AXI clients
        wiring.connect(m, ld.dma_cmd, wiring.flipped(self.load_cmd))
        wiring.connect(m, wiring.flipped(self.load_data), ld.dma_data)
        wiring.connect(m, vec.dma_cmd, wiring.flipped(self.vec_cmd))
        wiring.connect(m, wiring.flipped(self.vec_data), vec.dma_data)
        wiring.connect(m, st.st_cmd, wiring.flipped(self.st_cmd))
        wiring.connect(m, st.st_data, wiring.flipped(self.st_data))
        wiring.connect(m, wiring.flipped(ctl.fetch), mve.fetch)
        for p in range(hw.weight_ports):
            wiring.connect(m, mve.w_cmd[p], wiring.flipped(self.w_cmd[p]))
            wiring.connect(m, wiring.flipped(self.w_data[p]), mve.w_data[p])
        self._wire_buffers(m, bufs, xarb, aarb, harb, engines)
        # engine to engine: fill counters, quantizer constants, codes, argmax, the X / A norms
        m.d.comb += [vec.filled.eq(ld.filled), vec.loading.eq(ld.loading), mve.M.eq(vec.M), mve.S.eq(vec.S),
                     st.args.eq(mve.args), vec.shx.eq(norm.shx), vec.sha.eq(norm.sha)]
        wiring.connect(m, vec.codes, mve.act)
        for e in (vec, mve):
            m.d.comb += [e.x_done.eq(norm.x_done), e.a_done.eq(norm.a_done)]
        for i, e in enumerate((vec, mve)):                # NormTrack priority: the vector engine's feed first
            wiring.connect(m, e.x_feed, norm.x_feed[i])
            wiring.connect(m, e.a_feed, norm.a_feed[i])
        return m

    def _wire_buffers(self, m, bufs, xarb, aarb, harb, engines):
        """Every engine's buffer ports to :class:`VectorBuffers` (X, A and H writes through their arbiters)."""
        ld, vec, mve = engines["load"], engines["vector"], engines["matvec"]
        for name in ("h0", "lb", "n"):
            wiring.connect(m, getattr(ld, name), getattr(bufs, f"{name}_w"))
            wiring.connect(m, getattr(vec, name), getattr(bufs, f"{name}_r"))
        for p in range(I.SLOTS):
            wiring.connect(m, ld.nw[p], getattr(bufs, f"nw{p}_w"))
            wiring.connect(m, vec.nw[p], getattr(bufs, f"nw{p}_r"))
        wiring.connect(m, vec.x_one, xarb.one)
        wiring.connect(m, mve.x_row, xarb.row)
        wiring.connect(m, vec.a_one, aarb.one)
        wiring.connect(m, mve.a_row, aarb.row)
        wiring.connect(m, ld.h_root, harb.root)
        for t in range(self.hw.max_tokens):
            wiring.connect(m, xarb.port[t], bufs.x_w[t])
            wiring.connect(m, aarb.port[t], bufs.a_w[t])
            wiring.connect(m, vec.h_w[t], harb.hgrn[t])
            wiring.connect(m, harb.port[t], bufs.h_w[t])
            for i in range(3):
                wiring.connect(m, mve.t_w[i][t], getattr(bufs, f"t{i}_w")[t])
            for name, (_, readers) in TOKEN_BUFFERS.items():
                for r in readers:
                    wiring.connect(m, getattr(engines[r], name)[t], getattr(bufs, f"{name}_{r}")[t])

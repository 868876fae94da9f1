"""Naive twins of :class:`mmfree.rtl.axi.AxiReader` and :class:`~mmfree.rtl.axi.AxiWriter` for lock-step tests:
the same ports, parameters and behaviour, with the burst length, the FIFO-room check and the arbitration computed
combinationally each cycle from ``addr``/``left``/``reserved`` (the engines before their timing work, issue 20).
Not part of the package."""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import fifo

from mmfree.rtl.axi import BEATS_WIDTH, BURST_BOUNDARY, AxiReader, AxiWriter


def _burst_len(addr, beats_left, bus_bytes: int, max_burst: int, m: Module, name: str):
    """Beats of the next burst: min(max_burst, beats_left, beats to the next 4 KiB boundary)."""
    to_boundary = Signal(range(BURST_BOUNDARY // bus_bytes + 1), name=f"{name}_tob")
    m.d.comb += to_boundary.eq((BURST_BOUNDARY - addr[:12]) >> (bus_bytes.bit_length() - 1))
    n = Signal(range(max_burst + 1), name=f"{name}_len")
    lim = Mux(to_boundary < max_burst, to_boundary, max_burst)
    m.d.comb += n.eq(Mux(beats_left < lim, beats_left, lim))
    return n


class TwinReader(AxiReader):
    """The reader as first written, every decision combinational from the client state (the twin of
    :class:`mmfree.rtl.axi.AxiReader`, whose constructor, ports and latency measurement it shares; the two must
    agree cycle for cycle)."""

    def elaborate(self, platform):
        m = Module()
        axi, n = self.axi, len(self.fifo_depths)
        bb = self.bus_bytes
        tags, tagw = self._setup(m)
        fifos, reserved, active, addr, left, want, lens = [], [], [], [], [], [], []
        lat_max = self._latency(m, tags) if self.latency_windows else None
        for i, depth in enumerate(self.fifo_depths):
            f = fifo.SyncFIFOBuffered(width=8 * bb, depth=depth)
            m.submodules[f"fifo{i}"] = f
            fifos.append(f)
            cmd, out = self.client_cmd(i), self.data[i]
            m.d.comb += [out.payload.eq(f.r_data), out.valid.eq(f.r_rdy), f.r_en.eq(out.ready)]
            res = Signal(range(depth + 1), name=f"reserved{i}")
            act = Signal(name=f"active{i}")
            a = Signal(self.addr_width, name=f"addr{i}")
            lft = Signal(BEATS_WIDTH, name=f"left{i}")
            blen = _burst_len(a, lft, bb, self.max_burst, m, f"c{i}")
            w = Signal(name=f"want{i}")
            # room for the whole burst: what is stored + what is on its way + this burst
            limit = self._window(m, i, depth, lat_max)[0] if i in self.latency_windows else depth
            m.d.comb += w.eq(act & ~self.abort & (f.level + res + blen <= limit))
            m.d.comb += cmd.ready.eq(~act & ~self.abort)
            reserved.append(res), active.append(act), addr.append(a), left.append(lft), want.append(w), lens.append(blen)

        # ---- AR issue: a registered request, lowest client index first -----------------------------------
        ar_pending = Signal()
        ar_client = Signal(tagw)
        issue = Signal()
        pick = Signal(tagw)
        anyw = Signal()
        for i in reversed(range(n)):
            with m.If(want[i]):
                m.d.comb += [pick.eq(i), anyw.eq(1)]
        room = (tags.level + ar_pending) < self.max_outstanding
        m.d.comb += issue.eq(anyw & (~ar_pending | axi.arready) & room & ~self.abort)
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += ar_pending.eq(0)
        with m.If(issue):
            m.d.sync += [ar_pending.eq(1), ar_client.eq(pick)]
            for i in range(n):
                with m.If(pick == i):
                    m.d.sync += [axi.araddr.eq(addr[i]), axi.arlen.eq(lens[i] - 1)]
        m.d.comb += [axi.arvalid.eq(ar_pending), tags.w_data.eq(ar_client), tags.w_en.eq(axi.arvalid & axi.arready)]
        # tags are pushed at the AR handshake; a pending AR already reserved its FIFO space below

        # ---- per-client command state ----------------------------------------------------------------------
        rfire = axi.rvalid & axi.rready
        for i in range(n):
            cmd = self.client_cmd(i)
            took = issue & (pick == i)
            arrived = rfire & (tags.r_data == i) & tags.r_rdy
            m.d.sync += reserved[i].eq(reserved[i] + Mux(took, lens[i], 0) - arrived)
            if i >= self.n_plain:
                # strided: `left` counts the current row's beats; the next row starts `stride` after this one
                row_addr = Signal(self.addr_width, name=f"row_addr{i}")
                rows_left, bpr = Signal(32, name=f"rows_left{i}"), Signal(BEATS_WIDTH, name=f"bpr{i}")
                stride = Signal(self.addr_width, name=f"stride{i}")
                with m.If(cmd.valid & cmd.ready):
                    m.d.sync += [addr[i].eq(cmd.payload.addr), row_addr.eq(cmd.payload.addr),
                                 left[i].eq(cmd.payload.beats), bpr.eq(cmd.payload.beats),
                                 rows_left.eq(cmd.payload.rows), stride.eq(cmd.payload.stride),
                                 active[i].eq((cmd.payload.beats != 0) & (cmd.payload.rows != 0))]
                with m.Elif(took):
                    with m.If(left[i] == lens[i]):
                        m.d.sync += [rows_left.eq(rows_left - 1), row_addr.eq(row_addr + stride),
                                     addr[i].eq(row_addr + stride), left[i].eq(bpr)]
                        with m.If(rows_left == 1):
                            m.d.sync += active[i].eq(0)
                    with m.Else():
                        m.d.sync += [addr[i].eq(addr[i] + (lens[i] << (bb.bit_length() - 1))),
                                     left[i].eq(left[i] - lens[i])]
            else:
                with m.If(cmd.valid & cmd.ready):
                    m.d.sync += [addr[i].eq(cmd.payload.addr), left[i].eq(cmd.payload.beats),
                                 active[i].eq(cmd.payload.beats != 0)]
                with m.Elif(took):
                    m.d.sync += [addr[i].eq(addr[i] + (lens[i] << (bb.bit_length() - 1))),
                                 left[i].eq(left[i] - lens[i])]
                    with m.If(left[i] == lens[i]):
                        m.d.sync += active[i].eq(0)
            with m.If(self.abort):
                m.d.sync += active[i].eq(0)
            m.d.comb += [fifos[i].w_data.eq(axi.rdata), fifos[i].w_en.eq(arrived)]
        self._status(m, tags, ar_pending)
        return m


class TwinWriter(AxiWriter):
    """The writer as first written, its burst length combinational from ``addr``/``left`` (the twin of
    :class:`mmfree.rtl.axi.AxiWriter`, whose constructor, ports and state machine it shares)."""

    def _next_burst(self, m: Module, addr: Signal, left: Signal) -> Signal:
        return _burst_len(addr, left, self.bus_bytes, self.max_burst, m, "w")

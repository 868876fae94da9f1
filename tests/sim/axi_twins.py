"""Naive twins of :class:`mmfree.rtl.axi.AxiReader` and :class:`~mmfree.rtl.axi.AxiWriter` for lock-step tests:
the same ports, parameters and behaviour, with the burst length, the FIFO-room check and the arbitration computed
combinationally each cycle from ``addr``/``left``/``reserved`` (the engines before their timing work, issue 20).
Not part of the package."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.rtl.axi import BEATS_WIDTH, BURST_BOUNDARY, MAX_BURST_LEGAL, axi4_signature, cmd_layout, row_cmd_layout
from mmfree.rtl.pipeline import check_int, width_for


def _burst_len(addr, beats_left, bus_bytes: int, max_burst: int, m: Module, name: str):
    """Beats of the next burst: min(max_burst, beats_left, beats to the next 4 KiB boundary)."""
    to_boundary = Signal(range(BURST_BOUNDARY // bus_bytes + 1), name=f"{name}_tob")
    m.d.comb += to_boundary.eq((BURST_BOUNDARY - addr[:12]) >> (bus_bytes.bit_length() - 1))
    n = Signal(range(max_burst + 1), name=f"{name}_len")
    lim = Mux(to_boundary < max_burst, to_boundary, max_burst)
    m.d.comb += n.eq(Mux(beats_left < lim, beats_left, lim))
    return n


class TwinReader(wiring.Component):
    """The reader as first written, every decision combinational from the client state (the twin of
    :class:`mmfree.rtl.axi.AxiReader`, which registers them; the two must agree cycle for cycle).

    Parameters: ``addr_width``; ``bus_bytes`` (data width / 8: 8 or 16); ``fifo_depths``: one data FIFO
    depth (beats) per client, each at least ``max_burst``; ``max_burst`` (beats, a power of two <= 256;
    16 is the safe choice on Zynq HP ports); ``max_outstanding`` bursts in flight; ``row_clients``: how many
    of the clients, the last ones, take strided commands (:func:`row_cmd_layout`) instead of :func:`cmd_layout`;
    ``latency_windows``: ``{client: (base, margin)}``, clients whose read window (beats stored + in flight;
    otherwise the FIFO depth) follows the read latency: ``base`` beats until the reader has measured the
    latency, then the measured latency + ``margin`` rounded up to ``max_burst``, between ``base`` and the
    FIFO depth. The latency is measured on every burst issued while no other burst of this reader is
    outstanding (AR handshake to its first R beat; the largest since reset counts): a short latency keeps
    the window at ``base``, a long one gets the beats in flight that cover it.

    Ports: ``axi`` (the AR and R members of :func:`axi4_signature` are used, AW/W/B are left to
    :class:`AxiWriter`); ``cmd[i]`` (in): the command stream of plain client ``i`` (``i`` below
    ``n - row_clients``); ``row_cmd[j]`` (in): the command stream of strided client ``n - row_clients + j``;
    ``data[i]`` (out): client ``i``'s beats (``i`` in ``0..n-1``, the priority order); ``abort`` (in): cancel
    every command and issue nothing more; ``quiet`` (out): no burst outstanding and none being issued;
    ``error`` (out, sticky): an R beat carried SLVERR/DECERR; ``beats`` (out): a pulse per R beat.
    """

    def __init__(self, addr_width: int = 40, bus_bytes: int = 16, fifo_depths=(32,), max_burst: int = 16,
                 max_outstanding: int = 16, id_width: int = 1, row_clients: int = 0, latency_windows=None):
        check_int("bus_bytes", bus_bytes, "8 or 16", lambda v: v in (8, 16))
        check_int("max_burst", max_burst, f"one of {MAX_BURST_LEGAL}", lambda v: v in MAX_BURST_LEGAL)
        check_int("addr_width", addr_width, "an integer in 13..64", lambda v: 13 <= v <= 64)
        check_int("max_outstanding", max_outstanding, "an integer in 1..256", lambda v: 1 <= v <= 256)
        if not fifo_depths or any(not isinstance(d, int) or d < max_burst for d in fifo_depths):
            raise ValueError(f"fifo_depths must be a non-empty list of integers >= max_burst ({max_burst}), "
                             f"got {fifo_depths!r}")
        self.addr_width, self.bus_bytes, self.max_burst = addr_width, bus_bytes, max_burst
        self.fifo_depths, self.max_outstanding, self.id_width = list(fifo_depths), max_outstanding, id_width
        n = len(self.fifo_depths)
        check_int("row_clients", row_clients, f"an integer in 0..{n} (the last clients of fifo_depths)",
                  lambda v: 0 <= v <= n)
        self.row_clients, self.n_plain = row_clients, n - row_clients
        self.latency_windows = dict(latency_windows or {})
        for i, (base, margin) in self.latency_windows.items():
            if i not in range(n) or not max_burst <= base <= self.fifo_depths[i] or margin < 0:
                raise ValueError(f"latency_windows[{i}] = ({base}, {margin}): the client must exist, its base must be in "
                                 f"max_burst..its FIFO depth and its margin >= 0")
        super().__init__({
            "axi": Out(axi4_signature(addr_width, 8 * bus_bytes, id_width)),
            "abort": In(1), "quiet": Out(1), "error": Out(1), "beats": Out(1),
            "cmd": In(stream.Signature(cmd_layout(addr_width))).array(self.n_plain),
            "row_cmd": In(stream.Signature(row_cmd_layout(addr_width))).array(row_clients),
            "data": Out(stream.Signature(unsigned(8 * bus_bytes))).array(n),
        })

    def client_cmd(self, i: int):
        """Client ``i``'s command stream: ``cmd[i]`` or, for a strided client, ``row_cmd[i - n_plain]``."""
        return self.cmd[i] if i < self.n_plain else self.row_cmd[i - self.n_plain]

    def elaborate(self, platform):
        m = Module()
        axi, n = self.axi, len(self.fifo_depths)
        bb = self.bus_bytes
        m.d.comb += [axi.arsize.eq(bb.bit_length() - 1), axi.arburst.eq(1), axi.arid.eq(0), axi.arcache.eq(0b0011),
                     axi.arprot.eq(0), axi.arlock.eq(0), axi.rready.eq(1)]
        tagw = width_for(max(1, n - 1))
        # tags: client of each outstanding burst; first-word fall-through (an R beat can follow its AR by one cycle)
        m.submodules.tags = tags = fifo.SyncFIFO(width=tagw, depth=self.max_outstanding)
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
            limit = self._window(m, i, depth, lat_max) if i in self.latency_windows else depth
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
        m.d.comb += tags.r_en.eq(rfire & axi.rlast)
        err = Signal()
        with m.If(rfire & (axi.rresp != 0)):
            m.d.sync += err.eq(1)
        m.d.comb += [self.error.eq(err), self.beats.eq(rfire), self.quiet.eq(~tags.r_rdy & ~ar_pending)]
        return m

    def _latency(self, m: Module, tags) -> Signal:
        """The largest read latency measured since reset (cycles, saturating): from the AR handshake of a burst
        issued while no burst is outstanding to its first R beat."""
        top = max(d for d in self.fifo_depths)
        lat_max, cnt, run = Signal(range(top + 1)), Signal(range(top + 1)), Signal()
        axi = self.axi
        with m.If(run):
            m.d.sync += cnt.eq(Mux(cnt == top, top, cnt + 1))
            with m.If(axi.rvalid & axi.rready):
                m.d.sync += run.eq(0)
                with m.If(cnt > lat_max):
                    m.d.sync += lat_max.eq(cnt)
        with m.Elif(axi.arvalid & axi.arready & (tags.level == 0)):
            m.d.sync += [run.eq(1), cnt.eq(1)]
        return lat_max

    def _window(self, m: Module, i: int, depth: int, lat_max: Signal) -> Signal:
        """Client ``i``'s read window (beats, registered): ``base`` or the measured latency + margin rounded up to a
        burst, at most ``depth``."""
        base, margin = self.latency_windows[i]
        mb = self.max_burst
        need = Signal(range(depth + margin + mb + 1), name=f"need{i}")
        m.d.comb += need.eq(((lat_max + margin + mb - 1) >> (mb.bit_length() - 1)) << (mb.bit_length() - 1))
        limit = Signal(range(depth + 1), name=f"window{i}", init=base)
        m.d.sync += limit.eq(Mux(need <= base, base, Mux(need >= depth, depth, need)))
        return limit


class TwinWriter(wiring.Component):
    """The writer as first written, its burst length combinational from ``addr``/``left`` (the twin of
    :class:`mmfree.rtl.axi.AxiWriter`).

    Write master: ``cmd`` ``{addr, beats}`` (beat aligned) and ``data`` ``{data, strb}`` beats, in order.

    Bursts as in :class:`AxiReader`; AW of a burst, then its W beats. ``quiet``: no command active and every
    B response received. ``error`` (sticky): a B response was not OKAY. ``beats``: a pulse per W beat.
    """

    def __init__(self, addr_width: int = 40, bus_bytes: int = 16, max_burst: int = 16, id_width: int = 1):
        check_int("bus_bytes", bus_bytes, "8 or 16", lambda v: v in (8, 16))
        check_int("max_burst", max_burst, f"one of {MAX_BURST_LEGAL}", lambda v: v in MAX_BURST_LEGAL)
        self.addr_width, self.bus_bytes, self.max_burst, self.id_width = addr_width, bus_bytes, max_burst, id_width
        self.DATA = data.StructLayout({"data": unsigned(8 * bus_bytes), "strb": unsigned(bus_bytes)})
        super().__init__({
            "axi": Out(axi4_signature(addr_width, 8 * bus_bytes, id_width)),
            "cmd": In(stream.Signature(cmd_layout(addr_width))),
            "data": In(stream.Signature(self.DATA)),
            "abort": In(1), "quiet": Out(1), "error": Out(1), "beats": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        axi, bb = self.axi, self.bus_bytes
        m.d.comb += [axi.awsize.eq(bb.bit_length() - 1), axi.awburst.eq(1), axi.awid.eq(0), axi.awcache.eq(0b0011),
                     axi.awprot.eq(0), axi.awlock.eq(0), axi.bready.eq(1)]
        addr = Signal(self.addr_width)
        left = Signal(BEATS_WIDTH)
        blen = _burst_len(addr, left, bb, self.max_burst, m, "w")
        wleft = Signal(range(self.max_burst + 1))
        outstanding = Signal(8)
        err = Signal()
        aw_fire = axi.awvalid & axi.awready
        w_fire = axi.wvalid & axi.wready
        b_fire = axi.bvalid & axi.bready
        m.d.sync += outstanding.eq(outstanding + aw_fire - b_fire)
        with m.If(b_fire & (axi.bresp != 0)):
            m.d.sync += err.eq(1)
        idle = Signal()
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.cmd.ready.eq(~self.abort), idle.eq(1)]
                with m.If(self.cmd.valid & ~self.abort & (self.cmd.payload.beats != 0)):
                    m.d.sync += [addr.eq(self.cmd.payload.addr), left.eq(self.cmd.payload.beats)]
                    m.next = "AW"
            with m.State("AW"):
                with m.If(self.abort):
                    m.next = "IDLE"
                with m.Elif(outstanding != 255):
                    m.d.comb += [axi.awvalid.eq(1), axi.awaddr.eq(addr), axi.awlen.eq(blen - 1)]
                    with m.If(axi.awready):
                        m.d.sync += [wleft.eq(blen), addr.eq(addr + (blen << (bb.bit_length() - 1))),
                                     left.eq(left - blen)]
                        m.next = "W"
            with m.State("W"):
                # after an abort the burst is completed with empty strobes and the data stream is ignored
                m.d.comb += [
                    axi.wvalid.eq(Mux(self.abort, 1, self.data.valid)),
                    axi.wdata.eq(self.data.payload.data),
                    axi.wstrb.eq(Mux(self.abort, 0, self.data.payload.strb)),
                    axi.wlast.eq(wleft == 1),
                    self.data.ready.eq(axi.wready & ~self.abort),
                ]
                with m.If(w_fire):
                    m.d.sync += wleft.eq(wleft - 1)
                    with m.If(wleft == 1):
                        with m.If((left == 0) | self.abort):
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "AW"
        m.d.comb += [self.error.eq(err), self.beats.eq(w_fire),
                     self.quiet.eq((outstanding == 0) & idle)]
        return m

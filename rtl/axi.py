"""AXI4 master read/write engines, the AXI4-Lite signature, and word gearboxes for the accelerator's DMAs.

* :func:`axi4_signature` / :func:`axil_signature`: the bus signatures as seen from the master
  (Amaranth names the ports ``m_axi__araddr``...; cocotbext-axi finds them with ``bus_separator="__"``).
* :class:`AxiReader`: one AXI4 read master shared by several *clients*. A client hands in commands
  ``{addr, beats}`` (bus-beat aligned) and receives the beats, in order, on its own stream. Commands are
  cut into INCR bursts of at most ``max_burst`` beats that never cross a 4 KiB boundary; a burst is
  issued only when the client's data FIFO has room reserved for all of it, so ``rready`` is always high
  and a slow client never blocks another one's data. Bursts stay outstanding back to back (up to
  ``max_outstanding``); lower client index = higher priority.
* :class:`AxiWriter`: one AXI4 write master: commands ``{addr, beats}`` and a data stream
  ``{data, strb}``; the same burst rules; counts outstanding responses.
* :class:`WordUnpacker` / :class:`WordPacker`: bus beats <-> records of 32-bit words with a start offset,
  so vectors may start at any 4-byte aligned address.

Both engines stop issuing on ``abort`` and still complete what is on the bus (reads are drained; a
started write burst is finished with zero strobes), then report ``quiet``: the AXI rule that every
issued transaction completes holds, and nothing hangs.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.rtl.pipeline import check_int, width_for

BURST_BOUNDARY = 4096
BEATS_WIDTH = 24          # beats per command (16 M beats)
MAX_BURST_LEGAL = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def axi4_signature(addr_width: int, data_width: int, id_width: int = 1) -> wiring.Signature:
    """AXI4 (full) as seen from the master: AW, W, B, AR, R channels with their usual signal names."""
    sb = data_width // 8
    return wiring.Signature({
        "awid": Out(id_width), "awaddr": Out(addr_width), "awlen": Out(8), "awsize": Out(3), "awburst": Out(2),
        "awlock": Out(1), "awcache": Out(4), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_width), "wstrb": Out(sb), "wlast": Out(1), "wvalid": Out(1), "wready": In(1),
        "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "arid": Out(id_width), "araddr": Out(addr_width), "arlen": Out(8), "arsize": Out(3), "arburst": Out(2),
        "arlock": Out(1), "arcache": Out(4), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
        "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1), "rvalid": In(1),
        "rready": Out(1),
    })


def axil_signature(addr_width: int, data_width: int = 32) -> wiring.Signature:
    """AXI4-Lite as seen from the master."""
    return wiring.Signature({
        "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
        "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
        "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
    })


def cmd_layout(addr_width: int) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(addr_width), "beats": unsigned(BEATS_WIDTH)})


def row_cmd_layout(addr_width: int) -> data.StructLayout:
    """A strided read: ``rows`` rows of ``beats`` beats each, row ``i`` starting at ``addr + i * stride``
    (bytes, bus-beat aligned). Bursts never cross a row end. ``rows == 0`` or ``beats == 0`` reads nothing."""
    return data.StructLayout({"addr": unsigned(addr_width), "beats": unsigned(BEATS_WIDTH), "rows": unsigned(32),
                              "stride": unsigned(addr_width)})


def _one_hot_select(cases):
    """OR of ``value`` over the ``(select, value)`` pairs whose ``select`` is set (at most one is)."""
    out = 0
    for sel, value in cases:
        out = out | Mux(sel, value, 0)
    return out


def _boundary_len(beat, max_burst: int):
    """min(max_burst, beats to the 4 KiB boundary) given ``beat``, the address's beat index within its page (the
    address bits ``log2(bus_bytes)..11``). Fewer than ``max_burst`` beats are left only when the index's high bits
    are all ones; then ``max_burst`` minus its low bits are (``max_burst`` divides the page)."""
    lo = beat[:max_burst.bit_length() - 1]
    return Mux(beat[max_burst.bit_length() - 1:].all(), max_burst - lo, max_burst)


def _step_len(lim_full, left, blen, big, max_burst: int):
    """:func:`_next_len` of the burst after one of ``blen`` beats that does not end its command or row, given
    ``lim_full`` (:func:`_boundary_len` of the address ``max_burst`` beats on, registered), ``left`` (beats before
    it) and ``big`` (``left >= 2 * max_burst``, registered). A burst shorter than ``max_burst`` that leaves beats
    behind was cut by the 4 KiB boundary, so the next one starts a page: ``max_burst`` beats to the boundary; a full
    one leaves ``lim_full``. With ``big``, at least ``max_burst`` beats are left after it, so only the boundary can
    cut the next burst; otherwise ``left`` fits in a few bits and the compare is short."""
    lim = Mux(blen == max_burst, lim_full, max_burst)
    after = (left[:(2 * max_burst).bit_length()] - blen)[:(2 * max_burst).bit_length()]
    return Mux(~big & (after < lim), after, lim)


def _next_len(beat, beats_left, max_burst: int):
    """The next burst's beats, min(max_burst, beats_left, beats to the 4 KiB boundary), given ``beat`` (as in
    :func:`_boundary_len`); for a register that holds it."""
    lim = _boundary_len(beat, max_burst)
    return Mux(beats_left < lim, beats_left, lim)


class AxiReader(wiring.Component):
    """Read master shared by clients (see the module docstring).

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

    def _setup(self, m: Module):
        """The AR fields that never change, and ``tags`` (the client of each outstanding burst; first-word
        fall-through, so an R beat can follow its AR by one cycle). Returns ``(tags, its width)``."""
        axi = self.axi
        m.d.comb += [axi.arsize.eq(self.bus_bytes.bit_length() - 1), axi.arburst.eq(1), axi.arid.eq(0),
                     axi.arcache.eq(0b0011), axi.arprot.eq(0), axi.arlock.eq(0), axi.rready.eq(1)]
        tagw = width_for(max(1, len(self.fifo_depths) - 1))
        m.submodules.tags = tags = fifo.SyncFIFO(width=tagw, depth=self.max_outstanding)
        return tags, tagw

    def elaborate(self, platform):
        m = Module()
        axi, n = self.axi, len(self.fifo_depths)
        tags, tagw = self._setup(m)
        lat_max = self._latency(m, tags) if self.latency_windows else None
        clients = [self._client(m, i, depth, lat_max) for i, depth in enumerate(self.fifo_depths)]

        # ---- AR issue: a registered request, lowest client index first -----------------------------------
        ar_pending = Signal()
        ar_client = Signal(tagw)
        issue = Signal()
        pick = Signal(tagw)
        anyw = Signal()
        go = Signal()               # a burst may be issued this cycle, if a client wants one
        for i, c in enumerate(clients):
            with m.If(c.want):
                m.d.comb += anyw.eq(1)
            # one-hot grant: this client wants and no lower index does
            m.d.comb += c.took.eq(go & c.want & ~Cat(d.want for d in clients[:i]).any())
        for i in reversed(range(n)):
            with m.If(clients[i].want):
                m.d.comb += pick.eq(i)
        room = self._room(m, tags, issue)
        m.d.comb += [go.eq((~ar_pending | axi.arready) & room & ~self.abort), issue.eq(anyw & go)]
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += ar_pending.eq(0)
        with m.If(issue):
            m.d.sync += [ar_pending.eq(1), ar_client.eq(pick)]
            # the grant is one-hot: an AND-OR select (a priority mux of `blen - 1` would let Yosys's opt_share move
            # the subtraction after the select, onto the arbitration path)
            m.d.sync += [axi.araddr.eq(_one_hot_select([(c.took, c.addr) for c in clients])),
                         axi.arlen.eq(_one_hot_select([(c.took, c.blen - 1) for c in clients]))]
        m.d.comb += [axi.arvalid.eq(ar_pending), tags.w_data.eq(ar_client), tags.w_en.eq(axi.arvalid & axi.arready)]
        # tags are pushed at the AR handshake; a pending AR already reserved its FIFO space

        rfire = axi.rvalid & axi.rready
        for i, c in enumerate(clients):
            arrived = rfire & (tags.r_data == i) & tags.r_rdy
            self._advance(m, i, c)
            m.d.comb += [c.fifo.w_data.eq(axi.rdata), c.fifo.w_en.eq(arrived)]
        self._status(m, tags, ar_pending)
        return m

    def _status(self, m: Module, tags, ar_pending) -> None:
        """A burst's last beat retires its tag; ``error`` (sticky), ``beats`` and ``quiet``."""
        axi = self.axi
        rfire = axi.rvalid & axi.rready
        m.d.comb += tags.r_en.eq(rfire & axi.rlast)
        err = Signal()
        with m.If(rfire & (axi.rresp != 0)):
            m.d.sync += err.eq(1)
        m.d.comb += [self.error.eq(err), self.beats.eq(rfire), self.quiet.eq(~tags.r_rdy & ~ar_pending)]

    def _client(self, m: Module, i: int, depth: int, lat_max) -> SimpleNamespace:
        """Client ``i``'s data FIFO and registers: ``addr``/``left`` (next burst's address, beats left), ``blen``
        (the next burst's beats, kept equal to :func:`_next_len` of them), ``used`` (beats stored + reserved for
        bursts issued and not yet arrived: the FIFO's level + the reservations), ``free`` (the read window minus
        ``used``) and ``want`` (comb: active and the next burst fits, ``blen <= free``). Everything ``want`` reads
        is a flip-flop, so the arbitration starts with one small compare."""
        f = fifo.SyncFIFOBuffered(width=8 * self.bus_bytes, depth=depth)
        m.submodules[f"fifo{i}"] = f
        out = self.data[i]
        m.d.comb += [out.payload.eq(f.r_data), out.valid.eq(f.r_rdy), f.r_en.eq(out.ready)]
        limit, limit_next = self._window(m, i, depth, lat_max) if i in self.latency_windows else (depth, depth)
        c = SimpleNamespace(fifo=f, addr=Signal(self.addr_width, name=f"addr{i}"), left=Signal(BEATS_WIDTH, name=f"left{i}"),
                            blen=Signal(range(self.max_burst + 1), name=f"blen{i}"), active=Signal(name=f"active{i}"),
                            used=Signal(range(depth + 1), name=f"used{i}"), want=Signal(name=f"want{i}"),
                            took=Signal(name=f"took{i}"), big=Signal(name=f"big{i}"),
                            lim_full=Signal(range(self.max_burst + 1), name=f"lim_full{i}"),
                            free=Signal(range(depth + 1), name=f"free{i}", init=limit if isinstance(limit, int) else limit.init),
                            limit_next=limit_next, popped=out.valid & out.ready)
        m.d.comb += c.want.eq(c.active & ~self.abort & (c.blen <= c.free))
        m.d.comb += self.client_cmd(i).ready.eq(~c.active & ~self.abort)
        return c

    def _room(self, m: Module, tags, issue) -> Signal:
        """Registered ``tags.level + ar_pending < max_outstanding``: ``inflight`` (that sum) counts bursts issued and
        not yet completed; ``room`` is next cycle's compare, chosen by ``issue`` at the end."""
        mo = self.max_outstanding
        inflight, room = Signal(range(mo + 2)), Signal(init=1)
        done = tags.r_en & tags.r_rdy
        after = inflight - done
        m.d.sync += [inflight.eq(Mux(issue, after + 1, after)), room.eq(Mux(issue, after + 1 < mo, after < mo))]
        return room

    def _advance(self, m: Module, i: int, c: SimpleNamespace) -> None:
        """Client ``i``'s registers after this cycle: a new command, a burst issued (``c.took``), an abort. What a
        burst leaves behind (:meth:`_stepped`) is computed from registers alone; ``c.took`` only selects it."""
        cmd, mb, sh, took = self.client_cmd(i), self.max_burst, self.bus_bytes.bit_length() - 1, c.took
        kept = c.used - c.popped                       # used after this cycle without a burst issued
        free0 = c.limit_next - kept
        m.d.sync += [c.used.eq(Mux(took, kept + c.blen, kept)), c.free.eq(Mux(took, free0 - c.blen, free0))]
        step = self._stepped(m, i, c, cmd)
        with m.If(cmd.valid & cmd.ready):
            p = cmd.payload
            m.d.sync += [c.addr.eq(p.addr), c.left.eq(p.beats), c.blen.eq(_next_len(p.addr[sh:12], p.beats, mb)),
                         c.big.eq(p.beats >= 2 * mb), c.active.eq(step.starts),
                         c.lim_full.eq(_boundary_len((p.addr[sh:12] + mb)[:12 - sh], mb))]
        with m.Elif(took):
            m.d.sync += [c.addr.eq(step.addr), c.left.eq(step.left), c.blen.eq(step.blen), c.big.eq(step.big),
                         c.lim_full.eq(step.lim_full),
                         c.active.eq(step.active)]
        with m.If(self.abort):
            m.d.sync += c.active.eq(0)

    def _stepped(self, m: Module, i: int, c: SimpleNamespace, cmd) -> SimpleNamespace:
        """Client ``i``'s ``addr``, ``left``, ``blen``, ``big``, ``lim_full`` and ``active`` once its next burst is
        issued, and ``starts`` (a command being accepted makes it active). A strided client keeps the row registers
        here: at a row's last burst the next row starts ``stride`` after this one and ``left`` counts its beats."""
        mb, sh = self.max_burst, self.bus_bytes.bit_length() - 1
        last = c.left == c.blen                 # this burst ends the command (a plain client) or the row
        plain = SimpleNamespace(addr=c.addr + (c.blen << sh), left=c.left - c.blen,
                                blen=_step_len(c.lim_full, c.left, c.blen, c.big, mb),
                                big=c.left - c.blen >= 2 * mb,
                                lim_full=_boundary_len((c.addr[sh:12] + c.blen + mb)[:12 - sh], mb))
        if i < self.n_plain:
            return SimpleNamespace(**plain.__dict__, active=~last, starts=cmd.payload.beats != 0)
        row_addr = Signal(self.addr_width, name=f"row_addr{i}")
        rows_left, bpr = Signal(32, name=f"rows_left{i}"), Signal(BEATS_WIDTH, name=f"bpr{i}")
        stride = Signal(self.addr_width, name=f"stride{i}")
        next_row = Signal(self.addr_width, name=f"next_row{i}")
        m.d.comb += next_row.eq(row_addr + stride)
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [row_addr.eq(cmd.payload.addr), bpr.eq(cmd.payload.beats), rows_left.eq(cmd.payload.rows),
                         stride.eq(cmd.payload.stride)]
        with m.Elif(c.took & last):
            m.d.sync += [rows_left.eq(rows_left - 1), row_addr.eq(next_row)]
        # the next row's first burst: its beat index from the low address bits alone, `bpr < lim` on a few bits
        row_beat = (row_addr[sh:12] + stride[sh:12])[:12 - sh]
        row_lim, bpr_short = _boundary_len(row_beat, mb), bpr < mb
        row_len = Mux(bpr_short & (bpr[:(mb - 1).bit_length()] < row_lim), bpr[:(mb - 1).bit_length()], row_lim)
        return SimpleNamespace(addr=Mux(last, next_row, plain.addr), left=Mux(last, bpr, plain.left),
                               blen=Mux(last, row_len, plain.blen),
                               big=Mux(last, bpr >= 2 * mb, plain.big), active=~last | (rows_left != 1),
                               lim_full=Mux(last, _boundary_len((row_beat + mb)[:12 - sh], mb), plain.lim_full),
                               starts=(cmd.payload.beats != 0) & (cmd.payload.rows != 0))

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

    def _window(self, m: Module, i: int, depth: int, lat_max: Signal) -> tuple[Signal, Signal]:
        """Client ``i``'s read window (beats, a register) and its next value: ``base`` or the measured latency +
        margin rounded up to a burst, at most ``depth``."""
        base, margin = self.latency_windows[i]
        mb = self.max_burst
        need = Signal(range(depth + margin + mb + 1), name=f"need{i}")
        m.d.comb += need.eq(((lat_max + margin + mb - 1) >> (mb.bit_length() - 1)) << (mb.bit_length() - 1))
        limit = Signal(range(depth + 1), name=f"window{i}", init=base)
        limit_next = Signal(range(depth + 1), name=f"window{i}_next")
        m.d.comb += limit_next.eq(Mux(need <= base, base, Mux(need >= depth, depth, need)))
        m.d.sync += limit.eq(limit_next)
        return limit, limit_next


class AxiWriter(wiring.Component):
    """Write master: ``cmd`` ``{addr, beats}`` (beat aligned) and ``data`` ``{data, strb}`` beats, in order.

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
        blen = self._next_burst(m, addr, left)
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


    def _next_burst(self, m: Module, addr: Signal, left: Signal) -> Signal:
        """The next burst's length, a register: from the command as it is accepted, else from ``addr`` / ``left``
        as they stand (AW is entered only from IDLE, with the command, or after at least one W cycle, when
        ``addr`` / ``left`` are final)."""
        blen = Signal(range(self.max_burst + 1))
        sh = self.bus_bytes.bit_length() - 1
        p = self.cmd.payload
        m.d.sync += blen.eq(Mux(self.cmd.valid & self.cmd.ready, _next_len(p.addr[sh:12], p.beats, self.max_burst),
                                _next_len(addr[sh:12], left, self.max_burst)))
        return blen


class WordUnpacker(wiring.Component):
    """Bus beats -> records of ``fields`` 32-bit words (1..``max_fields``), one record per cycle.

    ``start`` (a pulse) begins a transfer of ``nbeats`` beats: ``skip`` words of the first beat are dropped
    (a vector that starts inside a beat), ``fields`` words make a record. ``beat`` is the client's data
    stream (exactly ``nbeats`` beats are taken); ``rec`` carries ``{w: max_fields x 32 bits}`` (word 0
    first). Words after the last record of a transfer are the caller's to ignore (it counts records and
    starts the next transfer with ``start``).
    """

    def __init__(self, bus_bytes: int = 16, max_fields: int = 4):
        check_int("bus_bytes", bus_bytes, "8 or 16", lambda v: v in (8, 16))
        check_int("max_fields", max_fields, "an integer in 1..8", lambda v: 1 <= v <= 8)
        self.bus_words = bus_bytes // 4
        self.max_fields = max_fields
        self.REC = data.StructLayout({"w": data.ArrayLayout(unsigned(32), max_fields)})
        super().__init__({
            "start": In(1), "skip": In(range(self.bus_words)), "fields": In(range(max_fields + 1)),
            "nbeats": In(BEATS_WIDTH),
            "beat": In(stream.Signature(unsigned(8 * bus_bytes))),
            "rec": Out(stream.Signature(self.REC)),
        })

    def elaborate(self, platform):
        m = Module()
        bw, mf = self.bus_words, self.max_fields
        cap = mf + bw
        words = [Signal(32, name=f"w{i}") for i in range(cap)]
        count = Signal(range(cap + 1))
        skip = Signal(range(bw))
        fields = Signal(range(mf + 1))
        first = Signal()
        nleft = Signal(BEATS_WIDTH)
        # registered beside count / fields / nleft (a register split, the same cycles): a record is complete
        # (``full``), the words left after it (``left``), beats are still due (``more``); the next values are
        # chosen among candidates computed from registers (pop a record or not, take a beat or not)
        full, left, more = Signal(), Signal(range(cap + 1)), Signal()
        with m.If(self.start):
            m.d.sync += [count.eq(0), skip.eq(self.skip), fields.eq(self.fields), first.eq(1), nleft.eq(self.nbeats),
                         full.eq(0), more.eq(self.nbeats != 0)]
        emit = Signal()
        take = Signal()
        m.d.comb += [emit.eq(~self.start & full), self.rec.valid.eq(emit)]
        for i in range(mf):
            m.d.comb += self.rec.payload.w[i].eq(words[i])
        pop = Signal()
        m.d.comb += pop.eq(emit & self.rec.ready)
        drop = Mux(first, skip, 0)
        m.d.comb += take.eq(~self.start & more & Mux(pop, left + bw <= cap, count + bw <= cap))
        m.d.comb += self.beat.ready.eq(take)
        got = Signal()
        m.d.comb += got.eq(self.beat.valid & take)
        beat_words = [self.beat.payload[32 * i: 32 * i + 32] for i in range(bw)]
        # new contents: the remaining words shifted down, then the beat's words after the dropped ones
        for i in range(cap):
            shifted = Signal(32, name=f"shifted{i}")      # word i + fields of the old buffer
            m.d.comb += shifted.eq(0)
            for f in range(1, mf + 1):
                with m.If(fields == f):
                    if i + f < cap:
                        m.d.comb += shifted.eq(words[i + f])
            new = Signal(32, name=f"new{i}")
            m.d.comb += new.eq(Mux(pop, shifted, words[i]))
            with m.If(got):
                for j in range(bw):
                    for d in range(bw):
                        # beat word j lands at remain + j - d when d words are dropped (remain: left or count)
                        if j >= d:
                            lands = Mux(pop, left + j - d == i, count + j - d == i)
                            with m.If((drop == d) & lands):
                                m.d.comb += new.eq(beat_words[j])
            m.d.sync += words[i].eq(new)
        with m.If(~self.start):
            cands = {(p, g): (x + bw - drop if g else x) for p, x in ((0, count), (1, left)) for g in (0, 1)}
            with m.Switch(Cat(got, pop)):
                for (p, g), x in cands.items():
                    with m.Case(g | (p << 1)):
                        m.d.sync += [count.eq(x), full.eq((x >= fields) & (fields != 0)), left.eq(x - fields)]
            with m.If(got):
                m.d.sync += [first.eq(0), nleft.eq(nleft - 1), more.eq(nleft != 1)]
        return m


class WordPacker(wiring.Component):
    """32-bit words -> bus beats with byte strobes, for the store DMA.

    ``start`` (pulse) begins a transfer of ``count`` words whose first word sits ``lead`` words into its
    beat; the first beat carries empty strobes below it and the last beat above the end. ``word`` in,
    ``beat`` out (``{data, strb}``, :class:`AxiWriter` ``data`` layout); ``busy`` until the last beat left.
    """

    def __init__(self, bus_bytes: int = 16):
        check_int("bus_bytes", bus_bytes, "8 or 16", lambda v: v in (8, 16))
        self.bus_words = bus_bytes // 4
        self.BEAT = data.StructLayout({"data": unsigned(8 * bus_bytes), "strb": unsigned(bus_bytes)})
        super().__init__({
            "start": In(1), "lead": In(range(self.bus_words)), "count": In(BEATS_WIDTH),
            "word": In(stream.Signature(unsigned(32))),
            "beat": Out(stream.Signature(self.BEAT)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        bw = self.bus_words
        pos = Signal(range(bw))
        left = Signal(BEATS_WIDTH)
        buf = Signal(32 * bw)
        strb = Signal(bw)
        full = Signal()
        m.d.comb += [self.beat.valid.eq(full), self.beat.payload.data.eq(buf), self.busy.eq(full | (left != 0))]
        m.d.comb += self.beat.payload.strb.eq(Cat(*[Mux(strb[i], Const(0xF, 4), Const(0, 4)) for i in range(bw)]))
        with m.If(self.beat.valid & self.beat.ready):
            m.d.sync += [full.eq(0), strb.eq(0)]
        can = ~full | self.beat.ready
        m.d.comb += self.word.ready.eq(can & (left != 0) & ~self.start)
        with m.If(self.start):
            m.d.sync += [pos.eq(self.lead), left.eq(self.count), strb.eq(0), full.eq(0)]
        with m.Elif(self.word.valid & self.word.ready):
            base_strb = Mux(full, 0, strb)     # a beat leaving this cycle starts a fresh one
            for i in range(bw):
                with m.If(pos == i):
                    m.d.sync += buf.word_select(i, 32).eq(self.word.payload)
            m.d.sync += strb.eq(base_strb | (1 << pos))
            m.d.sync += left.eq(left - 1)
            with m.If((pos == bw - 1) | (left == 1)):
                m.d.sync += [full.eq(1), pos.eq(0)]
            with m.Else():
                m.d.sync += pos.eq(pos + 1)
        return m


class DmaReadClient(wiring.Component):
    """One client of an :class:`AxiReader`: reads ``words`` 32-bit words from byte address ``addr`` (4-byte
    aligned) and hands them on as records of ``fields`` words (a :class:`WordUnpacker`).

    ``req`` (a pulse, with ``addr`` / ``words`` / ``fields``) registers the reader command (the beats that cover
    the words, from the bus-aligned address) and restarts the unpacker the next cycle; a request replaces a
    command the reader has not taken yet. ``cmd`` goes to the reader, its data comes back on ``beat``, the
    records leave on ``rec`` (words after the last record are the caller's to ignore)."""

    #: Width of the ``words`` input: wide enough for any request (count x fields) without truncation.
    WORDS_WIDTH = 48

    def __init__(self, addr_width: int, bus_bytes: int = 16, max_fields: int = 4):
        self.addr_width, self.bus_bytes, self.max_fields = addr_width, bus_bytes, max_fields
        self._unpacker = WordUnpacker(bus_bytes=bus_bytes, max_fields=max_fields)
        super().__init__({
            "req": In(1), "addr": In(addr_width), "words": In(self.WORDS_WIDTH), "fields": In(range(max_fields + 1)),
            "cmd": Out(stream.Signature(cmd_layout(addr_width))),
            "beat": In(stream.Signature(unsigned(8 * bus_bytes))),
            "rec": Out(stream.Signature(self._unpacker.REC)),
        })

    def elaborate(self, platform):
        m = Module()
        bb = self.bus_bytes
        lg_bb = bb.bit_length() - 1
        m.submodules.unpack = up = self._unpacker
        wiring.connect(m, wiring.flipped(self.beat), up.beat)
        wiring.connect(m, wiring.flipped(self.rec), up.rec)
        valid, start = Signal(), Signal()
        addr = Signal(self.addr_width)
        beats = Signal(BEATS_WIDTH)
        skip, fields = Signal(range(bb // 4)), Signal(range(self.max_fields + 1))
        m.d.comb += [self.cmd.valid.eq(valid), self.cmd.payload.addr.eq(addr), self.cmd.payload.beats.eq(beats),
                     up.start.eq(start), up.skip.eq(skip), up.fields.eq(fields), up.nbeats.eq(beats)]
        m.d.sync += start.eq(0)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += valid.eq(0)
        with m.If(self.req):
            sk = self.addr[2:lg_bb]
            m.d.sync += [valid.eq(1), addr.eq(Cat(Const(0, lg_bb), self.addr[lg_bb:])),
                         beats.eq((sk + self.words + (bb // 4 - 1)) >> (lg_bb - 2)), start.eq(1), skip.eq(sk),
                         fields.eq(self.fields)]
        return m

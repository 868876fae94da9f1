"""The datapath's on-chip vector buffers and the two components that share them between engines.

* :class:`VectorBuffers`: every buffer of :data:`mmfree.rtl.isa.BUFFERS`, ``hw.max_width`` words. A per-token
  buffer (X, A, H, T0-2) is ``hw.max_tokens`` vectors, token t's in its own memories, so an engine handles every
  token of an element in the same cycle; a shared buffer (H0, LB, N, NW0-2) is one vector. Each reader engine
  reads its own copy (one memory per token and reader, all written alike), so every memory has one write and one
  read port and URAM288 can hold it (a memory with more ports could only go to block RAM, a copy per extra port,
  which at width 8192 and k >= 2 overflowed the KV260's block RAM). Reads are synchronous (the data is there the
  cycle after the address), writes take effect the next cycle. Each memory is ``max_width / R`` rows of
  R = :func:`row_words` words (max(V, 2), ``V = hw.vector_lanes``; element i in lane ``i mod R`` of row
  ``i // R``; a write enables its element's lane only: one deep wide memory, e.g. one URAM288 per 4096 rows
  with its byte write enables). With V > 1 the vector engine's read ports (:func:`vector_read_port`) take a
  row address ``i // V`` and return the V elements ``V (i // V) ..`` side by side; every other port reads or
  writes one element by its element address (the lane picked by its low bits).
* :class:`WriteArbiter`: the write ports of X or A, which two engines write (never at the same time).
* :class:`HWrite`: the write ports of H, which the vector engine (HGRN) and the load engine (LOAD HROOT, a
  stream's start state into its roots' H) write (never at the same time).
* :class:`NormTrack`: a :class:`~mmfree.rtl.quantize.MaxAbs` per token for X and for A, fed by the engines
  that write them, keeping each token's normalising shift up to date.

Every sharer has a fixed, documented priority: for X, A and the MaxAbs feeds the vector engine's request
wins, for H the load engine's (LOAD HROOT). The sequencer's scoreboard never runs two writers of one buffer
at once, so the priority never decides anything in a correct program; it is fixed so that no elaboration
order can.
"""

from __future__ import annotations

from amaranth import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from mmfree.rtl import quantize as Q
from mmfree.rtl.compiler import HwConfig

VEC = signed(Q.VEC_WIDTH)
#: Per-token buffers: name -> (word shape, reader engines; one set of K read ports each, in this order).
TOKEN_BUFFERS = {
    "x": (signed(32), ("vector", "matvec")),
    "a": (signed(64), ("vector",)),
    "h": (signed(32), ("vector", "store")),
    "t0": (signed(32), ("vector", "matvec", "store")),
    "t1": (signed(32), ("vector", "store")),
    "t2": (signed(32), ("vector",)),
}
#: Shared buffers, written by LOAD and read by the vector engine: name -> word shape.
SHARED_BUFFERS = {"h0": signed(32), "lb": unsigned(32), "n": VEC, "nw0": VEC, "nw1": VEC, "nw2": VEC}


def read_port(shape, depth: int) -> wiring.Signature:
    """A memory read port as the memory sees it (``addr`` in, ``data`` out); an engine holds it flipped (``In``)."""
    return ReadPort.Signature(addr_width=ceil_log2(depth), shape=shape)


def write_port(shape, depth: int) -> wiring.Signature:
    """A memory write port as the memory sees it (``en``, ``addr``, ``data`` in); an engine holds it ``In``."""
    return WritePort.Signature(addr_width=ceil_log2(depth), shape=shape)


def vector_read_port(shape, depth: int, lanes: int) -> wiring.Signature:
    """The vector engine's read port of a buffer banked by ``lanes`` (V): ``addr`` is a group (elements
    ``V addr .. V addr + V - 1``), ``data`` their V words (an ``ArrayLayout``); V = 1 is :func:`read_port`."""
    if lanes == 1:
        return read_port(shape, depth)
    return ReadPort.Signature(addr_width=ceil_log2(depth // lanes), shape=data.ArrayLayout(shape, lanes))


def lane_word(port, lane: int):
    """Lane ``lane`` of a :func:`vector_read_port`'s ``data`` (its only word when it is a plain read port)."""
    return port.data[lane] if isinstance(port.data.shape(), data.ArrayLayout) else port.data


def row_words(hw: HwConfig) -> int:
    """Words per row of a vector buffer's memory: V (``hw.vector_lanes``), and at least two, so that a buffer of
    32-bit words is 64 bits wide and ``max_width / 2`` deep: one URAM288 (4096 x 72) per 8192 words instead of two
    (the same block RAM either way)."""
    return max(hw.vector_lanes, 2)


def one_write(tokens: int, shape, depth: int) -> wiring.Signature:
    """One token's element write, as the writer sees it: ``en``, token ``t``, ``addr``, ``data``."""
    return wiring.Signature({"en": Out(1), "t": Out(range(tokens + 1)), "addr": Out(range(depth + 1)),
                             "data": Out(shape)})


def row_write(tokens: int, shape) -> wiring.Signature:
    """Every token's element of a row, as the writer sees it: ``en`` per token, one ``addr``, ``data`` per token."""
    return wiring.Signature({"en": Out(tokens), "addr": Out(32), "data": Out(data.ArrayLayout(shape, tokens))})


def root_write(tokens: int, shape, depth: int) -> wiring.Signature:
    """One element into several tokens' memories (LOAD HROOT), as the writer sees it: ``en`` per token, one
    ``addr``, one ``data``."""
    return wiring.Signature({"en": Out(tokens), "addr": Out(ceil_log2(depth)), "data": Out(shape)})


def maxabs_feed(tokens: int) -> wiring.Signature:
    """Elements of X or A on their way into the buffer, as the writer sees them: per token ``valid``, the
    element ``u`` and ``last`` (the vector's last element)."""
    return wiring.Signature({"valid": Out(tokens), "u": Out(data.ArrayLayout(signed(64), tokens)),
                             "last": Out(tokens)})


class VectorBuffers(wiring.Component):
    """The vector buffers of a build ``hw`` (see the module docstring). Ports, each as the memory sees it:

    * per-token buffer ``b`` of :data:`TOKEN_BUFFERS`: ``b_w[t]`` (write), ``b_<reader>[t]`` (read) per reader;
    * shared buffer ``b`` of :data:`SHARED_BUFFERS`: ``b_w`` and ``b_r`` (the vector engine's).

    The vector engine's read ports are :func:`vector_read_port` of ``hw.vector_lanes``; the others read and
    write single elements.
    """

    def __init__(self, hw: HwConfig):
        self.hw = hw
        K, W, V = hw.max_tokens, hw.max_width, hw.vector_lanes
        members = {}
        for name, (shape, readers) in TOKEN_BUFFERS.items():
            members[f"{name}_w"] = Out(write_port(shape, W)).array(K)
            for r in readers:
                port = vector_read_port(shape, W, V) if r == "vector" else read_port(shape, W)
                members[f"{name}_{r}"] = Out(port).array(K)
        for name, shape in SHARED_BUFFERS.items():
            members[f"{name}_w"] = Out(write_port(shape, W))
            members[f"{name}_r"] = Out(vector_read_port(shape, W, V))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        K = self.hw.max_tokens
        for name, (shape, readers) in TOKEN_BUFFERS.items():
            for t in range(K):
                self._copies(m, f"{name}_t{t}", shape, getattr(self, f"{name}_w")[t],
                             [(r, getattr(self, f"{name}_{r}")[t]) for r in readers])
        for name, shape in SHARED_BUFFERS.items():
            self._copies(m, name, shape, getattr(self, f"{name}_w"), [("vector", getattr(self, f"{name}_r"))])
        return m

    def _copies(self, m, name, shape, write, reads):
        """One copy of the buffer per ``(reader, port)`` of ``reads``, each written through ``write`` (so all hold
        the same words) and read through its one port: a memory of one write and one read port, which URAM288 (two
        ports) can hold, where one memory with a read port per reader could only go to block RAM, a copy per port.
        Each copy is ``max_width / R`` rows of R = :func:`row_words` words (element i in lane i mod R of row i // R;
        the element write enables its lane). The vector reader's row address reads the V lanes of a row (V > 1);
        any other reader's element address (and the vector reader's at V = 1) reads its row and takes its lane,
        picked the cycle after, when the data is there."""
        V, R = self.hw.vector_lanes, row_words(self.hw)
        lb = ceil_log2(R)
        for reader, read in reads:
            suffix = "" if len(reads) == 1 else "_" + reader
            mem = Memory(shape=data.ArrayLayout(shape, R), depth=self.hw.max_width // R, init=[])
            m.submodules[f"buf_{name}{suffix}"] = mem
            wp = mem.write_port(granularity=1)
            m.d.comb += [wp.en.eq(Mux(write.en, 1 << write.addr[:lb], 0)), wp.addr.eq(write.addr[lb:])]
            m.d.comb += [wp.data[j].eq(write.data) for j in range(R)]
            rp = mem.read_port()
            if reader == "vector" and V > 1:
                m.d.comb += [rp.addr.eq(read.addr), read.data.eq(rp.data)]
                continue
            sel = Signal(lb, name=f"{name}{suffix}_lane")
            m.d.sync += sel.eq(read.addr[:lb])
            m.d.comb += [rp.addr.eq(read.addr[lb:]), read.data.eq(Array(rp.data[j] for j in range(R))[sel])]


class WriteArbiter(wiring.Component):
    """The write ports (one per token memory) of X or A, shared by the vector engine and the matvec epilogue.

    ``one``: one token's element (the vector engine: EMBED into X, HGRN into A); ``row``: every enabled
    token's element of a row (the matvec epilogue). Priority: ``one`` wins the address and the data of every
    token port while ``one.en`` is set (the scoreboard never lets both write at once). ``port[t]`` goes to
    token t's memory."""

    def __init__(self, tokens: int, shape, depth: int):
        self.tokens = tokens
        super().__init__({
            "one": In(one_write(tokens, shape, depth)),
            "row": In(row_write(tokens, shape)),
            "port": In(write_port(shape, depth)).array(tokens),
        })

    def elaborate(self, platform):
        m = Module()
        one, row = self.one, self.row
        for t in range(self.tokens):
            m.d.comb += [self.port[t].en.eq((one.en & (one.t == t)) | row.en[t]),
                         self.port[t].addr.eq(Mux(one.en, one.addr, row.addr)),
                         self.port[t].data.eq(Mux(one.en, one.data, row.data[t]))]
        return m


class HWrite(wiring.Component):
    """The write ports (one per token memory) of H, shared by the vector engine and the load engine.

    ``hgrn[t]``: the vector engine's write of token t's memory (HGRN); ``root`` (:func:`root_write`): LOAD
    HROOT's element into the memory of every token with ``en`` set (the roots of the loaded stream). Priority:
    ``root`` wins the address and the data of every token port while any of its ``en`` is set (the scoreboard
    never lets both write at once); a port writes when either enables it. ``port[t]`` goes to token t's memory."""

    def __init__(self, tokens: int, shape, depth: int):
        self.tokens = tokens
        super().__init__({
            "hgrn": Out(write_port(shape, depth)).array(tokens),
            "root": In(root_write(tokens, shape, depth)),
            "port": In(write_port(shape, depth)).array(tokens),
        })

    def elaborate(self, platform):
        m = Module()
        root, any_root = self.root, self.root.en.any()
        for t in range(self.tokens):
            h = self.hgrn[t]
            m.d.comb += [self.port[t].en.eq(h.en | root.en[t]),
                         self.port[t].addr.eq(Mux(any_root, root.addr, h.addr)),
                         self.port[t].data.eq(Mux(any_root, root.data, h.data))]
        return m


class NormTrack(wiring.Component):
    """A :class:`~mmfree.rtl.quantize.MaxAbs` per token for X and for A, fed by the engines that write them.

    ``x_feed[i]`` / ``a_feed[i]`` (:func:`maxabs_feed`): writer ``i``'s elements (0: the vector engine, 1: the
    matvec epilogue; per token, the lower index wins while its ``valid`` is set; the scoreboard never lets
    both feed at once). ``shx[t]`` / ``sha[t]``: token t's shift of its last finished X / A vector (a
    register); ``x_done`` / ``a_done``: how many tokens' vectors finished this cycle."""

    def __init__(self, tokens: int, feeders: int = 2):
        self.tokens, self.feeders = tokens, feeders
        shift = data.ArrayLayout(signed(Q.U_SHIFT_WIDTH), tokens)
        super().__init__({
            "x_feed": In(maxabs_feed(tokens)).array(feeders), "a_feed": In(maxabs_feed(tokens)).array(feeders),
            "shx": Out(shift), "sha": Out(shift),
            "x_done": Out(range(tokens + 1)), "a_done": Out(range(tokens + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        K = self.tokens
        for name, feeds, shift, done in (("x", self.x_feed, self.shx, self.x_done),
                                         ("a", self.a_feed, self.sha, self.a_done)):
            units = [Q.MaxAbs() for _ in range(K)]
            for t, unit in enumerate(units):
                m.submodules[f"maxabs_{name}{t}"] = unit
                valid, u, last = 0, 0, 0
                for f in reversed(feeds):          # the lower index wins
                    valid = valid | f.valid[t]
                    u, last = Mux(f.valid[t], f.u[t], u), Mux(f.valid[t], f.last[t], last)
                m.d.comb += [unit.i.valid.eq(valid), unit.i.payload.u.eq(u), unit.i.payload.last.eq(last),
                             unit.o.ready.eq(1)]
                with m.If(unit.o.valid):
                    m.d.sync += shift[t].eq(unit.o.payload.shift)
            m.d.comb += done.eq(sum(unit.o.valid for unit in units))
        return m

"""Each datapath engine alone under amaranth.sim (async testbenches), its results compared EXACTLY with the
integer reference (pymodel/numerics.py, the semantics of sim/emulator.py): ``expected`` from the reference,
``produced`` from the simulated engine. The testbench plays the engine's neighbours: the sequencer's dispatch,
the AXI reader / writer (DDR as bytes, random pauses), the vector buffers (synchronous-read memories)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth import Module, signed
from amaranth.lib import wiring
from amaranth.sim import Simulator

from mmfree.pymodel import numerics as N
from mmfree.rtl import isa as I
from mmfree.rtl import regmap as RM
from mmfree.rtl.buffers import HWrite, NormTrack, VectorBuffers
from mmfree.rtl.compiler import HwConfig
from mmfree.rtl.engines import FILL_BUFS, LoadEngine, StoreEngine
from mmfree.rtl.matvec import beats_per_row
from mmfree.rtl.matvec_engine import MatvecEngine
from mmfree.rtl.vector_engine import VectorEngine

HW = HwConfig(bus_bytes=16, max_tokens=2, max_width=64, matvec_engines=2)
#: DDR words: int32 values that fit every buffer's word (N / NW hold N.VEC_BITS-bit signed values).
DDR = np.random.default_rng(11).integers(-(1 << (N.VEC_BITS - 1)), 1 << (N.VEC_BITS - 1), size=2048,
                                         dtype=np.int64).astype("<i4").tobytes()


def _sim(top):
    sim = Simulator(top)
    sim.add_clock(1e-8)
    return sim


def _ram(ports, mem):
    """Synchronous-read memories behind read ports ``ports[t]`` holding ``mem[t]`` (data the cycle after the address)."""
    async def proc(ctx):
        async for _, _, *addrs in ctx.tick().sample(*(p.addr for p in ports)):
            for p, row, a in zip(ports, mem, addrs):
                ctx.set(p.data, int(row[a]) if a < len(row) else 0)
    return proc


def _capture(ports, store):
    """Every write of write ports ``ports[i]`` into ``store[i]`` (a dict address -> value)."""
    async def proc(ctx):
        sigs = [s for p in ports for s in (p.en, p.addr, p.data)]
        async for _, _, *vals in ctx.tick().sample(*sigs):
            for i in range(len(ports)):
                en, addr, value = vals[3 * i: 3 * i + 3]
                if en:
                    store[i][addr] = value
    return proc


async def _dispatch(ctx, dut, addr=0, bpr=0, skip_store=0, **operands):
    """One ``issue`` cycle with the instruction's operands (``op`` names the instruction view)."""
    view = getattr(dut.dispatch.ir, operands.pop("op"))
    for name, value in operands.items():
        ctx.set(getattr(view, name), value)
    ctx.set(dut.dispatch.addr, addr)
    ctx.set(dut.dispatch.bpr, bpr)
    ctx.set(dut.dispatch.skip_store, skip_store)
    ctx.set(dut.issue, 1)
    await ctx.tick()
    ctx.set(dut.issue, 0)


def _reader(cmd, beat, rng, stall=0.3, strided=False):
    """An AXI reader client: each command's beats from DDR (strided: ``rows`` rows ``stride`` bytes apart)."""
    bb = len(beat.payload) // 8

    async def proc(ctx):
        ctx.set(cmd.ready, 1)
        while True:
            _, _, valid, addr, beats, *rs = await ctx.tick().sample(
                cmd.valid, cmd.payload.addr, cmd.payload.beats,
                *((cmd.payload.rows, cmd.payload.stride) if strided else ()))
            if not valid:
                continue
            ctx.set(cmd.ready, 0)
            rows, stride = rs if strided else (1, 0)
            for r in range(rows):
                for b in range(beats):
                    a = addr + r * stride + b * bb
                    while rng.random() < stall:
                        ctx.set(beat.valid, 0)
                        await ctx.tick()
                    ctx.set(beat.valid, 1)
                    ctx.set(beat.payload, int.from_bytes(WEIGHTS.get(a, DDR[a % len(DDR):][:bb]).ljust(bb, b"\0"),
                                                         "little"))
                    await ctx.tick().until(beat.ready)
            ctx.set(beat.valid, 0)
            ctx.set(cmd.ready, 1)
    return proc


WEIGHTS: dict[int, bytes] = {}      # address -> bus beat, for the weight reader (DDR elsewhere)


async def _wait_done(ctx, dut, limit=5000):
    for _ in range(limit):
        _, _, done = await ctx.tick().sample(dut.done)
        if done:
            return
    raise AssertionError("the engine never pulsed done")


# ---- load ------------------------------------------------------------------------------------------------
LOADS = [(I.LD_NORM, 4, 37, 0x44), (I.LD_H0, 1, 20, 0x208), (I.LD_LB, 1, 64, 0x30C), (I.LD_NORM, 2, 5, 0x10)]


@pytest.mark.parametrize("seed", [0, 1])
def test_load_engine_matches_reference(seed):
    """LOAD of every destination (records of 1..4 words, unaligned addresses): the buffers written and the fill
    counters equal the DDR words the emulator's LOAD copies."""
    dut = LoadEngine(HW, addr_width=32)
    sim = _sim(dut)
    ports = [dut.h0, dut.lb, dut.n, *dut.nw]
    produced = [dict() for _ in ports]
    sim.add_testbench(_reader(dut.dma_cmd, dut.dma_data, random.Random(seed)), background=True)
    sim.add_testbench(_capture(ports, produced), background=True)
    fills = []

    async def bench(ctx):
        for dst, fields, count, addr in LOADS:
            await _dispatch(ctx, dut, addr=addr, op="load", dst=dst, fields=fields, count=count)
            await _wait_done(ctx, dut)
            fills.append([ctx.get(dut.filled[i]) for i in range(len(FILL_BUFS))] + [ctx.get(dut.loading)])

    sim.add_testbench(bench)
    sim.run()
    expected = [dict() for _ in ports]
    expected_fills = []
    fill = [0] * len(FILL_BUFS)
    for dst, fields, count, addr in LOADS:
        rec = np.frombuffer(DDR[addr: addr + 4 * count * fields], dtype="<i4").reshape(count, fields)
        targets = {I.LD_H0: [I.BUF_H0], I.LD_LB: [I.BUF_LB]}.get(dst, [I.BUF_N] + [I.BUF_NW0 + p for p in range(fields - 1)])
        for c, b in enumerate(targets):
            i = FILL_BUFS.index(b)
            expected[i].update({j: int(v) & 0xFFFFFFFF for j, v in enumerate(rec[:, c])})
            fill[i] = count
        expected_fills.append(fill + [0])
    produced = [{a: v & 0xFFFFFFFF for a, v in p.items()} for p in produced]
    assert produced == expected
    assert fills == expected_fills


#: (parents of the pass, LOAD HROOT (stream, count, addr) in order): roots of streams 1 and 2 among tree tokens
HROOT_CASES = [([-2, 0, -3, -2], [(1, 20, 0x40), (2, 33, 0x104), (1, 7, 0x8)]),
               ([-1, -2, 1, -5], [(3, 12, 0x0), (4, 64, 0x20C), (1, 5, 0x70)])]


@pytest.mark.parametrize("case", range(len(HROOT_CASES)))
def test_load_engine_hroot_writes_only_the_streams_roots(case):
    """LOAD HROOT of stream s: the loaded words go into the H of every token whose parent is ``-1 - s`` and of
    no other token (a stream without roots writes nothing); no fill counter moves."""
    hw = HwConfig(bus_bytes=16, max_tokens=4, max_width=64, matvec_engines=2)
    parents, loads = HROOT_CASES[case]
    K = hw.max_tokens
    dut = LoadEngine(hw, addr_width=32)
    sim = _sim(dut)
    produced = [dict() for _ in range(K)]
    sim.add_testbench(_reader(dut.dma_cmd, dut.dma_data, random.Random(case)), background=True)

    async def capture(ctx):
        hr = dut.h_root
        async for _, _, en, addr, value in ctx.tick().sample(hr.en, hr.addr, hr.data):
            for t in range(K):
                if en >> t & 1:
                    produced[t][addr] = value
    sim.add_testbench(capture, background=True)
    fills = []

    async def bench(ctx):
        for t in range(K):
            ctx.set(dut.parents[t], parents[t])
        for stream, count, addr in loads:
            await _dispatch(ctx, dut, addr=addr, op="load", dst=I.LD_HROOT, fields=1, stream=stream, count=count)
            await _wait_done(ctx, dut)
            fills.append([ctx.get(dut.filled[i]) for i in range(len(FILL_BUFS))] + [ctx.get(dut.loading)])

    sim.add_testbench(bench)
    sim.run()
    expected = [dict() for _ in range(K)]                # the emulator's LOAD HROOT, load after load
    for stream, count, addr in loads:
        words = np.frombuffer(DDR[addr: addr + 4 * count], dtype="<i4")
        for t in range(K):
            if parents[t] == -1 - stream:
                expected[t].update({j: int(v) for j, v in enumerate(words)})
    assert produced == expected
    assert any(expected) and not all(expected)
    assert fills == [[0] * (len(FILL_BUFS) + 1)] * len(loads)


def test_h_write_merges_hroot_and_hgrn_with_hroot_first():
    """HWrite: each token port writes when HGRN's port or HROOT's enable for that token is set; while any HROOT
    enable is set every port takes HROOT's address and word (main's datapath order), otherwise HGRN's."""
    K = 3
    dut = HWrite(K, signed(32), 64)
    sim = Simulator(dut)                          # combinational: no clock
    rng = random.Random(5)
    seen = []

    async def bench(ctx):
        for _ in range(60):
            hg = [(rng.random() < 0.5, rng.randrange(64), rng.randrange(-(1 << 31), 1 << 31)) for _ in range(K)]
            root = (rng.randrange(1 << K) if rng.random() < 0.5 else 0, rng.randrange(64),
                    rng.randrange(-(1 << 31), 1 << 31))
            for t, (en, addr, value) in enumerate(hg):
                ctx.set(dut.hgrn[t].en, en)
                ctx.set(dut.hgrn[t].addr, addr)
                ctx.set(dut.hgrn[t].data, value)
            ctx.set(dut.root.en, root[0])
            ctx.set(dut.root.addr, root[1])
            ctx.set(dut.root.data, root[2])
            await ctx.delay(1e-9)
            got = [(ctx.get(dut.port[t].en), ctx.get(dut.port[t].addr), ctx.get(dut.port[t].data)) for t in range(K)]
            want = [(int(hg[t][0] or bool(root[0] >> t & 1)),) + (root[1:] if root[0] else hg[t][1:]) for t in range(K)]
            seen.append(got == want)
            await ctx.delay(1e-8)

    sim.add_testbench(bench)
    sim.run()
    assert all(seen) and len(seen) == 60


# ---- store -----------------------------------------------------------------------------------------------
def _writer(dut, mem, rng, stall=0.3):
    """An AXI writer: each command's beats with byte strobes into ``mem`` (a bytearray); always quiet after."""
    bb = HW.bus_bytes

    async def proc(ctx):
        ctx.set(dut.wr_quiet, 1)
        ctx.set(dut.st_cmd.ready, 1)
        while True:
            _, _, valid, addr, beats = await ctx.tick().sample(dut.st_cmd.valid, dut.st_cmd.payload.addr,
                                                               dut.st_cmd.payload.beats)
            if not valid:
                continue
            ctx.set(dut.st_cmd.ready, 0)
            ctx.set(dut.wr_quiet, 0)
            for b in range(beats):
                r = rng.random() >= stall
                ctx.set(dut.st_data.ready, r)
                while True:
                    _, _, v, data, strb = await ctx.tick().sample(dut.st_data.valid, dut.st_data.payload.data,
                                                                  dut.st_data.payload.strb)
                    if v and r:
                        break
                    r = rng.random() >= stall
                    ctx.set(dut.st_data.ready, r)
                raw = data.to_bytes(bb, "little")
                for i in range(bb):
                    if strb >> i & 1:
                        mem[addr + b * bb + i] = raw[i]
            ctx.set(dut.st_data.ready, 0)
            ctx.set(dut.st_cmd.ready, 1)
            ctx.set(dut.wr_quiet, 1)
    return proc


STORES = [(I.ST_T0, 13, 0x104, 0x80), (I.ST_H, 64, 0x408, 0x100), (I.ST_T1, 1, 0x60C, 0x10), (I.ST_ARG, 1, 0x700, 4)]


@pytest.mark.parametrize("k", [1, 2])
def test_store_engine_matches_reference(k):
    """STORE of H, T0, T1 and the argmax for k tokens at unaligned addresses: DDR afterwards equals the emulator's
    STORE (token t's words at addr + t * tstride), nothing else written; a skipped STORE writes nothing."""
    dut = StoreEngine(HW, addr_width=32)
    sim = _sim(dut)
    rng = np.random.default_rng(k)
    bufs = {b: rng.integers(-(1 << 31), 1 << 31, size=(HW.max_tokens, HW.max_width)) for b in ("h", "t0", "t1")}
    args = [int(a) for a in rng.integers(0, 1 << 24, size=HW.max_tokens)]
    produced = bytearray(4096)
    for b, mem in bufs.items():
        sim.add_testbench(_ram(getattr(dut, b), mem), background=True)
    sim.add_testbench(_writer(dut, produced, random.Random(k)), background=True)

    async def bench(ctx):
        ctx.set(dut.k, k)
        for t, a in enumerate(args):
            ctx.set(dut.args[t], a)
        for src, count, addr, tstride in STORES:
            await _dispatch(ctx, dut, addr=addr, op="store", src=src, count=count, tstride=tstride)
            await _wait_done(ctx, dut)
        await _dispatch(ctx, dut, addr=0x800, skip_store=1, op="store", src=I.ST_T0, count=4, tstride=16)
        await _wait_done(ctx, dut, limit=3)

    sim.add_testbench(bench)
    sim.run()
    expected = bytearray(4096)
    for src, count, addr, tstride in STORES:
        for t in range(k):
            if src == I.ST_ARG:
                data = np.array([args[t]], dtype="<u4").tobytes()
            else:
                b = {I.ST_H: "h", I.ST_T0: "t0", I.ST_T1: "t1"}[src]
                data = bufs[b][t, :count].astype("<i4").tobytes()
            expected[addr + t * tstride: addr + t * tstride + len(data)] = data
    assert produced == expected


# ---- matvec ----------------------------------------------------------------------------------------------
def _matvec_top(hw):
    """The engine with a NormTrack behind its MaxAbs feeds (their completion counts gate RESID / GLU)."""
    m = Module()
    m.submodules.dut = dut = MatvecEngine(hw, addr_width=32, weight_fifo_beats=64)
    m.submodules.norm = norm = NormTrack(hw.max_tokens)
    wiring.connect(m, dut.x_feed, norm.x_feed[1])
    wiring.connect(m, dut.a_feed, norm.a_feed[1])
    m.d.comb += [dut.x_done.eq(norm.x_done), dut.a_done.eq(norm.a_done)]
    return m, dut, norm


@pytest.mark.parametrize("ports,rows", [(1, 23), (2, 23), (6, 23), (6, 5)])
@pytest.mark.parametrize("k", [1, 2])
def test_matvec_engine_matches_reference(ports, rows, k):
    """MATVEC with every epilogue on random ternary weights (rows not a multiple of the ways; six ports: 23 rows,
    not a multiple of 6 or of the 12 ways, and 5 rows, fewer than the ports): T0-2 (STORE, HEAD), X rows (RESID:
    saturate(X + y)), A rows (GLU: silu(T0) * y), the argmax and the X / A shifts equal the reference; tokens >= k
    write nothing."""
    hw = HwConfig(bus_bytes=16, max_tokens=2, max_width=64, matvec_engines=2, weight_ports=ports)
    top, dut, norm = _matvec_top(hw)
    sim = _sim(top)
    rng = np.random.default_rng(ports * 10 + k + rows)
    K, cols, frac = hw.max_tokens, 50, 12
    codes = rng.integers(-N.CODE_MAX, N.CODE_MAX + 1, size=(K, cols))
    W = rng.integers(-1, 2, size=(rows, cols))
    M = rng.integers(1 << 20, 1 << 23, size=K)
    S = rng.integers(10, 20, size=K)
    X = rng.integers(-(1 << 20), 1 << 20, size=(K, hw.max_width))
    T0 = rng.integers(-(1 << 14), 1 << 14, size=(K, hw.max_width))
    bpr = beats_per_row(cols, hw.lanes)
    base = 0x1000
    packed = N.pack_ternary(W)
    WEIGHTS.clear()
    for r in range(rows):
        for b in range(bpr):
            WEIGHTS[base + (r * bpr + b) * hw.bus_bytes] = bytes(packed[r, b * hw.bus_bytes:(b + 1) * hw.bus_bytes])
    for p in range(ports):
        sim.add_testbench(_reader(dut.w_cmd[p], dut.w_data[p], random.Random(p), stall=0.2, strided=True),
                          background=True)
    sim.add_testbench(_ram(dut.x, X), background=True)
    sim.add_testbench(_ram(dut.t0, T0), background=True)
    t_writes = [dict() for _ in range(3 * K)]
    sim.add_testbench(_capture([dut.t_w[i][t] for i in range(3) for t in range(K)], t_writes), background=True)
    rows_out = {"x": [dict() for _ in range(K)], "a": [dict() for _ in range(K)]}

    async def row_capture(ctx):
        sigs = [dut.x_row.en, dut.x_row.addr, dut.a_row.en, dut.a_row.addr] + \
               [s for t in range(K) for s in (dut.x_row.data[t], dut.a_row.data[t])]
        async for _, _, xen, xaddr, aen, aaddr, *vals in ctx.tick().sample(*sigs):
            for t in range(K):
                if xen >> t & 1:
                    rows_out["x"][t][xaddr] = vals[2 * t]
                if aen >> t & 1:
                    rows_out["a"][t][aaddr] = vals[2 * t + 1]

    sim.add_testbench(row_capture, background=True)
    epilogues = [(I.EPI_STORE, 0, 1), (I.EPI_RESID, 0, 0), (I.EPI_GLU, 0, 0),
                 (I.EPI_HEAD, I.HEAD_FIRST | I.HEAD_LAST, 2)]
    produced = {}

    async def bench(ctx):
        ctx.set(dut.k, k)
        ctx.set(dut.act_frac, frac)
        for t in range(K):
            ctx.set(dut.M[1][t], int(M[t]))
            ctx.set(dut.S[1][t], int(S[t]))
        for j in range(cols):                     # the codes of every token, a column per cycle, into bank 2
            for t in range(K):
                ctx.set(dut.act.payload.code[t], int(codes[t, j]))
            ctx.set(dut.act.payload.en, (1 << k) - 1)
            ctx.set(dut.act.payload.bank, 2)
            ctx.set(dut.act.payload.first, j == 0)
            ctx.set(dut.act.valid, 1)
            await ctx.tick()
        ctx.set(dut.act.valid, 0)
        for epi, flags, dst in epilogues:
            ctx.set(dut.fetch.payload.addr, base)
            ctx.set(dut.fetch.payload.rows, rows)
            ctx.set(dut.fetch.payload.bpr, bpr)
            ctx.set(dut.fetch.valid, 1)
            await ctx.tick().until(dut.fetch.ready)
            ctx.set(dut.fetch.valid, 0)
            await _dispatch(ctx, dut, bpr=bpr, op="matvec", rows=rows, bank=2, slot=1, epi=epi, flags=flags, dst=dst)
            await _wait_done(ctx, dut)
        produced["args"] = [ctx.get(dut.args[t]) for t in range(k)]
        produced["shx"] = [ctx.get(norm.shx[t]) for t in range(k)]
        produced["sha"] = [ctx.get(norm.sha[t]) for t in range(k)]

    sim.add_testbench(bench)
    sim.run()
    y = N.dequantize(codes[:k].astype(np.int64) @ W.T.astype(np.int64), M[:k, None], S[:k, None])
    x_new = N.saturate(X[:k, :rows] + y)
    a_new = N.mul_act(N.silu(T0[:k, :rows], frac), y)
    expected = {"t1": [dict(enumerate(map(int, y[t]))) for t in range(k)],
                "t2": [dict(enumerate(map(int, y[t]))) for t in range(k)],
                "x": [dict(enumerate(map(int, x_new[t]))) for t in range(k)],
                "a": [dict(enumerate(map(int, a_new[t]))) for t in range(k)],
                "args": [int(N.argmax(y[t])) for t in range(k)],
                "shx": [int(np.asarray(N.normalize_input(x_new[t])[1]).reshape(-1)[0]) for t in range(k)],
                "sha": [int(np.asarray(N.normalize_input(a_new[t])[1]).reshape(-1)[0]) for t in range(k)]}
    produced.update({"t1": t_writes[K: K + k], "t2": t_writes[2 * K: 2 * K + k],
                     "x": rows_out["x"][:k], "a": rows_out["a"][:k]})
    assert produced == expected
    assert t_writes[:K] == [{}] * K and all(w == {} for w in t_writes[K + k: 2 * K] + t_writes[2 * K + k:])
    assert all(rows_out[b][t] == {} for b in "xa" for t in range(k, K))


# ---- vector ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("V", [1, 2, 4])
def test_vector_buffers_banked_by_lanes_read_back_what_was_written(V):
    """VectorBuffers with V lanes: elements written one at a time (X of each token, N) read back through the
    vector engine's port as groups of V (group a: elements V a .. V a + V - 1) and through the matvec engine's
    and the store engine's ports one element at a time, each word where it was written."""
    hw = HwConfig(bus_bytes=16, max_tokens=2, max_width=64, vector_lanes=V)
    dut = VectorBuffers(hw)
    sim = _sim(dut)
    rng = np.random.default_rng(V)
    K, W = hw.max_tokens, hw.max_width
    x = rng.integers(-(1 << 31), 1 << 31, size=(K, W))
    n = rng.integers(-(1 << (N.VEC_BITS - 1)), 1 << (N.VEC_BITS - 1), size=W)
    got = {"xv": [[None] * W for _ in range(K)], "xm": [[None] * W for _ in range(K)], "n": [None] * W}

    def vec(port, j):
        return port.data if V == 1 else port.data[j]

    async def bench(ctx):
        for i in rng.permutation(W):
            for t in range(K):
                ctx.set(dut.x_w[t].en, 1)
                ctx.set(dut.x_w[t].addr, int(i))
                ctx.set(dut.x_w[t].data, int(x[t, i]))
            ctx.set(dut.n_w.en, 1)
            ctx.set(dut.n_w.addr, int(i))
            ctx.set(dut.n_w.data, int(n[i]))
            await ctx.tick()
        for t in range(K):
            ctx.set(dut.x_w[t].en, 0)
        ctx.set(dut.n_w.en, 0)
        for i in range(W):
            a = int(rng.integers(0, W))              # the element ports in any order, the groups in turn
            for t in range(K):
                ctx.set(dut.x_matvec[t].addr, a)
                ctx.set(dut.x_vector[t].addr, i // V)
            ctx.set(dut.n_r.addr, i // V)
            await ctx.tick()
            for t in range(K):
                got["xm"][t][a] = ctx.get(dut.x_matvec[t].data)
                got["xv"][t][i] = ctx.get(vec(dut.x_vector[t], i % V))
            got["n"][i] = ctx.get(vec(dut.n_r, i % V))

    sim.add_testbench(bench)
    sim.run()
    assert got["xv"] == x.tolist() and got["n"] == n.tolist()
    assert all(v is None or v == x[t, i] for t in range(K) for i, v in enumerate(got["xm"][t]))
    assert sum(v is not None for v in got["xm"][0]) > W // 2


def _vector_top(hw):
    """The engine with a NormTrack behind its MaxAbs feeds (the shifts QSTATS / QCODES read)."""
    m = Module()
    m.submodules.dut = dut = VectorEngine(hw, addr_width=32)
    m.submodules.norm = norm = NormTrack(hw.max_tokens)
    wiring.connect(m, dut.x_feed, norm.x_feed[0])
    wiring.connect(m, dut.a_feed, norm.a_feed[0])
    m.d.comb += [dut.x_done.eq(norm.x_done), dut.a_done.eq(norm.a_done), dut.shx.eq(norm.shx),
                 dut.sha.eq(norm.sha)]
    return m, dut, norm


def _buffers(dut, bufs, V=1):
    """The vector buffers as Python arrays behind the engine's ports: synchronous reads (the old word when the
    same word is written in that cycle; with V lanes a read of group a returns elements V a .. V a + V - 1),
    writes of H (``h_w``) and of X / A (``x_one`` / ``a_one``)."""
    K = len(bufs["x"])
    reads = [(b, t, p) for b in ("x", "a", "h", "t0", "t1", "t2") for t, p in enumerate(getattr(dut, b))]
    reads += [(b, None, getattr(dut, b)) for b in ("h0", "lb", "n")] + [(f"nw{i}", None, p) for i, p in enumerate(dut.nw)]
    writes = [("h", t, p.en, p.addr, p.data) for t, p in enumerate(dut.h_w)]
    writes += [(b, one.t, one.en, one.addr, one.data) for b, one in (("x", dut.x_one), ("a", dut.a_one))]
    sigs = [p.addr for _, _, p in reads] + [s for w in writes for s in w[1:] if not isinstance(s, int)]

    async def proc(ctx):
        async for _, _, *vals in ctx.tick().sample(*sigs):
            addrs, rest = vals[:len(reads)], vals[len(reads):]
            for (b, t, p), a in zip(reads, addrs):
                row = bufs[b][t] if t is not None else bufs[b]
                if V == 1:
                    ctx.set(p.data, int(row[a]))
                for j in range(V if V > 1 else 0):
                    ctx.set(p.data[j], int(row[V * a + j]))
            for b, t, *_ in writes:
                if isinstance(t, int):
                    en, addr, value, rest = *rest[:3], rest[3:]
                else:
                    t, en, addr, value, rest = *rest[:4], rest[4:]
                if en and t < K:
                    bufs[b][t][addr] = value
    return proc


def _vector_reference(hw, k, tokens, parents, frac, consts, emb, bufs, n):
    """The emulator's EMBED, QSTATS (3 slots), QCODES (slot 1) and HGRN on the same buffers, with numerics."""
    stride = 16 * -(-n // 4)           # EMBED's row stride: 16-byte units
    X = np.stack([np.frombuffer(DDR[emb + stride * tok:][:4 * n], dtype="<i4").astype(np.int64) for tok in tokens])
    shx = [int(np.asarray(N.normalize_input(X[t])[1]).reshape(-1)[0]) for t in range(k)]
    nvec = bufs["n"][:n]
    P, SZ, codes, M, S = {}, {}, [], [], []
    for t in range(k):
        up = N.shift_round(X[t], shx[t])
        _, sz = N.sum_squares(up * nvec)
        for p in range(I.SLOTS):
            P[p, t], SZ[p, t] = int(np.max(np.abs(up * bufs[f"nw{p}"][:n]))), int(np.asarray(sz).reshape(-1)[0])
        codes.append(N.codes_from(up * bufs["nw1"][:n], np.int64(P[1, t])))
        zs = N.rshift_round(up * nvec, SZ[1, t])
        m_, s_ = N.output_multiplier(np.int64(P[1, t]), np.int64(np.sum(zs * zs)), np.int64(SZ[1, t]), *consts[1])
        M.append(int(m_))
        S.append(int(s_))
    H, A = np.zeros((k, n), dtype=np.int64), np.zeros((k, n), dtype=np.int64)
    for t in range(k):
        # a root of stream 0 (-1) starts from H0, a root of stream s >= 1 (-1 - s) from its own H (LOAD HROOT's)
        prev = bufs["h0"][:n] if parents[t] == -1 else bufs["h"][t, :n] if parents[t] < -1 else H[parents[t]]
        rate = N.forget_rate(bufs["t1"][t, :n], bufs["lb"][:n], frac)
        H[t] = N.hgrn_update(prev, N.silu(bufs["t0"][t, :n], frac), rate)
        A[t] = N.mul_act(bufs["t2"][t, :n], N.silu(H[t], frac))
    return {"x": X.tolist(), "codes": np.array(codes).T.tolist(), "M": M, "S": S, "h": H.tolist(), "a": A.tolist(),
            "sha": [int(np.asarray(N.normalize_input(A[t])[1]).reshape(-1)[0]) for t in range(k)],
            "error": RM.ERR_TOKEN_RANGE | (k - 1) << 8}


@pytest.mark.parametrize("k, parents, V", [(1, [-1], 1), (2, [-1, 0], 1), (2, [-3, 0], 1), (2, [-1, -2], 1),
                                           (1, [-1], 2), (2, [-1, 0], 2), (2, [-3, 0], 4), (2, [-1, 0], 4),
                                           (2, [-1, -2], 8)])
def test_vector_engine_matches_reference(k, parents, V):
    """EMBED, QSTATS, QCODES and HGRN (a tree: token 1's parent state is token 0's; multi-stream: a root of
    stream s >= 1, parent ``-1 - s``, starts from its own H as LOAD HROOT left it, a root of stream 0 from H0)
    in sequence: X, the codes streamed into the ternary engine, (M, shift), H and A equal the reference; an
    EMBED of a token >= vocab reports ERR_TOKEN_RANGE with the token's index. With V vector lanes (QSTATS /
    QCODES on V elements per cycle, a partial last group: n = 42 is no multiple of 4 or 8) the same, and the
    codes come V columns per transfer, the ones past n zero."""
    hw = HwConfig(bus_bytes=16, max_tokens=2, max_width=64, matvec_engines=2, vector_lanes=V)
    top, dut, norm = _vector_top(hw)
    sim = _sim(top)
    rng = np.random.default_rng(20 + k)
    K, W, n, frac, emb = hw.max_tokens, hw.max_width, 40 if V == 1 else 42, 12, 0x100
    tokens = [5, 2][:k]
    consts = [(int(rng.integers(1 << 23, 1 << 24)), int(rng.integers(-4, 5))) for _ in range(I.SLOTS)]
    act = lambda *s: rng.integers(-(1 << 14), 1 << 14, size=s)      # noqa: E731  (Q12 activations)
    bufs = {"x": np.zeros((K, W), dtype=np.int64), "a": np.zeros((K, W), dtype=np.int64),
            "h": act(K, W), "t0": act(K, W), "t1": act(K, W), "t2": act(K, W),
            "h0": act(W), "lb": rng.integers(1 << 28, 1 << 31, size=W),
            **{b: rng.integers(-(1 << 20), 1 << 20, size=W) for b in ("n", "nw0", "nw1", "nw2")}}
    expected = _vector_reference(hw, k, tokens, parents, frac, consts, emb, {b: v.copy() for b, v in bufs.items()}, n)
    sim.add_testbench(_buffers(dut, bufs, V), background=True)
    sim.add_testbench(_reader(dut.dma_cmd, dut.dma_data, random.Random(k)), background=True)
    codes = []
    code = [dut.codes.payload.code[t] if V == 1 else dut.codes.payload.code[t][j] for j in range(V) for t in range(k)]

    async def code_capture(ctx):
        async for _, _, valid, *c in ctx.tick().sample(dut.codes.valid, *code):
            if valid:
                codes.extend(c[j * k: (j + 1) * k] for j in range(V))

    sim.add_testbench(code_capture, background=True)
    produced = {}

    async def bench(ctx):
        ctx.set(dut.k, k)
        ctx.set(dut.act_frac, frac)
        for t in range(k):
            ctx.set(dut.tokens[t], tokens[t])
            ctx.set(dut.parents[t], parents[t])
        for p, (c_m, c_e) in enumerate(consts):
            ctx.set(dut.c_m[p], c_m)
            ctx.set(dut.c_e[p], c_e)
        for i in range(len(FILL_BUFS)):
            ctx.set(dut.filled[i], W)
        for op, kw in (("embed", dict(count=n, vocab=8, stride16=-(-n // 4))), ("qstats", dict(src=I.SRC_X, nproj=3, count=n)),
                       ("qcodes", dict(src=I.SRC_X, slot=1, bank=2, count=n)), ("hgrn", dict(count=n))):
            ctx.set(dut.dispatch.op, I.OPCODE[op.upper()])
            await _dispatch(ctx, dut, addr=emb, op=op, **kw)
            await _wait_done(ctx, dut)
        produced["M"] = [ctx.get(dut.M[1][t]) for t in range(k)]
        produced["S"] = [ctx.get(dut.S[1][t]) for t in range(k)]
        produced["sha"] = [ctx.get(norm.sha[t]) for t in range(k)]
        ctx.set(dut.tokens[k - 1], 8)
        ctx.set(dut.dispatch.op, I.OPCODE["EMBED"])
        await _dispatch(ctx, dut, addr=emb, op="embed", count=n, vocab=8, stride16=-(-n // 4))
        await ctx.tick().repeat(200)
        produced["error"] = ctx.get(dut.error_code) if ctx.get(dut.error) else None

    sim.add_testbench(bench)
    sim.run()
    produced.update({b: [list(map(int, bufs[b][t, :n])) for t in range(k)] for b in ("x", "h", "a")})
    produced["codes"], past = codes[:n], codes[n:]
    assert produced == expected
    assert len(past) == -n % V and all(c == [0] * k for c in past)

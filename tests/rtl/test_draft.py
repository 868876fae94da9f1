"""The RTL trigram draft engine (mmfree.rtl.draft) against the reference drafter (mmfree.pymodel.trigram).

In amaranth.sim the engine under test is the real RTL; the testbench owns the DDR line store (a numpy
copy of the trigram array) and serves the engine's line port, and keeps a reference
:class:`TrigramTable` in lock step. Every step drafts a tree for the current context (tokens and parents
compared exactly with :func:`draft_tree`), then feeds the next token of a token stream as an update; at
checkpoints the DDR lines and the on-chip bigram memory must equal the reference table's arrays.
Token streams: stdlib Python files tokenized with the default model's tokenizer.
"""

from __future__ import annotations

import inspect
import random
import shlex
import textwrap
from dataclasses import dataclass, field

import numpy as np
import pytest
from amaranth import Module, Signal
from amaranth.back import verilog
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmfree.pymodel import trigram as T
from mmfree.rtl.draft import DRAFT, G_CHILDREN, G_FRONTIER, G_RECIP_BITS, UPDATE, DraftEngine


# ---- token streams ----------------------------------------------------------------------------------------
def _tokens(module, vocab: int) -> np.ndarray:
    """A stdlib module's source, tokenized with the default model's tokenizer; ids folded into ``vocab``."""
    from mmfree.pymodel.tokenizer import load_tokenizer

    tok = load_tokenizer("default")
    ids = np.asarray(tok.encode(open(inspect.getsourcefile(module)).read()), dtype=np.int64)
    return ids % vocab


# ---- the simulation -----------------------------------------------------------------------------------------
@dataclass
class Run:
    steps: int = 0
    draft_nodes: int = 0
    draft_cycles: list = field(default_factory=list)       # cmd handshake .. last node handshake, inclusive
    update_cycles: list = field(default_factory=list)      # cmd handshake .. next cmd handshake
    checkpoints: int = 0
    reads: int = 0
    writes: int = 0


def _line_int(words: np.ndarray) -> int:
    return int.from_bytes(words.astype("<u4").tobytes(), "little")


def _int_words(value: int, n: int) -> np.ndarray:
    return np.frombuffer(int(value).to_bytes(4 * n, "little"), dtype="<u4").astype(np.uint32)


def run_engine(table: T.TrigramTable, stream: np.ndarray, steps: int, template, *, stall: float = 0.0,
               latency: int = 0, seed: int = 0, check_every: int = 100, load_bigram: bool = True,
               guided: bool = False, dut: DraftEngine | None = None) -> Run:
    """Draft + update for ``steps`` tokens of ``stream`` on the RTL engine and on ``table`` (mutated: it is
    the reference that the engine must track). ``guided``: the drafts use the count-guided rule (budget
    ``len(template)`` nodes) instead of the template. Asserts exact equality; returns the measurements."""
    p = table.params
    V = table.vocab_size
    ref = table
    if dut is None:
        dut = DraftEngine(V, p, template, bigram_init=None if load_bigram else ref.bigram)
    top = Module()
    top.submodules.dut = dut
    cyc = Signal(64)
    top.d.sync += cyc.eq(cyc + 1)
    LW = dut.LINE_WORDS
    ddr = ref.trig.reshape(-1, LW).copy()                   # the DDR model: line index -> 1 + K words
    run = Run()
    rng = random.Random(seed)

    def gap():
        n = 0
        while stall and rng.random() < stall:
            n += 1
        return n

    async def handshake(ctx, port):
        """Take one element of ``port`` (out of the engine): its payload, at the handshake edge."""
        g = gap()
        if g:
            ctx.set(port.ready, 0)
            for _ in range(g):  # (tick().repeat: a bench that ends suspended warns)
                await ctx.tick()
        ctx.set(port.ready, 1)
        while not ctx.get(port.valid):          # sleep until the engine offers something
            await ctx.changed(port.valid)
        value = ctx.get(port.payload)           # stable until the edge that takes it
        await ctx.tick()
        ctx.set(port.ready, 0)
        return value

    async def ddr_read(ctx):
        while True:
            req = await handshake(ctx, dut.rd_req)
            run.reads += 1
            addr, count = req.addr, req.count
            assert count == p.ways and addr % p.ways == 0, (addr, count)
            lines = [_line_int(ddr[addr + k]) for k in range(count)]
            if latency:
                for _ in range(latency):  # (tick().repeat: a bench that ends suspended warns)
                    await ctx.tick()
            for ln in lines:
                g = gap()
                if g:
                    ctx.set(dut.rd_resp.valid, 0)
                    for _ in range(g):  # (tick().repeat: a bench that ends suspended warns)
                        await ctx.tick()
                ctx.set(dut.rd_resp.payload, ln)
                ctx.set(dut.rd_resp.valid, 1)
                while True:
                    ready = ctx.get(dut.rd_resp.ready)
                    await ctx.tick()
                    if ready:
                        break
            ctx.set(dut.rd_resp.valid, 0)

    async def ddr_write(ctx):
        while True:
            w = await handshake(ctx, dut.wr)
            run.writes += 1
            ddr[w.addr] = _int_words(w.data, LW)

    async def send(ctx, port, **fields):
        g = gap()
        if g:
            for _ in range(g):  # (tick().repeat: a bench that ends suspended warns)
                await ctx.tick()
        for k, v in fields.items():
            ctx.set(getattr(port.payload, k), v)
        ctx.set(port.valid, 1)
        await ctx.tick().until(port.ready)
        ctx.set(port.valid, 0)
        return ctx.get(cyc)

    def check_state(ctx, where):
        np.testing.assert_array_equal(ddr, ref.trig.reshape(-1, LW), err_msg=f"DDR lines differ {where}")
        KB = p.bigram_slots
        big = np.array([_int_words(ctx.get(dut.bigram_data[r]), KB) for r in range(V)], dtype=np.uint32)
        np.testing.assert_array_equal(big, ref.bigram, err_msg=f"bigram memory differs {where}")
        run.checkpoints += 1

    async def main(ctx):
        if load_bigram:
            for r in range(V):
                await send(ctx, dut.bigram_wr, row=r, data=_line_int(ref.bigram[r]))
        await ctx.tick().until(~dut.busy)
        check_state(ctx, "after loading")
        last_update = None
        for t in range(steps):
            prev = int(stream[t - 1]) if t > 0 else None
            root, nxt = int(stream[t]), int(stream[t + 1])
            if guided:
                want_tok, want_par = T.draft_tree_guided(ref, prev, root, len(template))
            else:
                want_tok, want_par = T.draft_tree(ref, prev, root, template)
            hs = await send(ctx, dut.cmd, op=DRAFT, a=prev or 0, b=root, c=0, has_prev=prev is not None,
                            rule=int(guided))
            if last_update is not None:
                run.update_cycles.append(hs - last_update)
            got_tok, got_par = [], []
            while True:
                node = await handshake(ctx, dut.draft)
                got_tok.append(node.token)
                got_par.append(node.parent)
                if node.last:
                    break
                assert len(got_tok) <= len(template) + 1
            run.draft_cycles.append(ctx.get(cyc) - hs + 1)
            np.testing.assert_array_equal(got_tok, want_tok, err_msg=f"draft tokens differ at step {t}")
            np.testing.assert_array_equal(got_par, want_par, err_msg=f"draft parents differ at step {t}")
            run.draft_nodes += len(got_tok)
            last_update = await send(ctx, dut.cmd, op=UPDATE, a=prev or 0, b=root, c=nxt, has_prev=prev is not None)
            ref.update(prev, root, nxt)
            run.steps += 1
            if (t + 1) % check_every == 0 or t == steps - 1:
                await ctx.tick().until(~dut.busy)
                check_state(ctx, f"after step {t}")

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(ddr_read, background=True)
    sim.add_testbench(ddr_write, background=True)
    sim.add_testbench(main)
    sim.run()
    assert run.steps == steps
    return run


# ---- configurations -------------------------------------------------------------------------------------------
SMALL_V = 512
#: few sets so that contexts are evicted all the time; the default counter rules (saturation after 4 bumps)
SMALL = T.TableParams(sets_log2=4, ways=4, slots=15, bigram_slots=4)
#: odd geometry and counter rules: 3 ways, 32-byte lines (7 slots), 3 bigram slots, inc 100, cmax 250
ODD = T.TableParams(sets_log2=3, ways=3, slots=7, bigram_slots=3, one=50, inc=100, cmax=250)


def _small_table(params, vocab=SMALL_V):
    return T.TrigramTable.build(_tokens(textwrap, vocab), vocab, params)


def test_matches_reference_1000_steps():
    """>= 1000 draft + update steps from a corpus table, random stalls on every stream, exact."""
    table = _small_table(SMALL)
    assert table.n_contexts == SMALL.n_sets * SMALL.ways       # full: every miss evicts
    stream = _tokens(shlex, SMALL_V)
    run = run_engine(table, stream, 1000, T.make_template(4, T.DEFAULT_MAX_NODES), stall=0.2, latency=3, seed=1)
    assert run.steps == 1000 and run.checkpoints == 11
    assert run.draft_nodes > 10000                              # the trees are not trivially empty


def test_matches_reference_empty_table_odd_geometry():
    """From an empty table (the online update alone), odd geometry, a deeper template, bigram preloaded."""
    table = T.TrigramTable.empty(SMALL_V, ODD)
    stream = _tokens(shlex, SMALL_V)[1000:]
    run = run_engine(table, stream, 300, T.make_template(6, 32), stall=0.3, seed=2, check_every=50,
                     load_bigram=False)
    assert run.steps == 300


def test_matches_reference_random_slot_words():
    """Arbitrary slot words (counts above cmax, unsorted rows, duplicate bigram tokens, keys that
    hash elsewhere): the engine still follows the reference's rules word for word."""
    rng = np.random.default_rng(5)
    p = T.TableParams(sets_log2=2, ways=2, slots=5, bigram_slots=4, inc=64, cmax=255)
    V = 16
    table = T.TrigramTable.empty(V, p)
    toks = rng.integers(0, V, size=(p.n_sets, p.ways, p.slots))
    cnts = rng.choice([0, 1, 64, 255, 300, 0xFFFF], size=toks.shape)
    table.trig[:, :, 1:] = (toks << 16 | cnts).astype(np.uint32)
    a, b = rng.integers(0, V, size=(2, p.n_sets, p.ways))
    table.trig[:, :, 0] = np.where(rng.random((p.n_sets, p.ways)) < 0.8, a << 16 | b, T.EMPTY_KEY).astype(np.uint32)
    btok = rng.integers(0, 4, size=(V, p.bigram_slots))
    bcnt = rng.choice([0, 1, 64, 200, 255, 1000], size=btok.shape)
    table.bigram[:] = (btok << 16 | bcnt).astype(np.uint32)
    stream = rng.integers(0, V, size=400)
    run = run_engine(table, stream, 399, T.make_template(3, 20), stall=0.1, seed=3, check_every=20)
    assert run.steps == 399


def draft_schedule_cycles(table: T.TrigramTable, prev, root, template, latency: int = 0) -> int:
    """Cycles of one DRAFT with a memory that never stalls and answers ``latency`` cycles after a request,
    from the engine's schedule: 2 (command, end of template) + 1 per template node + per successor
    lookup 3 + latency + W (set read: request, W lines) or 3 (no previous token: bigram row only) + 1 per
    tree node streamed out."""
    tokens, parents, node, cache = [root], [-1], [0], None
    cycles = 2 + len(template)
    for tp, rank in template:
        j = node[tp]
        if j < 0:
            node.append(-1)
            continue
        if cache != j:
            cache = j
            before = prev if j == 0 else tokens[parents[j]]
            cycles += 3 + (table.params.ways + latency if before is not None else 0)
            lst = table.successors(before, tokens[j])
        if rank >= len(lst):
            node.append(-1)
            continue
        tokens.append(lst[rank])
        parents.append(j)
        node.append(len(tokens) - 1)
    return cycles + len(tokens)


@pytest.mark.parametrize("latency", [0, 30])
def test_cycles_without_stalls(latency):
    """Cycle counts with a memory that never stalls (answering 0 or 30 cycles after a request), exactly as
    scheduled; the numbers quoted in docs/speculative.md."""
    table = _small_table(SMALL)
    template = T.make_template(4, T.DEFAULT_MAX_NODES)
    stream = _tokens(shlex, SMALL_V)
    steps = 200 if latency == 0 else 50
    expect = []
    ref = table.copy()
    for t in range(steps):
        prev = int(stream[t - 1]) if t > 0 else None
        expect.append(draft_schedule_cycles(ref, prev, int(stream[t]), template, latency))
        ref.update(prev, int(stream[t]), int(stream[t + 1]))
    run = run_engine(table, stream, steps, template, latency=latency, check_every=steps)
    W = SMALL.ways
    assert run.draft_cycles == expect
    # update: command, 2 bigram row cycles (read, write back), request, (latency), W lines, line write
    # = W + 5 cycles; without a previous token (step 0) only the row: 3
    assert run.update_cycles == [3] + [W + 5 + latency] * (steps - 2)
    full = 2 + len(template) + len({par for par, _ in template}) * (W + 3 + latency) + len(template) + 1
    assert max(run.draft_cycles) == full
    if latency == 0:
        assert full == 142
    print(f"\nlatency {latency}: update {W + 5 + latency} cycles; draft: mean {np.mean(run.draft_cycles):.1f}, "
          f"full tree {full} cycles (mean tree nodes {run.draft_nodes / run.steps:.1f}, "
          f"{run.reads / steps - 1:.1f} set reads per draft)")


# ---- the count-guided rule (draft_tree_guided) ---------------------------------------------------------------
@pytest.mark.parametrize("n", [3, 7])
def test_guided_matches_reference_corpus_table(n):
    """Count-guided drafts of n nodes (k = 4 and k = 8) from a full corpus table with evictions, random stalls,
    latency 3: tokens and parents equal draft_tree_guided's at every step, the table tracks the reference."""
    table = _small_table(SMALL)
    stream = _tokens(shlex, SMALL_V)
    run = run_engine(table, stream, 100, T.make_template(n, n), guided=True, stall=0.2, latency=3, seed=n,
                     check_every=50)
    assert run.steps == 100 and run.draft_nodes > 100 * (n - 1)        # mostly full trees


def _random_table(data, V: int = 12) -> T.TrigramTable:
    """A small table of arbitrary words: occupied or empty keys (some of them the contexts drafted from),
    slot counts 1..3 (a bigram count that the backoff shift makes 0), cmax, above cmax, 0xFFFF, empty slots;
    bigram rows with duplicate tokens."""
    p = T.TableParams(sets_log2=data.draw(st.integers(1, 2)), ways=data.draw(st.integers(1, 3)),
                      slots=data.draw(st.integers(2, 9)), bigram_slots=data.draw(st.integers(1, 5)), inc=64,
                      cmax=255)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    t = T.TrigramTable.empty(V, p)
    counts = [0, 1, 2, 3, 64, 255, 300, 0xFFFF]
    toks = rng.integers(0, V, size=(p.n_sets, p.ways, p.slots))
    t.trig[:, :, 1:] = (toks << 16 | rng.choice(counts, size=toks.shape)).astype(np.uint32)
    a, b = rng.integers(0, V, size=(2, p.n_sets, p.ways))
    t.trig[:, :, 0] = np.where(rng.random((p.n_sets, p.ways)) < 0.8, a << 16 | b, T.EMPTY_KEY).astype(np.uint32)
    for s in range(p.n_sets):                      # make some keys the contexts their set is looked up for
        for w in range(p.ways):
            key = int(t.trig[s, w, 0])
            if key != T.EMPTY_KEY:
                t.trig[T.set_index(key >> 16, key & 0xFFFF, p.sets_log2), w, 0] = key
    btok = rng.integers(0, V, size=(V, p.bigram_slots))
    t.bigram[:] = (btok << 16 | rng.choice(counts, size=btok.shape)).astype(np.uint32)
    return t


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_guided_matches_reference_random_tables(data):
    """Random tables, contexts and node budgets (1 .. 40: a full frontier and evictions from about 5 up):
    exact tokens and parents of draft_tree_guided, the updates between the drafts exact too."""
    table = _random_table(data)
    n = data.draw(st.integers(1, 40), label="n_nodes")
    stream = np.array(data.draw(st.lists(st.integers(0, table.vocab_size - 1), min_size=2, max_size=6)))
    run = run_engine(table, stream, len(stream) - 1, T.make_template(n, n), guided=True,
                     stall=data.draw(st.sampled_from([0.0, 0.3])), seed=n, check_every=len(stream))
    assert run.steps == len(stream) - 1


def guided_schedule_cycles(table: T.TrigramTable, prev, root, n: int, latency: int = 0) -> int:
    """Cycles of one count-guided DRAFT with a memory that never stalls (answering ``latency`` cycles after a
    request), from the engine's schedule: 1 (command) + per expansion [lookup W + 2 + latency (2 without a
    context) + G_SUM (children + 1) + with children: G_DIV (33) + per child 3 (G_MUL, G_MUL2, G_INS) or, with
    the frontier full, 2 + 1 + F + 1 (G_INS, G_MIN, G_REPL) + 1] + per selection (slots in use, high-water
    mark, + 1) + 1 per tree node streamed out. Mirrors the slot allocation (lowest free slot)."""
    W = table.params.ways
    tokens, parents = [root], [-1]
    slots: list = [None] * G_FRONTIER                # (score, seq, parent, token) per slot
    top, seq, score, j, cycles = 0, 0, T.GUIDED_ROOT_SCORE, 0, 1
    while n and len(tokens) <= n:
        before = prev if j == 0 else tokens[parents[j]]
        cycles += 2 + (W + latency if before is not None else 0)
        kept = table.successor_counts(before, tokens[j])[:G_CHILDREN]
        cycles += len(kept) + 1
        if kept:
            cycles += G_RECIP_BITS + 1 + 1
        for (tok, _), sc in zip(kept, T.guided_child_scores(score, [c for _, c in kept])):
            if None in slots:
                i = slots.index(None)
                slots[i], top = (sc, seq, j, tok), max(top, i + 1)
                cycles += 3
            else:
                i = min(range(G_FRONTIER), key=lambda k: (slots[k][0], -slots[k][1]))
                if sc > slots[i][0]:
                    slots[i] = (sc, seq, j, tok)
                cycles += 2 + 1 + G_FRONTIER + 1
            seq += 1
        cycles += top + 1
        live = [k for k in range(G_FRONTIER) if slots[k] is not None]
        if not live:
            break
        b = max(live, key=lambda k: (slots[k][0], -slots[k][1]))
        score, _, par, tok = slots[b]
        slots[b] = None
        tokens.append(tok)
        parents.append(par)
        j = len(tokens) - 1
    assert (tokens, parents) == T.draft_tree_guided(table, prev, root, n)
    return cycles + len(tokens)


@pytest.mark.parametrize("n, latency", [(3, 0), (3, 30), (7, 0), pytest.param(24, 0, marks=pytest.mark.slow)])
def test_guided_cycles_without_stalls(n, latency):
    """Count-guided DRAFT cycles with a memory that never stalls, exactly as scheduled (docs/speculative.md
    quotes them); the same engine's template drafts keep the template schedule (test_cycles_without_stalls)."""
    table = _small_table(SMALL)
    stream = _tokens(shlex, SMALL_V)
    steps = 60 if n < 24 else 20
    expect, ref = [], table.copy()
    for t in range(steps):
        prev = int(stream[t - 1]) if t > 0 else None
        expect.append(guided_schedule_cycles(ref, prev, int(stream[t]), n, latency))
        ref.update(prev, int(stream[t]), int(stream[t + 1]))
    run = run_engine(table, stream, steps, T.make_template(n, n), guided=True, latency=latency,
                     check_every=steps)
    assert run.draft_cycles == expect
    print(f"\nguided n={n} latency {latency}: draft mean {np.mean(run.draft_cycles):.1f}, "
          f"max {max(run.draft_cycles)} cycles (mean tree nodes {run.draft_nodes / run.steps:.1f})")


def test_verilog_and_bad_parameters():
    text = verilog.convert(DraftEngine(SMALL_V, SMALL), name="draft_engine")
    for port in ("cmd__valid", "draft__payload", "rd_req__payload", "rd_resp__payload", "wr__payload",
                 "bigram_wr__ready", "busy"):
        assert port in text
    with pytest.raises(ValueError, match="template entry 2"):
        DraftEngine(16, SMALL, template=((0, 0), (2, 0)))
    with pytest.raises(ValueError, match="vocab_size"):
        DraftEngine(0, SMALL)
    with pytest.raises(ValueError, match="ways"):
        DraftEngine(16, T.TableParams(ways=0))
    with pytest.raises(ValueError, match="count-guided rule drafts at most 255"):
        DraftEngine(16, SMALL, template=T.make_template(256, 256))
    assert DraftEngine(16, SMALL, template=T.make_template(256, 256), guided=False).n_nodes == 257
    assert "frontier" not in verilog.convert(DraftEngine(16, SMALL, guided=False), name="draft_engine")


@pytest.mark.sim
def test_verilator_lint_default_geometry(tmp_path):
    """The default engine (V = 4096, default TableParams and template) passes a Verilator lint (errors only)."""
    import subprocess

    from mmfree.toolchain import verilator_env

    verilator_env()
    v = tmp_path / "draft_engine.v"
    v.write_text(verilog.convert(DraftEngine(4096, T.TableParams()), name="draft_engine"))
    r = subprocess.run(["verilator", "--lint-only", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--top-module",
                        "draft_engine", str(v)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]


@pytest.mark.slow
def test_matches_reference_default_geometry():
    """The default geometry and vocabulary (V = 4096, 2**14 sets x 4 ways, 4 MiB of DDR lines) from a table
    built from three stdlib modules; 1500 steps of a fourth."""
    import difflib
    import string

    from mmfree.pymodel.tokenizer import load_tokenizer

    tok = load_tokenizer("default")
    corpus = np.concatenate([_tokens(m, 4096) for m in (textwrap, string, difflib)])
    table = T.TrigramTable.build(corpus, 4096, T.TableParams(), tokenizer_sha256=None)
    assert tok.vocab_size == 4096
    run = run_engine(table, _tokens(shlex, 4096), 1500, T.make_template(4, T.DEFAULT_MAX_NODES), stall=0.1,
                     latency=20, seed=4, check_every=500)
    assert run.steps == 1500

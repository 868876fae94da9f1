"""The on-chip draft-verify loop (mmfree.rtl.genloop.GenLoop, with the real DraftEngine inside) in amaranth.sim
against the reference loop :func:`mmfree.pymodel.speculative.speculative_generate`.

The testbench plays the loop's surroundings: a byte-addressed DDR that serves the read client and takes the
write master's beats (random stalls, a write response delay, the read queue dropped on ``core_rst``), and a
sequencer that answers each pass after a few cycles with the argmax of every tree node. The "model" behind
those argmaxes is a toy language model whose next token is a fixed random function of the last two tokens,
so the reference loop can run it too (:class:`ToyModel` has the IntModel methods speculative_generate uses):
every pass's draft (tokens and parents), start-state and output addresses, the emitted tokens, GEN_PASSES,
GEN_STATE and the table left in DDR are compared exactly.
"""

from __future__ import annotations

import random
from collections import deque

import numpy as np
import pytest
from amaranth import Value
from amaranth.sim import Simulator

from mmfree.pymodel import trigram as T
from mmfree.pymodel.speculative import speculative_generate
from mmfree.rtl import regmap as RM
from mmfree.rtl.compiler import HwConfig
from mmfree.rtl.genloop import GenLoop, gen_template

V = 97
K = 4
PARAMS = T.TableParams(sets_log2=4, ways=4, slots=15, bigram_slots=4)   # 16 sets: evictions all the time
HW = HwConfig(bus_bytes=16, max_tokens=K, max_width=64, draft_vocab=V)
STRIDE = 128
LINE = 4 * (1 + PARAMS.slots)
#: the DDR window and the buffers in it
MEM_LO, MEM_HI = 0x1000, 0x6000
TABLE, BIGRAM, GEN_OUT, STATE_OUT, STATE_ALT = 0x1000, 0x2000, 0x3000, 0x5000, 0x5400


class ToyModel:
    """Next token = ``f[a, b]`` for the last two tokens (a fixed random table): the IntModel methods the
    reference loop calls. A state is ``(sequence, node index in its pass)``."""

    def __init__(self, seed: int = 0):
        self.vocab_size = V
        self.f = np.random.default_rng(seed).integers(0, V, size=(V, V))
        self.passes: list[tuple[list[int], list[int], int]] = []      # (tokens, parents, start node)

    def next(self, seq) -> int:
        return int(self.f[seq[-2] if len(seq) >= 2 else 0, seq[-1]])

    def onehot(self, t: int) -> np.ndarray:
        x = np.zeros(V)
        x[t] = 1.0
        return x

    def initial_state(self):
        return ((), -1)

    def prefill(self, state, ids):
        seq = state[0] + tuple(ids)
        return (seq, -1), self.onehot(self.next(seq))

    def verify(self, state, toks, parents):
        self.passes.append((list(toks), list(parents), state[1]))
        paths = []
        for i, t in enumerate(toks):
            paths.append((state[0] if parents[i] < 0 else paths[parents[i]]) + (t,))
        return [(p, i) for i, p in enumerate(paths)], np.stack([self.onehot(self.next(p)) for p in paths])

    @staticmethod
    def to_float(x):
        return x


def greedy(model: ToyModel, prompt, n):
    seq, out = list(prompt), []
    while len(out) < n:
        out.append(model.next(seq))
        seq.append(out[-1])
    return out


def reference(model: ToyModel, prompt, n, table, eos=None):
    """speculative_generate with the build's template: (tokens, verify steps, adapted table, passes)."""
    model.passes = []
    res = speculative_generate(model, prompt, n, max_draft=K - 1, max_nodes=K - 1, table=table, eos_id=eos,
                               template=gen_template(K), log=lambda m: None)
    adapted = table.copy()
    adapted.observe(list(prompt) + list(res.tokens))
    return list(res.tokens), res.extra["verify_steps"], adapted, list(model.passes)


def run_loop(model: ToyModel, table: T.TrigramTable, context: tuple[int, int], n: int, *, eos=None, seed=0,
             stall=0.3, regs=None, pass_error=None, soft_reset_at=None, max_cycles=400_000):
    """Run one GENERATE on the RTL. ``table``: what DDR holds at the start (the trigram lines and bigram rows);
    ``context``: (prev, root). Returns a dict of what the loop did and left in DDR."""
    dut = GenLoop(HW, params=PARAMS)
    rng = random.Random(seed)
    mem = np.zeros(MEM_HI, dtype=np.uint8)
    mem[TABLE:TABLE + table.trig.nbytes] = np.frombuffer(table.trig.astype("<u4").tobytes(), np.uint8)
    big = np.zeros((-(-V // 4) * 4, PARAMS.bigram_slots), dtype="<u4")
    big[:V] = table.bigram
    mem[BIGRAM:BIGRAM + big.nbytes] = np.frombuffer(big.tobytes(), np.uint8)
    r = {"STATE_IN": STATE_ALT + STRIDE, "STATE_OUT": STATE_OUT, "STATE_ALT": STATE_ALT, "TABLE_BASE": TABLE,
         "BIGRAM_BASE": BIGRAM, "GEN_OUT": GEN_OUT, "MEM_LO": MEM_LO, "MEM_HI": MEM_HI, "GEN_N": n,
         "GEN_CONTEXT": RM.encode("GEN_CONTEXT", prev=context[0], root=context[1]),
         "GEN_EOS": RM.encode("GEN_EOS", enable=1, token=eos) if eos is not None else 0,
         "STATE_STRIDE": STRIDE, "GEN_DRAFT": 0}
    r.update(regs or {})
    out = {"pass_log": [], "finished": False, "cycles": 0}
    seq_ctx = list(context)            # the sequence as the loop has committed it (for the fake model)

    async def bench(ctx):
        for name in RM.GEN_ADDRESS_REGS + ("STATE_IN", "STATE_OUT", "MEM_LO", "MEM_HI"):
            ctx.set(getattr(dut, "reg_" + name.lower()), r[name])
        for name in ("GEN_N", "GEN_CONTEXT", "GEN_EOS", "STATE_STRIDE", "GEN_DRAFT"):
            ctx.set(Value.cast(getattr(dut, name.lower())), r[name])     # GEN_CONTEXT, GEN_EOS, GEN_DRAFT: views
        ctx.set(dut.go, 1)
        await ctx.tick()
        ctx.set(dut.go, 0)
        rq: deque[int] = deque()       # read beats in flight
        wr = None                      # [address, beats left]
        b_wait = 0                     # cycles until the write response
        seq_timer = None               # the fake pass: cycles left
        pending = None
        for cyc in range(max_cycles):
            if soft_reset_at is not None and cyc == soft_reset_at:
                ctx.set(dut.soft_reset, 1)
            elif soft_reset_at is not None:
                ctx.set(dut.soft_reset, 0)
            ctx.set(dut.rd_quiet, int(not rq))
            ctx.set(dut.wr_quiet, int(wr is None and b_wait == 0))
            ctx.set(dut.rd_cmd.ready, 1)
            give = bool(rq) and rng.random() >= stall
            ctx.set(dut.rd_data.valid, int(give))
            if give:
                ctx.set(dut.rd_data.payload, rq[0])
            ctx.set(dut.wr_cmd.ready, int(wr is None and b_wait == 0))
            ctx.set(dut.wr_data.ready, int(wr is not None and rng.random() >= stall))
            ctx.set(dut.seq_busy, int(seq_timer is not None))
            fin = seq_timer == 0
            ctx.set(dut.seq_finished, int(fin))
            ctx.set(dut.seq_error, int(fin and pass_error is not None))
            ctx.set(dut.seq_error_code, pass_error or 0)
            if fin:
                for t, a in enumerate(pending):
                    ctx.set(dut.args[t], a)
                seq_timer = None
            # ---- handshakes of this cycle ----
            if ctx.get(dut.rd_cmd.valid):
                a, beats = ctx.get(dut.rd_cmd.payload.addr), ctx.get(dut.rd_cmd.payload.beats)
                assert a % 16 == 0 and MEM_LO <= a and a + 16 * beats <= MEM_HI, (hex(a), beats)
                for i in range(beats):
                    rq.append(int.from_bytes(mem[a + 16 * i:a + 16 * i + 16].tobytes(), "little"))
            if give and ctx.get(dut.rd_data.ready):
                rq.popleft()
            if ctx.get(dut.wr_cmd.valid) and ctx.get(dut.wr_cmd.ready):
                wr = [ctx.get(dut.wr_cmd.payload.addr), ctx.get(dut.wr_cmd.payload.beats)]
                assert wr[0] % 16 == 0 and MEM_LO <= wr[0] and wr[0] + 16 * wr[1] <= MEM_HI, wr
            elif ctx.get(dut.wr_data.valid) and ctx.get(dut.wr_data.ready):
                d, s = ctx.get(dut.wr_data.payload.data), ctx.get(dut.wr_data.payload.strb)
                for i in range(16):
                    if s >> i & 1:
                        mem[wr[0] + i] = (d >> (8 * i)) & 0xFF
                wr[0] += 16
                wr[1] -= 1
                if wr[1] == 0:
                    wr, b_wait = None, 3
            if ctx.get(dut.pass_start):
                assert seq_timer is None and wr is None and not rq
                # the committed sequence: the context and what GEN_OUT holds so far (written before a pass)
                got = np.frombuffer(mem[GEN_OUT:GEN_OUT + 4 * n].tobytes(), "<u4")
                seq_ctx[:] = list(context) + [int(x) for x in got[:ctx.get(dut.count)]]
                k = ctx.get(dut.pass_k)
                toks = [ctx.get(dut.pass_tokens[t]) for t in range(k)]
                pars = [ctx.get(dut.pass_parents[t]) for t in range(k)]
                out["pass_log"].append((toks, pars, ctx.get(dut.pass_state_in), ctx.get(dut.pass_state_out)))
                paths = []
                for i, t in enumerate(toks):
                    paths.append((seq_ctx if pars[i] < 0 else paths[pars[i]]) + ([t] if i else []))
                pending = [model.next(p) for p in paths] + [0] * (K - k)
                seq_timer = 7
            if ctx.get(dut.finished):
                out["finished"] = True
                out["cycles"] = cyc
                break
            if not ctx.get(dut.busy) and cyc > 2 and soft_reset_at is not None and cyc > soft_reset_at:
                out["cycles"] = cyc
                break
            if ctx.get(dut.core_rst):
                rq.clear()
            await ctx.tick()
            b_wait = max(0, b_wait - 1)
            if seq_timer:
                seq_timer -= 1
        else:
            raise AssertionError(f"GENERATE did not finish in {max_cycles} cycles")
        for name in ("done", "error", "error_code", "count", "passes", "nodes", "gen_state", "busy"):
            out[name] = ctx.get(getattr(dut, name))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    out["gen_out"] = [int(x) for x in np.frombuffer(mem[GEN_OUT:GEN_OUT + 4 * n].tobytes(), "<u4")]
    out["trig"] = np.frombuffer(mem[TABLE:TABLE + table.trig.nbytes].tobytes(), "<u4").reshape(table.trig.shape)
    out["bigram"] = np.frombuffer(mem[BIGRAM:BIGRAM + big.nbytes].tobytes(), "<u4").reshape(big.shape)[:V]
    return out


def _setup(seed=0, prompt_len=12, table_from=200):
    """A toy model, a prompt, its first token and a table learned from the model's own text (and the prompt)."""
    model = ToyModel(seed)
    rng = np.random.default_rng(seed + 1)
    prompt = [int(x) for x in rng.integers(0, V, size=prompt_len)]
    table = T.TrigramTable.build(greedy(model, [1, 2], table_from), V, PARAMS)
    return model, prompt, table


def _start(model, prompt, table):
    """What the host does before GENERATE: the first token, the table taught the prompt and that token."""
    first = model.next(prompt)
    t = table.copy()
    t.observe(prompt)
    t.update(prompt[-2], prompt[-1], first)
    return first, t


@pytest.mark.parametrize("seed", [0, 1])
def test_loop_matches_speculative_generate(seed):
    """Tokens, every draft, the state addresses, GEN_PASSES / GEN_NODES / GEN_STATE and the table left in DDR."""
    n = 40
    model, prompt, table = _setup(seed)
    want, steps, adapted, ref_passes = reference(model, prompt, n, table)
    assert want == greedy(model, prompt, n)
    first, start = _start(model, prompt, table)
    assert want[0] == first
    got = run_loop(model, start, (prompt[-1], first), n - 1, seed=seed)
    assert got["finished"] and got["done"] and not got["error"]
    assert got["gen_out"] == want[1:]
    assert got["count"] == n - 1
    log = got["pass_log"]
    assert got["passes"] == steps == len(log)
    assert got["nodes"] == sum(len(p[0]) for p in log)
    # every pass: the reference's draft, from the committed state, into STATE_OUT / STATE_ALT in turn
    assert [(p[0], p[1]) for p in log] == [(p[0], p[1]) for p in ref_passes]
    nodes = [p[2] for p in ref_passes[1:]] + [_last_node(model, prompt + want[:1], log, n - 1)]
    cur, outs = STATE_ALT + STRIDE, (STATE_OUT, STATE_ALT)
    for i, (_, _, s_in, s_out) in enumerate(log):
        assert (s_in, s_out) == (cur, outs[i % 2]), f"pass {i}"
        cur = s_out + nodes[i] * STRIDE
    assert got["gen_state"] == cur
    np.testing.assert_array_equal(got["trig"], adapted.trig)
    np.testing.assert_array_equal(got["bigram"], adapted.bigram)


def guided_reference(model: ToyModel, prompt, start: T.TrigramTable, n: int):
    """The loop with count-guided trees of K - 1 nodes from the toy model's greedy tokens: (every pass's
    (tokens, parents), the adapted table). ``start`` already learned the prompt and the first token."""
    from mmfree.pymodel.speculative import guided_greedy_passes

    want = greedy(model, prompt, n)
    return guided_greedy_passes(start, list(prompt) + want[:1], want, K - 1)


@pytest.mark.parametrize("seed", [0])
def test_loop_guided_trees_match_the_reference(seed):
    """GEN_DRAFT.tree = COUNT_GUIDED: every pass's draft is draft_tree_guided's (K - 1 nodes) from the table as the
    loop adapted it; tokens, GEN_PASSES / GEN_NODES and the table left in DDR exact."""
    n = 40
    model, prompt, table = _setup(seed)
    first, start = _start(model, prompt, table)
    ref_log, adapted = guided_reference(model, prompt, start, n)
    got = run_loop(model, start, (prompt[-1], first), n - 1, seed=seed,
                   regs={"GEN_DRAFT": RM.encode("GEN_DRAFT", tree=RM.TreeRule.COUNT_GUIDED)})
    assert got["finished"] and got["done"] and not got["error"]
    assert got["gen_out"] == greedy(model, prompt, n)[1:]
    assert [(p[0], p[1]) for p in got["pass_log"]] == ref_log
    assert got["passes"] == len(ref_log) and got["nodes"] == sum(len(p[0]) for p in ref_log)
    np.testing.assert_array_equal(got["trig"], adapted.trig)
    np.testing.assert_array_equal(got["bigram"], adapted.bigram)


def test_bad_tree_rule_stops_before_any_access():
    """GEN_DRAFT.tree 2 or 3 (no rule): ERR_GEN_CONFIG detail 2, after the GEN_N / STATE_STRIDE checks."""
    model, prompt, table = _setup(0)
    first, start = _start(model, prompt, table)
    for regs, detail in (({"GEN_DRAFT": 2}, 2), ({"GEN_DRAFT": 3}, 2), ({"GEN_DRAFT": 3, "STATE_STRIDE": 0}, 1)):
        got = run_loop(model, start, (prompt[-1], first), 8, regs=regs)
        assert got["finished"] and got["error"] and not got["done"]
        assert (got["error_code"] & 0xFF, got["error_code"] >> 8) == (RM.ERR_GEN_CONFIG, detail)
        assert got["pass_log"] == [] and got["count"] == 0


def _last_node(model, seq, log, n):
    """The node the last pass's walk ends on (emitting n tokens over all passes)."""
    from mmfree.pymodel.speculative import accept_walk, greedy_pick

    seq, node = list(seq), 0

    def emit(t):
        seq.append(t)
        return len(seq) - start == n

    start = len(seq)
    for toks, pars, _, _ in log:
        _, node, _ = accept_walk(toks, pars, lambda i, cands: greedy_pick(model.next(seq), cands), emit)
    return node


def test_loop_stops_at_eos():
    """GEN_EOS: the stop token is emitted, then the loop ends (the table still written back)."""
    model, prompt, table = _setup(2)
    first, start = _start(model, prompt, table)
    want = greedy(model, prompt + [first], 30)
    eos = want[5]
    stop = want.index(eos)
    got = run_loop(model, start, (prompt[-1], first), 30, eos=eos, seed=3)
    assert got["done"] and got["count"] == stop + 1
    assert got["gen_out"][:stop + 1] == want[:stop + 1] and got["gen_out"][stop + 1:] == [0] * (29 - stop)
    adapted = start.copy()
    adapted.observe(want[:stop + 1], history=(prompt[-1], first))
    np.testing.assert_array_equal(got["trig"], adapted.trig)
    np.testing.assert_array_equal(got["bigram"], adapted.bigram)


@pytest.mark.parametrize("regs, code, detail", [
    ({"GEN_N": 0}, RM.ERR_GEN_CONFIG, 0),
    ({"STATE_STRIDE": 96}, RM.ERR_GEN_CONFIG, 1),
    ({"STATE_STRIDE": 0}, RM.ERR_GEN_CONFIG, 1),
    ({"TABLE_BASE": TABLE + 16}, RM.ERR_UNALIGNED, len(RM.ADDRESS_REGS) + 0),
    ({"STATE_ALT": STATE_ALT + 4}, RM.ERR_UNALIGNED, len(RM.ADDRESS_REGS) + 3),
    ({"BIGRAM_BASE": MEM_HI - 64}, RM.ERR_ADDRESS_RANGE, len(RM.ADDRESS_REGS) + 1),
    ({"GEN_OUT": MEM_HI - 64, "GEN_N": 17}, RM.ERR_ADDRESS_RANGE, len(RM.ADDRESS_REGS) + 2),
    ({"MEM_LO": TABLE + 64}, RM.ERR_ADDRESS_RANGE, len(RM.ADDRESS_REGS) + 0),
])
def test_bad_registers_stop_before_any_access(regs, code, detail):
    """Each check of the contract, in order; nothing is read or written (the bench asserts every access lies
    in the window; here no pass starts and DDR is unchanged)."""
    model, prompt, table = _setup(0)
    first, start = _start(model, prompt, table)
    got = run_loop(model, start, (prompt[-1], first), 8, regs=regs)
    assert got["finished"] and got["error"] and not got["done"]
    assert (got["error_code"] & 0xFF, got["error_code"] >> 8) == (code, detail)
    assert got["pass_log"] == [] and got["count"] == 0
    np.testing.assert_array_equal(got["trig"], start.trig)


def test_pass_error_stops_the_loop_with_its_code():
    """A pass that ends with an error ends the loop with the same ERROR_CODE."""
    model, prompt, table = _setup(0)
    first, start = _start(model, prompt, table)
    err = RM.ERR_TOKEN_RANGE | (2 << 8)
    got = run_loop(model, start, (prompt[-1], first), 8, pass_error=err)
    assert got["finished"] and got["error"] and got["error_code"] == err
    assert len(got["pass_log"]) == 1 and got["count"] == 0


@pytest.mark.parametrize("when", [5, 60, 400])
def test_soft_reset_stops_without_error(when):
    """SOFT_RESET at any point (checks, bigram load, a draft or pass): back to idle, no error, no interrupt."""
    model, prompt, table = _setup(0)
    first, start = _start(model, prompt, table)
    got = run_loop(model, start, (prompt[-1], first), 30, soft_reset_at=when)
    assert not got["finished"] and not got["busy"] and not got["error"] and not got["done"]


def test_no_engine_answers_err_no_draft():
    """A build without a draft engine keeps the registers and refuses GENERATE with ERR_NO_DRAFT."""
    dut = GenLoop(HwConfig(bus_bytes=16, max_tokens=K, max_width=64))
    seen = {}

    async def bench(ctx):
        ctx.set(dut.go, 1)
        await ctx.tick()
        ctx.set(dut.go, 0)
        seen.update(fin=ctx.get(dut.finished), err=ctx.get(dut.error), code=ctx.get(dut.error_code),
                    busy=ctx.get(dut.busy))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {"fin": 1, "err": 1, "code": RM.ERR_NO_DRAFT, "busy": 0}

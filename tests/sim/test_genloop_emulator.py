"""The on-chip draft-verify loop (CONTROL.GENERATE, docs/speculative.md) on the ISA emulator, through the one
driver (:func:`mmfree.host.generate.generate_onchip`): the default model, its own trigram table, compared with
plain greedy decoding and with ``pymodel.speculative.speculative_generate`` (tokens, verification passes and
the adapted table, word for word), plus the loop's checks and error codes in the contract's order. No
Verilator: every GENERATE here runs in a fraction of a second."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mmfree import MmfreeError
from mmfree.host import accel as HA
from mmfree.host import generate as HG
from mmfree.host import layout as HL
from mmfree.host import session as HS
from mmfree.pymodel import drafters as DR
from mmfree.pymodel import trigram as TG
from mmfree.pymodel.speculative import speculative_generate
from mmfree.rtl import regmap as RM
from mmfree.rtl.compiler import HwConfig
from mmfree.sim import run as SR
from mmfree.sim.accel import DEFAULT_HW
from mmfree.sim.emulator import EmulatedBoard
from tests.sim import helpers as H

K = DEFAULT_HW.max_tokens
N = 24
PROMPTS = ("def ", "import os\nimport sys\n\n\ndef main(", "class Point:\n    def __init__(self, x, y):\n        self.")
GEN = len(RM.ADDRESS_REGS)          # error detail of GEN_ADDRESS_REGS[0]


@pytest.fixture(scope="module")
def model():
    """(compiled, IntModel, tokenizer, the model's own trigram table: never mutated, tests copy it)."""
    from mmfree.pymodel.tokenizer import load_tokenizer

    compiled, im, tok_dir = HS.open_model("default")
    table = DR.TrigramDrafter.for_model(im, None, tok_dir, log=lambda m: None).table
    return compiled, im, load_tokenizer(tok_dir), table


def _host(model, hw=DEFAULT_HW):
    board = EmulatedBoard(hw)
    return board, HA.AccelHost(board, model[0])


def _reference(im, ids, n, table, eos_id=None):
    """speculative_generate with the loop's tree (given explicitly: from a table that starts empty the reference
    drafts nothing, the hardware drafts from what the prompt taught it) and the table it ends with (the same
    updates in the same order: every prompt and output token)."""
    spec = speculative_generate(im, ids, n, max_draft=K - 1, max_nodes=K - 1, table=table, eos_id=eos_id,
                                template=TG.make_template(K - 1, K - 1), log=lambda m: None)
    adapted = table.copy()
    adapted.observe(list(ids) + spec.tokens)
    return spec, adapted


def _ddr_table(board, host, like: TG.TrigramTable):
    """The table arrays as they are in the accelerator's DDR."""
    eng = host.draft
    trig = np.frombuffer(board.read_mem(host.addr["TABLE_BASE"], like.trig.nbytes), dtype="<u4")
    big = np.frombuffer(board.read_mem(host.addr["BIGRAM_BASE"], eng["vocab"] * 4 * eng["bigram_slots"]), dtype="<u4")
    return trig.reshape(like.trig.shape), big.reshape(eng["vocab"], eng["bigram_slots"])


def _assert_table(table, expect):
    np.testing.assert_array_equal(table.trig, expect.trig)
    np.testing.assert_array_equal(table.bigram, expect.bigram)


# ---- the loop against the references ----------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", PROMPTS)
def test_onchip_is_greedy_and_the_reference_speculative_loop(model, prompt):
    compiled, im, tok, start = model
    ids = tok.encode(prompt)
    board, host = _host(model)
    table = start.copy()
    toks, recs = HG.generate_onchip(host, ids, N, table)
    assert toks == SR.greedy_reference(im, ids, N)
    spec, adapted = _reference(im, ids, N, start)
    assert toks == spec.tokens
    gen = [r for r in recs if r.get("onchip")]
    assert len(gen) == 1 and len(recs) == len(gen) + -(-len(ids) // K)         # prefill passes + one GENERATE
    g = gen[0]
    assert g["emitted_tokens"] == toks[1:] and g["count"] == N - 1
    assert g["gen_passes"] == spec.extra["verify_steps"] > 0
    drafts = round(spec.extra["mean_draft_nodes"] * spec.extra["verify_steps"])
    assert g["gen_nodes"] == spec.extra["verify_steps"] + drafts          # roots included
    assert g["gen_passes"] < N - 1                                           # the drafts were accepted sometimes
    assert g["gen_cycles"] == 0                                              # the emulator has no clock
    # the table in DDR and the host's copy read back are the reference's adapted table, word for word
    trig, big = _ddr_table(board, host, table)
    np.testing.assert_array_equal(trig, adapted.trig)
    np.testing.assert_array_equal(big[:adapted.vocab_size], adapted.bigram)
    assert not big[adapted.vocab_size:].any()
    _assert_table(table, adapted)
    # GEN_STATE is the state before the last token: a host pass feeding it gives the next greedy token
    assert host.run([toks[-1]]).argmax[0] == SR.greedy_reference(im, ids, N + 1)[-1]


def test_eos_stops_after_emitting_it(model):
    compiled, im, tok, start = model
    ids = tok.encode(PROMPTS[0])
    ref = SR.greedy_reference(im, ids, N)
    i = next(i for i in range(3, N) if ref[i] not in ref[:i])
    board, host = _host(model)
    table = start.copy()
    toks, recs = HG.generate_onchip(host, ids, N, table, eos_id=ref[i])
    assert toks == ref[:i + 1]
    assert board.read32(RM.OFFSET["GEN_COUNT"]) == i and board.read32(RM.OFFSET["GEN_EOS"]) == 1 << 31 | ref[i]
    spec, adapted = _reference(im, ids, N, start, eos_id=ref[i])
    assert spec.tokens == toks and recs[-1]["gen_passes"] == spec.extra["verify_steps"]
    _assert_table(table, adapted)
    # an EOS as the very first token: no GENERATE at all
    board, host = _host(model)
    toks, recs = HG.generate_onchip(host, ids, N, start.copy(), eos_id=ref[0])
    assert toks == ref[:1] and not any(r.get("onchip") for r in recs)


def test_generates_continue_from_gen_state_as_one_long_run(model, monkeypatch):
    """GEN_OUT holds GEN_OUT_TOKENS: a longer run is several GENERATEs, each from the last one's GEN_STATE,
    GEN_CONTEXT and table in DDR. Tokens and table equal one long run; passes may not (a GENERATE ends mid-walk)."""
    compiled, im, tok, start = model
    ids = tok.encode(PROMPTS[1])
    board, host = _host(model)
    one = start.copy()
    long_toks, long_recs = HG.generate_onchip(host, ids, N, one)
    monkeypatch.setattr(HL, "GEN_OUT_TOKENS", 5)
    board, host = _host(model)
    assert host.mem_end - host.addr["GEN_OUT"] == RM.ALIGN                 # 5 tokens, one line
    several = start.copy()
    toks, recs = HG.generate_onchip(host, ids, N, several)
    gen = [r for r in recs if r.get("onchip")]
    assert toks == long_toks and [r["count"] for r in gen] == [5, 5, 5, 5, 3]
    assert sum(r["gen_passes"] for r in gen) >= long_recs[-1]["gen_passes"]
    _assert_table(several, one)
    # each GENERATE ended on a position of one of the two state areas, and the next one went on from it
    stride = compiled.state_stride
    for r in gen:
        off = r["state"] - host.state_area(r["state"])
        assert off % stride == 0 and 0 <= off < K * stride
    assert host.state_in == gen[-1]["state"] and host.state_area(host.next_out) != host.state_area(host.state_in)


def test_empty_table(model):
    compiled, im, tok, start = model
    empty = TG.TrigramTable.empty(im.vocab_size, tokenizer_sha256=start.tokenizer_sha256)
    for ids in ([tok.encode("x")[0]], tok.encode(PROMPTS[2])):
        board, host = _host(model)
        table = empty.copy()
        toks, recs = HG.generate_onchip(host, ids, 12, table)
        assert toks == SR.greedy_reference(im, ids, 12)
        spec, adapted = _reference(im, ids, 12, empty)
        assert spec.tokens == toks and recs[-1]["gen_passes"] == spec.extra["verify_steps"]
        _assert_table(table, adapted)


def test_one_token_needs_no_generate(model):
    compiled, im, tok, start = model
    board, host = _host(model)
    table = start.copy()
    ids = tok.encode("def ")
    toks, recs = HG.generate_onchip(host, ids, 1, table)
    assert toks == SR.greedy_reference(im, ids, 1) and all(r["prefill"] for r in recs)
    expect = start.copy()
    expect.observe(ids + toks)
    _assert_table(table, expect)


def test_accelerator_generate_onchip_counters(model):
    compiled, im, tok, start = model
    acc = HS.AccelSession(EmulatedBoard(DEFAULT_HW), (compiled, im, None))
    ids = tok.encode(PROMPTS[0])
    g = acc.generate(ids, N, draft=DR.TrigramDrafter(start), onchip=True)
    host_g = acc.generate(ids, N, draft=DR.TrigramDrafter(start))
    assert g.tokens == host_g.tokens == SR.greedy_reference(im, ids, N)
    c, gen = g.counters, g.passes[-1]
    assert c["onchip"] is True and c["gen_count"] == N - 1 and c["gen_passes"] == gen["gen_passes"]
    assert c["verify_steps"] == c["decode_passes"] == c["gen_passes"]
    assert c["passes"] == c["prefill_passes"] + c["gen_passes"] and c["prefill_passes"] == -(-len(ids) // K)
    assert c["mean_accepted"] == pytest.approx((N - 1) / c["gen_passes"])
    assert c["mean_draft_nodes"] == pytest.approx((c["gen_nodes"] - c["gen_passes"]) / c["gen_passes"])
    assert "last pass" in c["partial_counters"] and "onchip" not in host_g.counters
    assert g.as_dict()["gen_passes"] == c["gen_passes"] and g.draft == "trigram"
    # the drafter's table is the host's copy: it learned the generation
    dr = DR.TrigramDrafter(start)
    acc.generate(ids, N, draft=dr, onchip=True)
    expect = start.copy()
    expect.observe(ids + g.tokens)
    _assert_table(dr.table, expect)
    # what the host path cannot do on chip is refused
    with pytest.raises(MmfreeError, match="always adapts the table"):
        acc.generate(ids, 4, draft=DR.TrigramDrafter(start, adapt=False), onchip=True)
    with pytest.raises(MmfreeError, match=r"drafts the tree make_template\(3, 3\)"):
        acc.generate(ids, 4, draft=DR.TrigramDrafter(start, template=TG.make_template(2, 5)), onchip=True)
    with pytest.raises(MmfreeError, match="give a TrigramDrafter"):
        acc.generate(ids, 4, draft="lookup", onchip=True)


def test_run_sim_onchip_check_catches_a_wrong_table(model):
    """The comparison ``mmfree run --board sim --onchip`` makes (the RTL's result against speculative_generate),
    here on an emulator result: it passes, and a single wrong table word or pass count is reported."""
    compiled, im, tok, start = model
    ids = tok.encode(PROMPTS[0])
    acc = HS.AccelSession(EmulatedBoard(DEFAULT_HW), (compiled, im, None))
    dr = DR.TrigramDrafter(start)
    g = acc.generate(ids, N, draft=dr, onchip=True)
    res = {"tokens": g.tokens, "counters": g.counters,
           "arrays": {"table_trig": dr.table.trig.copy(), "table_bigram": dr.table.bigram.copy()}}
    ok, problems, fields = SR._check_onchip(im, ids, N, K, start, res)
    assert ok, problems
    assert fields["reference_verify_steps"] == g.counters["gen_passes"] and "prefill passes only" in fields["replayed"]
    res["arrays"]["table_trig"].reshape(-1)[12345] ^= 1
    res["counters"] = dict(g.counters, gen_passes=g.counters["gen_passes"] + 1)
    ok, problems, _ = SR._check_onchip(im, ids, N, K, start, res)
    assert not ok and any("GEN_PASSES" in p for p in problems) and any("trig array" in p and "(1 words)" in p
                                                                        for p in problems)


# ---- refusals and the hardware's checks -------------------------------------------------------------------------
def test_no_draft_engine(model):
    compiled, im, tok, start = model
    hw = HwConfig(bus_bytes=16, max_tokens=4, max_width=4096)
    board, host = _host(model, hw)
    assert host.draft is None and "TABLE_BASE" not in host.addr
    for reg in ("DRAFT_CONFIG", "DRAFT_VOCAB", "DRAFT_COUNTERS"):
        assert board.read32(RM.OFFSET[reg]) == 0
    msg = r"this bitstream has no draft engine \(DRAFT_VOCAB = 0\): rebuild with draft_vocab, or draft on the host"
    with pytest.raises(MmfreeError, match=msg):
        HG.generate_onchip(host, [1, 2], 4, start.copy())
    assert board.last_stats is None                              # refused before any pass
    acc = HS.AccelSession(EmulatedBoard(hw), (compiled, im, None))
    with pytest.raises(MmfreeError, match=msg):
        acc.generate([1, 2], 4, onchip=True)
    # the raw register: GENERATE on such a build stops with ERR_NO_DRAFT
    with pytest.raises(HA.AccelRunError, match="GENERATE needs a bitstream with the draft engine") as ei:
        host.start_and_wait(RM.CTRL_GENERATE, 1.0)
    assert (ei.value.code, ei.value.detail) == (RM.ERR_NO_DRAFT, 0)
    assert board.read32(RM.OFFSET["STATUS"]) & RM.STAT_ERROR


def test_engine_identity_registers(model):
    board, host = _host(model)
    p = TG.TableParams()
    assert board.read32(RM.OFFSET["DRAFT_VOCAB"]) == DEFAULT_HW.draft_vocab == host.hw.draft_vocab
    assert host.draft == dict(sets_log2=p.sets_log2, ways=p.ways, slots=p.slots, bigram_slots=p.bigram_slots,
                              inc=p.inc, cmax=p.cmax, vocab=DEFAULT_HW.draft_vocab,
                              tree_rules=("template", "count-guided"))
    lo, hi = host.transport.mem_window
    assert host.addr["DATA_BASE"] < host.addr["TABLE_BASE"] < host.addr["BIGRAM_BASE"] < host.addr["GEN_OUT"]
    assert host.mem_end == HL.ddr_needed(model[0], K, host.draft) + lo <= hi
    assert all(host.addr[n] % RM.ALIGN == 0 for n in RM.GEN_ADDRESS_REGS if n in host.addr)


def test_tables_the_engine_cannot_run_are_refused(model):
    compiled, im, tok, start = model
    board, host = _host(model)
    other = TG.TrigramTable.empty(im.vocab_size, TG.TableParams(sets_log2=12), start.tokenizer_sha256)
    with pytest.raises(MmfreeError, match=r"the table was built with sets_log2=12; this bitstream's draft engine "
                                          r"uses sets_log2=14: rebuild the table with `mmfree trigram build "
                                          r"--sets-log2 14 --ways 4 --slots 15 --bigram-slots 4 --inc 64`"):
        HG.generate_onchip(host, [1, 2], 4, other)
    with pytest.raises(MmfreeError, match="inc=32; .* uses inc=64"):
        HG.generate_onchip(host, [1, 2], 4, TG.TrigramTable.empty(im.vocab_size, TG.TableParams(inc=32)))
    with pytest.raises(MmfreeError, match=r"built for 100 tokens, the model has 4096: build the table for this model"):
        HG.generate_onchip(host, [1, 2], 4, TG.TrigramTable.empty(100))
    with pytest.raises(MmfreeError, match=r"built for 5000 tokens, this bitstream's draft engine holds DRAFT_VOCAB = "
                                          r"4096"):
        HG.generate_onchip(host, [1, 2], 4, TG.TrigramTable.empty(5000))
    small = HA.AccelHost(EmulatedBoard(HwConfig(max_tokens=4, draft_vocab=1024)), compiled)
    with pytest.raises(MmfreeError, match=r"the model has 4096 tokens, this bitstream's draft engine holds "
                                          r"DRAFT_VOCAB = 1024: rebuild it with draft_vocab >= 4096"):
        HG.generate_onchip(small, [1, 2], 4, start.copy())
    assert board.last_stats is None                              # nothing ran
    with pytest.raises(MmfreeError, match=r"eos_id 4096 is outside the vocabulary"):
        HG.generate_onchip(host, [1, 2], 4, start.copy(), eos_id=4096)


@pytest.fixture
def armed(model):
    """A host after one good GENERATE: every loop register holds a valid value. ``draft_vocab`` 8192 (more rows
    than the model's 4096 tokens, which the driver allows) lets a table slot hold a token the engine can look up
    but the model cannot embed."""
    compiled, im, tok, start = model
    board, host = _host(model, HwConfig(bus_bytes=16, max_tokens=K, max_width=4096, draft_vocab=8192))
    HG.generate_onchip(host, tok.encode("def "), 6, start.copy())
    return board, host


def _regions(board, host):
    return {n: board.read_mem(host.addr[n], 4096) for n in ("TABLE_BASE", "BIGRAM_BASE", "GEN_OUT", "STATE_A",
                                                             "STATE_B")}


@pytest.mark.parametrize("regs, expect", [
    ({"GEN_N": 0}, (RM.ERR_GEN_CONFIG, 0)),
    ({"STATE_STRIDE": 0}, (RM.ERR_GEN_CONFIG, 1)),
    ({"STATE_STRIDE": 96}, (RM.ERR_GEN_CONFIG, 1)),
    ({"TABLE_BASE": +4}, (RM.ERR_UNALIGNED, GEN + 0)),
    ({"BIGRAM_BASE": +32}, (RM.ERR_UNALIGNED, GEN + 1)),
    ({"GEN_OUT": +4}, (RM.ERR_UNALIGNED, GEN + 2)),
    ({"STATE_ALT": +8}, (RM.ERR_UNALIGNED, GEN + 3)),
    ({"TABLE_BASE": "hi-64"}, (RM.ERR_ADDRESS_RANGE, GEN + 0)),
    ({"BIGRAM_BASE": "lo-64"}, (RM.ERR_ADDRESS_RANGE, GEN + 1)),
    ({"GEN_OUT": "hi-64", "GEN_N": 17}, (RM.ERR_ADDRESS_RANGE, GEN + 2)),
    ({"STATE_ALT": "hi-64"}, (RM.ERR_ADDRESS_RANGE, GEN + 3)),
    # first failure wins: GEN_N before the stride and the addresses; all alignments before any range
    ({"GEN_N": 0, "STATE_STRIDE": 0, "TABLE_BASE": +4}, (RM.ERR_GEN_CONFIG, 0)),
    ({"STATE_STRIDE": 32, "TABLE_BASE": +4}, (RM.ERR_GEN_CONFIG, 1)),
    ({"TABLE_BASE": "hi-64", "STATE_ALT": +4}, (RM.ERR_UNALIGNED, GEN + 3)),
    ({"BIGRAM_BASE": +4, "TABLE_BASE": +4}, (RM.ERR_UNALIGNED, GEN + 0)),
])
def test_generate_checks_in_order(armed, regs, expect):
    board, host = armed
    lo, hi = host.transport.mem_window
    before = _regions(board, host)
    count = board.read32(RM.OFFSET["GEN_COUNT"])
    for name, v in regs.items():
        if name in RM.GEN_ADDRESS_REGS:
            value = {"hi-64": hi - 64, "lo-64": lo - 64}[v] if isinstance(v, str) else host.reg64(name) + v
            host.set_addr(name, value)
        else:
            board.write32(RM.OFFSET[name], v)
    with pytest.raises(HA.AccelRunError) as ei:
        host.start_and_wait(RM.CTRL_GENERATE, 1.0)
    assert (ei.value.code, ei.value.detail) == expect
    if expect[0] in (RM.ERR_UNALIGNED, RM.ERR_ADDRESS_RANGE):
        assert f"register {RM.GEN_ADDRESS_REGS[expect[1] - GEN]}" in str(ei.value)
    assert _regions(board, host) == before                      # nothing read or written before the checks pass
    assert board.read32(RM.OFFSET["GEN_COUNT"]) == count


def test_pass_error_stops_the_loop_with_it(armed, model):
    """A bigram successor outside the model's vocabulary gets drafted: the first pass stops with ERR_TOKEN_RANGE
    at that tree position, and the loop with it (no token out, no bigram write-back)."""
    board, host = armed
    root = board.read32(RM.OFFSET["GEN_CONTEXT"]) & 0xFFFF
    row = host.addr["BIGRAM_BASE"] + root * 4 * host.draft["bigram_slots"]
    board.write_mem(row, struct.pack("<4I", 5000 << 16 | 255, 0, 0, 0))
    board.write32(RM.OFFSET["GEN_CONTEXT"], root)            # prev 0: no trigram way, the bigram row decides
    with pytest.raises(HA.AccelRunError, match=r"error 3: a token id is outside the model's vocabulary \(position 1\)"):
        host.start_and_wait(RM.CTRL_GENERATE, 1.0)
    assert board.read32(RM.OFFSET["GEN_PASSES"]) == 0 and board.read32(RM.OFFSET["GEN_COUNT"]) == 0
    # an ordinary register the passes use: the loop reports the pass's own check
    host.set_addr("DATA_BASE", host.addr["DATA_BASE"] + 4)
    with pytest.raises(HA.AccelRunError) as ei:
        host.start_and_wait(RM.CTRL_GENERATE, 1.0)
    assert (ei.value.code, ei.value.detail) == (RM.ERR_UNALIGNED, RM.ADDRESS_REGS.index("DATA_BASE"))
    host.set_addr("DATA_BASE", host.addr["DATA_BASE"])
    # and the driver raises the same for a whole generation, then runs normally again
    compiled, im, tok, start = model
    ids = tok.encode("def ")
    assert HG.generate_onchip(host, ids, 6, start.copy())[0] == SR.greedy_reference(im, ids, 6)


def test_timeout_aborts_generate_with_soft_reset(model):
    compiled, im, tok, start = model
    board = H.stuck_board(DEFAULT_HW, RM.CTRL_GENERATE)
    host = HA.AccelHost(board, compiled, timeout_s=0.001)
    with pytest.raises(MmfreeError, match=r"did not finish within 0.005 s .*aborted with SOFT_RESET"):
        HG.generate_onchip(host, [1, 2], 6, start.copy())
    assert board.controls[-1] & RM.CTRL_SOFT_RESET


def test_token_without_a_bigram_row_is_a_clear_emulator_error(model):
    """A table slot holding a token >= DRAFT_VOCAB: the engine would look up a bigram row that does not exist.
    The contract does not define it; the emulator refuses it as it refuses other undefined programs."""
    from mmfree.sim.emulator import ProgramError

    compiled, im, tok, start = model
    board, host = _host(model)
    HG.generate_onchip(host, tok.encode("def "), 6, start.copy())
    root = board.read32(RM.OFFSET["GEN_CONTEXT"]) & 0xFFFF
    board.write_mem(host.addr["BIGRAM_BASE"] + root * 16, struct.pack("<4I", 5000 << 16 | 255, 0, 0, 0))
    board.write32(RM.OFFSET["GEN_CONTEXT"], root)
    with pytest.raises(ProgramError, match=r"token >= DRAFT_VOCAB \(4096\) in GEN_CONTEXT or in a table slot"):
        host.start_and_wait(RM.CTRL_GENERATE, 1.0)


def test_bench_run_job_onchip_on_the_emulator_board(model, tmp_path):
    """The plumbing of ``mmfree run --board sim --onchip`` without a simulator: the bench's "run" job
    (``onchip``) on the emulator board, its result files written and read back as between the simulator
    process and :func:`run_sim`, then run_sim's checks: the prefill passes replayed on IntModel, the rest
    against speculative_generate."""
    pytest.importorskip("cocotb")
    from mmfree.sim import accel as SA
    from mmfree.sim.benches import accel as bench

    compiled, im, tok, start = model
    ids = tok.encode(PROMPTS[2])
    start.save(tmp_path / "trigram.bin")
    job = {"kind": "run", "prompt": ids, "n_tokens": 16, "k": K, "draft": "trigram", "onchip": True,
           "table": str(tmp_path / "trigram.bin"), "write_logits": False}
    bench.save_result(tmp_path, bench._run_job(EmulatedBoard(DEFAULT_HW), job, compiled, lambda t: None))
    res = SA.load_job_result(tmp_path)
    passes = SA.passes_from_result(res)
    assert res["onchip"] is True and [p.get("onchip", False) for p in passes] == [False] * -(-len(ids) // K) + [True]
    assert SA.replay_and_compare(im, [p for p in passes if not p.get("onchip")]) == (True, [])
    assert res["tokens"] == SR.greedy_reference(im, ids, 16)
    ok, problems, fields = SR._check_onchip(im, ids, 16, K, start, res)
    assert ok, problems
    assert res["counters"]["gen_passes"] == fields["reference_verify_steps"]
    with pytest.raises(ValueError, match="an onchip job drafts with the trigram engine"):
        bench._run_job(EmulatedBoard(DEFAULT_HW), dict(job, draft=None), compiled, lambda t: None)

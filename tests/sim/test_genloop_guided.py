"""The count-guided tree rule of the on-chip draft-verify loop (``GEN_DRAFT.tree = COUNT_GUIDED``), through the one
driver (:func:`mmfree.host.generate.generate_onchip` with ``tree_rule="count-guided"``), on the default model and
its own trigram table:

* on the ISA emulator (the loop's executable statement): the greedy tokens, and GEN_PASSES / GEN_NODES and the
  adapted table equal to an independent reference walk (:func:`guided_reference`: ``draft_tree_guided`` trees,
  ``guided_greedy_passes``: ``accept_walk`` over the known greedy tokens, the table updated per emitted token);
* under Verilator (the whole accelerator, ``sim/benches/accel.py``'s "onchip" job: the RTL DraftEngine inside
  GenLoop): the same tokens, counters and table, word for word;
* GEN_DRAFT's bad values: the driver refuses an unknown rule, the emulator answers ERR_GEN_CONFIG detail 2.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmfree import MmfreeError
from mmfree.host import accel as HA
from mmfree.host import generate as HG
from mmfree.host import session as HS
from mmfree.pymodel import drafters as DR
from mmfree.pymodel import trigram as TG
from mmfree.pymodel.speculative import guided_greedy_passes, speculative_generate
from mmfree.rtl import regmap as RM
from mmfree.sim import run as SR
from mmfree.sim.accel import DEFAULT_HW
from mmfree.sim.emulator import EmulatedBoard

K = DEFAULT_HW.max_tokens
PROMPT = "import os\nimport sys\n\n\ndef main("


@pytest.fixture(scope="module")
def model():
    """(compiled, IntModel, tokenizer, the model's own trigram table: never mutated, tests copy it)."""
    from mmfree.pymodel.tokenizer import load_tokenizer

    compiled, im, tok_dir = HS.open_model("default")
    table = DR.TrigramDrafter.for_model(im, None, tok_dir, log=lambda m: None).table
    return compiled, im, load_tokenizer(tok_dir), table


def guided_reference(table: TG.TrigramTable, ids: list[int], greedy: list[int]) -> tuple[int, int, TG.TrigramTable]:
    """(GEN_PASSES, GEN_NODES, adapted table) of the loop with count-guided trees of K - 1 nodes, from the greedy
    tokens: the host teaches ``table`` the prompt and the first token, then the loop as
    :func:`mmfree.pymodel.speculative.guided_greedy_passes` replays it."""
    t = table.copy()
    t.observe(ids)
    t.update(ids[-2], ids[-1], greedy[0])
    log, t = guided_greedy_passes(t, list(ids) + greedy[:1], greedy, K - 1)
    return len(log), sum(len(toks) for toks, _ in log), t


def _gen_record(recs):
    gen = [r for r in recs if r.get("onchip")]
    assert len(gen) == 1
    return gen[0]


def test_emulator_guided_is_greedy_and_the_reference_walk(model):
    compiled, im, tok, start = model
    ids = tok.encode(PROMPT)
    n = 24
    greedy = SR.greedy_reference(im, ids, n)
    passes, nodes, adapted = guided_reference(start, ids, greedy)
    board = EmulatedBoard(DEFAULT_HW)
    host = HA.AccelHost(board, compiled)
    table = start.copy()
    toks, recs = HG.generate_onchip(host, ids, n, table, tree_rule="count-guided")
    g = _gen_record(recs)
    assert toks == greedy
    assert g["tree_rule"] == "count-guided" and board.read32(RM.OFFSET["GEN_DRAFT"]) == RM.TreeRule.COUNT_GUIDED
    assert (g["gen_passes"], g["gen_nodes"]) == (passes, nodes)
    assert passes < n - 1                                   # drafts were accepted
    spec = speculative_generate(im, ids, n, max_draft=K - 1, max_nodes=K - 1, table=start, tree_rule="count-guided",
                                log=lambda m: None)         # the reference loop agrees with the walk
    assert spec.tokens == greedy and spec.extra["verify_steps"] == passes
    np.testing.assert_array_equal(table.trig, adapted.trig)
    np.testing.assert_array_equal(table.bigram, adapted.bigram)
    # the template rule on the same board: its own trees (GEN_DRAFT written back to 0)
    toks_t, recs_t = HG.generate_onchip(host, ids, n, start.copy(), tree_rule="template")
    assert toks_t == greedy and _gen_record(recs_t)["tree_rule"] == "template"
    assert board.read32(RM.OFFSET["GEN_DRAFT"]) == RM.TreeRule.TEMPLATE


def test_bad_tree_rule(model):
    """An unknown rule name: one MmfreeError naming the rules, before any pass. A GEN_DRAFT.tree value no rule
    has (written raw): ERR_GEN_CONFIG detail 2, after the GEN_N / STATE_STRIDE checks."""
    compiled, im, tok, start = model
    board = EmulatedBoard(DEFAULT_HW)
    host = HA.AccelHost(board, compiled)
    with pytest.raises(MmfreeError, match="unknown draft tree rule 'guided': choose one of template, count-guided"):
        HG.generate_onchip(host, tok.encode("def "), 8, start.copy(), tree_rule="guided")
    assert board.read32(RM.OFFSET["GEN_COUNT"]) == 0 and not board.read32(RM.OFFSET["CYCLES_LO"])
    with pytest.raises(RM.RegisterFieldError, match="GEN_DRAFT.tree must be one of 0 .TEMPLATE., 1 .COUNT_GUIDED."):
        RM.encode("GEN_DRAFT", tree=2)
    regs = RM.Registers(board.read32, board.write32)
    regs.write("GEN_N", 4)
    regs.write("STATE_STRIDE", RM.ALIGN)
    regs.write("GEN_DRAFT", 3)
    regs.write("CONTROL", RM.CTRL_GENERATE)
    assert regs.fields("ERROR_CODE") == {"code": RM.ERR_GEN_CONFIG, "detail": 2}
    assert "GEN_DRAFT.tree must be 0 (template) or 1 (count-guided)" in RM.error_message(regs.read("ERROR_CODE"))
    regs.write("GEN_N", 0)                                  # the earlier checks win
    regs.write("CONTROL", RM.CTRL_GENERATE)
    assert regs.fields("ERROR_CODE") == {"code": RM.ERR_GEN_CONFIG, "detail": 0}


def test_register_map_2_2_bitstream_runs_the_template_only(model):
    """A bitstream of register map 2.2 has no GEN_DRAFT: the driver refuses the count-guided rule on it."""
    compiled, im, tok, start = model
    board = EmulatedBoard(DEFAULT_HW)
    board.csr["VERSION"] = RM.encode("VERSION", major=RM.REGMAP_VERSION_MAJOR, minor=2)
    host = HA.AccelHost(board, compiled)
    assert host.draft["tree_rules"] == ("template",)
    with pytest.raises(MmfreeError, match="drafts template trees, not count-guided .register map 2.3"):
        HG.generate_onchip(host, tok.encode("def "), 8, start.copy(), tree_rule="count-guided")


@pytest.mark.sim
def test_verilator_guided_loop_equals_the_reference(model, tmp_path):
    """The RTL (Verilator, the whole accelerator, HDL DDR model) runs GENERATE with count-guided trees: the greedy
    tokens, GEN_PASSES / GEN_NODES of the reference walk, the adapted table read back word for word."""
    from mmfree.sim.accel import run_job

    compiled, im, tok, start = model
    ids = tok.encode(PROMPT)
    n = 10
    greedy = SR.greedy_reference(im, ids, n)
    passes, nodes, adapted = guided_reference(start, ids, greedy)
    compiled.save(tmp_path / "compiled")
    start.save(tmp_path / "trigram.bin")
    res = run_job({"kind": "onchip", "compiled": str(tmp_path / "compiled"), "prompt": ids, "n_tokens": n,
                   "table": str(tmp_path / "trigram.bin"), "tree_rule": "count-guided", "timeout_s": 600.0,
                   "progress": False}, hw=DEFAULT_HW, workdir=tmp_path / "run")
    assert res["tokens"] == greedy
    g = _gen_record(res["passes"])
    assert g["tree_rule"] == "count-guided"
    assert (g["gen_passes"], g["gen_nodes"]) == (passes, nodes) and passes < n - 1
    assert g["gen_cycles"] > 0
    arrays = res["arrays"]
    np.testing.assert_array_equal(arrays["table_trig"], adapted.trig)
    np.testing.assert_array_equal(arrays["table_bigram"], adapted.bigram)
    print(f"\nVerilator GENERATE count-guided: {n - 1} tokens in {passes} passes, {nodes} nodes, "
          f"GEN_CYCLES {g['gen_cycles']}")

"""Sampling on the accelerator backends: the host samples from each pass's logits exactly as the integer reference
does (host/generate.py ``Sampler``, reusing pymodel.sampling / pymodel.speculative), so a seeded run on the ISA
emulator equals ``pymodel.generate`` with IntBackend (no drafts) and ``speculative_generate`` (trigram drafts)
token for token. No Verilator: the emulator runs every pass in a fraction of a second."""

from __future__ import annotations

import pytest

from mmfree import MmfreeError
from mmfree.host import session as HS
from mmfree.pymodel import drafters as DR
from mmfree.pymodel import trigram as TG
from mmfree.pymodel.generate import generate as ref_generate
from mmfree.pymodel.intmodel import IntBackend
from mmfree.pymodel.speculative import speculative_generate
from mmfree.sim.accel import DEFAULT_HW
from mmfree.sim.emulator import EmulatedBoard

K = DEFAULT_HW.max_tokens
N = 20


@pytest.fixture(scope="module")
def model():
    """(compiled, IntModel, prompt ids, the model's own trigram table: never mutated, tests copy it)."""
    from mmfree.pymodel.tokenizer import load_tokenizer

    compiled, im, tok_dir = HS.open_model("default")
    table = DR.TrigramDrafter.for_model(im, None, tok_dir, log=lambda m: None).table
    return compiled, im, list(load_tokenizer(tok_dir).encode("def main(")), table


def _session(model):
    compiled, im, _, _ = model
    return HS.AccelSession(EmulatedBoard(DEFAULT_HW), (compiled, im, None))


@pytest.mark.parametrize("temperature, top_p, seed", [(0.8, 1.0, 0), (1.0, 0.9, 7), (1.5, 1.0, 123)])
def test_plain_sampling_equals_the_reference(model, temperature, top_p, seed):
    _, im, ids, _ = model
    g = _session(model).generate(ids, N, temperature=temperature, top_p=top_p, seed=seed)
    ref = ref_generate(IntBackend(im), ids, N, temperature, top_p, seed).tokens
    assert g.tokens == ref
    greedy = ref_generate(IntBackend(im), ids, N).tokens
    assert g.tokens != greedy                   # the test would notice a sampler that stayed greedy


@pytest.mark.parametrize("temperature, top_p, seed", [(0.8, 1.0, 0), (1.0, 0.95, 5)])
def test_trigram_draft_sampling_equals_the_reference(model, temperature, top_p, seed):
    """Host-drafted trigram trees verified K tokens per pass, the multi-candidate rule at every node: the tokens of
    speculative_generate with the driver's template make_template(K - 1, K - 1) and the same seed."""
    _, im, ids, table = model
    g = _session(model).generate(ids, N, draft=DR.TrigramDrafter(table), k=K, temperature=temperature, top_p=top_p,
                                 seed=seed)
    ref = speculative_generate(im, ids, N, temperature=temperature, top_p=top_p, seed=seed, table=table.copy(),
                               template=TG.make_template(K - 1, K - 1), log=lambda m: None)
    assert g.tokens == ref.tokens
    assert g.counters["decode_passes"] < N - 1          # drafts were accepted: the passes verified trees


@pytest.mark.parametrize("temperature, top_p, seed", [(0.8, 1.0, 3), (0.7, 0.95, 9)])
def test_count_guided_draft_sampling_equals_the_reference(model, temperature, top_p, seed):
    """The count-guided tree rule under sampling: the host drafts K - 1 count-guided nodes per step, and
    sim.run.sampling_reference (what `mmfree run --board sim` checks against) gives the same tokens."""
    from mmfree.sim.run import sampling_reference

    _, im, ids, table = model
    g = _session(model).generate(ids, N, draft=DR.TrigramDrafter(table, tree_rule="count-guided"), k=K,
                                 temperature=temperature, top_p=top_p, seed=seed)
    assert g.tree_rule == "count-guided"
    ref = speculative_generate(im, ids, N, temperature=temperature, top_p=top_p, seed=seed, table=table.copy(),
                               tree_rule="count-guided", max_draft=K - 1, max_nodes=K - 1, log=lambda m: None)
    assert g.tokens == ref.tokens == sampling_reference(im, ids, N, temperature, top_p, seed, table, K,
                                                        "count-guided")


def test_sampling_bad_input_and_onchip_refused(model):
    _, _, ids, table = model
    acc = _session(model)
    with pytest.raises(MmfreeError, match="on-chip draft-verify loop .* cannot sample"):
        acc.generate(ids, 4, draft=DR.TrigramDrafter(table), onchip=True, temperature=0.7)
    for kw, needle in (({"temperature": -1}, "--temperature must be a finite number >= 0"),
                       ({"temperature": float("nan")}, "--temperature must be a finite number >= 0"),
                       ({"temperature": 0.5, "top_p": 0}, r"--top-p must be in \(0, 1\]"),
                       ({"temperature": 0.5, "seed": -3}, "--seed must be an integer >= 0")):
        with pytest.raises(MmfreeError, match=needle):
            acc.generate(ids, 4, **kw)
    from mmfree.host.generate import generate

    with pytest.raises(MmfreeError, match="drop --no-logits"):
        generate(acc.host, ids, 4, write_logits=False, temperature=0.5)
    assert acc.generate(ids, 4).tokens == acc.generate(ids, 4, temperature=0, seed=99).tokens    # greedy: no rng

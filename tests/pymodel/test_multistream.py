"""Multi-stream passes on the integer reference: a forest of B streams in one weight pass equals each stream
decoded alone, exactly (IntModel.verify_forest, forest_of, generate_streams)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmfree.pymodel.drafters import PromptLookupDrafter
from mmfree.pymodel.export import export_model
from mmfree.pymodel.generate import generate
from mmfree.pymodel.intmodel import IntBackend, IntModel, forest_of
from mmfree.pymodel.multistream import generate_streams, plan_pass

from .helpers import random_model

VOCAB = 53
HYP = settings(max_examples=12, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def im(tmp_path_factory):
    m = random_model(31, vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, intermediate_size=64)
    return IntModel.load(export_model(m, tmp_path_factory.mktemp("img") / "m")).warm()


def test_forest_of_layout():
    toks, parents, offs = forest_of([([4, 5, 6], None), ([7], None), ([1, 2, 3, 8], [-1, 0, 0, 1])])
    assert toks == [4, 5, 6, 7, 1, 2, 3, 8]
    assert parents == [-1, 0, 1, -2, -3, 4, 4, 5]
    assert offs == [0, 3, 4, 8]


def test_verify_forest_equals_each_stream_alone(im):
    rng = np.random.default_rng(0)
    starts = [im.prefill(im.initial_state(), rng.integers(0, VOCAB, n))[0] for n in (3, 1, 5)]
    trees = [([5, 6, 7, 8], [-1, 0, 0, 1]), ([9, 2], None), ([3], None)]
    toks, parents, offs = forest_of(trees)
    states, logits = im.verify_forest(starts, toks, parents)
    for s, (t, p) in enumerate(trees):
        alone_states, alone_logits = im.verify(starts[s], t, parents=p)
        np.testing.assert_array_equal(logits[offs[s]:offs[s + 1]], alone_logits)
        for a, b in zip(states[offs[s]:offs[s + 1]], alone_states):
            np.testing.assert_array_equal(a.h, b.h)


def test_single_stream_forest_is_the_tree_api(im):
    st0 = im.prefill(im.initial_state(), [3, 4])[0]
    toks, parents = [5, 6, 7, 8], [-1, 0, 0, 1]
    a_states, a_logits = im.verify(st0, toks, parents=parents)
    b_states, b_logits = im.verify_forest([st0], toks, parents)
    np.testing.assert_array_equal(a_logits, b_logits)
    assert all(np.array_equal(a.h, b.h) for a, b in zip(a_states, b_states))


@pytest.mark.parametrize("parents, needle", [([-1, -3], "-2 <= parents"), ([-1, 1], "-2 <= parents"),
                                             ([0, -1], "-2 <= parents")])
def test_verify_forest_bad_parents_refused(im, parents, needle):
    s = im.initial_state()
    with pytest.raises(ValueError, match=needle):
        im.verify_forest([s, s], [1, 2], parents)


def test_verify_forest_bad_states_refused(im):
    with pytest.raises(ValueError, match="at least one stream state"):
        im.verify_forest([], [1], [-1])
    with pytest.raises(ValueError, match="start state must be"):
        im.forward(np.zeros((2, 1, 3), dtype=np.int64), [1], parents=[-1])
    with pytest.raises(ValueError, match="parents"):
        im.verify(im.initial_state(), [1, 2], parents=[-1, -2])      # the single-tree API: only -1 is a root


@pytest.mark.parametrize("trees, needle", [([], None), ([([], None)], "stream 0 has no tokens"),
                                           ([([1, 2], [-1, 5])], "stream 0: parents")])
def test_forest_of_bad_input_refused(trees, needle):
    if needle is None:
        assert forest_of(trees) == ([], [], [0])
        return
    with pytest.raises(ValueError, match=needle):
        forest_of(trees)


def _alone(im, prompt, n, eos_id=None):
    return generate(IntBackend(im), prompt, n, eos_id=eos_id).tokens


@HYP
@given(prompts=st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=6), min_size=1, max_size=5),
       n=st.integers(0, 7), eos=st.one_of(st.none(), st.integers(0, VOCAB - 1)))
def test_streams_equal_plain_decoding(im, prompts, n, eos):
    res = generate_streams(im, prompts, n, eos_id=eos)
    assert res.tokens == [_alone(im, p, n, eos) for p in prompts]
    assert res.passes == (0 if n == 0 else max(map(len, res.tokens)))   # one pass per step of the longest stream
    if n:
        assert res.nodes[0] == sum(map(len, prompts))                  # every prompt in the first pass


@HYP
@given(prompts=st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=8), min_size=1, max_size=4),
       n=st.integers(1, 9), k=st.integers(2, 4))
def test_streams_with_drafts_equal_plain_decoding(im, prompts, n, k):
    drafters = [PromptLookupDrafter() for _ in prompts]
    res = generate_streams(im, prompts, n, k=k, drafters=drafters)
    assert res.tokens == [_alone(im, p, n) for p in prompts]
    assert all(nodes <= k * len(prompts) for nodes in res.nodes[1:])


@HYP
@given(prompts=st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=9), min_size=1, max_size=4),
       n=st.integers(1, 6), extra=st.integers(0, 3))
def test_streams_with_a_pass_budget_equal_plain_decoding(im, prompts, n, extra):
    """max_nodes (the accelerator's tokens per pass): the prompts go in packed chunks, then one token per stream."""
    budget = len(prompts) + extra
    res = generate_streams(im, prompts, n, max_nodes=budget)
    assert res.tokens == [_alone(im, p, n) for p in prompts]
    assert all(nodes <= budget for nodes in res.nodes)
    prefill = -(-sum(map(len, prompts)) // budget)                    # chunks fill every prompt pass but the last
    assert res.passes == prefill + n - 1 and res.nodes[prefill:] == [len(prompts)] * (n - 1)


def test_plan_pass_prefill_first_then_one_tree_per_stream():
    assert plan_pass([(0, 5), (1, 0), (2, 2)], [1], 4) == ([(0, 4)], [])
    assert plan_pass([(0, 1), (1, 0), (2, 2)], [1], 4) == ([(0, 1), (2, 2)], [])
    assert plan_pass([(0, 0), (1, 0)], [0, 1], 4) == ([], [0, 1])
    assert plan_pass([(0, 7), (1, 3)], [], None) == ([(0, 7), (1, 3)], [])
    with pytest.raises(ValueError, match="max_nodes must be >= 1"):
        plan_pass([(0, 1)], [], 0)


@pytest.mark.parametrize("args, needle", [
    (dict(max_nodes=1), "max_nodes \\(tokens per pass\\) must be an integer >= k x streams = 2"),
    (dict(max_nodes=2.0), "max_nodes"), (dict(prompts=[]), "non-empty list"), (dict(prompts="ab"), "non-empty list"),
    (dict(prompts=[[1], []]), "prompt is empty"), (dict(prompts=[[1], [VOCAB]]), "outside the vocabulary"),
    (dict(max_new_tokens=-1), "max_new_tokens"), (dict(k=0), "k \\(tokens per stream"),
    (dict(k=2, drafters=[PromptLookupDrafter()]), "one drafter per stream")])
def test_generate_streams_bad_input_refused(im, args, needle):
    kw = dict(prompts=[[1], [2]], max_new_tokens=3) | args
    with pytest.raises(ValueError, match=needle):
        generate_streams(im, **kw)


def test_plan_pass_decode_first_roots_then_chunks_in_the_room_left():
    """decode_first: the decoding streams' trees take the budget first, prompt chunks fill what is left."""
    assert plan_pass([(0, 5), (1, 0), (2, 2)], [1], 4, decode_first=True) == ([(0, 3)], [1])
    assert plan_pass([(0, 1), (1, 0), (2, 2)], [1], 4, decode_first=True) == ([(0, 1), (2, 2)], [1])
    assert plan_pass([(0, 0), (1, 0)], [0, 1], 4, decode_first=True) == ([], [0, 1])
    assert plan_pass([(0, 9), (1, 0), (2, 0)], [1, 2], 8, True, root_nodes=3) == ([(0, 2)], [1, 2])
    assert plan_pass([(0, 7), (1, 0)], [1], None, decode_first=True) == ([(0, 7)], [1])
    with pytest.raises(ValueError, match="leaves no room for a prompt chunk"):
        plan_pass([(0, 3), (1, 0), (2, 0)], [1, 2], 2, decode_first=True)
    with pytest.raises(ValueError, match="root_nodes must be >= 1"):
        plan_pass([(0, 1)], [], 4, root_nodes=0)


@HYP
@given(prompts=st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=9), min_size=1, max_size=4),
       n=st.integers(1, 6), extra=st.integers(0, 3))
def test_streams_decode_first_equal_plain_decoding(im, prompts, n, extra):
    """decode_first with a pass budget: per stream the same tokens, no pass over the budget."""
    budget = len(prompts) + extra
    res = generate_streams(im, prompts, n, max_nodes=budget, decode_first=True)
    assert res.tokens == [_alone(im, p, n) for p in prompts]
    assert all(nodes <= budget for nodes in res.nodes)


def test_decode_first_a_decoding_stream_advances_in_every_pass_while_a_long_prompt_goes_in(im):
    """A 1-token prompt and a 12-token one, 3 tokens per pass, 5 tokens each. Prefill first: passes 2-5 feed only
    the long prompt (the short stream waits), then 4 shared decode passes: 9. decode_first: the short stream's
    token rides in passes 2-5 beside 2-token chunks (it is done after pass 5), the long prompt ends in pass 6,
    then it decodes alone: 10 passes, the short request done 4 passes sooner."""
    prompts, n = [[1], [5, 3, 2, 7, 1, 4, 4, 6, 2, 3, 5, 1]], 5
    first = generate_streams(im, prompts, n, max_nodes=3)
    both = generate_streams(im, prompts, n, max_nodes=3, decode_first=True)
    assert first.tokens == both.tokens == [_alone(im, p, n) for p in prompts]
    assert first.nodes == [3, 3, 3, 3, 1, 2, 2, 2, 2]
    assert both.nodes == [3, 3, 3, 3, 3, 2, 1, 1, 1, 1]

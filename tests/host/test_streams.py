"""The multi-stream host (mmfree.host.streams) on the ISA emulator: every stream's tokens equal its plain decoding
alone, and the passes equal the integer reference's multi-stream loop (pymodel.multistream.generate_streams with
the build's max tokens as the pass budget) pass for pass; streams join and leave at pass boundaries."""

from __future__ import annotations

import pytest

from mmfree import MmfreeError
from mmfree.host.accel import AccelHost
from mmfree.host.streams import StreamBatch, generate_streams
from mmfree.pymodel.generate import generate
from mmfree.pymodel.intmodel import IntBackend
from mmfree.pymodel.multistream import generate_streams as reference_streams
from mmfree.rtl.compiler import HwConfig, compile_model
from mmfree.sim.accel import replay_forest
from mmfree.sim.emulator import EmulatedBoard
from tests.sim import helpers as H

HW = HwConfig(bus_bytes=16, max_tokens=4, max_width=1024)


@pytest.fixture(scope="module")
def im():
    return H.load("d64")


def _host(im, streams):
    return AccelHost(EmulatedBoard(HW), compile_model(im, streams=streams))


def _alone(im, prompt, n, temperature=0.0, top_p=1.0, seed=0, eos_id=None):
    return generate(IntBackend(im), prompt, n, temperature, top_p, seed, eos_id).tokens


@pytest.mark.parametrize("prompts", [[[3, 7], [1, 4]], [[5], [6], [7], [8]], [[3, 7, 3, 9, 3], [1], [4, 4]],
                                     [[9, 8, 7, 6, 5, 4], [2, 2]]])
def test_streams_equal_reference_pass_for_pass(im, prompts):
    host = _host(im, len(prompts))
    tokens, passes = generate_streams(host, prompts, 5, keep_arrays=True)
    ref = reference_streams(im, prompts, 5, max_nodes=HW.max_tokens)
    assert tokens == ref.tokens == [_alone(im, p, 5) for p in prompts]
    assert len(passes) == ref.passes and [len(p["tokens"]) for p in passes] == ref.nodes
    ok, problems = replay_forest(im, passes)
    assert ok, problems
    if sum(map(len, prompts)) <= HW.max_tokens:        # every prompt fits one pass: the unbudgeted schedule too
        assert len(passes) == reference_streams(im, prompts, 5).passes == 5


def test_streams_stop_at_eos(im):
    prompts = [[3, 7], [1, 4]]
    eos = _alone(im, prompts[1], 6)[2]                 # stream 1 emits it as its third token
    tokens, passes = generate_streams(_host(im, 2), prompts, 6, eos_id=eos)
    ref = reference_streams(im, prompts, 6, eos_id=eos, max_nodes=HW.max_tokens)
    assert tokens == ref.tokens == [_alone(im, p, 6, eos_id=eos) for p in prompts]
    assert len(tokens[1]) <= 3 and len(passes) == ref.passes


def test_sampled_streams_each_equal_its_own_seeded_decoding(im):
    prompts, seeds = [[3, 7], [1, 4], [9]], [5, 0, 11]
    tokens, _ = generate_streams(_host(im, 3), prompts, 6, temperature=0.8, top_p=0.9, seeds=seeds)
    assert tokens == [_alone(im, p, 6, 0.8, 0.9, s) for p, s in zip(prompts, seeds)]


def test_batch_streams_join_and_leave_at_pass_boundaries(im):
    """Stream a decodes alone, b joins with a prompt of three passes (a sits out with its state on the host),
    then both decode in shared passes; c joins when a leaves. Each equals its solo decoding, and the batch runs
    fewer passes than the three streams alone."""
    host = _host(im, 2)
    batch = StreamBatch(host, max_streams=2)
    a = batch.add([3, 7], 6)
    emitted = {}
    for _ in range(2):
        for s, t in batch.step().emitted:
            emitted.setdefault(s, []).append(t)
    b = batch.add([9, 8, 7, 6, 5, 4, 3, 2, 1], 4)
    assert batch.full
    with pytest.raises(MmfreeError, match="holds 2 streams"):
        batch.add([1], 1)
    c = None
    while len(batch):
        step = batch.step()
        for s, t in step.emitted:
            emitted.setdefault(s, []).append(t)
        if a in step.finished:
            c = batch.add([4, 4], 3)
    assert emitted[a] == _alone(im, [3, 7], 6)
    assert emitted[b] == _alone(im, [9, 8, 7, 6, 5, 4, 3, 2, 1], 4)
    assert emitted[c] == _alone(im, [4, 4], 3)
    alone = sum(1 + (len(p) - 1) // HW.max_tokens + n - 1 for p, n in (([3, 7], 6), ([9] * 9, 4), ([4, 4], 3)))
    assert batch.passes < alone


def test_cancel_leaves_the_others_exact(im):
    batch = StreamBatch(_host(im, 2))
    a, b = batch.add([3, 7], 5), batch.add([1, 4], 5)
    got, i = [], 0
    while len(batch):
        if i == 2:
            batch.cancel(a)
        got += [t for s, t in batch.step().emitted if s == b]
        i += 1
    assert got == _alone(im, [1, 4], 5) and batch.streams == {}


@pytest.mark.parametrize("call, needle", [
    (lambda h: StreamBatch(h, max_streams=0), "1..2 per pass"), (lambda h: StreamBatch(h, max_streams=3), "1..2"),
    (lambda h: StreamBatch(h, max_streams="2"), "1..2"), (lambda h: StreamBatch(h).step(), "no stream"),
    (lambda h: StreamBatch(h).add([], 2), "prompt is empty"), (lambda h: StreamBatch(h).add([1], 0), "n_tokens"),
    (lambda h: StreamBatch(h).add([1000], 2), "outside the vocabulary"),
    (lambda h: StreamBatch(h).add([1], 2, eos_id=-1), "eos_id"),
    (lambda h: StreamBatch(h).add([1], 2, eos_id="2"), "eos_id"),
    (lambda h: StreamBatch(h).add([1], 2, eos_id=1.0), "eos_id"),
    (lambda h: StreamBatch(h).add([1], 2, temperature=-1), "--temperature"),
    (lambda h: generate_streams(h, [[1], [2]], 2, seeds=[1]), "one seed per stream"),
    (lambda h: generate_streams(h, [[1], [2], [3]], 2), "give 1..2 prompts"),
    (lambda h: generate_streams(h, [], 2), "give 1..2 prompts")])
def test_bad_input_refused(im, call, needle):
    with pytest.raises(MmfreeError, match=needle):
        call(_host(im, 2))


@pytest.mark.parametrize("prompts", [[[3, 7], [1, 4]], [[5], [6, 1, 2, 3, 4, 5, 6], [7]],
                                     [[3, 7, 3, 9, 3], [1], [4, 4]], [[9, 8, 7, 6, 5, 4], [2]]])
def test_decode_first_streams_equal_reference_pass_for_pass(im, prompts):
    """decode_first (the server's schedule): per stream its solo tokens, the reference's passes and forest sizes
    with the same flag, and every pass replays exactly on IntModel."""
    tokens, passes = generate_streams(_host(im, len(prompts)), prompts, 5, keep_arrays=True, decode_first=True)
    ref = reference_streams(im, prompts, 5, max_nodes=HW.max_tokens, decode_first=True)
    assert tokens == ref.tokens == [_alone(im, p, 5) for p in prompts]
    assert len(passes) == ref.passes and [len(p["tokens"]) for p in passes] == ref.nodes
    ok, problems = replay_forest(im, passes)
    assert ok, problems


def test_decode_first_a_decoding_stream_advances_in_every_pass_while_a_prompt_goes_in(im):
    """Stream a decodes; b joins with a 9-token prompt (3 passes of chunks at 4 tokens per pass): with
    decode_first a emits a token in every one of those passes (prefill first it sits them out), and the records
    say which streams were fed chunks."""
    batch = StreamBatch(_host(im, 2), max_streams=2, decode_first=True)
    a = batch.add([3, 7], 8)
    got = {a: [t for _, t in batch.step().emitted]}
    b = batch.add([9, 8, 7, 6, 5, 4, 3, 2, 1], 3)
    mixed = 0
    while len(batch):
        step = batch.step()
        if b in step.record["streams"][:step.record["chunks"]]:
            mixed += 1
            assert a in step.record["streams"] and a in [s for s, _ in step.emitted]
        for s, t in step.emitted:
            got.setdefault(s, []).append(t)
    assert mixed == 3
    assert got[a] == _alone(im, [3, 7], 8) and got[b] == _alone(im, [9, 8, 7, 6, 5, 4, 3, 2, 1], 3)
